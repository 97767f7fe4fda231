"""Named SQL queries and migrations kept in ``.sql`` files next to the stores."""

from __future__ import annotations

import re
from importlib import resources

__all__ = ["LISTINGS", "load_queries", "migrations", "statements"]

# the query listing executions, by the filters given (workflow id, status): one each,
# so that the planner reads the rows off the index of the filter (both stores)
LISTINGS = {
    (False, False): "list_executions",
    (True, False): "list_executions_by_workflow",
    (False, True): "list_executions_by_status",
    (True, True): "list_executions_by_workflow_status",
}

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


def load_queries(dialect: str) -> dict[str, str]:
    """``{name: sql}`` from ``sql/<dialect>/queries.sql``."""
    text = (resources.files(__package__) / "sql" / dialect / "queries.sql").read_text()
    parts = _NAME.split(text)
    out = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [ln for ln in body.strip().splitlines() if not ln.lstrip().startswith("--")]
        out[name] = "\n".join(lines).strip().rstrip(";")
    return out


def migrations(dialect: str) -> list[tuple[int, str]]:
    """``[(version, sql)]`` from ``sql/<dialect>/migrations/NNNN_*.sql``, in order."""
    folder = resources.files(__package__) / "sql" / dialect / "migrations"
    out = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            out.append((int(entry.name.split("_", 1)[0]), entry.read_text()))
    return sorted(out)


def statements(script: str) -> list[str]:
    """The statements of a migration script, comments removed (no ';' in strings)."""
    code = "\n".join(line.split("--", 1)[0] for line in script.splitlines())
    return [s.strip() for s in code.split(";") if s.strip()]
