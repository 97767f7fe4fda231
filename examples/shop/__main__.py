"""``python -m shop``: both services in one process, until Ctrl-C."""

import asyncio
import contextlib
import sys

from microsaga import MicrosagaError

from .inventory import inventory
from .payments import payments


async def main() -> None:
    async with inventory.serve(port=8001) as at, payments.serve(port=8002) as pt:
        print(f"inventory on {at}, payments on {pt}", flush=True)
        await asyncio.Event().wait()  # serve until stopped


try:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
except MicrosagaError as exc:  # a port in use, most likely: say so in one line
    sys.exit(f"error[{exc.code}]: {exc} (is `python -m shop` running already?)")
