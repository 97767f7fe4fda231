"""microsaga on the benchmark workloads, printed as JSON (one run of each workload).

    python benchmarks/microsaga_bench.py --store sqlite:///bench.db [--quick] [--steps typed]

Stores: ``memory://``, ``sqlite:///PATH`` (``synchronous=FULL``), ``postgresql://...``.
Also measures plain asyncio calling the same four functions, the floor of overhead.
``--steps typed`` writes the order saga with ``@saga.step`` over functions of
msgspec Structs (the decorator form) instead of ``FunctionStep``s of Message functions;
``--steps sync`` makes every step function a plain ``def`` (run on the flow's threads),
what DBOS's sync API runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import msgspec
import workloads as w

from microsaga import ExecutionFailedError, Flow, FunctionStep, Message, Saga, Workflow


async def reserve(m: Message) -> Any:
    return w.reserve(m.json())


async def charge(m: Message) -> Any:
    return w.charge(m.json())


async def ship(m: Message) -> Any:
    return w.ship(m.json())


async def notify(m: Message) -> Any:
    return w.notify(m.json())


async def undo(m: Message) -> Any:
    return w.undo(m.json())


async def fan_root(m: Message) -> Any:
    return m.json()


def fan_part(k: int) -> FunctionStep:
    async def part(m: Message) -> Any:
        return w.fan_part(m.json(), k)

    return FunctionStep(part, id=f"part{k:02d}", requires=["root"])


async def fan_join(m: Message) -> Any:
    return {"parts": len(m.json())}


def order_steps() -> list[FunctionStep]:
    r = FunctionStep(reserve, compensate=FunctionStep(undo, id="release"))
    c = FunctionStep(charge, requires=[r], compensate=FunctionStep(undo, id="refund"))
    s = FunctionStep(ship, requires=[c])
    n = FunctionStep(notify, requires=[s])
    return [r, c, s, n]


# the same steps as plain functions (--steps sync) --------------------------------------


def sync_reserve(m: Message) -> Any:
    return w.reserve(m.json())


def sync_charge(m: Message) -> Any:
    return w.charge(m.json())


def sync_ship(m: Message) -> Any:
    return w.ship(m.json())


def sync_notify(m: Message) -> Any:
    return w.notify(m.json())


def sync_undo(m: Message) -> Any:
    return w.undo(m.json())


def sync_fan_root(m: Message) -> Any:
    return m.json()


def sync_fan_part(k: int) -> FunctionStep:
    def part(m: Message) -> Any:
        return w.fan_part(m.json(), k)

    return FunctionStep(part, id=f"part{k:02d}", requires=["root"])


def sync_fan_join(m: Message) -> Any:
    return {"parts": len(m.json())}


def sync_order_steps() -> list[FunctionStep]:
    r = FunctionStep(sync_reserve, id="reserve", compensate=FunctionStep(sync_undo, id="release"))
    c = FunctionStep(
        sync_charge, id="charge", requires=[r], compensate=FunctionStep(sync_undo, id="refund")
    )
    s = FunctionStep(sync_ship, id="ship", requires=[c])
    n = FunctionStep(sync_notify, id="notify", requires=[s])
    return [r, c, s, n]


def fanout_steps(steps: str) -> list[FunctionStep]:
    if steps == "sync":
        root, part, join = sync_fan_root, sync_fan_part, sync_fan_join
    else:
        root, part, join = fan_root, fan_part, fan_join
    return [
        FunctionStep(root, id="root"),
        *(part(k) for k in range(50)),
        FunctionStep(join, id="join", requires=[f"part{k:02d}" for k in range(50)]),
    ]


# the same order saga in the decorator form, typed ------------------------------------


class Item(msgspec.Struct):
    sku: str
    qty: int


class Order(msgspec.Struct, omit_defaults=True):
    order_id: int
    customer: str
    items: list[Item]
    total: float
    currency: str
    fail: bool = False
    reservation: str | None = None
    payment: str | None = None
    tracking: str | None = None


class Notice(msgspec.Struct):
    order_id: int
    sent: bool


typed = Saga("order")


@typed.step(compensate=FunctionStep(undo, id="release"), id="reserve")
async def typed_reserve(order: Order) -> Order:
    return msgspec.structs.replace(order, reservation=f"r-{order.order_id}")


@typed.step(requires=[typed_reserve], compensate=FunctionStep(undo, id="refund"), id="charge")
async def typed_charge(order: Order) -> Order:
    return msgspec.structs.replace(order, payment=f"p-{order.order_id}")


@typed.step(requires=[typed_charge], id="ship")
async def typed_ship(order: Order) -> Order:
    if order.fail:
        raise RuntimeError("no courier")
    return msgspec.structs.replace(order, tracking=f"t-{order.order_id}")


@typed.step(requires=[typed_ship], id="notify")
async def typed_notify(order: Order) -> Notice:
    return Notice(order.order_id, True)


async def in_flight(n: int, width: int, one: Any) -> float:
    sem = asyncio.Semaphore(width)

    async def go(i: int) -> None:
        async with sem:
            await one(i)

    start = time.perf_counter()
    await asyncio.gather(*(go(i) for i in range(n)))
    return time.perf_counter() - start


async def plain_asyncio(n: int, width: int) -> dict[str, float]:
    async def one(i: int) -> None:
        # Each step's input travels as a JSON Message, as it does between microsaga's
        # steps: that encoding is part of the work, the orchestration is not.
        data: Any = w.order(i)
        for fn in (reserve, charge, ship, notify):
            data = await fn(Message(data))

    elapsed = await in_flight(n, width, one)
    return {"order_saga_per_s": n / elapsed}


async def bench(
    store: str, n: int, one_at_a_time: int, fan: int, steps: str = "plain"
) -> dict[str, float]:
    out: dict[str, float] = {}
    async with Flow(store, concurrency=256) as flow:
        order: Workflow
        if steps == "typed":
            order = await flow.workflow_add(typed)
        elif steps == "sync":
            order = await flow.workflow_create("order", *sync_order_steps())
        else:
            order = await flow.workflow_create("order", *order_steps())
        fanout = await flow.workflow_create("fanout", *fanout_steps(steps))
        for i in range(50):  # warm-up
            await order.execute(w.order(i))

        elapsed = await in_flight(n, 64, lambda i: order.execute(w.order(i)))
        out["order_saga_per_s"] = n / elapsed

        lat = []
        for i in range(one_at_a_time):
            t0 = time.perf_counter()
            await order.execute(w.order(i))
            lat.append(time.perf_counter() - t0)
        lat.sort()
        out["one_p50_ms"] = statistics.median(lat) * 1000
        out["one_p99_ms"] = lat[int(len(lat) * 0.99) - 1] * 1000

        elapsed = await in_flight(fan, 8, lambda i: fanout.execute(w.order(i)))
        out["fanout_per_s"] = fan / elapsed

        async def maybe_fail(i: int) -> None:
            try:
                await order.execute(w.order(i, fail=i % 10 == 0))
            except ExecutionFailedError:
                pass

        elapsed = await in_flight(n, 64, maybe_fail)
        out["order_10pct_fail_per_s"] = n / elapsed
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", default="memory://")
    parser.add_argument("--quick", action="store_true", help="smaller counts, for a smoke run")
    parser.add_argument(
        "--steps",
        choices=["plain", "typed", "sync"],
        default="plain",
        help="FunctionSteps of async Message functions, @saga.step over typed "
        "functions, or FunctionSteps of plain (sync) functions",
    )
    args = parser.parse_args()
    n, one, fan = (200, 50, 10) if args.quick else (2000, 500, 100)
    if args.store == "asyncio":
        result = asyncio.run(plain_asyncio(n * 5, 64))
    else:
        result = asyncio.run(bench(args.store, n, one, fan, args.steps))
    contender = "asyncio" if args.store == "asyncio" else "microsaga"
    print(json.dumps({"contender": contender, "store": args.store, "steps": args.steps, **result}))


if __name__ == "__main__":
    main()
