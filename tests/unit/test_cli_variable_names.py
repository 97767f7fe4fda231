"""A misspelt ``MICROSAGA_*`` variable is refused, naming the setting it resembles: an
ignored ``MICROSAGA_STORE_URL`` left the store at its default, a SQLite file in the
current folder, and a worker meant for PostgreSQL ran there without a word."""

from __future__ import annotations

from pathlib import Path

import pytest

from microsaga.cli import main


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    out = capsys.readouterr()
    return int(exited.value.code or 0), out.err.strip()


@pytest.mark.parametrize(
    ("typo", "meant"),
    [
        ("MICROSAGA_STORE_URL", "MICROSAGA_STORE"),
        ("MICROSAGA_TOKEN", "MICROSAGA_API_TOKEN"),
        ("MICROSAGA_CONCURENCY", "MICROSAGA_CONCURRENCY"),
        ("MICROSAGA_CODEC_KEY", "MICROSAGA_CODEC_KEYS"),
        ("MICROSAGA_WORKERID", "MICROSAGA_WORKER_ID"),
    ],
)
def test_a_near_miss_of_a_setting_is_named_with_the_setting(
    typo: str,
    meant: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(typo, "30")
    code, err = _cli(capsys, "list")
    assert code == 2
    assert err == (
        f"error[configuration]: {typo}: not a microsaga setting: did you mean {meant}? "
        "(rename or unset it)"
    )
    assert not (tmp_path / "microsaga.db").exists()  # refused before opening a store


def test_other_microsaga_names_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MICROSAGA_DEPLOYMENT_COLOUR", "blue")  # the user's own, not a typo
    code, err = _cli(capsys, "--store", f"sqlite:///{tmp_path / 's.db'}", "list")
    assert (code, err) == (0, "")


@pytest.mark.parametrize(
    ("name", "like"),
    [("MICROSAGA_STAGE", "MICROSAGA_STORE"), ("MICROSAGA_LEASE_TIME", "MICROSAGA_LEASE_TTL")],
)
def test_a_name_only_like_a_settings_is_warned_of_not_refused(
    name: str,
    like: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # MICROSAGA_STAGE may well be the user's own: refusing it would stop every command
    monkeypatch.setenv(name, "blue")
    code, err = _cli(capsys, "--store", f"sqlite:///{tmp_path / 's.db'}", "list")
    assert code == 0
    assert f"{name} is not a microsaga setting and is ignored (did you mean {like}?)" in err
