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
before the block is entered) and is re-entrant, so a finalizer running
inside it does not deadlock.  Whatever interrupts a wait or a notify leaves
at most a stale waiter behind, which the next notify releases.

Every wait re-checks its condition: read ``epoch`` first, then check the
condition, then ``wait(seen, ...)``.  A notify bumps the epoch after the
change it announces, so a change between the check and the wait makes the
wait return at once: no wake-up is ever lost.
"""

from __future__ import annotations

import threading
from _thread import allocate_lock
from collections import deque
from operator import methodcaller

__all__ = ("Notifier",)

_release = methodcaller("release")


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
        """Sleep until a notify after ``seen`` was read, or ``timeout`` seconds (>= 0).

        Returns whether it was notified (or had been already).  Callers
        check their condition again either way.
        """
        waiter = allocate_lock()
        waiter.acquire()
        with self._mutex:
            if self._epoch != seen:
                return True
            self._waiters.append(waiter)
        woken = False
        try:
            woken = waiter.acquire(True, timeout)
        finally:
            if not woken:
                with self._mutex:
                    if waiter in self._waiters:
                        self._waiters.remove(waiter)
        return woken

    def notify(self) -> None:
        """Wake every waiter; a wait that starts later with an older ``epoch`` returns at once."""
        with self._mutex:
            self._epoch += 1
            waiters = self._waiters
            if not waiters:
                return
            self._waiters = []
            # One C call: nothing can interrupt it between two releases,
            # and each waiter's lock is released once (taken from the list
            # under the lock).
            deque(map(_release, waiters), maxlen=0)
