"""Rendering executions for the terminal: live progress (stderr) and ``show`` (stdout)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, NamedTuple

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ._aio import wait_event
from .errors import ExecutionNotFoundError
from .execution import Execution, StepRun, guessed_steps, notable, run_of
from .hooks import ExecutionEvent, Hook, StepEvent
from .message import Message
from .status import Status

if TYPE_CHECKING:
    from .flow import Flow

__all__ = [
    "MAP_ROWS",
    "collapses",
    "follow",
    "progress_console",
    "progress_table",
    "show_lines",
]

MAP_ROWS = 20
"""A map with more runs than this shows them as one line of counts by status, with its
failed and compensating runs listed (up to ``_LISTED`` of them) below it."""
_LISTED = 5


def progress_console() -> Console:
    """The console for live progress: stderr, and wide enough when it is not a terminal
    (rich assumes 80 columns then, too few for step ids and errors)."""
    console = Console(stderr=True)
    if not console.is_terminal:
        console = Console(stderr=True, width=140)
    return console


_STYLE = {
    Status.PENDING: "dim",
    Status.RUNNING: "bold cyan",
    Status.SUCCESS: "green",
    Status.FAILURE: "bold red",
    Status.COMPENSATING: "yellow",
    Status.COMPENSATED: "yellow",
    Status.ABORTED: "magenta",
    Status.SUSPEND: "blue",
}


def _seconds(run: StepRun) -> str:
    return f"{run.duration:.3f}s" if run.duration is not None else ""


class _Runs(NamedTuple):
    """A line standing for runs of a map: ``step`` and ``status`` cells and a text."""

    step: str
    status: str
    text: str


def _counts(runs: Sequence[StepRun]) -> str:
    """``9,400 SUCCESS, 500 RUNNING; undo: 20 COMPENSATED``."""

    def text(counted: Counter[Status]) -> str:
        return ", ".join(f"{n:,} {status.name}" for status, n in sorted(counted.items()))

    done = Counter(run.status for run in runs)
    undo = Counter(run.compensation.status for run in runs if run.compensation is not None)
    return text(done) + (f"; undo: {text(undo)}" if undo else "")


def _grouped(
    ids: Sequence[str],
    steps: Mapping[str, StepRun],
    known: Collection[str],
    all_runs: bool,
    hint: str,
) -> list[str | _Runs]:
    """``ids`` in their order, except that the runs of a map with more than
    :data:`MAP_ROWS` of them (unless ``all_runs``) become, at the place of its first
    run: a line of counts, its notable runs (a few), and a line for the others not
    listed (``hint`` says how to see them)."""
    of = {sid: found[0] for sid in ids if (found := run_of(sid, known)) is not None}
    runs: dict[str, list[str]] = {}
    for sid, map_id in of.items():
        runs.setdefault(map_id, []).append(sid)
    big = {} if all_runs else {m: r for m, r in runs.items() if len(r) > MAP_ROWS}
    out: list[str | _Runs] = []
    for sid in ids:
        head = of.get(sid)
        if head is None or head not in big:
            out.append(sid)
        elif sid == big[head][0]:
            listed = big[head]
            noted = [r for r in listed if notable(steps[r])]
            noted.sort(key=lambda r: int(r[r.rindex("[") + 1 : -1]))
            out.append(
                _Runs(f"{head}[*]", f"{len(listed):,} runs", _counts([steps[r] for r in listed]))
            )
            out.extend(noted[:_LISTED])
            if len(noted) > _LISTED:
                more = len(noted) - _LISTED
                out.append(
                    _Runs(f"{head}[*]", f"{more:,} more", f"failed or undoing, not listed: {hint}")
                )
    return out


def progress_table(
    info: Execution, order: Iterable[str] | None = None, all_runs: bool = False
) -> Table:
    """The live table of ``run``: a row per step, a map's runs right after it, and
    a map of more than :data:`MAP_ROWS` runs collapsed (unless ``all_runs``)."""
    title = Text.assemble(
        (f"{info.workflow_id} ", "bold"),
        (info.id, "dim"),
        "  ",
        (info.status.name, _STYLE.get(info.status, "")),
    )
    table = Table(title=title, title_justify="left", expand=False)
    table.add_column("step", no_wrap=True)
    table.add_column("status", no_wrap=True, min_width=11)
    table.add_column("tries", justify="right", no_wrap=True)
    table.add_column("time", justify="right", no_wrap=True)
    table.add_column("undo", no_wrap=True, min_width=7)
    table.add_column("error", no_wrap=True, overflow="ellipsis", max_width=60)
    # the execution's own steps: a re-joined execution id may belong to another
    # definition than the one in hand
    known = [sid for sid in order or () if sid in info.steps]
    runs: dict[str, list[str]] = {}  # a map's runs, shown right after it (as show does)
    rest: list[str] = []
    for sid in info.steps:
        if sid not in known:
            of = run_of(sid, known)
            (runs.setdefault(of[0], []) if of is not None else rest).append(sid)
    shown = [row for step_id in known for row in (step_id, *runs.get(step_id, ()))]
    hint = "see `microsaga show --all`"
    for row in _grouped(shown + rest, info.steps, known, all_runs, hint):
        if isinstance(row, _Runs):
            table.add_row(Text(row.step), Text(row.status), "", "", "", Text(row.text))
            continue
        sid = row
        run = info.steps[sid]
        comp = run.compensation
        # Text, not str: rich reads a str cell as markup, and step ids and errors come
        # from users and remote services ("[declined] ..." would vanish)
        table.add_row(
            Text(sid),
            Text(run.status.name, _STYLE.get(run.status, "")),
            str(run.attempts or ""),
            _seconds(run),
            Text(comp.status.name, _STYLE.get(comp.status, "")) if comp else "",
            Text((comp.error if comp and comp.error else run.error) or ""),
        )
    return table


class _Changes(Hook):
    """Sets ``changed`` when a step or the status of one execution changes here."""

    def __init__(self, execution_id: str) -> None:
        self.execution_id = execution_id
        self.changed = asyncio.Event()

    def _seen(self, event: ExecutionEvent | StepEvent) -> None:
        if event.execution_id == self.execution_id:
            self.changed.set()

    execution_status = step_started = step_finished = step_recorded = _seen


async def follow(flow: Flow, execution_id: str, console: Console, order: list[str]) -> Execution:
    """Show the execution's steps live until it stops; returns its final state.

    Redrawn when the flow's hooks see a change of the execution (it runs here), and at
    least every half second (it runs in another process)."""
    changes = _Changes(execution_id)
    flow.add_hook(changes)

    async def state() -> Execution:
        # read as stored, not redacted (flow.execution): the table shows no headers,
        # and redacting every run of a large map at each redraw is most of its cost
        found = await flow.store.get_execution(execution_id)
        if found is None:
            raise ExecutionNotFoundError(execution_id)
        return found

    try:
        info = await state()
        with Live(progress_table(info, order), console=console, refresh_per_second=10) as live:
            while not info.status.stopped:
                await wait_event(changes.changed, 0.5)
                changes.changed.clear()
                await asyncio.sleep(0.05)  # a burst of changes makes one redraw
                info = await state()
                live.update(progress_table(info, order))
        info = await flow.execution(execution_id)  # what the caller sees of it
    finally:
        flow.remove_hook(changes)
    if not console.is_terminal:
        console.print()  # a Live display off a terminal ends without a newline
    return info


def _shown_body(message: Message) -> str:
    """A body on one line of ``show``: its first 200 characters."""
    text = message.body.decode("utf-8", "replace")
    return text if len(text) <= 200 else text[:199] + "…"


def collapses(info: Execution, all_runs: bool = False) -> bool:
    """Whether :func:`show_lines` without the definition's step ids would make one line
    of more than :data:`MAP_ROWS` steps read as a map's runs: only then does it need
    them (one more read of the store)."""
    if all_runs:
        return False
    known = guessed_steps(info.steps)
    counts = Counter(found[0] for sid in info.steps if (found := run_of(sid, known)))
    return any(n > MAP_ROWS for n in counts.values())


def show_lines(
    info: Execution,
    redriven_by: Sequence[str] = (),
    all_runs: bool = False,
    step_ids: Collection[str] | None = None,
) -> list[str]:
    """``show``: plain lines, one per step, grep-friendly; ``redriven_by``: the ids of
    the executions that redrive this one, newest first. A map of more than
    :data:`MAP_ROWS` runs is one line of counts and its failed runs, unless
    ``all_runs``. ``step_ids``: the definition's, which tell a map's runs from steps
    named like them (``x[0]`` beside a step ``x``); without them (see
    :func:`collapses`) the ids alone are read."""

    def when(run: StepRun) -> str:
        return run.started_at.isoformat(timespec="milliseconds") if run.started_at else "-"

    def stamp(at: datetime | None) -> str | None:
        return at.isoformat(timespec="milliseconds") if at is not None else None

    version = f" v{info.version}" if info.version else ""
    fields = [  # a line each, those with a value
        ("execution", info.id),
        ("workflow", info.workflow_id + version),
        ("status", info.status.name),
        ("created", stamp(info.created_at)),
        ("updated", stamp(info.updated_at)),
        ("parent", info.parent_id),
        ("redrive of", info.redrive_of),
        ("redriven by", ", ".join(redriven_by) or None),
        ("deadline", stamp(info.deadline_at)),
        ("request", _shown_body(info.request)),
        ("error", info.error or None),
        ("note", info.note or None),
        ("response", _shown_body(info.response) if info.response is not None else None),
    ]
    lines = [f"{label:<10} {value}" for label, value in fields if value is not None]
    table = Table(box=None, pad_edge=False, show_edge=False, padding=(0, 2, 0, 0))
    for name in ("STEP", "STATUS", "ATTEMPTS", "STARTED", "TIME", "ERROR"):
        table.add_column(name, no_wrap=True, overflow="fold")
    known = set(step_ids) if step_ids is not None else guessed_steps(info.steps)
    hint = f"`microsaga show {info.id} --all` lists every run"
    for row in _grouped(list(info.steps), info.steps, known, all_runs, hint):
        if isinstance(row, _Runs):
            table.add_row(Text(row.step), row.status, "-", "-", "-", Text(row.text))
            continue
        sid, run = row, info.steps[row]
        rows = [(sid, run)]
        if run.compensation is not None:
            rows.append(("  compensation", run.compensation))
        for label, shown in rows:
            table.add_row(
                Text(label),
                shown.status.name,
                str(shown.attempts),
                when(shown),
                _seconds(shown) or "-",
                Text(shown.error or ""),
            )
    console = Console(width=10_000, no_color=True, highlight=False)
    with console.capture() as captured:
        console.print(table)
    lines.append("")
    lines.extend(line.rstrip() for line in captured.get().splitlines())
    return lines
