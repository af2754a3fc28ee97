"""``Notifier``: the threaded engine's one way to wait for something to change.

Why not ``threading.Condition``: its ``__enter__``, ``wait`` and ``notify``
are Python code around its lock.  A signal handler (Ctrl-C's
``KeyboardInterrupt``) can raise just after the lock was acquired and before
the ``with`` block is entered, leaking the lock for good; and a finalizer
(``__del__``, run by the cyclic GC at any allocation or, from 3.12, at any
call) that waits or notifies on the same condition in the same thread
deadlocks on it.

A ``Notifier`` holds no lock while anyone waits, and its own lock is taken
only in ``with`` statements (a C lock's ``__enter__`` cannot be interrupted
before the block is entered).  Inside them, the state is consistent at every
point where a signal handler or a finalizer can run (after a call), and the
lock is re-entrant, so a finalizer running there may wait or notify too.

Every wait re-checks its condition: read ``epoch`` first, then check the
condition, then ``wait(seen, ...)``.  A notify bumps the epoch after the
change it announces, so a change between the check and the wait makes the
wait return at once: no wake-up is lost to a race.  One can be lost to an
interrupt (a Ctrl-C landing in a notify between taking its waiters and
releasing them) or delayed by a finalizer that waits inside one of the
blocks: so no wait sleeps longer than ``STEP`` before its caller checks
again.
"""

from __future__ import annotations

import threading
from _thread import allocate_lock
from collections import deque
from operator import methodcaller
from typing import Any

__all__ = ("Notifier",)

_release = methodcaller("release")

#: The longest one wait sleeps (seconds); callers loop and check again.
STEP = 1.0


class Notifier:
    """Wake threads waiting for a change (an event count; see the module docstring)."""

    __slots__ = ("_epoch", "_mutex", "_waiters")

    def __init__(self) -> None:
        # Guards _waiters and the writes of _epoch (read without it).
        self._mutex = threading.RLock()
        # One lock per waiting thread, held until a notify releases it.
        self._waiters: list[allocate_lock] = []  # type: ignore[valid-type]
        self._epoch = 0

    @property
    def epoch(self) -> int:
        """Read it before checking the condition waited for; pass it to ``wait``."""
        # Under the lock: what the notify announced is then visible too,
        # on a free-threaded build as well.
        with self._mutex:
            return self._epoch

    @property
    def waiting(self) -> int:
        """How many threads wait (for tests and ``info``; racy)."""
        return len(self._waiters)

    def wait(self, seen: int, timeout: float) -> bool:
        """Sleep until a notify after ``seen`` was read, or ``timeout`` seconds (at most ``STEP``).

        Returns whether it was notified (or had been already).  Callers
        check their condition again either way.
        """
        waiter = allocate_lock()
        waiter.acquire()
        entry = (waiter,)  # made here: nothing in the block below allocates or calls
        with self._mutex:
            if self._epoch != seen:
                return True
            self._waiters += entry
        woken = False
        try:
            woken = waiter.acquire(True, min(max(timeout, 0.0), STEP))
        finally:
            if not woken:
                with self._mutex:
                    if waiter in self._waiters:
                        self._waiters.remove(waiter)
        return woken

    def notify(self) -> None:
        """Wake every waiter; a wait that starts later with an older ``epoch`` returns at once."""
        fresh: list[Any] = []  # made here: nothing allocates before the swap below
        with self._mutex:
            self._epoch += 1
            waiters = self._waiters
            if not waiters:
                return
            self._waiters = fresh
            # Each waiter's lock is released once: taken from the list
            # under the lock.  The releases are one C call, which nothing
            # interrupts midway.
            deque(map(_release, waiters), maxlen=0)
