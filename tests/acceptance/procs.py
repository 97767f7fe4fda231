"""Running the microsaga CLI as real processes, for acceptance tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("MICROSAGA_")}
    out["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), out.get("PYTHONPATH", "")]))
    out.update(extra or {})
    return out


def cli(
    *args: str,
    cwd: Path | None = None,
    extra_env: Mapping[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run ``microsaga ARGS`` to the end."""
    return subprocess.run(
        [sys.executable, "-m", "microsaga", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env(extra_env),
        timeout=timeout,
        check=False,
    )


def spawn(
    *args: str, output: Path, extra_env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``microsaga ARGS`` in the background, its stdout and stderr to ``output``."""
    with open(output, "ab") as sink:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "microsaga", *args],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env(extra_env),
        )
