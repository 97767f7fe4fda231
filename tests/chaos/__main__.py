"""``python -m tests.chaos [SCENARIO ...] [--seed S] [--long]``: run chaos scenarios and
print one line of counters per scenario (``make chaos``).

The seed is printed first; the same seed replays the same choices (which worker is
killed, when, which requests the proxy hits), though not the same interleaving of
processes. A scenario whose server or privilege is missing is skipped with the reason,
and counts as a failure when ``CI`` is set. Exit status 1 when any counter that must be
0 is not, or a scenario could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import sys
import time

from tests.chaos.scenarios import SCENARIOS
from tests.chaos.servers import Unavailable


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # asyncio.run cancels the run: its servers and workers stop


def main() -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO", help="default: all")
    parser.add_argument("--seed", default=os.environ.get("CHAOS_SEED"), help="default: random")
    parser.add_argument("--long", action="store_true", help="the long version (documented)")
    parser.add_argument("--list", action="store_true", help="list the scenarios")
    args = parser.parse_args()
    if args.list:
        for name in SCENARIOS:
            print(name)
        return 0
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r}; known: {', '.join(SCENARIOS)}")
    seed = args.seed or str(random.SystemRandom().randrange(10**6))
    names = args.scenarios or list(SCENARIOS)
    print(f"chaos: seed {seed} ({'long' if args.long else 'short'} version)", flush=True)
    lines, failed = [], False
    for name in names:
        started = time.monotonic()
        try:
            report = asyncio.run(SCENARIOS[name].run(seed, args.long))
        except Unavailable as exc:
            failed |= bool(os.environ.get("CI"))
            lines.append(f"{name}: skipped ({exc})")
            print(lines[-1], flush=True)
            continue
        except Exception as exc:
            failed = True
            lines.append(f"{name}: error after {time.monotonic() - started:.0f} s: {exc!r}")
            print(lines[-1], flush=True)
            continue
        line = f"{report.line()}, {report.seconds:.0f} s"
        print(f"{line}\n  details: {report.details}", flush=True)
        if not report.counters.ok:
            failed = True
            for problem in report.counters.problems[:20]:
                print(f"  {problem}")
            print(f"  kept: {report.folder}")
        lines.append(line)
    print(f"--- chaos summary, seed {seed}")
    for line in lines:
        print(line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
