"""Pure-Python core: the reference implementation of ``databuffer._core``.

Both cores expose the same class, ``BufferCore``, which ``Buffer`` inherits
from.  The core owns the buffered items and the counters; the Python layer
(``databuffer._buffer``) owns threads, timers, waiting and callbacks.  The
core calls back into the layer through four methods that the layer defines:
``_insert_wait``, ``_insert_batch_wait``, ``_insert_instrumented``,
``_insert_batch_instrumented``, ``_closed_error``, ``_check_timeout`` and
``_iterate``.

Per partition the items move ring -> batch (handed to the flusher) ->
finished.  Sequence counters count items, in insertion order:
``taken`` items have left the ring, ``flushed + failed`` have finished.
"""

from __future__ import annotations

import itertools
import random
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = ("BufferCore", "insert_telemetry", "set_insert_telemetry")

# Whether any telemetry handler listens to insert events.  Written by
# databuffer.telemetry under its registry lock, read racily by inserts (a
# stale read only delays the switch by one call).
_insert_events = False


def set_insert_telemetry(enabled: bool) -> None:
    """Route inserts through the instrumented path (True) or the plain one."""
    global _insert_events
    _insert_events = bool(enabled)


def insert_telemetry() -> bool:
    """Whether inserts currently emit telemetry events."""
    return _insert_events


_NEVER = object()  # a sentinel no deque ever returns

# On a free-threaded interpreter, itertools.cycle is not safe to advance
# from several threads at once; the dispatcher then takes a lock.
_GIL_DISABLED = not getattr(sys, "_is_gil_enabled", lambda: True)()


class _Ring(deque):  # type: ignore[type-arg]
    """One partition: its buffered items (the deque itself) and its fields.

    Appends need no lock: ``deque.append`` is atomic, and ``insert`` appends
    first and checks afterwards (see ``BufferCore.insert``).  Items leave
    only from the left, and only under ``lock``, which also guards every
    other field.  ``limit`` (``threshold``, or 0 once the buffer is closed)
    is read without the lock as a hint; every decision made on it is taken
    again under the lock.
    """

    __slots__ = (
        "busy",
        "failed",
        "flushed",
        "limit",
        "lock",
        "partition",
        "ready",
        "ready_seq",
        "taken",
        "threshold",
        "wake",
    )

    def __init__(self, partition: int, threshold: int, wake: Callable[[], object]) -> None:
        super().__init__()
        # Not "index": that would hide deque.index().
        self.partition = partition
        self.lock = threading.Lock()
        self.threshold = threshold
        self.limit = threshold
        # A batch has been handed to the flusher and has not finished.
        self.busy = False
        # A batch sealed by an insert, waiting for the flusher to take it.
        self.ready: list[Any] | None = None
        self.ready_seq = 0
        self.taken = 0
        self.flushed = 0
        self.failed = 0
        self.wake = wake


class BufferCore:
    """Storage and counters of a buffer: a ring of items per partition."""

    _core_parts: tuple[_Ring, ...] = ()
    # Written under every partition's lock (_mark_closed); read without one.
    _core_closed = False

    def _core_init(
        self,
        partitions: int,
        max_size: int,
        max_size_jitter: int,
        wakers: Sequence[Callable[[], object]],
    ) -> None:
        if self._core_parts:
            raise RuntimeError("the buffer core is already initialised")
        self._core_max_size = max_size
        self._core_jitter = max_size_jitter
        self._core_random = random.Random()
        self._core_n = partitions
        self._core_parts = tuple(_Ring(p, self._draw(), wakers[p]) for p in range(partitions))
        self._core_next = itertools.cycle(self._core_parts).__next__
        if _GIL_DISABLED:
            self._core_next = _locked(self._core_next)

    def _draw(self) -> int:
        if self._core_jitter:
            return self._core_max_size + self._core_random.randint(0, self._core_jitter)
        return self._core_max_size

    # -- hot path ---------------------------------------------------------

    def insert(self, item: Any, timeout: float | None = None) -> None:
        """Store one item in the next partition (round-robin).

        Waits under backpressure for at most ``timeout`` seconds (``None``:
        the buffer's ``insert_timeout``), then raises ``BufferFull`` having
        stored nothing.  Raises ``BufferClosed`` after ``close()``.
        """
        if _insert_events:
            self._insert_instrumented(item, timeout)  # type: ignore[attr-defined]
            return
        if timeout is not None:
            self._check_timeout(timeout)  # type: ignore[attr-defined]
        ring = self._core_next()
        if len(ring) < ring.limit:
            # Append first, check afterwards: a full ring or a close (limit
            # 0) seen after the append is dealt with under the lock.
            ring.append(item)
            if len(ring) >= ring.limit:
                self._appended(ring, item)
            return
        self._store_locked(ring, item, timeout)

    def insert_batch(self, items: Iterable[Any], timeout: float | None = None) -> None:
        """Store every item of an iterable, in order, in one partition.

        A batch larger than the flush threshold is split into consecutive
        flushes.  If room runs out for longer than ``timeout`` seconds,
        raises ``BufferFull`` whose ``stored`` counts the leading items
        stored.
        """
        if _insert_events:
            self._insert_batch_instrumented(items, timeout)  # type: ignore[attr-defined]
            return
        self._insert_batch_raw(items, timeout)

    def _appended(self, ring: _Ring, item: Any) -> None:
        """After a lock-free append: undo it if the buffer closed, seal a full ring."""
        with ring.lock:
            if self._core_closed:
                # _mark_closed ran after the append, or before it: the item
                # is either still in the ring (take it back out and refuse
                # it) or already taken by the closing flush (it is stored).
                # Only this call's own append can be the identical object
                # appended after the closing flush, so removing the last
                # occurrence by identity is exact.
                for i in range(len(ring) - 1, -1, -1):
                    if ring[i] is item:
                        del ring[i]
                        raise self._closed_error()  # type: ignore[attr-defined]
                return
            if len(ring) >= ring.threshold and not ring.busy:
                self._seal(ring)

    def _store_locked(self, ring: _Ring, item: Any, timeout: float | None) -> None:
        with ring.lock:
            if self._core_closed:
                raise self._closed_error()  # type: ignore[attr-defined]
            if self._store(ring, item):
                return
        self._insert_wait(ring.partition, item, timeout)  # type: ignore[attr-defined]

    def _insert_raw(self, item: Any, timeout: float | None) -> int:
        if timeout is not None:
            self._check_timeout(timeout)  # type: ignore[attr-defined]
        ring = self._core_next()
        self._store_locked(ring, item, timeout)
        return ring.partition

    def _insert_batch_raw(self, items: Iterable[Any], timeout: float | None) -> tuple[int, int]:
        if timeout is not None:
            self._check_timeout(timeout)  # type: ignore[attr-defined]
        seq = items if type(items) is list or type(items) is tuple else list(self._iterate(items))  # type: ignore[attr-defined]
        n = len(seq)
        if self._core_closed:
            raise self._closed_error()  # type: ignore[attr-defined]
        if n == 0:
            return -1, 0
        p = self._core_next().partition
        done = self._push_many(p, seq, 0)
        if done < n:
            self._insert_batch_wait(p, seq, done, timeout)  # type: ignore[attr-defined]
        return p, n

    def _store(self, ring: _Ring, item: Any) -> bool:
        """Append under ``ring.lock``; False when the partition is full."""
        if len(ring) >= ring.threshold:
            if ring.busy:
                return False
            self._seal(ring)
        ring.append(item)
        if len(ring) >= ring.threshold and not ring.busy:
            self._seal(ring)
        return True

    def _seal(self, ring: _Ring) -> None:
        """Hand a full batch to the idle flusher (under ``ring.lock``)."""
        ring.ready_seq = ring.taken
        ring.ready = self._drain(ring, ring.threshold)
        ring.busy = True
        try:
            ring.wake()
        except RuntimeError:
            pass  # the waker is a released lock: a wake is pending already

    def _drain(self, ring: _Ring, limit: int) -> list[Any]:
        """Move the ``limit`` oldest items (or all) out of the ring (under ``ring.lock``)."""
        k = min(len(ring), limit)
        batch = list(itertools.islice(iter(ring.popleft, _NEVER), k))
        ring.taken += k
        ring.threshold = self._draw()
        if not self._core_closed:
            ring.limit = ring.threshold
        return batch

    # -- used by the Python layer -----------------------------------------

    def _push_many(self, p: int, seq: Sequence[Any], start: int) -> int:
        """Store ``seq[start:]`` in partition ``p`` while there is room.

        Returns the index of the first item not stored.
        """
        ring = self._core_parts[p]
        n = len(seq)
        i = start
        with ring.lock:
            if self._core_closed:
                raise self._closed_error(start)  # type: ignore[attr-defined]
            while i < n:
                room = ring.threshold - len(ring)
                if room <= 0:
                    if ring.busy:
                        break
                    self._seal(ring)
                    continue
                # One extend per chunk: atomic against lock-free appends,
                # so a chunk stays contiguous in the ring.
                stop = min(n, i + room)
                ring.extend(seq[i:stop])
                i = stop
                if len(ring) >= ring.threshold and not ring.busy:
                    self._seal(ring)
        return i

    def _take(self, p: int, upto: int) -> tuple[list[Any], bool, int] | None:
        """Give the flusher its next batch, or None once it is idle.

        Returns ``(batch, by_size, first_seq)``.  A batch is due when one
        was sealed, when the ring is full, or when items before sequence
        number ``upto`` (a flush request) are still in the ring.
        """
        ring = self._core_parts[p]
        with ring.lock:
            if ring.ready is not None:
                batch, ring.ready = ring.ready, None
                return batch, True, ring.ready_seq
            size = len(ring)
            first = ring.taken
            if size and size >= ring.threshold:
                ring.busy = True
                return self._drain(ring, ring.threshold), True, first
            if size and first < upto:
                ring.busy = True
                return self._drain(ring, ring.threshold), False, first
            ring.busy = False
            return None

    def _finish(self, p: int, n: int, ok: bool) -> None:
        """Count a finished batch of ``n`` items as flushed or failed."""
        ring = self._core_parts[p]
        with ring.lock:
            if ok:
                ring.flushed += n
            else:
                ring.failed += n

    def _is_closed(self) -> bool:
        return self._core_closed

    def _mark_closed(self) -> None:
        """Refuse every later insert."""
        for ring in self._core_parts:
            ring.lock.acquire()
        try:
            self._core_closed = True
            for ring in self._core_parts:
                ring.limit = 0
        finally:
            for ring in self._core_parts:
                ring.lock.release()

    def _stats(self, p: int) -> tuple[int, int, bool, int, int, int, int]:
        """``(size, threshold, busy, inserted, taken, flushed, failed)``.

        ``inserted`` is ``taken + size``: an append refused because the
        buffer closed is taken back out, so it never counts.
        """
        ring = self._core_parts[p]
        with ring.lock:
            size = len(ring)
            return (
                size,
                ring.threshold,
                ring.busy,
                ring.taken + size,
                ring.taken,
                ring.flushed,
                ring.failed,
            )

    def _size(self) -> int:
        return sum(len(ring) for ring in self._core_parts)

    def _dump(self) -> list[Any]:
        out: list[Any] = []
        for ring in self._core_parts:
            with ring.lock:
                out.extend(_snapshot(ring))
        return out


def _snapshot(ring: _Ring) -> list[Any]:
    """The items of ``ring``, while other threads may append to it.

    Copying iterates the deque, which raises RuntimeError when an append
    lands mid-copy (another thread, or a __del__ run by the GC): try again.
    """
    while True:
        try:
            return list(ring)
        except RuntimeError:
            continue


def _locked(step: Callable[[], _Ring]) -> Callable[[], _Ring]:
    lock = threading.Lock()

    def locked_step() -> _Ring:
        with lock:
            return step()

    return locked_step
