"""An input over the payload limit names the setting that sets the limit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from microsaga.cli import main


def test_a_request_over_the_limit_names_the_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MICROSAGA_MAX_PAYLOAD", "1KiB")
    monkeypatch.setenv("MICROSAGA_BROKER", "memory://")
    definition = tmp_path / "ship.yaml"
    definition.write_text("id: ship\nsteps: [{publish: orders.ship}]\n")
    request = json.dumps({"note": "x" * 2000})
    with pytest.raises(SystemExit) as exited:
        main(
            [
                "--store",
                f"sqlite:///{tmp_path / 's.db'}",
                "run",
                str(definition),
                "--input",
                request,
            ]
        )
    assert exited.value.code == 2
    said = capsys.readouterr().err.splitlines()[-1]
    assert said.startswith("error[payload_too_large]: the request is 2012 bytes")
    assert said.endswith("(the limit is the setting MICROSAGA_MAX_PAYLOAD)")
