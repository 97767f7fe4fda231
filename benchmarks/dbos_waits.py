"""DBOS's fan-out to child workflows, the peer of microsaga's 1 -> N -> 1 map in
``waits.py``: one workflow starts N child workflows (``DBOS.start_workflow``) and
joins their results, one execution at a time. Printed as JSON.

    benchmarks/.venv-dbos/bin/python benchmarks/dbos_waits.py --store sqlite:///d.db

Runs in DBOS's own virtualenv (made by ``run.py``), never in microsaga's.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dbos import DBOS, DBOSConfig
from dbos_bench import use_wal

WIDTH = 1000


@DBOS.step()
def root(data: dict[str, Any]) -> list[int]:
    return list(range(data["width"]))


@DBOS.step()
def part(k: int) -> dict[str, int]:
    return {"part": k}


@DBOS.workflow()
def child(k: int) -> dict[str, int]:
    return part(k)


@DBOS.workflow()
def fan_out(data: dict[str, Any]) -> int:
    handles = [DBOS.start_workflow(child, k) for k in root(data)]
    return len([h.get_result() for h in handles])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", required=True)
    parser.add_argument("--width", type=int, default=WIDTH)
    parser.add_argument("--count", type=int, default=3, help="executions, one at a time")
    args = parser.parse_args()
    if args.store.startswith("sqlite:///"):
        use_wal(args.store)
    config: DBOSConfig = {
        "name": "microsaga-bench-waits",
        "system_database_url": args.store,
        "log_level": "WARNING",
    }
    DBOS(config=config)
    DBOS.launch()
    logging.getLogger("dbos").setLevel(logging.CRITICAL)
    try:
        times = []
        for _ in range(args.count):
            started = time.perf_counter()
            assert fan_out({"width": args.width}) == args.width
            times.append(time.perf_counter() - started)
    finally:
        DBOS.destroy()
    print(json.dumps({"contender": "dbos", "width": args.width, "seconds": times}))


if __name__ == "__main__":
    main()
