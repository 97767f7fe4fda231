"""Every example of README.md and docs/*.md is run by a test, and this says which;
the commands quoted inline in the text name what exists.

``sh`` blocks all run in tests/acceptance/test_docs.py. ``yaml`` blocks are read here.
Each ``python`` block is listed in ``RUN_BY`` with the tests that run it: a new example
without a test fails here. A block the tests do not run says why in its page
(``<!-- illustrative: ... -->``, see tests/docblocks.py), and is listed here too.
"""

from __future__ import annotations

import re
import tomllib

import click
import pytest

from microsaga import Workflow, load_definition
from microsaga.cli import cli
from tests.docblocks import (
    LANGUAGES,
    PAGES,
    ROOT,
    Block,
    all_blocks,
    check_script_options,
    inline_code,
)

README_TESTS = "tests/unit/test_core_readme.py"
FRONT_TESTS = "tests/unit/test_front_docs.py"
DOC_TESTS = "tests/acceptance/test_docs.py"

# (page, text that only its block holds) -> the tests that run the block
RUN_BY: dict[tuple[str, str], tuple[str, ...]] = {
    ("docs/python.md", "AesGcmCodec(dict(codec_keys))"): (
        "tests/unit/test_payloads.py::test_the_python_docs_example_runs_as_written",
    ),
    ("README.md", 'Saga("order")'): (f"{README_TESTS}::test_the_first_example_runs_as_written",),
    ("README.md", "SyncFlow("): (f"{README_TESTS}::test_the_first_example_runs_as_written",),
    ("README.md", "CallStep("): (
        f"{README_TESTS}::test_the_steps_example_succeeds",
        f"{DOC_TESTS}::test_the_steps_example_runs_against_the_example_services_and_nats",
    ),
    ("docs/python.md", 'Saga("fulfil")'): (f"{FRONT_TESTS}::test_the_python_page_runs",),
    ("docs/python.md", "def app(environ"): (f"{FRONT_TESTS}::test_the_python_page_runs",),
    ("docs/comparison.md", "from microsaga import"): (
        f"{FRONT_TESTS}::test_the_microsaga_program_of_the_comparison_runs",
    ),
    ("docs/comparison.md", "from dbos import"): (
        "tests/integration/test_front_peers.py::test_the_dbos_program_of_the_comparison_runs",
    ),
    ("docs/comparison.md", "from temporalio import"): (
        "tests/integration/test_front_peers.py::test_the_temporal_program_of_the_comparison_runs",
    ),
    ("docs/api.md", "app.mount("): (f"{FRONT_TESTS}::test_the_api_mount_example_serves",),
    ("docs/observability.md", "hooks=[Tracing(), Metrics()]"): (
        "tests/unit/test_observability_docs.py::test_the_hooks_example_runs",
    ),
    ("docs/observability.md", "addFilter("): (
        "tests/unit/test_observability_docs.py::test_the_log_filter_example_runs",
    ),
    ("docs/transports.md", "# examples/shop/payments.py"): (
        "tests/unit/test_docs_index.py::test_a_block_naming_a_file_shows_it_whole",
        f"{DOC_TESTS}::test_the_commands_run_as_written",  # the quick start serves it
    ),
    ("docs/transports.md", "add_stream("): (
        f"{DOC_TESTS}::test_the_stream_example_makes_a_stream_that_takes_the_readme_subject",
    ),
    ("docs/transports.md", "shipping.subscribe("): (
        f"{DOC_TESTS}::test_the_subscribe_example_gets_its_reply",
    ),
}

ILLUSTRATIVE = [
    (
        "docs/benchmarks.md",
        "installs py-spy from the package index, then profiles a benchmark for minutes",
    ),
    (
        "docs/observability.md",
        "needs Docker for the Jaeger collector and packages from the index",
    ),
    (
        "docs/semantics.md",
        "the waiting steps at a glance; tests/unit/test_waits.py runs each of them",
    ),
]


def test_every_block_names_its_language() -> None:
    unnamed = [f"{b.name} ({b.lang or 'none'})" for b in all_blocks() if b.lang not in LANGUAGES]
    assert unnamed == [], f"name each block's language, one of {sorted(LANGUAGES)}"


def test_every_python_block_is_run_by_a_listed_test() -> None:
    blocks = [b for b in all_blocks("python") if b.illustrative is None]
    claimed: dict[str, list[tuple[str, str]]] = {b.name: [] for b in blocks}
    for page, snippet in RUN_BY:
        holders = [b for b in blocks if str(b.page.relative_to(ROOT)) == page and snippet in b.text]
        assert len(holders) == 1, f"{page}: {len(holders)} python blocks hold {snippet!r}"
        claimed[holders[0].name].append((page, snippet))
    assert [name for name, keys in claimed.items() if len(keys) != 1] == [], (
        "each python block needs one entry in RUN_BY"
    )


@pytest.mark.parametrize("key", list(RUN_BY), ids=lambda key: f"{key[0]}:{key[1]}")
def test_the_listed_tests_exist(key: tuple[str, str]) -> None:
    for test in RUN_BY[key]:
        path, _, name = test.partition("::")
        source = (ROOT / path).read_text(encoding="utf-8")
        assert f"def {name}(" in source, f"{test} does not exist"


def test_the_illustrative_blocks_are_few_and_say_why() -> None:
    found = [
        (str(b.page.relative_to(ROOT)), b.illustrative) for b in all_blocks() if b.illustrative
    ]
    assert found == ILLUSTRATIVE


@pytest.mark.parametrize("block", [b for b in all_blocks() if b.shown_file], ids=lambda b: b.name)
def test_a_block_naming_a_file_shows_it_whole(block: Block) -> None:
    assert block.shown_file is not None
    assert block.text == block.shown_file.read_text(encoding="utf-8"), (
        f"{block.name} differs from {block.shown_file.relative_to(ROOT)}"
    )


@pytest.mark.parametrize("block", all_blocks("yaml"), ids=lambda b: b.name)
def test_the_yaml_blocks_are_definitions_that_load(
    block: Block, monkeypatch: pytest.MonkeyPatch
) -> None:
    where = block.shown_file.parent if block.shown_file else ROOT
    monkeypatch.syspath_prepend(str(where))  # as the CLI imports: beside the definition
    wf = load_definition(block.text)
    assert isinstance(wf, Workflow)
    assert wf.step_list


INLINE = [(page, line, span) for page in PAGES for line, span in inline_code(page)]


def _inline(pattern: str) -> list[tuple[str, str]]:
    """The inline spans matching ``pattern``, as (page:line, span)."""
    return [
        (f"{page.relative_to(ROOT)}:{line}", span)
        for page, line, span in INLINE
        if re.fullmatch(pattern, span)
    ]


def _walk(words: list[str]) -> None:
    """``microsaga WORDS`` names commands and options the CLI has."""
    command: click.Command = cli
    i = 0
    while i < len(words):
        word = words[i]
        if word.startswith("-"):
            name = word.split("=", 1)[0]
            if name in ("-h", "--help"):  # every command's, from the context settings
                i += 1
                continue
            option = next((p for p in command.params if name in (*p.opts, *p.secondary_opts)), None)
            assert option is not None, f"microsaga {command.name} has no option {name}"
            takes_value = isinstance(option, click.Option) and not option.is_flag
            i += 2 if takes_value and "=" not in word else 1
            continue
        if isinstance(command, click.Group):
            assert word in command.commands, f"microsaga has no command {word!r}"
            command = command.commands[word]
        i += 1


@pytest.mark.parametrize(
    ("where", "span"),
    _inline(r"(\.venv/bin/|python -m )?microsaga( .*)?"),
    ids=lambda value: str(value),
)
def test_inline_microsaga_commands_exist(where: str, span: str) -> None:
    words = span.split()
    _walk(words[words.index("microsaga") + 1 if "microsaga" in words else 1 :])


@pytest.mark.parametrize(("where", "span"), _inline(r"make( .*)?"), ids=lambda value: str(value))
def test_inline_make_targets_exist(where: str, span: str) -> None:
    targets = re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.MULTILINE)
    for word in span.split()[1:]:
        assert "=" in word or word in targets, f"{where}: the Makefile has no target {word}"


@pytest.mark.parametrize(
    ("where", "span"),
    _inline(r"(\.venv/bin/)?python (benchmarks/\w+\.py|-m tests\.chaos)( .*)?"),
    ids=lambda value: str(value),
)
def test_inline_scripts_take_the_options_given(where: str, span: str) -> None:
    found = re.search(r"(benchmarks/\w+\.py|-m tests\.chaos)(.*)", span)
    assert found is not None
    script = "tests/chaos/__main__.py" if found[1].startswith("-m") else found[1]
    check_script_options(script, found[2])


def test_the_extras_named_exist() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    extras = set(project["project"]["optional-dependencies"])
    text = "\n".join(page.read_text(encoding="utf-8") for page in PAGES)
    named = {e for group in re.findall(r"microsaga\[([\w,]+)\]", text) for e in group.split(",")}
    assert named, "the docs name no extra: the pattern is wrong"
    assert named - extras == set(), f"pyproject.toml has no extra {sorted(named - extras)}"
