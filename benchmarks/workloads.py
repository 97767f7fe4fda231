"""The benchmark workloads, shared by every contender: plain functions on ~100-byte JSON.

(a) order saga: 4 steps in a chain; (b) the same one at a time; (c) fan-out 1 -> 50 -> 1;
(d) the order saga where 10 % of executions fail at the third step and are compensated.
"""

from __future__ import annotations

from typing import Any

ORDER = {
    "order_id": 0,
    "customer": "c-0042",
    "items": [{"sku": "sku-1", "qty": 2}],
    "total": 42.5,
    "currency": "EUR",
}


def order(i: int, fail: bool = False) -> dict[str, Any]:
    return {**ORDER, "order_id": i, "fail": fail}


def reserve(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "reservation": f"r-{data['order_id']}"}


def charge(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "payment": f"p-{data['order_id']}"}


def ship(data: dict[str, Any]) -> dict[str, Any]:
    if data.get("fail"):
        raise RuntimeError("no courier")
    return {**data, "tracking": f"t-{data['order_id']}"}


def notify(data: dict[str, Any]) -> dict[str, Any]:
    return {"order_id": data["order_id"], "sent": True}


def undo(data: dict[str, Any]) -> dict[str, Any]:
    return {"undone": True}


def fan_part(data: dict[str, Any], k: int) -> dict[str, Any]:
    return {"part": k, "order_id": data["order_id"]}
