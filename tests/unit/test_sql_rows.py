"""The SQL stores' named queries and the one row mapping both stores share.

The mapping (``stores/_rows.py``) reads rows by position, so the queries of SQLite and
PostgreSQL must select the columns it names in its order; every named query must be
used by its store, and no SQL is left in the stores' Python.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import microsaga.stores
from microsaga import Message, Metadata, Status
from microsaga._engine.records import Phase
from microsaga.stores._rows import (
    DEFINITION_COLUMNS,
    EXECUTION_COLUMNS,
    LOAD_COLUMNS,
    NEW_EXECUTION_COLUMNS,
    POSTGRES,
    SQLITE,
    STEP_COLUMNS,
    WORKFLOW_COLUMNS,
    RowMapping,
)
from microsaga.stores._sql import load_queries
from microsaga.stores.base import NewExecution, StepRecord, StoredDefinition

STORES = Path(microsaga.stores.__file__).parent
# the Python modules of each dialect: they alone use its named queries
MODULES = {
    "sqlite": ["sqlite.py", "_sql.py"],
    "postgres": ["postgres.py", "_postgres_db.py", "_sql.py"],
}
DIALECTS = list(MODULES)
LISTINGS = (  # both dialects
    "list_executions",
    "list_executions_by_redrive",
    "list_executions_by_workflow",
    "list_executions_by_status",
    "list_executions_by_workflow_status",
)


def _source(dialect: str) -> str:
    return "\n".join((STORES / name).read_text() for name in MODULES[dialect])


def _selected(sql: str) -> tuple[str, ...]:
    """The columns of a query's (first) SELECT list, without table aliases."""
    found = re.search(r"\bSELECT (?:DISTINCT ON \([^)]*\) )?(.*?) FROM ", " ".join(sql.split()))
    assert found is not None, sql
    return tuple(re.sub(r"^\w+\.", "", col.strip()) for col in found.group(1).split(","))


def _flat(sql: str) -> str:
    """A query on one line, single spaces, none inside parentheses' ends."""
    return re.sub(r"\(\s+", "(", re.sub(r"\s+\)", ")", " ".join(sql.split())))


def _listed(columns: tuple[str, ...]) -> str:
    return "(" + ", ".join(columns)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_every_named_query_is_used_and_every_query_used_exists(dialect: str) -> None:
    names = set(load_queries(dialect))
    source = _source(dialect)
    literals = set(re.findall(r"\"(\w+)\"", source))
    assert names - literals == set()
    assert set(re.findall(r"\bQ\[\"(\w+)\"\]", source)) - names == set()


@pytest.mark.parametrize("dialect", DIALECTS)
def test_no_sql_is_left_in_the_stores_python(dialect: str) -> None:
    # transaction and PRAGMA plumbing stays where it is used
    plumbing = ("BEGIN", "COMMIT", "ROLLBACK", "PRAGMA")
    statement = re.compile(r"\s*(SELECT|INSERT|UPDATE|DELETE|WITH|CREATE|ALTER|DROP)\s")
    for name in MODULES[dialect]:
        tree = ast.parse((STORES / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
                assert not statement.match(text), f"{name}: {text!r}"
                assert not text.startswith(plumbing) or len(text.split()) <= 4, text


@pytest.mark.parametrize("dialect", DIALECTS)
def test_both_dialects_select_the_columns_the_mapping_reads(dialect: str) -> None:
    q = load_queries(dialect)
    assert _selected(q["load_executions"]) == LOAD_COLUMNS + STEP_COLUMNS
    assert _selected(q["load_definitions"]) == DEFINITION_COLUMNS
    assert _selected(q["step_rows_of_many"]) == ("execution_id", *STEP_COLUMNS)
    for name in ["get_execution", *LISTINGS]:
        assert _selected(q[name]) == EXECUTION_COLUMNS, name
    for name in ("load_workflow_latest", "load_workflow_version", "list_workflows"):
        assert _selected(q[name]) == WORKFLOW_COLUMNS, name
    assert _selected(q["get_status"]) == ("status", "abort")


def test_both_dialects_write_the_columns_the_mapping_writes() -> None:
    sqlite, postgres = load_queries("sqlite"), load_queries("postgres")
    step_run = _listed(("execution_id", *STEP_COLUMNS)) + ")"
    new = _listed((*NEW_EXECUTION_COLUMNS, "updated_at")) + ")"
    assert _listed(DEFINITION_COLUMNS) + ")" in _flat(sqlite["insert_definition"])
    assert new in _flat(sqlite["insert_execution"])
    assert step_run in _flat(sqlite["upsert_step"])
    create = _flat(postgres["create_executions"])
    assert f"AS d {_listed(DEFINITION_COLUMNS)})" in create
    assert f"AS u {_listed(NEW_EXECUTION_COLUMNS)}, ord)" in create
    assert f"AS s {step_run}" in create
    assert f"AS s {step_run}" in _flat(postgres["write_transitions"])


def _full_record() -> StepRecord:
    return StepRecord(
        step_id="charge",
        phase=Phase.COMPENSATE,
        status=Status.FAILURE,
        attempts=3,
        request=Message(b'{"amount": 7}', {"Trace": ["t1", "t2"], "X-Key": "k"}),
        response=Message(b'{"declined": true}', {"R": "r"}),
        error="card declined",
        started_at=100.5,
        finished_at=101.25,
    )


@pytest.mark.parametrize("rows", [SQLITE, POSTGRES], ids=["sqlite", "postgres"])
def test_a_record_with_every_field_set_comes_back_from_its_row(rows: RowMapping) -> None:
    record = _full_record()
    row = rows.step_row("e1", record)
    assert len(row) == 1 + len(STEP_COLUMNS)
    assert type(row[2]) is int  # the phase, an int in SQL whatever the engine's type
    assert type(row[3]) is int
    (back,) = rows.records_by_execution([row])["e1"]
    assert back == record
    assert back.phase is Phase.COMPENSATE
    bare = StepRecord("reserve", Phase.FORWARD, Status.PENDING)
    assert rows.records_by_execution([rows.step_row("e1", bare)]) == {"e1": [bare]}


@pytest.mark.parametrize(
    ("rows", "stored_ids"),
    # PostgreSQL's statement turns the JSON list of step ids into an array
    [(SQLITE, lambda ids: ids), (POSTGRES, json.loads)],
    ids=["sqlite", "postgres"],
)
def test_a_new_execution_comes_back_as_a_worker_loads_it(
    rows: RowMapping, stored_ids: Callable[[Any], Any]
) -> None:
    record = _full_record()
    new = NewExecution(
        id="e1",
        workflow_id="order",
        version=4,
        definition_hash="h1",
        definition=b'{"id": "order"}',
        step_ids=["reserve", "charge"],
        request=Message(b'{"sku": 1}', {"Trace": "t"}),
        status=Status.RUNNING,
        owner="w1",
        lease_until=110.0,
        created_at=100.0,
        start_step="charge",
        reverse=True,
        step_timeout=2.5,
        deadline_at=500.0,
        starts=[record],
    )
    written = dict(zip(NEW_EXECUTION_COLUMNS, rows.new_execution_row(new), strict=True))
    # what the database would give back: the load columns, then one step run's
    read = tuple(
        {"abort": 0, "definition": "h1", "lease_token": 1}.get(c, written.get(c))
        for c in LOAD_COLUMNS
    )
    step = rows.step_row("e1", record)[1:]
    digest, workflow_id, body, ids = rows.definition_row(new)
    definition = rows.definition((digest, workflow_id, body, stored_ids(ids)))
    assert definition == StoredDefinition("h1", "order", b'{"id": "order"}', ["reserve", "charge"])
    assert rows.definition_hashes([read + step]) == {"h1"}
    loaded = rows.stored_executions([read + step], {"h1": definition})["e1"]
    assert (loaded.id, loaded.workflow_id, loaded.version, loaded.status) == (
        "e1",
        "order",
        4,
        Status.RUNNING,
    )
    assert (loaded.abort, loaded.token, loaded.request) == (0, 1, new.request)
    assert (loaded.start_step, loaded.reverse, loaded.step_timeout, loaded.deadline_at) == (
        "charge",
        True,
        2.5,
        500.0,
    )
    assert loaded.records == [record]
    nothing = (None,) * len(STEP_COLUMNS)
    assert rows.stored_executions([read + nothing], {"h1": definition})["e1"].records == []


@pytest.mark.parametrize("mapping", [SQLITE, POSTGRES], ids=["sqlite", "postgres"])
def test_a_header_is_stored_as_its_dict_and_read_back(mapping: RowMapping) -> None:
    """Every value of every key, in the first spelling of the key, whether the header
    was built at once or changed since (then it holds tables, not its frozen form)."""
    built = Metadata({"X-Trace": ["a", "b"], "tenant": "t1"})
    changed = Metadata(built)
    changed.add("x-trace", "c")
    changed.set("Extra", "e")
    for header in (built, changed):
        stored = mapping.header_out(header)
        assert json.loads(stored) == header.to_dict()
        assert mapping.message(b"{}", stored).header == header
    assert mapping.header_out(Metadata()) is None
