"""The ``Buffer`` class: the buffer for threaded code.

``Buffer`` is ``BufferMethods`` (the methods below) over the core's
``BufferCore`` (``insert``, ``insert_batch``).  Everything the methods do is
done by the buffer's ``ThreadEngine`` (``_threaded``), reached through the
core (``engine_of``): the user's subclass holds the user's code only.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import TYPE_CHECKING, Any, Self, TypeVar, cast

from ._compat import BufferCore
from ._front import Front, engine_of
from ._options import configure, keyword_options
from ._threaded import ThreadEngine
from ._types import BufferStats, FlushOpts, PartitionInfo

__all__ = ("Buffer", "BufferMethods", "BufferStats", "FlushOpts", "PartitionInfo")

#: The type of the items a buffer holds: ``Buffer[Event]`` holds ``Event``s.
T = TypeVar("T")


def _engine(buf: Any) -> ThreadEngine[Any]:
    return cast("ThreadEngine[Any]", engine_of(buf))


class BufferMethods(Front[T]):
    """The methods of :class:`Buffer`, over either core (the tests build both)."""

    @keyword_options
    def __init__(
        self,
        *,
        handle_flush: Callable[[list[T], FlushOpts], object] | None = None,
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
        ThreadEngine(self, *configure(self, BufferMethods.handle_flush, locals(), needs_async=False))

    # -- callbacks --------------------------------------------------------

    def handle_flush(self, batch: list[T], opts: FlushOpts) -> object:
        """Write a batch somewhere; override in a subclass (or pass ``handle_flush=``).

        Args:
            batch: the items, in insertion order; never empty.
            opts: the batch's :class:`FlushOpts`.

        Returns:
            Anything; :meth:`sync_flush` collects it.
        """
        raise NotImplementedError

    # -- operations -------------------------------------------------------

    def flush(self) -> None:
        """Ask every non-empty partition to flush now; does not wait."""
        _engine(self).flush()

    def sync_flush(self, timeout: float | None = None) -> list[Any]:
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
                ``Exception``, such as a ``SystemExit`` from ``handle_flush``).
        """
        return _engine(self).sync_flush(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Flush what is left, wait for every flush and stop the threads.

        Idempotent.  Afterwards inserts raise :class:`BufferClosed`, while
        ``size()``, ``dump()`` and ``info()`` still answer.  Failed flushes
        go to ``handle_flush_error``; ``close`` does not raise them.

        Args:
            timeout: seconds to wait at most; ``None`` waits as long as the
                flushes take (each is bounded by ``flush_timeout``).

        Raises:
            TimeoutError: ``timeout`` ran out; the buffer is closed to
                inserts and its flushers go on; call ``close()`` again to
                wait for them.
        """
        _engine(self).close(timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Buffer(BufferMethods[T], BufferCore):
    """Buffers items in memory and flushes them in batches to ``handle_flush``.

    Subclass it and define ``handle_flush(self, batch, opts)``, or pass
    ``handle_flush=fn`` with ``fn(batch, opts)``.  The buffer runs as soon as
    it is constructed and until ``close()`` (or the end of a ``with`` block,
    or interpreter exit).

    ``Buffer`` is generic in its item type: with ``class
    EventBuffer(Buffer[Event])`` or ``Buffer[Event](handle_flush=fn)`` a
    type checker checks the items given to ``insert`` and ``insert_batch``
    and the ``batch`` given to ``handle_flush``.

    Args:
        handle_flush: ``fn(batch, opts)``, called with each batch (a list)
            and its :class:`FlushOpts`; its return value is collected by
            :meth:`sync_flush`.  Required unless the subclass defines the
            method.
        handle_flush_error: ``fn(batch, opts, error)``, called with a batch
            whose ``handle_flush`` raised or timed out.  Defaults to the
            method, which logs on the ``databuffer`` logger.
        name: label used in telemetry, logs, thread names and ``info()``;
            the class name by default.
        partitions: independent partitions, chosen round-robin per insert
            call (default 1; see ``dispatch``).
        dispatch: how an insert call chooses its partition.
            ``"round_robin"`` (default): the next partition, per call,
            whichever thread calls.  ``"thread"``: each thread inserts
            into a home partition of its own, assigned round-robin to
            threads in the order they first insert (a thread's items stay
            in order in one partition; threads on different partitions
            never contend, which lets inserts scale on a free-threaded
            build).
        max_size: items in a partition that trigger a flush (default 5000).
        max_size_jitter: a random 0..n (inclusive) added to ``max_size``,
            drawn anew after every flush of that partition (default 0).
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
        flush_timeout: seconds one ``handle_flush`` call may run before it is
            reported as failed with :class:`FlushTimeout` (default 60.0).
        flush_meta: any object, handed to every flush as ``opts.meta``.
        insert_timeout: default seconds an insert waits under backpressure
            before raising :class:`BufferFull` (default 5.0).
        on_full: what an insert does when its partition is full and its
            flusher has every batch it may hold (``max_queued_batches``):
            ``"wait"`` (default) waits for room up to its timeout, then
            raises :class:`BufferFull`; ``"raise"`` raises
            :class:`BufferFull` at once (``insert_batch`` stores the leading
            items that fit, counted by ``BufferFull.stored``);
            ``"drop_newest"`` drops the items that do not fit and returns
            (``insert_batch`` stores the leading items that fit);
            ``"drop_oldest"`` drops the partition's oldest buffered items,
            never a batch already sealed or flushing, to make room, and
            stores the new ones.  Dropped items count as ``inserted`` and
            ``dropped`` in :meth:`stats` and :meth:`info`, and each drop
            emits a ``("data_buffer", "insert", "drop")`` telemetry event;
            a warning is logged at most once per 10 s per buffer.
        max_retries: how many times a batch whose ``handle_flush`` raised or
            timed out is handed to it again before it goes to
            ``handle_flush_error`` (default 0).  Retries come before the
            partition's next batch, so order holds; ``opts.attempt`` counts
            the calls.
        retry_backoff: base of the wait before a retry, in seconds (default
            0.1): before attempt ``n + 1`` the flusher waits a random time
            between 0 and ``min(retry_backoff_max, retry_backoff * 2 ** (n - 1))``
            ("full jitter").
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
        TypeError: no ``handle_flush``, an option of the wrong type, an
            unknown option (the message names the closest one), or a
            positional argument (the options are keyword-only).
        ValueError: an option out of range.
    """

    if TYPE_CHECKING:
        # Defined by the core (compiled or pure-Python): declared here with
        # the item type, for type checkers and the API reference.  `key` is
        # keyword-only here; the pure core takes it as a plain parameter
        # only to keep calls without it fast (see _core_py.BufferCore.insert).

        def insert(  # type: ignore[override]
            self, item: T, timeout: float | None = None, *, key: Hashable | None = None
        ) -> None:
            """Store one item in a partition (the next one round-robin, the thread's own, or ``key``'s).

            Args:
                item: any object; the buffer holds a reference until its
                    batch has been flushed.
                timeout: seconds to wait at most for room while the
                    partition is full and its previous batch is still
                    flushing; ``None``: the buffer's ``insert_timeout``.
                key: optional; with one, the call goes to partition
                    ``hash(key) % partitions`` whatever ``dispatch`` says,
                    so items with equal keys are flushed in insertion
                    order (keys with equal hashes share a partition).

            Raises:
                BufferFull: no room within ``timeout``; nothing was stored.
                BufferClosed: the buffer is closed.
                TypeError: ``key`` is not hashable; nothing was stored.
            """

        def insert_batch(  # type: ignore[override]
            self, items: Iterable[T], timeout: float | None = None, *, key: Hashable | None = None
        ) -> None:
            """Store every item of an iterable, in order, in one partition (``key``'s, if given).

            A batch larger than the flush threshold is split into
            consecutive flushes.

            Args:
                items: any iterable; it is consumed before anything is
                    stored, so one that raises midway stores nothing.
                timeout: as for :meth:`insert`, for each wait for room.
                key: as for :meth:`insert`.

            Raises:
                BufferFull: no room within ``timeout``; its ``stored``
                    counts the leading items stored.
                BufferClosed: the buffer is closed (``stored`` as above).
                TypeError: ``items`` is not iterable, is a ``str``,
                    ``bytes`` or ``bytearray`` (one item: wrap it in a
                    list), or ``key`` is not hashable; nothing was stored.
            """
