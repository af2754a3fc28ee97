"""The contract between a core and an engine, declared once.

A buffer is three objects (see docs/architecture.md):

- the user's object, an instance of ``Buffer`` or ``AsyncBuffer`` (or a
  subclass): its only state is one reserved slot, ``_databuffer``, holding
  the core; its ``insert``/``insert_batch`` are the core's;
- the **core** (``Core`` of ``databuffer._core`` or ``databuffer._core_py``):
  the items and the counters, per partition;
- the **engine** (``ThreadEngine`` or ``AsyncEngine``): options, flushers,
  timers, callbacks, telemetry.

The core calls the engine through :class:`CoreHooks` (it holds the engine as
``core.hooks``); the engine calls the core through :class:`CoreAPI`.  Both
cores implement ``CoreAPI`` with the same signatures, and both engines
implement ``CoreHooks``: ``tests/test_contract.py`` checks it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    from ._errors import BufferClosed

__all__ = ("CoreAPI", "CoreHooks", "PartStats", "Taken")


class PartStats(NamedTuple):
    """One consistent snapshot of a partition's counters (``Core.stats``).

    ``inserted == size + taken + evicted`` and ``flushed + failed <=
    taken``: items move ring (``size``) -> sealed into a batch or taken by
    the flusher (``taken`` counts both) -> finished; or ring -> ``evicted``
    (removed by ``on_full="drop_oldest"``).  ``refused``: items an insert
    dropped instead of storing (``on_full="drop_newest"``), not in
    ``inserted``.  ``busy``: the partition has a batch sealed or with its
    flusher; ``queued``: how many sealed batches wait for the flusher (at
    most ``max_queued_batches + 1``, while the flusher has none).

    Sequence numbers count the items that reach the flusher, in order: the
    ring's oldest item is number ``taken``, the next insert's ``taken +
    size``.  An evicted item gives its number up to the items after it, so a
    flush request or a ``sync_flush`` target (``taken + size``) may cover a
    few items inserted after it was made, never fewer than it asked for.
    """

    size: int
    threshold: int
    busy: bool
    inserted: int
    taken: int
    flushed: int
    failed: int
    queued: int
    evicted: int
    refused: int


#: What ``Core.take`` hands the flusher: the batch, whether it was due by
#: size (else by a flush request), and the sequence number of its first item.
Taken = tuple[list[Any], bool, int]


class CoreHooks(Protocol):
    """What a core calls on its engine (``core.hooks``).

    Every hook but ``sealed`` and ``attend`` runs on an insert's slow path,
    in the inserting thread, with no partition lock held.
    """

    def insert_wait(self, p: int, item: Any, timeout: float | None) -> None:
        """Partition ``p`` is full while its batch flushes: store ``item`` (waiting for room) or raise."""

    def insert_batch_wait(self, p: int, seq: Sequence[Any], start: int, timeout: float | None) -> None:
        """As ``insert_wait``, for ``seq[start:]``; ``BufferFull.stored`` counts what was stored."""

    def insert_instrumented(self, item: Any, timeout: float | None, key: Any = None) -> None:
        """An insert while insert telemetry is on: emit its events around ``Core.insert_raw``."""

    def insert_batch_instrumented(self, items: Iterable[Any], timeout: float | None, key: Any = None) -> None:
        """As ``insert_instrumented``, around ``Core.insert_batch_raw``."""

    def closed_error(self, stored: int = 0) -> BufferClosed:
        """The ``BufferClosed`` an insert raises (``stored`` leading items stored)."""

    def check_timeout(self, timeout: object) -> None:
        """Raise, naming the value, unless ``timeout`` is a number of seconds >= 0."""

    def iterate(self, items: object) -> Iterator[Any]:
        """``iter(items)``, or a ``TypeError`` naming what ``insert_batch`` was given."""

    def attend(self) -> None:
        """Called by one insert after ``Core.set_attention`` (a thread of the engine ended)."""

    def sealed(self, p: int) -> None:
        """Called after each seal when the core was made with ``seal_hook=True``; no lock held."""


class CoreAPI(Protocol):
    """What an engine calls on its core.

    Partition ``p`` of a core holds its items in insertion order; sequence
    numbers count them from 0.  ``taken`` items have been handed to the
    flusher (``take``), ``flushed + failed`` of those have finished
    (``finish``).
    """

    hooks: CoreHooks

    def insert_raw(self, item: Any, timeout: float | None, key: Any = None) -> int:
        """Insert without telemetry (into ``key``'s partition, if given); returns the partition used."""

    def insert_batch_raw(
        self, items: Iterable[Any], timeout: float | None, key: Any = None
    ) -> tuple[int, int]:
        """Insert a batch without telemetry; returns ``(partition, count)`` (partition -1 if empty)."""

    def push_many(self, p: int, seq: Sequence[Any], start: int) -> int:
        """Store ``seq[start:]`` in partition ``p`` while there is room; the index of the first not stored."""

    def take(self, p: int, upto: int) -> Taken | None:
        """The flusher's next batch of partition ``p``, or None once the partition is idle.

        A batch is due when one was sealed (the oldest of the queue comes
        first), when the ring is full, or when items before sequence number
        ``upto`` (a flush request) are still in the ring.  Calling it says
        that the batch it gave last has finished: a partition holds at most
        ``max_queued_batches + 1`` batches sealed or with its flusher.
        """

    def finish(self, p: int, n: int, ok: bool) -> None:
        """Count a finished batch of ``n`` items as flushed (``ok``) or failed."""

    def evict(self, p: int, n: int) -> list[Any]:
        """Remove up to ``n`` of partition ``p``'s oldest buffered items, never a sealed batch's.

        Counted in ``PartStats.evicted`` (not taken); returned for the
        caller to release with no lock held.
        """

    def refuse(self, p: int, n: int) -> None:
        """Count ``n`` items an insert dropped instead of storing (``PartStats.refused``)."""

    def finished_upto(self, p: int, target: int) -> bool:
        """Whether every item of partition ``p`` before sequence ``target`` has finished.

        Items an insert took back (refused after a lock-free append) count
        as finished.
        """

    def wake(self, p: int) -> None:
        """Wake the flusher of partition ``p``; wakes before it waits count once."""

    def wait_wake(self, p: int, timeout: float | None = None) -> bool:
        """Sleep until partition ``p``'s flusher is woken; False if ``timeout`` passed first."""

    def stats(self, p: int) -> PartStats:
        """One consistent snapshot of partition ``p``'s counters."""

    def size(self) -> int:
        """Items buffered (not yet taken) over all partitions."""

    def dump(self) -> list[Any]:
        """A copy of the buffered items: partition order, insertion order within one."""

    def is_closed(self) -> bool:
        """Whether inserts are refused (``mark_closed``)."""

    def lock_held(self) -> bool:
        """Whether the calling thread holds a partition's lock.

        True only on a core that runs Python code under it (the pure-Python
        one): in a finalizer (``__del__``) the garbage collector ran there.
        """

    def mark_closed(self) -> None:
        """Refuse every later insert; an insert under way either finishes storing or is refused."""

    def set_attention(self) -> None:
        """Make the next insert call ``hooks.attend()`` (once)."""

    def fork_prepare(self) -> None:
        """Before ``fork()``: hold every partition's lock."""

    def fork_parent(self) -> None:
        """After ``fork()``, in the parent: release what ``fork_prepare`` took."""

    def fork_child(self) -> list[Any]:
        """After ``fork()``, in the child: empty, fresh locks; returns the dropped items."""


if TYPE_CHECKING:
    # mypy --strict checks here that the pure-Python core is a CoreAPI and
    # that both engines are CoreHooks (tests/test_contract.py checks the
    # compiled core's methods against the pure one's at run time).
    from ._asyncio import AsyncEngine
    from ._core_py import Core
    from ._threaded import ThreadEngine

    def _conforms(
        core: Core, threaded: ThreadEngine[Any], asyncio: AsyncEngine[Any]
    ) -> tuple[CoreAPI, CoreHooks, CoreHooks]:
        return core, threaded, asyncio
