"""Processes of this machine: whether one still runs, told from what it left behind.

A worker's lease and a participant's claim on an idempotency key name their holder.
When the holder is a process of this machine (the same boot, the same PID namespace:
:func:`machine`), whether its pid runs tells whether it died, and the lease or claim
can be taken at once instead of when it expires. Elsewhere nothing can be told.
"""

from __future__ import annotations

import functools
import hashlib
import os

__all__ = ["alive", "machine", "start_time"]


@functools.cache
def machine() -> str | None:
    """This boot of this machine and this PID namespace, hashed; None when unknown.

    Two processes with the same value see the same pids: a pid gone for one is gone.
    """
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            boot = f.read().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:  # not Linux, or no /proc
        return None
    return hashlib.blake2s(f"{boot}:{namespace}".encode(), digest_size=6).hexdigest()


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (the state first);
    None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rpartition(")")[2].split()
    except OSError:
        return None


def start_time(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks after boot; None when it is gone
    or a zombie, or when that cannot be told (no ``/proc``). With the pid it names one
    process of a boot: a pid reused by another program has another start time."""
    fields = _stat(pid)
    if fields is None or len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    try:
        return int(fields[19])  # field 22 of proc_pid_stat(5), the 20th after the name
    except ValueError:
        return None


def alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine runs (a zombie is dead, only not reaped
    yet). A pid that runs may have been reused by another program: True all the same."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    except (OverflowError, OSError):
        return True  # cannot tell: leave its leases to expire
    fields = _stat(pid)
    if fields is None:  # exited just now
        return False
    return fields[:1] not in (["Z"], ["X"])
