"""``python -m shop``: both services in one process, until Ctrl-C."""

import asyncio
import contextlib

from .inventory import inventory
from .payments import payments


async def main() -> None:
    async with inventory.serve(port=8001) as at, payments.serve(port=8002) as pt:
        print(f"inventory on {at}, payments on {pt}", flush=True)
        await asyncio.Event().wait()  # serve until stopped


with contextlib.suppress(KeyboardInterrupt):
    asyncio.run(main())
