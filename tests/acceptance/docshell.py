"""Running a page's ``sh`` block as a user pasting it into a terminal would.

The block becomes a bash script that runs in a folder of its own, laid out like a
fresh clone after ``make run``: ``.venv`` (a link to this checkout's) and a copy of
``examples/``. ``microsaga`` is on ``PATH`` unless the block activates the virtualenv
itself, which is then what puts it there. Each command runs as written, with these
exceptions, each for a reason a reader can check:

- **Ports.** 8001, 8002 (the example services) and 8080 (``microsaga serve``) become
  free ports, in the commands and in the copied examples, so that runs never collide;
  a ``serve`` without ``--port`` gets the one 8080 stands for.
- **Long-running commands** (a ``worker``, ``serve``, ``uvicorn``, ``python -m shop``)
  start and are waited for until their first line says they are ready. One typed in
  the foreground is then stopped as Ctrl-C would stop it (SIGINT) and must exit 0; a
  worker first runs what the store holds. One ending in ``&`` runs on in the
  background, as a job (``kill %1`` works), and is stopped at the end of the block.
- **Exit status.** Every command must succeed, unless its comment (on its line or
  the line above) says ``exit status N``: then it must exit N. ``curl`` fails on an
  HTTP error status (``--fail-with-body``).
- **Checked, not run**: ``pip install`` (a dry run without the package index: what it
  names must be installed already), ``make TARGET`` (``make -n``: ``make run``'s
  recipe then runs here, ``make test`` would run this suite inside itself, the others
  run for minutes), and ``python benchmarks/SCRIPT.py`` (minutes long: the script must
  exist and accept each option given).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.docblocks import ROOT, Block, check_script_options

VENV_BIN = Path(sys.executable).parent
DOC_PORTS = (8001, 8002, 8080)

PRELUDE = r"""
set -e -o pipefail
set -m  # job control, as in a terminal: jobs get SIGINT, and %1 names the first
trap '_stop_jobs' EXIT
_n=0

_stop_jobs() {
    local pid
    for pid in $(jobs -p); do kill -TERM -- "-$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}

_start() {  # READY COMMAND...: start COMMAND as a job, until a line matches READY
    local ready=$1 i
    shift
    _n=$((_n + 1))
    local log="$DOCS_LOGS/job-$_n.log"
    "$@" >"$log" 2>&1 &
    _last=$!
    echo "$_last" >>"$DOCS_LOGS/pids"
    for ((i = 0; i < 1200; i++)); do
        if grep -Eq "$ready" "$log"; then return 0; fi
        if ! kill -0 "$_last" 2>/dev/null; then
            echo "docs: '$*' ended before it was ready:" >&2
            cat "$log" >&2
            return 1
        fi
        sleep 0.05
    done
    echo "docs: '$*' did not say it was ready within a minute:" >&2
    cat "$log" >&2
    return 1
}

_until_ctrl_c() {  # READY DRAIN COMMAND...: ready, (a worker: store drained), Ctrl-C
    local ready=$1 drain=$2 status=0
    shift 2
    _start "$ready" "$@"
    if [ -n "$drain" ]; then _drained $drain; fi
    kill -INT "$_last"
    wait "$_last" || status=$?
    cat "$DOCS_LOGS/job-$_n.log" >&2
    if [ "$status" != 0 ]; then echo "docs: '$*' exited $status on Ctrl-C" >&2; return 1; fi
}

_drained() {  # MICROSAGA...: until the store holds nothing for a worker to run
    local i busy=""
    for ((i = 0; i < 300; i++)); do
        busy=$("$@" list --limit 10000 | grep -E ' (PENDING|RUNNING|COMPENSATING) ' || true)
        if [ -z "$busy" ]; then return 0; fi
        sleep 0.2
    done
    echo "docs: the worker did not run these: $busy" >&2
    return 1
}

_expect() {  # STATUS COMMAND...: COMMAND exits with STATUS
    local want=$1 got=0
    shift
    "$@" || got=$?
    if [ "$got" != "$want" ]; then
        echo "docs: '$*' exited $got, the page says $want" >&2
        return 1
    fi
}

curl() { command curl --fail-with-body --no-progress-meter "$@"; }
"""

# long-running commands: what their output says once they are ready
_READY = (
    (re.compile(r"^(\S+/)?microsaga\b.*\sworker(\s|$)"), "running executions"),
    (re.compile(r"^(\S+/)?microsaga\b.*\sserve(\s|$)"), "^serving http"),
    (re.compile(r"^(\S+/)?uvicorn\s"), "Uvicorn running on"),
    (re.compile(r"^(\S+/)?python3?\s+-m\s+shop\b"), "inventory on .* payments on"),
)
_BENCHMARK = re.compile(r"^\S*python[\d.]*\s+(benchmarks/\w+\.py)(.*)$")
_PIP_INSTALL = re.compile(r"^(\S*pip3?)\s+install\s+(.*)$")
_MAKE = re.compile(r"^make\s+(.*)$")
_EXIT_STATUS = re.compile(r"exit status (\d+)")
_SERVERS = {
    "nats://": ("NATS", 4222),
    "amqp://": ("RabbitMQ", 5672),
    "redis://": ("Redis", 6379),
    "postgresql://": ("PostgreSQL", 5432),
}
_TOOLS = ("nats", "curl")


@dataclass
class Command:
    """One command of a block (continuation lines joined), and its comment."""

    text: str
    comment: str = ""


@dataclass
class Plan:
    """What a block needs and the script that runs it."""

    script: str = ""
    servers: set[tuple[str, int]] = field(default_factory=set)
    tools: set[str] = field(default_factory=set)
    checked: list[str] = field(default_factory=list)  # checked, not run, and how


def _split_comment(line: str) -> tuple[str, str]:
    """A line's command and its comment (a ``#`` outside quotes, after a blank)."""
    quote = ""
    for i, char in enumerate(line):
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1 :].strip()
    return line.rstrip(), ""


def commands(block: Block) -> list[Command]:
    """The block's commands, in order; a comment line goes with the command below it."""
    found: list[Command] = []
    pending = ""
    above = ""
    for raw in block.text.splitlines():
        line = pending + raw
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        text, comment = _split_comment(line)
        if not text.strip():
            above = comment
            continue
        found.append(Command(text.strip(), " ".join(filter(None, (above, comment)))))
        above = ""
    return found


def map_ports(text: str, ports: dict[int, int]) -> str:
    """The doc's well-known ports replaced by this run's free ones."""
    return re.sub(r"(?<!\d)(8001|8002|8080)(?!\d)", lambda m: str(ports[int(m[1])]), text)


def _option_check(script: str, args: str) -> str:
    check_script_options(script, args)
    return f"{script}: exists and takes {args.strip() or 'no options'}"


def _make_check(args: str) -> tuple[str, str]:
    """``make ARGS``: the dry run, and what of it to run here (only ``make run``'s)."""
    done = subprocess.run(
        ["make", "-C", str(ROOT), "--no-print-directory", "-n", *shlex.split(args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"make -n {args}: {done.stderr}"
    if shlex.split(args) != ["run"]:
        return f"make {args}: make -n succeeds", ":"
    recipe = done.stdout.strip().splitlines()
    assert recipe, "make run has no recipe"
    assert recipe[0] == ".venv/bin/microsaga demo", (
        f"make run would do more than run the demo (is .venv older than pyproject.toml? "
        f"run make first): {recipe}"
    )
    return "make run: its recipe runs here", "\n".join(recipe)


def plan(block: Block, ports: dict[int, int]) -> Plan:
    """The script for ``block`` and what it needs."""
    out = Plan()
    lines = [PRELUDE]
    for server, where in _SERVERS.items():
        if server in block.text:
            out.servers.add(where)
    for command in commands(block):
        text = map_ports(command.text, ports)
        first = text.split()[0]
        if first in _TOOLS:
            out.tools.add(first)
        lines.append(f"echo {shlex.quote('$ ' + command.text)} >&2")
        lines.append(_line(text, command.comment, ports, out))
    out.script = "\n".join(lines) + "\n"
    return out


def _line(text: str, comment: str, ports: dict[int, int], out: Plan) -> str:
    background = text.endswith("&")
    bare = text.rstrip("&").rstrip()
    if (found := _BENCHMARK.match(bare)) is not None:
        out.checked.append(_option_check(found[1], found[2]))
        return ":"
    if (found := _PIP_INSTALL.match(bare)) is not None:
        out.checked.append(f"pip install {found[2]}: installed already")
        return f"{found[1]} install --dry-run --no-index --quiet {found[2]}"
    if (found := _MAKE.match(bare)) is not None:
        checked, run = _make_check(found[1])
        out.checked.append(checked)
        return run
    for pattern, ready in _READY:
        if pattern.search(bare):
            return _long_running(bare, ready, background, ports)
    status = _EXIT_STATUS.search(comment)
    if status is not None and status[1] != "0":
        return f"_expect {status[1]} {text}"
    return text


def _long_running(text: str, ready: str, background: bool, ports: dict[int, int]) -> str:
    words = text.split()
    if re.match(r"^(\S+=\S*\s+)+", text):  # VAR=value command: through env
        text = "env " + text
    if "serve" in words and "--port" not in words and "uvicorn" not in words[0]:
        text += f" --port {ports[8080]}"
    if background:
        return f"_start {shlex.quote(ready)} {text}"
    drain = ""
    if "worker" in words:  # its global options, to ask the same store what is left
        drain = " ".join(words[: words.index("worker")])
    return f"_until_ctrl_c {shlex.quote(ready)} {shlex.quote(drain)} {text}"


def workspace(root: Path, ports: dict[int, int]) -> Path:
    """A folder laid out like a fresh clone after ``make run``, its ports mapped."""
    root.mkdir(parents=True, exist_ok=True)
    (root / ".venv").symlink_to(VENV_BIN.parent, target_is_directory=True)
    shutil.copytree(
        ROOT / "examples", root / "examples", ignore=shutil.ignore_patterns("__pycache__", "*.db*")
    )
    for path in (root / "examples").rglob("*"):
        if path.suffix in (".py", ".yaml", ".json"):
            path.write_text(map_ports(path.read_text(encoding="utf-8"), ports), encoding="utf-8")
    (root / ".logs").mkdir()
    return root


def environment(work: Path, *, activates: bool) -> dict[str, str]:
    """A user's shell: no MICROSAGA_* settings, no PYTHONPATH; ``microsaga`` on PATH
    unless the block activates the virtualenv itself."""
    drop = ("MICROSAGA_", "PYTHONPATH", "VIRTUAL_ENV", "PYTEST_", "COV_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and Path(p) != VENV_BIN]
    if not activates:
        path.insert(0, str(VENV_BIN))
    env["PATH"] = os.pathsep.join(path)
    env["DOCS_LOGS"] = str(work / ".logs")
    env["DOCS_WORK"] = str(work)
    return env


def run(block: Block, script: str, work: Path, timeout: float = 240) -> tuple[int, str]:
    """Run ``script`` in ``work``; its exit status and output (stdout and stderr)."""
    (work / ".logs" / "block.sh").write_text(script, encoding="utf-8")
    env = environment(work, activates=".venv/bin/activate" in block.text)
    with open(work / ".logs" / "output", "wb") as sink:
        proc = subprocess.Popen(
            ["bash", str(work / ".logs" / "block.sh")],
            cwd=work,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            status = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            status = -1
        finally:
            _kill_left_over(proc, work)
    return status, (work / ".logs" / "output").read_text(encoding="utf-8", errors="replace")


def _kill_left_over(proc: subprocess.Popen[bytes], work: Path) -> None:
    """The script's process group and any job it left, found by the DOCS_WORK they
    inherited (a pid alone may have been reused)."""
    for pid in [proc.pid, *_recorded_pids(work)]:
        if pid == proc.pid or _is_ours(pid, work):
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    proc.wait()


def _recorded_pids(work: Path) -> Iterator[int]:
    pids = work / ".logs" / "pids"
    if pids.exists():
        for line in pids.read_text().split():
            yield int(line)


def _is_ours(pid: int, work: Path) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"DOCS_WORK={work}".encode() in environ.split(b"\0")
