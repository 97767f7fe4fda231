"""What each exit status of ``microsaga`` means is said in one list, the same in the
README and in ``microsaga --help``: 4 (the execution ``run`` waited for was suspended)
included, which SPEC section 7's four statuses leave out."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from microsaga.cli import main
from tests.docblocks import ROOT

SUSPENDED = "4 the execution run waited for was suspended"


def _plain(text: str) -> str:
    """Text without Markdown's backquotes, on one line, single spaces."""
    return " ".join(text.replace("`", "").split())


def _listing(text: str) -> str:
    """The list of exit statuses in ``text``: from "Exit status:" to its full stop."""
    found = re.findall(r"Exit status: 0 success, .*?\.(?= |$)", _plain(text))
    assert len(found) == 1, found
    return str(found[0])


def test_help_and_the_readme_list_the_same_exit_statuses(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    shown = _listing(capsys.readouterr().out)
    assert shown == _listing((ROOT / "README.md").read_text())
    assert shown.count(SUSPENDED) == 1
    assert "3 store or transport unavailable, " + SUSPENDED + ", 70 " in shown


def test_no_doc_page_keeps_a_list_of_its_own() -> None:
    pages = sorted((ROOT / "docs").glob("*.md"))
    assert pages
    for page in pages:
        assert "0 success, 1 " not in _plain(page.read_text()), page.name


def test_a_store_of_a_newer_microsaga_is_a_setting_to_mend_not_an_outage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit status 3 tells a supervisor to try again later; a store migrated by a newer
    microsaga (a rolling upgrade's older workers restarting) never becomes usable by
    waiting: 2, saying to upgrade."""
    path = tmp_path / "newer.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 999")
    conn.close()
    with pytest.raises(SystemExit) as exited:
        main(["--store", f"sqlite:///{path}", "list"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error[schema_version]: ")
    assert "upgrade microsaga" in err


def test_a_halt_in_the_same_turn_as_the_work_still_says_to_upgrade() -> None:
    """A worker told to stop by a signal in the very turn its store was migrated exits
    2, naming the schema, not 0 as if it had only been stopped."""
    import asyncio

    from microsaga import SchemaVersionError
    from microsaga.cli import _unless_halted

    class Halted:  # a flow whose worker has just stopped: join raises at once
        async def join(self) -> None:
            raise SchemaVersionError("the store's schema is newer than this microsaga")

    async def stopped() -> str:  # the signal's event, already set
        return "stopped"

    async def main() -> None:
        await _unless_halted(Halted(), stopped())  # type: ignore[arg-type]

    with pytest.raises(SchemaVersionError, match="newer than this microsaga"):
        asyncio.run(main())
