"""Pure-Python core: the reference implementation of ``databuffer._core``.

Both cores define the same two classes.  ``Core`` owns the buffered items
and the counters (``CoreAPI`` in ``databuffer._contract``); the engine
(``databuffer._threaded`` or ``databuffer._asyncio``) owns threads or
tasks, timers, waiting and callbacks, and the core calls it back through
``Core.hooks`` (``CoreHooks``): ``insert_wait``, ``insert_batch_wait``,
``insert_instrumented``, ``insert_batch_instrumented``, ``closed_error``,
``check_timeout``, ``iterate``, ``attend`` (called by one insert after
``set_attention``) and, when the core was made with ``seal_hook=True``,
``sealed(p)``: called after each seal, with no partition lock held
(``AsyncBuffer`` wakes its flusher task on the event loop from there).
``BufferCore`` is the base of ``Buffer`` and ``AsyncBuffer``: ``insert``
and ``insert_batch`` over the ``Core`` in its one slot, ``_databuffer``.

The core also owns each partition's wake-up of its flusher thread: the
engine's flusher sleeps in ``wait_wake(p)``; a sealing insert, and the
engine itself (flush requests, close), wake it with ``wake(p)``.

Per partition the items move ring -> sealed batch (queued for the
flusher) -> taken by the flusher -> finished.  Sequence counters count
items, in insertion order: ``taken`` items have been sealed or handed to
the flusher, ``flushed + failed`` have finished.  A partition holds at most
``max_queued + 1`` batches sealed or with its flusher (``_can_seal``): the
flusher's call of ``take`` says that the batch it had is finished.

Re-entrancy: while a partition's lock is held, this module creates no object
the cyclic GC tracks (no list, tuple, iterator, bound method or exception),
except in ``_snapshot`` and in the loops over every partition that hold
their locks (``_set_gate``, the fork hooks: an iterator each); objects are
made before the lock is taken, and what was decided with them is checked
again under it, as the compiled core does.
Up to Python 3.11 that keeps the GC, whose ``__del__`` methods and weakref
callbacks may insert into the same buffer, out of those sections.  From 3.12
the GC can run at any call or loop in Python code, so an insert that finds
its thread already holding the partition's lock only appends (see
``_reentrant_store``).
"""

from __future__ import annotations

import itertools
import random
import sys
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from ._contract import CoreHooks, PartStats, Taken

__all__ = ("BufferCore", "Core", "attach", "insert_telemetry", "own_methods", "set_insert_telemetry")

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


# On a free-threaded interpreter, itertools.cycle is not safe to advance
# from several threads at once; the dispatcher then takes a lock.
_GIL_DISABLED = not getattr(sys, "_is_gil_enabled", lambda: True)()


class _Ring(deque):  # type: ignore[type-arg]
    """One partition: its items (the deque itself) and its fields.

    The deque holds the partition's items in insertion order; its first
    ``ready_count`` items form the batches that were sealed by inserts and
    that the flusher has not taken out yet (they are no longer counted as
    buffered), oldest first, of the sizes in ``sizes``.  Appends need no lock: ``deque.append`` is atomic, and
    ``insert`` appends first and checks afterwards (see
    ``Core._appended``).  Items leave only from the left, and only under
    ``lock``, which also guards every other field.  ``limit`` (the number
    of items at which the partition is full: ``ready_count + threshold``; 0
    once the buffer is closed, and while a locked section must not see
    lock-free appends) is read without the lock as a hint; every decision
    made on it is taken again under the lock.
    """

    __slots__ = (
        "evicted",
        "failed",
        "firsts",
        "flushed",
        "hold",
        "holding",
        "limit",
        "lock",
        "partition",
        "ready_count",
        "refused",
        "sizes",
        "taken",
        "threshold",
        "wake",
    )

    def __init__(self, partition: int, threshold: int) -> None:
        super().__init__()
        # Not "index": that would hide deque.index().
        self.partition = partition
        # An RLock, so that an insert run by the GC inside a section holding
        # it can tell (_is_owned) and only append (see _reentrant_store).
        self.lock = threading.RLock()
        self.threshold = threshold
        self.limit = threshold
        # How many locked sections (nested, in one thread) append item by
        # item (_push_many) or copy the ring (_snapshot): while any does,
        # the limit stays 0.
        self.hold = 0
        # The flusher holds a batch it took (until its next take).
        self.holding = False
        # The batches sealed by inserts, waiting for the flusher: their
        # sizes, oldest first (appending an int allocates nothing the GC
        # tracks), and their items in all.
        self.sizes: deque[int] = deque()
        # The sequence number of each sealed batch's first item, in step with sizes.
        self.firsts: deque[int] = deque()
        self.ready_count = 0
        self.taken = 0
        self.flushed = 0
        self.failed = 0
        # Dropped by on_full: buffered items removed from the unsealed head
        # (evict: counted in taken too, and finished), and items an insert
        # dropped instead of storing (refuse: never in the ring).
        self.evicted = 0
        self.refused = 0
        # Wakes the flusher: a lock used as a binary semaphore.  Unlocked
        # means a wake is pending; only the flusher acquires it (wait_wake),
        # anyone releases it (wake).
        self.wake = threading.Lock()
        self.wake.acquire()


class Core:
    """Storage and counters of a buffer: a ring of items per partition (``CoreAPI``)."""

    def __init__(
        self,
        partitions: int,
        max_size: int,
        max_size_jitter: int,
        by_thread: bool,
        seal_hook: bool,
        hooks: CoreHooks,
        max_queued: int = 0,
    ) -> None:
        # Written once, before the buffer is shared.
        self.hooks = hooks
        # A partition holds at most max_queued + 1 batches sealed or with its flusher.
        self.slots = max_queued + 1
        self.max_size = max_size
        self.jitter = max_size_jitter
        self.random = random.Random()
        self.n = partitions
        self.by_thread = by_thread
        self.seal_hook = seal_hook
        self.parts = tuple(_Ring(p, self._draw()) for p in range(partitions))
        # Written under every partition's lock (mark_closed); read without one.
        self.closed = False
        # Set under every partition's lock (set_attention), cleared by the
        # insert that takes it (_pass_gate, under gate_lock).
        self.attention = False
        self.gate_lock = threading.Lock()
        # The round-robin dispatcher, advanced with next() (thread-safe).
        self.rr = self._dispatcher()

    def _dispatcher(self) -> Iterator[_Ring]:
        # The round-robin dispatcher, advanced with next(): calling a stored
        # cycle.__next__ (a method-wrapper) costs about twice as much.
        if self.by_thread:
            return _ThreadHomes(self.parts)
        if _GIL_DISABLED:
            return _LockedCycle(self.parts)
        return itertools.cycle(self.parts)

    def _can_seal(self, ring: _Ring) -> bool:
        """Whether ``ring`` may seal one more batch (under ``ring.lock``)."""
        return len(ring.sizes) + ring.holding < self.slots

    def _draw(self) -> int:
        if self.jitter:
            return self.max_size + self.random.randint(0, self.jitter)
        return self.max_size

    # -- inserts ----------------------------------------------------------

    def _appended(self, ring: _Ring, item: Any, timeout: float | None) -> None:
        """After a lock-free append: seal a full ring, or undo the append.

        The append is undone when the buffer closed, and when the partition
        was already full while its previous batch is flushing: the insert
        then waits for room like any other (backpressure).
        """
        if ring.lock._is_owned():  # type: ignore[attr-defined]
            return  # re-entered (see _reentrant_store): the append is all
        if self.attention:
            self._pass_gate()
        refused = full = sealed = False
        with ring.lock:
            if self.closed:
                # mark_closed ran after the append, or before it: the item
                # is either still buffered (take it back out and refuse it)
                # or already handed to the closing flush (it is stored).
                refused = _take_back(ring, item)
            else:
                size = len(ring) - ring.ready_count
                if size >= ring.threshold and self._can_seal(ring):
                    self._seal(ring)
                    sealed = True
                elif size > ring.threshold:
                    full = _take_back(ring, item)
        if sealed and self.seal_hook:
            self.hooks.sealed(ring.partition)
        if refused:
            raise self.hooks.closed_error()
        if full:
            self._store_locked(ring, item, timeout)

    def _store_locked(self, ring: _Ring, item: Any, timeout: float | None) -> None:
        """Store ``item`` under the partition's lock, or wait for room (backpressure)."""
        if self.push_many(ring.partition, (item,), 0) == 0:
            self.hooks.insert_wait(ring.partition, item, timeout)

    def _key_partition(self, key: Any) -> int:
        """``hash(key) % partitions``: equal keys, one partition, so their items keep their order."""
        try:
            return hash(key) % self.n
        except TypeError as exc:
            raise TypeError(f"key must be hashable, not {type(key).__name__} ({exc})") from None

    def insert_raw(self, item: Any, timeout: float | None, key: Any = None) -> int:
        if timeout is not None:
            self.hooks.check_timeout(timeout)
        ring = next(self.rr) if key is None else self.parts[self._key_partition(key)]
        if self.attention:
            self._pass_gate()
        self._store_locked(ring, item, timeout)
        return ring.partition

    def insert_batch_raw(
        self, items: Iterable[Any], timeout: float | None, key: Any = None
    ) -> tuple[int, int]:
        if timeout is not None:
            self.hooks.check_timeout(timeout)
        # The key's partition before the items are consumed: an unhashable
        # key raises having consumed and stored nothing.
        keyed = -1 if key is None else self._key_partition(key)
        seq = items if type(items) is list or type(items) is tuple else list(self.hooks.iterate(items))
        n = len(seq)
        if self.closed:
            raise self.hooks.closed_error()
        if self.attention:
            self._pass_gate()
        if n == 0:
            return -1, 0
        p = next(self.rr).partition if keyed < 0 else keyed
        done = self.push_many(p, seq, 0)
        if done < n:
            self.hooks.insert_batch_wait(p, seq, done, timeout)
        return p, n

    def _seal(self, ring: _Ring) -> None:
        """Queue a full batch for the flusher and wake it (under ``ring.lock``; ``_can_seal``).

        The caller calls ``hooks.sealed`` afterwards, once the lock
        is released, if ``seal_hook`` was asked for.

        The items stay at the head of the ring until the flusher takes
        them out (``take``), so that sealing allocates nothing.
        """
        k = ring.threshold
        ring.sizes.append(k)
        ring.firsts.append(ring.taken)
        ring.ready_count += k
        ring.taken += k
        ring.threshold = self._draw()
        self._set_limit(ring)
        _release(ring.wake)

    # -- called by the engine (CoreAPI) -------------------------------------

    def wake(self, p: int) -> None:
        """Wake the flusher of partition ``p``; wakes before it runs count once."""
        _release(self.parts[p].wake)

    def wait_wake(self, p: int, timeout: float | None = None) -> bool:
        """Sleep until partition ``p``'s flusher is woken (the flusher only).

        Consumes the wake and returns True; False if ``timeout`` seconds
        (``None``: no limit) passed first.
        """
        wake = self.parts[p].wake
        if timeout is None:
            return wake.acquire()
        if not timeout >= 0:
            raise ValueError(f"timeout must be a number of seconds >= 0, got {timeout!r}")
        return wake.acquire(timeout=min(timeout, threading.TIMEOUT_MAX))

    def push_many(self, p: int, seq: Sequence[Any], start: int) -> int:
        """Store ``seq[start:]`` in partition ``p`` while there is room.

        Returns the index of the first item not stored.
        """
        ring = self.parts[p]
        n = len(seq)
        if ring.lock._is_owned():  # type: ignore[attr-defined]
            _reentrant_store(ring, seq, start)
            return n
        i = start
        closed = sealed = False
        with ring.lock:
            # The items go in one at a time (a loop allocates nothing, see the
            # module docstring): meanwhile, inserts in other threads find the
            # limit at 0 and wait for this lock before they count, so they
            # cannot overfill the partition (an item they appended may land
            # between the items of this call: the calls are concurrent).
            ring.hold += 1
            ring.limit = 0
            try:
                while i < n:
                    if self.closed:
                        closed = True
                        break
                    room = ring.threshold - (len(ring) - ring.ready_count)
                    if room <= 0:
                        if not self._can_seal(ring):
                            break
                        self._seal(ring)
                        sealed = True
                        continue
                    stop = min(n, i + room)
                    for j in range(i, stop):
                        ring.append(seq[j])
                    i = stop
                    if len(ring) - ring.ready_count >= ring.threshold and self._can_seal(ring):
                        self._seal(ring)
                        sealed = True
            finally:
                ring.hold -= 1
                self._set_limit(ring)
        if sealed and self.seal_hook:
            # Once per call: the partition's flusher takes every batch due.
            self.hooks.sealed(p)
        if closed:
            raise self.hooks.closed_error(i)
        return i

    def take(self, p: int, upto: int) -> Taken | None:
        """Give the flusher its next batch, or None once it is idle.

        Returns ``(batch, by_size, first_seq)``.  A batch is due when one
        was sealed (the oldest first), when the ring is full, or when items
        before sequence number ``upto`` (a flush request) are still in the
        ring.  The batch the flusher took before has finished.
        """
        ring = self.parts[p]
        while True:
            # Made before the lock is taken (see the module docstring), for
            # the size read here; used only if that is still the size due.
            try:
                k = ring.sizes[0]
            except IndexError:  # none queued (only this flusher takes them out)
                k = min(len(ring) - ring.ready_count, ring.threshold)
            batch: list[Any] = []
            # popleft() k times.  Not iter(popleft, sentinel): that compares
            # every item with the sentinel, and an item's __eq__ may raise
            # (losing the items popped so far) or run arbitrary code.
            pops = itertools.starmap(ring.popleft, itertools.repeat((), k))
            with ring.lock:
                ring.holding = False
                if ring.sizes:
                    due, by_size, first = ring.sizes[0], True, ring.firsts[0]
                else:
                    size = len(ring)
                    first = ring.taken
                    if size and size >= ring.threshold:
                        by_size = True
                    elif size and first < upto:
                        by_size = False
                    else:
                        return None
                    due = min(size, ring.threshold)
                if due == k:
                    # Lock-free appends compare the length with the limit:
                    # while the length drops, send them to the locked path.
                    ring.limit = 0
                    batch.extend(pops)  # C-level pops, allocating nothing the GC tracks
                    if ring.sizes:
                        ring.sizes.popleft()
                        ring.firsts.popleft()
                        ring.ready_count -= k
                    else:
                        ring.taken += k
                        ring.threshold = self._draw()
                    ring.holding = True
                    self._set_limit(ring)
                    break
        return batch, by_size, first

    def finished_upto(self, p: int, target: int) -> bool:
        """Whether every item of partition ``p`` before sequence ``target`` has finished.

        ``inserted`` (``taken + size``) can drop below a target read while
        a lock-free append was in flight: an append refused (the buffer
        closed, or the partition was full) is taken back out, and so never
        counts as inserted.  Such a target counts as reached once everything
        actually inserted before it has finished.
        """
        ring = self.parts[p]
        with ring.lock:
            inserted = ring.taken + len(ring) - ring.ready_count
            done = ring.flushed + ring.failed
        return done >= min(target, inserted)

    def evict(self, p: int, n: int) -> list[Any]:
        """Remove up to ``n`` of partition ``p``'s oldest buffered items (``on_full="drop_oldest"``).

        Never a sealed batch: only items after them.  They count as
        ``evicted``, not taken: the items after them take over their sequence
        numbers.  Returns them, for the caller to release with no lock held
        (it may run ``__del__``).
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        ring = self.parts[p]
        # Made before the lock (see the module docstring): the loop below allocates nothing.
        out: list[Any] = [None] * n
        k = 0
        if ring.lock._is_owned():  # type: ignore[attr-defined]
            return []  # re-entered by a finalizer inside a locked section: drop nothing
        with ring.lock:
            # Lock-free appends go to the locked path meanwhile (as in push_many).
            ring.hold += 1
            ring.limit = 0
            try:
                start = ring.ready_count
                k = min(n, len(ring) - start)
                for i in range(k):
                    # Items leave only under this lock, and appends land on
                    # the right: index `start` stays the oldest unsealed item.
                    out[i] = ring[start]
                    del ring[start]
                ring.evicted += k
            finally:
                ring.hold -= 1
                self._set_limit(ring)
        del out[k:]
        return out

    def refuse(self, p: int, n: int) -> None:
        """Count ``n`` items an insert dropped instead of storing (``on_full="drop_newest"``)."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        ring = self.parts[p]
        with ring.lock:
            ring.refused += n

    def finish(self, p: int, n: int, ok: bool) -> None:
        """Count a finished batch of ``n`` items as flushed or failed."""
        ring = self.parts[p]
        with ring.lock:
            if ok:
                ring.flushed += n
            else:
                ring.failed += n

    def is_closed(self) -> bool:
        return self.closed

    def lock_held(self) -> bool:
        """Whether the calling thread holds a partition's lock (a finalizer run inside an insert)."""
        return any(ring.lock._is_owned() for ring in self.parts)  # type: ignore[attr-defined]

    def set_attention(self) -> None:
        """Make the next insert call ``hooks.attend()`` (once)."""
        self._set_gate(attention=True)

    def _pass_gate(self) -> None:
        """Reopen the gate after ``set_attention`` and attend, in one insert only.

        The flag is cleared under ``gate_lock`` (which nothing else is taken
        under), the limits recomputed after: a ``set_attention`` meanwhile is
        served by the attend that follows.
        """
        with self.gate_lock:
            if not self.attention:
                return
            self.attention = False
        self._set_gate()
        self.hooks.attend()

    def mark_closed(self) -> None:
        """Refuse every later insert."""
        self._set_gate(closed=True)

    def _set_gate(self, *, closed: bool | None = None, attention: bool | None = None) -> None:
        """Set the flags that send inserts to their slow path, then pass through every partition's lock.

        Each partition's limit is recomputed under its lock from the flags
        as they are then: an insert either finished before (its item is
        stored) or sees the flags.  One lock at a time, each in a ``with``
        statement: a Ctrl-C landing here leaves no lock held.
        """
        if closed is not None:
            self.closed = closed
        if attention is not None:
            self.attention = attention
        for ring in self.parts:
            with ring.lock:
                self._set_limit(ring)

    # -- fork (called by the engine from the os.register_at_fork hooks) ----

    def fork_prepare(self) -> None:
        """Before ``fork()``: take every partition's lock (see the compiled core)."""
        for ring in self.parts:
            ring.lock.acquire()

    def fork_parent(self) -> None:
        """After ``fork()``, in the parent: release what ``fork_prepare`` took."""
        for ring in reversed(self.parts):
            ring.lock.release()

    def fork_child(self) -> list[Any]:
        """After ``fork()``, in the child: an empty buffer with fresh locks.

        The parent's items are dropped (returned, for the caller to release
        once the buffer is consistent); the counters start from zero.
        """
        dropped: list[Any] = []
        self.random.seed()
        self.gate_lock = threading.Lock()
        self.attention = False
        for ring in self.parts:
            dropped.extend(ring)
            ring.clear()
            ring.lock = threading.RLock()
            ring.wake = threading.Lock()
            ring.wake.acquire()
            ring.hold = 0
            ring.holding = False
            ring.sizes.clear()
            ring.firsts.clear()
            ring.ready_count = ring.taken = ring.flushed = ring.failed = 0
            ring.evicted = ring.refused = 0
            ring.threshold = self._draw()
            self._set_limit(ring)
        self.rr = self._dispatcher()
        return dropped

    def stats(self, p: int) -> PartStats:
        """A ``PartStats``: ``(size, threshold, busy, inserted, taken, flushed, failed, queued,
        evicted, refused)``.

        ``inserted`` is ``taken + size``: an append refused because the
        buffer closed is taken back out, so it never counts.
        """
        ring = self.parts[p]
        with ring.lock:
            size = len(ring) - ring.ready_count
            threshold = ring.threshold
            queued = len(ring.sizes)
            busy = ring.holding or queued > 0
            taken = ring.taken
            flushed = ring.flushed
            failed = ring.failed
            evicted = ring.evicted
            refused = ring.refused
        return PartStats(
            size, threshold, busy, taken + size + evicted, taken, flushed, failed, queued, evicted, refused
        )

    def size(self) -> int:
        total = 0
        for ring in self.parts:
            with ring.lock:
                total += len(ring) - ring.ready_count
        return total

    def _snapshot(self, ring: _Ring) -> list[Any]:
        """The buffered items of ``ring`` (those not sealed into a batch), in order."""
        with ring.lock:
            # Inserts that check the limit from now on take the locked path
            # and wait for this lock; one that checked it before may still
            # append, which makes the copy raise RuntimeError: copy again.
            # An insert run by the GC meanwhile (from a __del__) only appends
            # (_reentrant_store), which also makes the copy start again.
            ring.hold += 1
            ring.limit = 0
            try:
                while True:
                    try:
                        copy = list(ring)
                        break
                    except RuntimeError:
                        continue
                skip = ring.ready_count
            finally:
                ring.hold -= 1
                self._set_limit(ring)
        del copy[:skip]
        return copy

    def _set_limit(self, ring: _Ring) -> None:
        """Recompute ``ring.limit`` (under ``ring.lock``)."""
        if self.closed or ring.hold or self.attention:
            ring.limit = 0
        else:
            ring.limit = ring.ready_count + ring.threshold

    def dump(self) -> list[Any]:
        out: list[Any] = []
        for ring in self.parts:
            out.extend(self._snapshot(ring))
        return out


def _take_back(ring: _Ring, item: Any) -> bool:
    """Remove ``item``, appended by the caller, if it is still buffered (under the lock).

    Only the unsealed items are searched, from the newest.  If the same
    object was appended by several calls, each removes one: which one does
    not matter.  False when the item was sealed or taken into a batch
    already (it is stored).
    """
    for i in range(len(ring) - 1, ring.ready_count - 1, -1):
        if ring[i] is item:
            del ring[i]
            return True
    return False


def _reentrant_store(ring: _Ring, seq: Sequence[Any], start: int) -> None:
    """Store ``seq[start:]`` from code run while this thread holds ``ring.lock``.

    From Python 3.12 the cyclic GC, and so ``__del__`` methods and weakref
    callbacks, can run at any call or loop in Python code, including a
    section of this module that holds the partition's lock.  An insert from
    there must neither wait for room (the flusher needs that lock to make
    room: it would wait for nothing) nor change the partition's fields under
    the interrupted section: it only appends, as a lock-free insert does,
    beyond the flush size if need be.  The flusher takes such items with the
    next batches; no batch exceeds its flush size.
    """
    for i in range(start, len(seq)):
        ring.append(seq[i])


def _release(wake: Any) -> None:
    """Make a wake pending (a lock used as a binary semaphore)."""
    try:
        wake.release()
    except RuntimeError:
        pass  # released already: a wake is pending


class _LockedCycle:
    """``itertools.cycle`` over the partitions, safe to advance from several threads."""

    __slots__ = ("_lock", "_next")

    def __init__(self, parts: Sequence[_Ring]) -> None:
        self._lock = threading.Lock()
        self._next = itertools.cycle(parts).__next__

    def __iter__(self) -> _LockedCycle:
        return self

    def __next__(self) -> _Ring:
        with self._lock:
            return self._next()


class _ThreadHomes:
    """Dispatch by thread: ``next()`` gives the calling thread's home partition.

    Homes are assigned round-robin to threads as they first insert, and kept
    in a table keyed by thread ident (a reused ident takes over the home of
    the ended thread that had it).  The table is guarded by ``_lock``, an
    RLock: an insert run by the GC while a thread holds it (the dict may
    allocate) gets a home instead of a deadlock.  Each thread also caches
    its home in ``_local``, which only it reads.
    """

    __slots__ = ("_homes", "_local", "_lock", "_next")

    def __init__(self, parts: Sequence[_Ring]) -> None:
        self._lock = threading.RLock()
        self._next = itertools.cycle(parts).__next__
        self._homes: dict[int, _Ring] = {}
        self._local = threading.local()

    def __iter__(self) -> _ThreadHomes:
        return self

    def __next__(self) -> _Ring:
        try:
            return self._local.home  # type: ignore[no-any-return]
        except AttributeError:
            pass
        ident = threading.get_ident()
        with self._lock:
            home = self._homes.get(ident)
            if home is None:
                home = self._next()
                home = self._homes.setdefault(ident, home)
        self._local.home = home
        return home


class BufferCore:
    """The base of ``Buffer`` and ``AsyncBuffer``: the insert methods, over a ``Core``.

    Its only state is the slot ``_databuffer``: the ``Core`` given by
    ``attach``, written once before the buffer is shared.
    """

    __slots__ = ("_databuffer",)
    _databuffer: Core

    # key is keyword-only in the public signature (Buffer's stubs, the
    # compiled core), but a plain parameter here: CPython looks a missing
    # keyword-only argument's default up in a dict on every call, 13-17 ns
    # on 3.11-3.13, which would make every insert without a key ~15% slower.
    def insert(self, item: Any, timeout: float | None = None, key: Any = None) -> None:
        """Store one item in a partition: the next one round-robin, or the thread's own (``dispatch``).

        With a ``key``, the partition ``hash(key) % partitions`` instead, so
        that items with equal keys are flushed in insertion order.  Waits
        under backpressure for at most ``timeout`` seconds (``None``: the
        buffer's ``insert_timeout``), then raises ``BufferFull`` having
        stored nothing.  Raises ``BufferClosed`` after ``close()``.
        """
        try:
            core = self._databuffer
        except AttributeError:
            raise _not_initialised(self) from None
        if _insert_events:
            core.hooks.insert_instrumented(item, timeout, key)
            return
        if key is not None:
            core.insert_raw(item, timeout, key)
            return
        if timeout is not None:
            core.hooks.check_timeout(timeout)
        ring = next(core.rr)
        # Append first, check afterwards: a full ring or a close (limit 0)
        # seen after the append is dealt with under the lock.
        ring.append(item)
        if len(ring) >= ring.limit:
            core._appended(ring, item, timeout)

    def insert_batch(self, items: Iterable[Any], timeout: float | None = None, key: Any = None) -> None:
        """Store every item of an iterable, in order, in one partition (``key``'s, if given).

        A batch larger than the flush threshold is split into consecutive
        flushes.  If room runs out for longer than ``timeout`` seconds,
        raises ``BufferFull`` whose ``stored`` counts the leading items
        stored.
        """
        try:
            core = self._databuffer
        except AttributeError:
            raise _not_initialised(self) from None
        if _insert_events:
            core.hooks.insert_batch_instrumented(items, timeout, key)
            return
        core.insert_batch_raw(items, timeout, key)


def _not_initialised(buf: BufferCore) -> RuntimeError:
    return RuntimeError(
        f"{type(buf).__name__} is not set up: its __init__ must call super().__init__(...) "
        "before the buffer is used"
    )


# The slot's own descriptor: a subclass's attribute of the same name cannot hide it.
_slot = BufferCore.__dict__["_databuffer"]


def attach(buf: BufferCore, core: Core) -> None:
    """Give ``buf`` its core (once: a second call raises ``RuntimeError``).

    The core must be initialised: the insert methods rely on it.
    """
    if not isinstance(buf, BufferCore) or not isinstance(core, Core):
        raise TypeError(f"attach() needs a BufferCore and a Core, not {buf!r} and {core!r}")
    if not hasattr(core, "parts"):
        raise RuntimeError("the buffer core was not initialised (Core.__init__ did not run)")
    try:
        _slot.__get__(buf)
    except AttributeError:
        _slot.__set__(buf, core)
        return
    raise RuntimeError(
        f"{type(buf).__name__}.__init__ ran twice on the same buffer: a buffer is set up once; "
        "make a new one instead"
    )


def own_methods(cls: type) -> None:
    """Nothing to do: see the compiled core (its C methods need it, Python ones do not)."""
