"""Saying once that the store went away, and once that it is back."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from .errors import one_line

__all__ = ["StoreHealth"]

log = logging.getLogger("microsaga.store")


class StoreHealth:
    """What a worker and its committer say about the store's availability: one warning
    when it goes away, one when it is back with how long it was away, and nothing in
    between but debug records (a 75-second outage is two lines, not hundreds)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._since: float | None = None
        self._clock = clock
        self.failed_at = float("-inf")  # by ``clock`` (the flow's): the last failure

    @property
    def away(self) -> bool:
        return self._since is not None

    def failed(self, exc: BaseException) -> None:
        self.failed_at = self._clock()
        if self._since is None:
            self._since = time.monotonic()
            log.warning("store unavailable, retrying: %s", one_line(exc))
        else:
            log.debug("store still unavailable: %s", one_line(exc))

    def ok(self) -> None:
        if self._since is not None:
            away = time.monotonic() - self._since
            self._since = None
            log.warning("store available again after %.1f s", away)
