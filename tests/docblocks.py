"""The fenced blocks of README.md and docs/*.md, for the tests that run them.

Every block names its language: ``sh``, ``python`` and ``yaml`` blocks are examples and
run in the tests (``tests/acceptance/test_docs.py`` runs the ``sh`` ones,
``tests/unit/test_docs_index.py`` says which test runs each ``python`` block and reads
the ``yaml`` ones); ``text`` (outputs, diagrams) and ``http`` (wire formats) are not
run. A block whose first line is a comment naming a file (``# examples/order.yaml``)
shows that file, whole.

A block that the tests do not run says so in the page, on the line above it, with the
reason: ``<!-- illustrative: why -->``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
LANGUAGES = frozenset({"sh", "python", "yaml", "text", "http"})

_FENCE = re.compile(r"^```(\S*)\s*$")
_ILLUSTRATIVE = re.compile(r"^<!-- illustrative: (.+?) -->$")
_SHOWN_FILE = re.compile(r"^# (examples/\S+?)(?::.*)?$")


@dataclass(frozen=True)
class Block:
    """One fenced block: where it is, its language and its text."""

    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    illustrative: str | None  # why the tests do not run it, when they do not

    @property
    def name(self) -> str:
        """``README.md:156``, ``docs/api.md:7``: the block's place, as test ids show it."""
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def shown_file(self) -> Path | None:
        """The file the block shows, when its first line names one."""
        found = _SHOWN_FILE.match(self.text.split("\n", 1)[0])
        return ROOT / found[1] if found else None


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of ``page``, in order."""
    lines = page.read_text(encoding="utf-8").split("\n")
    found: list[Block] = []
    start: int | None = None
    lang = ""
    for number, line in enumerate(lines, 1):
        fence = _FENCE.match(line)
        if fence is None:
            continue
        if start is None:
            start, lang = number, fence[1]
            continue
        above = lines[start - 2] if start >= 2 else ""
        note = _ILLUSTRATIVE.match(above)
        text = "\n".join(lines[start:number - 1]) + "\n"  # fmt: skip
        found.append(Block(page, start, lang, text, note[1] if note else None))
        start = None
    assert start is None, f"{page.name}:{start}: a block that is never closed"
    return found


def all_blocks(lang: str | None = None) -> list[Block]:
    """Every block of every page (of one language)."""
    return [b for page in PAGES for b in blocks(page) if lang is None or b.lang == lang]


def inline_code(page: Path) -> list[tuple[int, str]]:
    """The inline code spans of ``page`` outside its blocks, with their line numbers."""
    found: list[tuple[int, str]] = []
    inside = False
    for number, line in enumerate(page.read_text(encoding="utf-8").split("\n"), 1):
        if _FENCE.match(line):
            inside = not inside
        elif not inside:
            found.extend((number, span) for span in re.findall(r"`([^`]+)`", line))
    return found


def check_script_options(script: str, args: str) -> None:
    """``script`` (``benchmarks/run.py``, ``tests/chaos/__main__.py``) exists and
    defines each ``--option`` of ``args``: for commands that run too long to run."""
    path = ROOT / script
    assert path.is_file(), f"{script} does not exist"
    source = path.read_text(encoding="utf-8")
    for option in re.findall(r"(?<!\S)(--[\w-]+)", args):
        if option == "--help":  # argparse's own
            continue
        assert f'"{option}"' in source, f"{script} has no option {option}"


def find(page: str, containing: str, lang: str = "python") -> Block:
    """The one block of ``page`` (``README.md``, ``docs/api.md``) holding ``containing``."""
    found = [b for b in blocks(ROOT / page) if b.lang == lang and containing in b.text]
    assert len(found) == 1, f"{page}: {len(found)} {lang} blocks hold {containing!r}, not 1"
    return found[0]
