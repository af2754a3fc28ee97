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


class _Partition:
    """One partition's items and counters; every field is guarded by ``lock``."""

    __slots__ = (
        "busy",
        "failed",
        "flushed",
        "inserted",
        "lock",
        "ready",
        "ready_seq",
        "ring",
        "taken",
        "threshold",
        "wake",
    )

    def __init__(self, threshold: int, wake: Callable[[], object]) -> None:
        self.lock = threading.Lock()
        self.ring: deque[Any] = deque()
        self.threshold = threshold
        # A batch has been handed to the flusher and has not finished.
        self.busy = False
        # A batch sealed by an insert, waiting for the flusher to take it.
        self.ready: list[Any] | None = None
        self.ready_seq = 0
        self.inserted = 0
        self.taken = 0
        self.flushed = 0
        self.failed = 0
        self.wake = wake


class BufferCore:
    """Storage and counters of a buffer: a ring of items per partition."""

    _core_parts: tuple[_Partition, ...] = ()
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
        self._core_rr = itertools.count()
        self._core_n = partitions
        self._core_parts = tuple(_Partition(self._draw(), wakers[p]) for p in range(partitions))

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
        self._insert_raw(item, timeout)

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

    def _insert_raw(self, item: Any, timeout: float | None) -> int:
        if timeout is not None:
            self._check_timeout(timeout)  # type: ignore[attr-defined]
        p = next(self._core_rr) % self._core_n
        part = self._core_parts[p]
        with part.lock:
            if self._core_closed:
                raise self._closed_error()  # type: ignore[attr-defined]
            if self._store(part, item):
                return p
        self._insert_wait(p, item, timeout)  # type: ignore[attr-defined]
        return p

    def _insert_batch_raw(self, items: Iterable[Any], timeout: float | None) -> tuple[int, int]:
        if timeout is not None:
            self._check_timeout(timeout)  # type: ignore[attr-defined]
        seq = items if type(items) is list or type(items) is tuple else list(self._iterate(items))  # type: ignore[attr-defined]
        n = len(seq)
        if self._core_closed:
            raise self._closed_error()  # type: ignore[attr-defined]
        if n == 0:
            return -1, 0
        p = next(self._core_rr) % self._core_n
        done = self._push_many(p, seq, 0)
        if done < n:
            self._insert_batch_wait(p, seq, done, timeout)  # type: ignore[attr-defined]
        return p, n

    def _store(self, part: _Partition, item: Any) -> bool:
        """Append under ``part.lock``; False when the partition is full."""
        ring = part.ring
        if len(ring) >= part.threshold:
            if part.busy:
                return False
            self._seal(part)
        ring.append(item)
        part.inserted += 1
        if len(ring) >= part.threshold and not part.busy:
            self._seal(part)
        return True

    def _seal(self, part: _Partition) -> None:
        """Hand a full batch to the idle flusher (under ``part.lock``)."""
        part.ready_seq = part.taken
        part.ready = self._drain(part, part.threshold)
        part.busy = True
        try:
            part.wake()
        except RuntimeError:
            pass  # the waker is a released lock: a wake is pending already

    def _drain(self, part: _Partition, limit: int) -> list[Any]:
        ring = part.ring
        k = min(len(ring), limit)
        popleft = ring.popleft
        batch = [popleft() for _ in range(k)]
        part.taken += k
        part.threshold = self._draw()
        return batch

    # -- used by the Python layer -----------------------------------------

    def _push_many(self, p: int, seq: Sequence[Any], start: int) -> int:
        """Store ``seq[start:]`` in partition ``p`` while there is room.

        Returns the index of the first item not stored.
        """
        part = self._core_parts[p]
        n = len(seq)
        i = start
        with part.lock:
            if self._core_closed:
                raise self._closed_error(start)  # type: ignore[attr-defined]
            while i < n:
                if not self._store(part, seq[i]):
                    break
                i += 1
        return i

    def _take(self, p: int, upto: int) -> tuple[list[Any], bool, int] | None:
        """Give the flusher its next batch, or None once it is idle.

        Returns ``(batch, by_size, first_seq)``.  A batch is due when one
        was sealed, when the ring is full, or when items before sequence
        number ``upto`` (a flush request) are still in the ring.
        """
        part = self._core_parts[p]
        with part.lock:
            if part.ready is not None:
                batch, part.ready = part.ready, None
                return batch, True, part.ready_seq
            size = len(part.ring)
            first = part.taken
            if size and size >= part.threshold:
                part.busy = True
                return self._drain(part, part.threshold), True, first
            if size and first < upto:
                part.busy = True
                return self._drain(part, part.threshold), False, first
            part.busy = False
            return None

    def _finish(self, p: int, n: int, ok: bool) -> None:
        """Count a finished batch of ``n`` items as flushed or failed."""
        part = self._core_parts[p]
        with part.lock:
            if ok:
                part.flushed += n
            else:
                part.failed += n

    def _is_closed(self) -> bool:
        return self._core_closed

    def _mark_closed(self) -> None:
        """Refuse every later insert."""
        for part in self._core_parts:
            part.lock.acquire()
        try:
            self._core_closed = True
        finally:
            for part in self._core_parts:
                part.lock.release()

    def _stats(self, p: int) -> tuple[int, int, bool, int, int, int, int]:
        """``(size, threshold, busy, inserted, taken, flushed, failed)``."""
        part = self._core_parts[p]
        with part.lock:
            return (
                len(part.ring),
                part.threshold,
                part.busy,
                part.inserted,
                part.taken,
                part.flushed,
                part.failed,
            )

    def _size(self) -> int:
        return sum(len(part.ring) for part in self._core_parts)

    def _dump(self) -> list[Any]:
        out: list[Any] = []
        for part in self._core_parts:
            with part.lock:
                out.extend(part.ring)
        return out
