"""The ``microsaga`` command: run definitions, inspect and steer executions, run workers.

Errors are one line on stderr, ``error[CODE]: message``; the exit statuses are
``EXIT_STATUSES`` (shown by ``microsaga --help`` and the README).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, TypeVar

import click
import msgspec
from click.core import ParameterSource

from ._validate import check_id
from .definitions import load_definition
from .errors import (
    CodecError,
    ConfigurationError,
    MicrosagaError,
    MissingClientError,
    SchemaVersionError,
    StoreError,
    TransportError,
)
from .execution import Execution
from .flow import Flow, left_by_rollback
from .message import Message, huge_number, out_of_range
from .payloads import shows_encrypted
from .status import Status
from .steps import deferred_imports

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_SUSPENDED = 0, 1, 2, 3, 4
EXIT_INTERNAL = 70  # EX_SOFTWARE of sysexits.h
# what each exit status means: the epilog of `microsaga --help`, in the README's words
EXIT_STATUSES = (
    "Exit status: 0 success, 1 the execution failed or was aborted, 2 bad usage, "
    "definition, setting, unknown or conflicting id, a store of a newer microsaga, "
    "3 store or transport unavailable, "
    "4 the execution run waited for was suspended, 70 an internal error (a bug: please "
    "report it), 130 (143) run stopped by Ctrl-C (SIGTERM), its execution left to a worker."
)
STEP_ONLY = (Status.WAITING, Status.SKIPPED, Status.COMPENSATED)  # no execution has them

log = logging.getLogger("microsaga.cli")
_json_check = msgspec.json.Decoder(msgspec.Raw)
T = TypeVar("T")


class Exit(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


def _exit_code(exc: MicrosagaError) -> int:
    if isinstance(exc, SchemaVersionError):  # no retry mends it: upgrade microsaga
        return EXIT_USAGE
    if isinstance(exc, StoreError | TransportError):
        return EXIT_UNAVAILABLE
    if exc.code == "execution_failed":
        return EXIT_FAILED
    return EXIT_USAGE


MAX_ERROR = 1000  # characters of an error line: a message may quote a huge input


def _fail(code: str, message: str) -> None:
    text = " ".join(message.split())
    if len(text) > MAX_ERROR:
        text = f"{text[: MAX_ERROR - 30]}... ({len(text)} characters)"
    click.echo(f"error[{code}]: {text}", err=True)


def _run_async(fn: Callable[[], Coroutine[Any, Any, int]]) -> None:
    raise Exit(asyncio.run(fn()))


def _flow(ctx: click.Context, *, observed: bool = False, **extra: Any) -> Flow:
    """The flow of a command; ``observed``: with the hooks of :func:`_observers`."""
    opts = ctx.obj  # settled by _Command.invoke
    if observed:
        extra["hooks"] = _observers(metrics=extra.pop("metrics", False))
    return Flow(opts["store"], services=opts["services"], broker=opts["broker"], **extra)


def _import_from(folder: str) -> None:
    """Put ``folder`` first on the import path unless it is on it already.

    ``python -m microsaga`` has the current folder on ``sys.path``, the ``microsaga``
    script has its own ``bin`` folder instead: this makes the two import a definition's
    ``function:`` steps (``shop.notify:send_email``) from the same places."""
    path = os.path.abspath(folder)
    if path not in sys.path:
        sys.path.insert(0, path)


def _definition_file(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """``run FILE``: FILE's folder goes on the import path ahead of the current one, as
    ``python FILE`` puts its script's, so the modules beside a definition import."""
    _import_from(os.path.dirname(value) or os.curdir)
    return value


def _observers(*, metrics: bool) -> list[Any]:
    """Tracing when OpenTelemetry is installed (its no-op tracer unless a tracer
    provider is configured, by ``opentelemetry-instrument`` say), and Prometheus
    metrics when asked for and prometheus-client is installed."""
    from .errors import ConfigurationError
    from .observability import Metrics, Tracing

    hooks: list[Any] = []
    try:
        hooks.append(Tracing())
    except ConfigurationError:
        pass  # not installed: nothing traced, nothing imported
    if metrics:
        try:
            hooks.append(Metrics())
        except ConfigurationError:
            pass
    return hooks


def _services(value: str | None) -> dict[str, str] | None:
    if not value:
        return None
    from .settings import check_services, parse_services

    return check_services(parse_services(value, "--services"), "--services")


STORE_HELP = "Store URL (default: MICROSAGA_STORE, sqlite)."


def _settings(store_help: str = STORE_HELP) -> list[click.Option]:
    """microsaga's own options, of ``microsaga`` and of each command: given before the
    command, after it, or both (then the one after it wins)."""
    return [
        click.Option(["--store"], help=store_help),
        click.Option(["--services"], help="Service addresses: JSON object or name=url,name=url."),
        click.Option(["--broker"], help="Broker URL (nats://, amqp://, redis://, memory://)."),
        click.Option(["-v", "--verbose"], is_flag=True, help="Log what workers do."),
        click.Option(
            ["--log-format"],
            type=click.Choice(["text", "json"]),
            default="text",
            show_default=True,
            help="Log lines as text, or one JSON object a line (docs/observability.md).",
        ),
    ]


SETTINGS = [str(option.name) for option in _settings()]  # store, services, ..., log_format


def _settle(ctx: click.Context, given: dict[str, Any]) -> None:
    """Configure logging and check the store, services and broker, from the settings
    given after the command, else before it; ``ctx.obj`` holds them for :func:`_flow`."""
    before = ctx.find_root().params
    settings = {
        name: value if ctx.get_parameter_source(name) is not ParameterSource.DEFAULT
        else before[name]
        for name, value in given.items()
    }  # fmt: skip
    from .observability.logs import configure_logging
    from .settings import broker_url, check_variable_names, store_url

    level = logging.INFO if settings["verbose"] else logging.WARNING
    configure_logging(settings["log_format"], level, sys.stderr)
    check_variable_names(os.environ)
    store, broker = settings["store"], settings["broker"]
    ctx.obj = {
        "store": store_url(store, "--store") if store is not None else None,
        "services": _services(settings["services"]),
        "broker": broker_url(broker, "--broker") if broker is not None else None,
    }


class _Command(click.Command):
    """A command that takes microsaga's own options (:func:`_settings`) too."""

    def __init__(self, *args: Any, store_help: str = STORE_HELP, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.extend(_settings(store_help))

    def invoke(self, ctx: click.Context) -> Any:
        _settle(ctx, {name: ctx.params.pop(name) for name in SETTINGS})
        return super().invoke(ctx)


class _Group(click.Group):
    command_class = _Command


@click.group(
    cls=_Group,
    params=_settings(),
    context_settings={"help_option_names": ["-h", "--help"]},
    invoke_without_command=True,
    epilog=EXIT_STATUSES,
)
@click.version_option(package_name="microsaga")
@click.pass_context
def cli(ctx: click.Context, /, **_given: Any) -> None:
    """Durable sagas for Python microservices.

    The modules that function: steps name import from the current folder, as with
    python -m, and for run from FILE's folder before it. --store, --services, --broker,
    -v and --log-format go before the command or after it (after it wins if both)."""
    if ctx.invoked_subcommand is None:  # one line, not the whole help as an error
        assert isinstance(ctx.command, click.Group)
        commands = ", ".join(sorted(ctx.command.commands))
        raise click.UsageError(f"missing command, one of: {commands} (see microsaga --help)")
    # for function steps, as `python -m` does; before `run FILE` puts FILE's folder
    # ahead of it. The settings given here are settled with the command's (_settle).
    _import_from(os.curdir)


class _Text(click.ParamType[str]):
    """Text that can be stored: an argument of bytes that are not UTF-8 is refused
    here, naming it, rather than failing deep in a store."""

    name = "text"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        try:
            text.encode()
        except UnicodeEncodeError:  # bytes that are not UTF-8 in argv come as surrogates
            self.fail("not valid UTF-8 text", param, ctx)
        return text


TEXT = _Text()


def _parse_input(text: str | None, option: str = "--input") -> Message:
    if text is None:
        return Message()
    if text.startswith("@"):
        try:
            with open(text[1:], "rb") as fh:
                raw = fh.read()
        except OSError as exc:
            raise ConfigurationError(option, f"cannot read {text[1:]}: {exc.strerror}") from None
        raw = raw.removeprefix(codecs.BOM_UTF8)  # as Windows editors save; JSON may skip it
    else:
        try:
            raw = text.encode()
        except UnicodeEncodeError:  # bytes that are not UTF-8 in argv come as surrogates
            raise ConfigurationError(option, "not valid UTF-8 text") from None
    if not raw.strip():  # msgspec would say "Input data was truncated"
        if text.startswith("@"):
            raise ConfigurationError(
                option, f"the file {text[1:]} is empty; it must hold JSON, such as '{{}}'"
            )
        raise ConfigurationError(option, "empty; it must be JSON, such as '{}'")
    try:  # strict JSON, as participants read it: no NaN, no lone surrogates, any depth
        _json_check.decode(raw)
    except msgspec.DecodeError as exc:
        hint = ""
        if not text.startswith("@") and os.path.isfile(text):
            hint = f"; to read the file {text}, write {option} @{text}"
        raise ConfigurationError(option, f"not valid JSON: {exc}{hint}") from None
    except RecursionError:
        raise ConfigurationError(option, "not valid JSON: nested too deeply") from None
    huge = huge_number(raw)
    if huge is not None:
        raise ConfigurationError(option, out_of_range(huge))
    return Message(raw)


@contextlib.contextmanager
def _as_options(**options: str) -> Iterator[None]:
    """A ConfigurationError of the flow's that names an argument (``input``) named as
    the command line option that gave it (``--input``)."""
    try:
        yield
    except ConfigurationError as exc:
        if exc.setting not in options:
            raise
        raise ConfigurationError(options[exc.setting], exc.reason) from None


def _seconds(value: float | None, option: str) -> float | None:
    if value is not None and not (value > 0):  # NaN included
        raise ConfigurationError(option, f"must be a positive number of seconds, not {value!r}")
    return value


def _status(value: str | None) -> Status | None:
    if value is None:
        return None
    found = Status.lookup(value)
    if found is None:
        raise ConfigurationError("--status", f"unknown status {value!r}")
    if found in STEP_ONLY:
        raise ConfigurationError(
            "--status",
            f"{found.name} is a status of steps, not of executions (an execution "
            "waiting for a signal, a timer or a child is RUNNING; `show` says what it "
            "waits for)",
        )
    return found


def _stop_on_signals() -> list[int]:
    """On SIGINT or SIGTERM, cancel the running task; the list returned then holds the
    signal's number."""
    received: list[int] = []
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None

    def stop(signum: int) -> None:
        received.append(signum)
        task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop, sig)
    return received


async def _unless_halted(flow: Flow, work: Awaitable[T]) -> T:
    """``work`` (following an execution for ``run``, a signal for ``worker``), unless
    the flow's worker stops on its own first (a newer release migrated the store):
    then raise why, as :meth:`Flow.join` does (SchemaVersionError: exit status 2). When
    both end in the same turn of the loop, the halt wins: a worker stopped by a signal
    just as its store was migrated must still say to upgrade, not exit 0."""
    done = asyncio.ensure_future(work)
    joined = asyncio.ensure_future(flow.join())
    try:
        await asyncio.wait([done, joined], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (done, joined):
            task.cancel()
        # the live display is closed before anything else is printed
        await asyncio.gather(done, joined, return_exceptions=True)
    if joined.done() and not joined.cancelled():
        joined.result()  # raises why the worker stopped
        raise AssertionError("join returns only by raising")
    return done.result()


def _outcome_code(status: Status) -> int:
    return EXIT_FAILED if status in (Status.FAILURE, Status.ABORTED) else EXIT_OK


@cli.command()
@click.argument("file", callback=_definition_file)
@click.option("--input", "input_", help="The request: JSON text, or @FILE.")
@click.option("--async", "async_", is_flag=True, help="Queue it for a worker; print the id.")
@click.option("--execution-id", help="Your id for the execution (idempotency key).")
@click.option("--timeout", type=float, help="Per-step timeout in seconds.")
@click.option("--deadline", type=float, help="Seconds for the whole execution.")
@click.pass_context
def run(
    ctx: click.Context,
    file: str,
    input_: str | None,
    async_: bool,
    execution_id: str | None,
    timeout: float | None,
    deadline: float | None,
) -> None:
    """Run the workflow defined in FILE (JSON or YAML), showing its steps live."""
    request = _parse_input(input_)
    if execution_id is not None:
        check_id(execution_id, "--execution-id")
    timeout = _seconds(timeout, "--timeout")
    deadline = _seconds(deadline, "--deadline")
    if async_:  # the workers import the functions, where the steps run
        with deferred_imports():
            wf = load_definition(file)
    else:
        wf = load_definition(file)

    async def main() -> int:
        from ._progress import progress_console

        console = progress_console()
        stopped_by: list[int] = []  # the signal that stopped `run`, if one did
        info: Execution | None = None  # the execution as it stopped, once it did
        try:
            # without --async it runs its own execution, and only that one: it does not
            # claim what other processes queued (a worker does)
            async with _flow(ctx, observed=True, worker=not async_, claim=False) as flow:
                await flow.workflow_add(wf)
                await flow.workflow_save(wf)
                eid = await wf.execute(
                    request,
                    async_=True,
                    execution_id=execution_id,
                    timeout=timeout,
                    deadline=deadline,
                )
                if async_:
                    click.echo(eid)
                    return EXIT_OK

                from ._progress import follow

                # Ctrl-C or SIGTERM from here on: stop following, and the flow hands the
                # execution back as a stopping worker does (a second one: at once)
                stopped_by = _stop_on_signals()
                order = [s.id for level in wf.steps() for s in level]
                try:
                    info = await _unless_halted(flow, follow(flow, eid, console, order))
                except SchemaVersionError as exc:  # a newer release migrated the store
                    if not console.is_terminal:
                        console.print()  # the cut-off live display ends without a newline
                    click.echo(eid)
                    _fail(
                        exc.code,
                        f"{exc}; execution {eid} is left to the workers of the newer "
                        f"microsaga: `microsaga show {eid}` follows it",
                    )
                    return _exit_code(exc)
                # steps still running here finish before we exit (a worker halted
                # meanwhile has waited for them already)
                with contextlib.suppress(SchemaVersionError):
                    await flow.settle(eid)
        except asyncio.CancelledError:
            if not stopped_by:
                raise
            task = asyncio.current_task()
            while task is not None and task.uncancel():
                pass
            if info is None and not console.is_terminal:
                console.print()  # the cut-off live display ends without a newline
        click.echo(eid)
        if info is None:  # a signal came before the execution stopped
            _fail(
                "interrupted",
                f"execution {eid} goes on without this process: a worker (`microsaga "
                f"worker`) continues it, or rolls it back after `microsaga abort {eid}`",
            )
            return 128 + stopped_by[0]
        # a signal after the execution stopped cut only the wait for its last steps
        if info.status is Status.SUSPEND and info.error:  # the failure policy "suspend"
            _fail(
                "suspended",
                f"execution {eid} is suspended: {info.error}; `microsaga redrive {eid} "
                "[--step STEP] [--input JSON]` runs it again, and a worker (`microsaga "
                f"worker`) continues it, or `microsaga abort {eid}` rolls it back",
            )
            return EXIT_SUSPENDED
        if info.status is Status.SUSPEND:
            _fail(
                "suspended",
                f"execution {eid} is suspended: `microsaga resume {eid}`, and a worker "
                "(`microsaga worker`) continues it",
            )
            return EXIT_SUSPENDED
        if info.status is Status.FAILURE:
            _fail("execution_failed", f"execution {eid} failed: {info.error or 'failed'}")
        elif info.status is Status.ABORTED:
            _fail("execution_aborted", f"execution {eid} aborted: {info.error or 'aborted'}")
        return _outcome_code(info.status)

    _run_async(main)


@cli.command("list")
@click.option("--workflow", type=TEXT, help="Only executions of this workflow.")
@click.option("--status", type=TEXT, help="Only executions with this status (RUNNING, FAILURE...).")
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
@click.option("--before", type=TEXT, help="Page back: executions older than this id.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array (the API's fields).")
@click.pass_context
def list_(
    ctx: click.Context,
    workflow: str | None,
    status: str | None,
    limit: int,
    before: str | None,
    as_json: bool,
) -> None:
    """List executions, newest first."""
    wanted = _status(status)

    async def main() -> int:
        async with _flow(ctx, worker=False) as flow:
            # the listing shows no step: their runs are not read (a map's may be 10,000)
            found = await flow.executions(workflow, wanted, limit, before, steps=False)
        if as_json:
            from .api.models import summary_json

            click.echo(json.dumps([summary_json(info) for info in found], indent=2))
            return EXIT_OK
        # columns as wide as their widest value here: ids of --execution-id and
        # workflow ids have any length
        id_width = max((len(info.id) for info in found), default=0)
        wf_width = max((len(info.workflow_id) for info in found), default=0)
        wf_width = max(wf_width, 20)
        for info in found:
            created = info.created_at.isoformat(timespec="seconds")
            said = info.error or info.note
            tail = f"  {said}" if said else ""
            click.echo(
                f"{info.id:<{id_width}}  {info.workflow_id:<{wf_width}} "
                f"{info.status.name:<13} {created}{tail}"
            )
        return EXIT_OK

    _run_async(main)


@cli.command()
@click.argument("execution_id", type=TEXT)
@click.option("--json", "as_json", is_flag=True, help="Print the execution as JSON.")
@click.option(
    "--all", "all_runs", is_flag=True, help="A line for every run of a map, however many."
)
@click.pass_context
def show(ctx: click.Context, execution_id: str, as_json: bool, all_runs: bool) -> None:
    """Show one execution: its steps, statuses, attempts, errors, timings."""

    async def main() -> int:
        from .api.models import execution_json

        async with _flow(ctx, worker=False) as flow:
            info = await flow.execution(execution_id)
            # the executions redriving this one, for a line of their own
            redrives = [] if as_json else await flow.executions(redrive_of=execution_id)
            step_ids = None
            if not as_json:
                from ._progress import collapses

                # many steps named like a map's runs: the definition says if they are
                if collapses(info, all_runs):
                    found = await flow.store.definition_of(execution_id)
                    step_ids = found[1].step_ids if found is not None else None
            # read again, in full, only when something shows as "[encrypted]"
            unread = await _why_encrypted(flow, execution_id) if shows_encrypted(info) else None
        if as_json:
            click.echo(json.dumps(execution_json(info), indent=2))
        else:
            from ._progress import show_lines

            for line in show_lines(info, [x.id for x in redrives], all_runs, step_ids):
                click.echo(line)
        if unread is not None:  # after what it explains; JSON alone on stdout
            click.echo(f'encrypted  shown as "[encrypted]": {unread}', err=as_json)
        return EXIT_OK

    _run_async(main)


async def _why_encrypted(flow: Flow, execution_id: str) -> str | None:
    """Why ``show`` prints ``"[encrypted]"``: the first value the CLI cannot decrypt
    (the key id missing, say), read as a worker reads it; None when it can (a body
    that is that text)."""
    try:
        await flow.store.load(execution_id)
    except CodecError as exc:
        if exc.code == "codec_key_unknown":
            return f"{exc} (give this process the key: MICROSAGA_CODEC_KEYS)"
        return str(exc)
    return None


def _control(action: str, doc: str) -> Callable[..., None]:
    @click.argument("execution_id", type=TEXT)
    @click.pass_context
    def command(ctx: click.Context, /, execution_id: str, **kw: Any) -> None:
        async def main() -> int:
            async with _flow(ctx, worker=False) as flow:
                method: Callable[..., Awaitable[None]] = getattr(flow, action)
                if action == "abort":
                    await method(execution_id, compensate=not kw.get("no_compensate"))
                else:
                    await method(execution_id)
                found = await flow.store.get_status(execution_id)
            status = found[0].name if found else "?"
            click.echo(f"{execution_id} {status}")
            return EXIT_OK

        _run_async(main)

    command.__doc__ = doc
    return command


@cli.command()
@click.argument("execution_id", type=TEXT)
@click.option("--step", type=TEXT, help="Only this failed step (a suspended execution).")
@click.option("--input", "input_", help="The new request: JSON text, or @FILE.")
@click.pass_context
def redrive(ctx: click.Context, execution_id: str, step: str | None, input_: str | None) -> None:
    """Run a failed execution again, with an edited input if given.

    A SUSPEND execution whose step failed (failure policy "suspend") runs its failed
    step (or --step) again with --input as its request, and carries on: prints its
    id. A FAILURE or ABORTED execution is started anew, from the start, with its
    request or --input: prints the new execution's id, and on stderr the old one's
    steps that its rollback did not undo (their effects stay). A worker (microsaga
    worker or serve) runs it. A sub-workflow's finished child is refused: redrive its
    parent (or the parent's step)."""
    body = _parse_input(input_).body if input_ is not None else None

    async def main() -> int:
        async with _flow(ctx, worker=False) as flow:
            with _as_options(input="--input", step="--step"):
                eid = await flow.redrive(execution_id, step=step, input=body)
            found = await flow.store.get_status(eid)
            # started anew: what the old execution's rollback left runs a second time
            left = [] if eid == execution_id else await left_by_rollback(flow, execution_id)
        click.echo(f"{eid} {found[0].name if found else '?'}")
        if left:
            click.echo(
                f"note: {execution_id} was not fully rolled back: steps {', '.join(left)} "
                f"were not undone, their effects stay; {eid} runs every step again",
                err=True,
            )
        return EXIT_OK

    _run_async(main)


@cli.command("signal")
@click.argument("execution_id", type=TEXT)
@click.argument("event", type=TEXT)
@click.option("--payload", help="The signal's payload: JSON text, or @FILE.")
@click.pass_context
def signal_(ctx: click.Context, execution_id: str, event: str, payload: str | None) -> None:
    """Deliver EVENT to an execution: its WaitStep for EVENT succeeds with --payload as
    its response (kept for the step when it has not started yet). Prints the
    execution's id and status."""
    message = _parse_input(payload, "--payload")

    async def main() -> int:
        async with _flow(ctx, worker=False) as flow:
            with _as_options(event="EVENT", payload="--payload"):
                await flow.signal(execution_id, event, message)
            found = await flow.store.get_status(execution_id)
        click.echo(f"{execution_id} {found[0].name if found else '?'}")
        return EXIT_OK

    _run_async(main)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(value: str, option: str = "--older-than") -> float:
    """``30d``, ``12h``, ``15m``, ``90s`` (or plain seconds) as seconds."""
    text = value.strip()
    number, unit = (text[:-1], text[-1]) if text[-1:] in _UNITS else (text, "s")
    try:
        seconds = float(number) * _UNITS[unit]
    except ValueError:
        seconds = -1.0
    if not seconds >= 0 or seconds == float("inf"):
        raise ConfigurationError(
            option, f"must be a duration such as 30d, 12h, 15m or 90s, not {value!r}"
        )
    return seconds


@cli.command()
@click.option("--older-than", required=True, help="Finished more than this ago: 30d, 12h...")
@click.option(
    "--status", "statuses", type=TEXT, multiple=True, help="Only these: SUCCESS, FAILURE, ABORTED."
)
@click.pass_context
def prune(ctx: click.Context, older_than: str, statuses: tuple[str, ...]) -> None:
    """Delete finished executions (with their steps), keeping the recent ones.
    Running, suspended and waiting executions are never deleted."""
    seconds = _duration(older_than)
    wanted = [_status(s) for s in statuses] or None
    if wanted is not None and any(
        s not in (Status.SUCCESS, Status.FAILURE, Status.ABORTED) for s in wanted
    ):
        raise ConfigurationError("--status", "must be SUCCESS, FAILURE or ABORTED (finished)")

    async def main() -> int:
        async with _flow(ctx, worker=False) as flow:
            count = await flow.prune(seconds, status=wanted)
        click.echo(f"pruned {count} executions")
        return EXIT_OK

    _run_async(main)


cli.command("suspend")(_control("suspend", "Suspend an execution: no new steps start."))
cli.command("resume")(
    _control(
        "resume",
        "Resume a suspended execution (or retry a failed rollback); a worker "
        "(microsaga worker or serve) runs it on.",
    )
)
cli.command("abort")(
    click.option("--no-compensate", is_flag=True, help="Stop without rolling back.")(
        _control(
            "abort",
            "Abort an execution and roll back what it did: the process running it does, "
            "else a worker (microsaga worker or serve).",
        )
    )
)


@cli.command()
@click.option("--concurrency", type=click.IntRange(1, 100_000), help="Steps running at once.")
@click.option(
    "--id",
    "worker_id",
    type=TEXT,
    help="A stable worker id (default MICROSAGA_WORKER_ID, else one made of the host, "
    "pid and machine): restarted under the same id, the worker takes back its "
    "unfinished executions at once. Dead workers of this machine are detected "
    "anyway; a stable id helps across machines and containers.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    help="Serve Prometheus metrics at http://HOST:PORT/metrics (microsaga[prometheus]).",
)
@click.option(
    "--metrics-host", default="127.0.0.1", show_default=True, help="Address of --metrics-port."
)
@click.option(
    "--retention",
    help="Delete executions finished more than this ago (30d, 12h...), once a minute, "
    "as prune does (default: keep them).",
)
@click.pass_context
def worker(
    ctx: click.Context,
    concurrency: int | None,
    worker_id: str | None,
    metrics_port: int | None,
    metrics_host: str,
    retention: str | None,
) -> None:
    """Run executions from the store until stopped (SIGINT or SIGTERM)."""
    if worker_id is not None and not worker_id.strip():
        raise ConfigurationError("--id", f"must be a non-empty string, not {worker_id!r}")
    kept = None if retention is None else _duration(retention, "--retention")
    if kept == 0:
        raise ConfigurationError("--retention", f"must be longer than 0, not {retention!r}")
    server = None
    if metrics_port is not None:
        from .observability import Metrics, serve_metrics

        Metrics()  # fails now, naming the extra, when prometheus-client is missing
        server = serve_metrics(metrics_port, metrics_host)
        port = server.server_address[1]
        click.echo(f"metrics on http://{metrics_host}:{port}/metrics", err=True)

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with _flow(
            ctx,
            observed=True,
            metrics=server is not None,
            worker=True,
            concurrency=concurrency,
            worker_id=worker_id,
            **({} if kept is None else {"retention": kept}),
        ) as flow:
            from .api.serve import shown_store

            click.echo(
                f"worker {flow.worker_id} on {shown_store(flow.store.url)}: running executions",
                err=True,
            )
            await _unless_halted(flow, stop.wait())
            click.echo("worker stopping: unfinished executions go to other workers", err=True)
        if server is not None:
            server.shutdown()
        return EXIT_OK

    # the flow names its worker_id argument: here it came from --id or the environment
    with _as_options(worker_id="--id" if worker_id is not None else "MICROSAGA_WORKER_ID"):
        _run_async(main)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--no-worker", is_flag=True, help="Serve only: workers elsewhere run executions.")
@click.option("--token-file", help="File holding the API token (default: MICROSAGA_API_TOKEN).")
@click.option("--max-body", default="10MB", show_default=True, help="Largest request body.")
@click.pass_context
def serve(
    ctx: click.Context,
    host: str,
    port: int,
    no_worker: bool,
    token_file: str | None,
    max_body: str,
) -> None:
    """Serve the HTTP API, the dashboard and /metrics (docs/api.md); run a worker too
    unless --no-worker. Without a token, only on a loopback address."""
    from .api.serve import serve as serve_api

    _run_async(
        lambda: serve_api(
            lambda: _flow(ctx, observed=True, metrics=True, worker=not no_worker),
            host=host,
            port=port,
            token_file=token_file,
            max_body=max_body,
        )
    )


DEMO_STORE = "sqlite:///microsaga-demo.db"


@cli.command(store_help=f"Store URL (default: MICROSAGA_STORE, else {DEMO_STORE}).")
@click.pass_context
def demo(ctx: click.Context) -> None:
    """Run the order saga twice: one run succeeds, one fails and is compensated.

    It serves its own two services, so --services does not apply to it."""
    from ._progress import progress_console
    from .demo import run_demo
    from .settings import store_url

    store = ctx.obj["store"]
    if store is None and not os.environ.get("MICROSAGA_STORE", "").strip():
        # its own file when no store is set: the demo should not write into the
        # default store of your own workflows
        store = store_url(DEMO_STORE)
    _run_async(lambda: run_demo(store, progress_console(), hooks=_observers(metrics=False)))


def _how_to_mend(exc: MicrosagaError) -> str:
    """What the command line can do about ``exc``, when that is plain."""
    if exc.code == "payload_too_large":
        return " (the limit is the setting MICROSAGA_MAX_PAYLOAD)"
    if not isinstance(exc, MissingClientError):
        return ""
    if "broker" in str(exc):
        return "; set one with --broker or MICROSAGA_BROKER (memory:// inside this process)"
    return "; give its address in the definition's services:, --services or MICROSAGA_SERVICES"


def main(argv: list[str] | None = None) -> None:
    """Entry point: never a traceback, always an exit status."""
    code = EXIT_OK
    try:
        cli.main(args=argv, prog_name="microsaga", standalone_mode=False)
    except Exit as done:
        code = done.code
    except click.exceptions.Exit as done:
        code = done.exit_code
    except click.Abort:
        _fail("interrupted", "interrupted")
        code = 130
    except click.ClickException as exc:
        _fail("usage", exc.format_message())
        code = EXIT_USAGE
    except MicrosagaError as exc:
        _fail(exc.code, str(exc) + _how_to_mend(exc))
        code = _exit_code(exc)
    except KeyboardInterrupt:
        _fail("interrupted", "interrupted; unfinished executions resume in any worker")
        code = 130
    except Exception as exc:  # the last line of defence: one line, not a traceback
        if os.environ.get("MICROSAGA_DEBUG"):
            raise
        _fail("internal", f"{type(exc).__name__}: {exc} (set MICROSAGA_DEBUG=1 for details)")
        code = EXIT_INTERNAL
    sys.exit(code)
