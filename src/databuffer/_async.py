"""The ``AsyncBuffer`` class: the buffer for asyncio applications.

``AsyncBuffer`` is ``AsyncBufferMethods`` (the methods below) over the same
core as ``Buffer``.  Everything the methods do is done by the buffer's
``AsyncEngine`` (``_asyncio``), reached through the core (``engine_of``):
the user's subclass holds the user's code only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Iterable
from typing import TYPE_CHECKING, Any, Self, TypeVar, cast

from ._asyncio import AsyncEngine
from ._compat import BufferCore
from ._front import Front, engine_of
from ._options import configure, keyword_options
from ._types import FlushOpts

__all__ = ("AsyncBuffer", "AsyncBufferMethods")

T = TypeVar("T")


def _engine(buf: Any) -> AsyncEngine[Any]:
    return cast("AsyncEngine[Any]", engine_of(buf))


class AsyncBufferMethods(Front[T]):
    """The methods of :class:`AsyncBuffer`, over either core (the tests build both)."""

    @keyword_options
    def __init__(
        self,
        *,
        handle_flush: Callable[[list[T], FlushOpts], Awaitable[object]] | None = None,
        handle_flush_error: Callable[[list[T], FlushOpts, BaseException], object] | None = None,
        name: str | None = None,
        partitions: int = 1,
        dispatch: str = "round_robin",
        max_size: int = 5000,
        max_size_jitter: int = 0,
        max_queued_batches: int = 4,
        flush_interval: float = 10.0,
        flush_jitter: float | None = None,
        flush_timeout: float = 60.0,
        flush_meta: Any = None,
        insert_timeout: float = 5.0,
        on_full: str = "wait",
        max_retries: int = 0,
        retry_backoff: float = 0.1,
        retry_backoff_max: float = 10.0,
        retry_on: type[BaseException]
        | tuple[type[BaseException], ...]
        | Callable[[BaseException], bool]
        | None = None,
    ) -> None:
        # The parameters, by name, before anything else is bound here.
        AsyncEngine(self, *configure(self, AsyncBufferMethods.handle_flush, locals(), needs_async=True))

    # -- callbacks --------------------------------------------------------

    async def handle_flush(self, batch: list[T], opts: FlushOpts) -> object:
        """Write a batch somewhere; override in a subclass (or pass ``handle_flush=``).

        A coroutine: it runs on the buffer's event loop, in the partition's
        flusher task, under ``asyncio.timeout(flush_timeout)``.

        Args:
            batch: the items, in insertion order; never empty.
            opts: the batch's :class:`FlushOpts`.

        Returns:
            Anything; :meth:`sync_flush` collects it.
        """
        raise NotImplementedError

    # -- lifecycle --------------------------------------------------------

    async def start(self) -> Self:
        """Bind the buffer to the running event loop and start its flusher tasks and timers.

        Idempotent on the same loop.  ``async with buffer:`` calls it.

        Raises:
            RuntimeError: the buffer is bound to another event loop, or closed.
        """
        _engine(self).start()
        return self

    async def aclose(self, timeout: float | None = None) -> None:
        """Flush what is left, wait for every flush and stop the flusher tasks.

        Idempotent.  Afterwards inserts raise :class:`BufferClosed`, while
        ``size()``, ``dump()``, ``info()`` and ``stats()`` still answer.
        Failed flushes go to ``handle_flush_error``; ``aclose`` does not
        raise them.  A buffer never started is started first, so that what
        it holds is flushed.

        Args:
            timeout: seconds to wait at most; ``None`` waits as long as the
                flushes take (each is bounded by ``flush_timeout``).

        Raises:
            TimeoutError: ``timeout`` ran out; the buffer is closed to
                inserts and its flushes go on; await ``aclose()`` again to
                wait for them.
            RuntimeError: called from another event loop than the buffer's,
                or from its own flush callbacks.
        """
        await _engine(self).aclose(timeout)

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        # Also when the task that owns the block is being cancelled: the
        # cancellation was delivered to the block, and these awaits still
        # run (unless it is cancelled again).
        await self.aclose()

    # -- operations -------------------------------------------------------

    async def flush(self) -> None:
        """Ask every non-empty partition to flush now; does not wait for the flushes.

        Raises:
            RuntimeError: the buffer is not started, or is bound to another
                event loop.
        """
        _engine(self).flush()

    async def sync_flush(self, timeout: float | None = None) -> list[Any]:
        """Flush every partition and wait for the flushes.

        Waits until every flush started before or by this call has finished
        (its telemetry and any ``handle_flush_error`` included).

        Args:
            timeout: seconds to wait at most; ``None`` waits as long as the
                flushes take (each is bounded by ``flush_timeout``).

        Returns:
            The ``handle_flush`` return values of the batches holding items
            buffered when it was called, in partition order (and flush order
            within a partition).

        Raises:
            TimeoutError: ``timeout`` ran out.
            ExceptionGroup: some of those batches failed; raised after every
                partition has finished, with the errors in partition order
                (a ``BaseExceptionGroup`` if one of them is not an
                ``Exception``).
            RuntimeError: the buffer is not started, is bound to another
                event loop, or this is called from its own flush callbacks.
        """
        return await _engine(self).sync_flush(timeout)

    async def ainsert(self, item: T, timeout: float | None = None, *, key: Hashable | None = None) -> None:
        """Store one item, waiting for room while its partition is full and flushing.

        Returns at once while there is room (as :meth:`insert` does).

        Args:
            item: any object.
            timeout: seconds to wait at most for room; ``None``: the
                buffer's ``insert_timeout``.
            key: optional; with one, the call goes to partition
                ``hash(key) % partitions`` whatever ``dispatch`` says, so
                items with equal keys are flushed in insertion order.  An
                unhashable key raises ``TypeError`` and stores nothing.

        Raises:
            BufferFull: no room within ``timeout``; nothing was stored.
            BufferClosed: the buffer is closed (or closed while waiting).
            RuntimeError: it had to wait, and the buffer is not started or
                is bound to another event loop.
        """
        await _engine(self).ainsert(item, timeout, key)

    async def ainsert_batch(
        self, items: Iterable[T], timeout: float | None = None, *, key: Hashable | None = None
    ) -> None:
        """Store every item of an iterable, in order, in one partition, waiting for room between chunks.

        Args:
            items: any iterable; it is consumed before anything is stored.
            timeout: seconds to wait at most for room, for each wait;
                ``None``: the buffer's ``insert_timeout``.
            key: as for :meth:`ainsert`.

        Raises:
            BufferFull: no room within ``timeout``; its ``stored`` counts the
                leading items stored.
            BufferClosed: the buffer is closed (``stored`` as above).
            TypeError: ``items`` is not iterable, or is a ``str``, ``bytes`` or
                ``bytearray`` (one item: wrap it in a list).
            RuntimeError: as for :meth:`ainsert`.
        """
        await _engine(self).ainsert_batch(items, timeout, key)


class AsyncBuffer(AsyncBufferMethods[T], BufferCore):
    """Buffers items in memory and flushes them in batches to an async ``handle_flush``.

    The asyncio counterpart of :class:`Buffer`, on the same core, with the
    same options, :class:`FlushOpts`, telemetry events, counters and failure
    handling.  Subclass it and define ``async def handle_flush(self, batch,
    opts)``, or pass ``handle_flush=fn`` with a coroutine function.

    It runs on one event loop, the one running when it is started (``async
    with buffer:`` or ``await buffer.start()``), until ``await aclose()``
    (or the end of the ``async with`` block):

    - ``insert`` and ``insert_batch`` are plain calls, from the loop or any
      other thread: they store and return at once, and raise
      :class:`BufferFull` when the partition is full and still flushing,
      instead of waiting; ``await ainsert()`` / ``await ainsert_batch()``
      wait for room;
    - each partition has one flusher task, which awaits ``handle_flush``
      for its batches one at a time, in order, each under
      ``asyncio.timeout(flush_timeout)``: a call that runs past it is
      cancelled and reported as :class:`FlushTimeout` (and retried, with
      ``max_retries``);
    - timed flushes use ``loop.call_at``, jittered as in ``Buffer``.

    If the loop shuts down while the buffer is open (``asyncio.run()``
    returning cancels the buffer's tasks), the buffer logs a warning naming
    itself and the items it holds, and flushes them before its tasks end; a
    ``handle_flush`` call the shutdown interrupted is tried again at once,
    whatever ``max_retries`` says.

    Args:
        handle_flush: ``async fn(batch, opts)``; its return value is
            collected by :meth:`sync_flush`.  Required unless the subclass
            defines the method.
        handle_flush_error: ``fn(batch, opts, error)``, a plain function or
            a coroutine function, called with a batch whose ``handle_flush``
            raised or timed out.  Defaults to the method, which logs on the
            ``databuffer`` logger.
        name: label used in telemetry, logs, task names and ``info()``; the
            class name by default.
        partitions: independent partitions, each with its flusher task
            (default 1).
        dispatch: ``"round_robin"`` (default) or ``"thread"``, as for
            :class:`Buffer`.
        max_size: items in a partition that trigger a flush (default 5000).
        max_size_jitter: a random 0..n added to ``max_size``, drawn anew
            after every flush of that partition (default 0).
        max_queued_batches: how many full batches a partition may hold
            sealed, waiting for its flusher, besides the one it flushes
            (default 4; 0 to 65536).  Producers wait for room only once
            they are all taken, and the flusher flushes every waiting
            batch in one wake-up; each queued batch holds up to
            ``max_size + max_size_jitter`` items.  ``0``: one batch at a
            time, as before this option existed.
        flush_interval: seconds between timed flushes of a partition,
            counted from its last flush of any kind (default 10.0).
        flush_jitter: a random 0..n seconds added to ``flush_interval``,
            drawn anew after every flush.  ``None`` (default): 20 % of
            ``flush_interval`` (2.0 at the default 10.0); ``info()`` shows
            the seconds in force.
        flush_timeout: seconds one ``handle_flush`` call may run before it
            is cancelled and reported as :class:`FlushTimeout` (default 60.0).
        flush_meta: any object, handed to every flush as ``opts.meta``.
        insert_timeout: default seconds ``ainsert``/``ainsert_batch`` wait
            for room before raising :class:`BufferFull` (default 5.0).
        on_full: what an insert does when its partition is full and its
            flusher has every batch it may hold: ``"wait"`` (default:
            ``insert``/``insert_batch`` raise :class:`BufferFull` at once,
            ``ainsert``/``ainsert_batch`` wait for room up to their
            timeout), ``"raise"`` (both raise :class:`BufferFull` at once),
            ``"drop_newest"`` (the items that do not fit are dropped and the
            call returns), ``"drop_oldest"`` (the partition's oldest buffered
            items, never a batch already sealed or flushing, are dropped to
            make room).  Dropped items are counted in ``stats()``/``info()``
            as ``dropped``; see :class:`Buffer`.
        max_retries: how many times a failed or timed-out batch is handed to
            ``handle_flush`` again before it goes to ``handle_flush_error``
            (default 0); as for :class:`Buffer`.
        retry_backoff: base of the random wait before a retry, in seconds
            (default 0.1), as for :class:`Buffer`.
        retry_backoff_max: the cap on that wait (default 10.0).
        retry_on: which failures are retried, while ``max_retries`` allows:
            a tuple of exception types (or a single one), or a callable
            ``(error) -> bool``.  ``None`` (default): every error, a
            :class:`FlushTimeout` included.  A failure it rejects goes to
            ``handle_flush_error`` at once, without a backoff, counted as
            ``failed`` and not as ``retried``; a callable that raises
            rejects it, and is logged.  ``SystemExit`` and
            ``KeyboardInterrupt`` are never retried.

    Raises:
        TypeError: no ``handle_flush``, a plain function as
            ``handle_flush``, an option of the wrong type, an unknown
            option (the message names the closest one), or a positional
            argument (the options are keyword-only).
        ValueError: an option out of range.
    """

    if TYPE_CHECKING:
        # Defined by the core (compiled or pure-Python): declared here with
        # the item type, for type checkers and the API reference.

        def insert(self, item: T, *, key: Hashable | None = None) -> None:  # type: ignore[override]
            """Store one item in a partition (the next one round-robin, the thread's own, or ``key``'s).

            Never waits: safe on the event loop and from any thread.  (The
            core's ``timeout`` argument, if given, is ignored.)  With a
            ``key``, the partition ``hash(key) % partitions``, as for
            :meth:`ainsert`.

            Raises:
                BufferFull: the partition is full while its previous batch
                    is flushing; nothing was stored (``await ainsert()``
                    waits for room instead).
                BufferClosed: the buffer is closed.
            """

        def insert_batch(self, items: Iterable[T], *, key: Hashable | None = None) -> None:  # type: ignore[override]
            """Store every item of an iterable, in order, in one partition (``key``'s, if given); never waits.

            Raises:
                BufferFull: no room for all of them; its ``stored`` counts
                    the leading items stored (``await ainsert_batch()``
                    waits for room instead).
                BufferClosed: the buffer is closed (``stored`` as above).
                TypeError: ``items`` is not iterable, or is a ``str``,
                    ``bytes`` or ``bytearray`` (one item: wrap it in a list).
            """
