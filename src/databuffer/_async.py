"""The ``AsyncBuffer`` class: the buffer for asyncio applications.

The same core as ``Buffer`` (compiled or pure Python) stores the items and
keeps the counters; this layer runs everything else on one event loop, the
one running when the buffer is started:

- one flusher task per partition, which sleeps on an ``asyncio.Event`` (its
  wake), takes the partition's batches from the core one at a time and
  awaits ``handle_flush`` for each, under ``asyncio.timeout(flush_timeout)``;
- one ``loop.call_at`` timer per partition for the timed flushes;
- the core's seal hook (``_sealed``), which sets a partition's wake: directly
  on the loop's thread, through ``loop.call_soon_threadsafe`` from others.

Ownership.  Every attribute of the layer and of its partitions is written on
the loop's thread only (after ``start()``), except where a comment says
otherwise; other threads only insert (the core is thread-safe), read the
counters (``stats``/``info``/``size``/``dump``, through the core), and reach
the loop through ``_sealed``, which reads ``_loop``, ``_loop_thread`` and
the partitions' wakes, all written once by ``start()`` before ``_loop``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import random
import sys
import threading
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Self

from . import _core_py
from ._buffer import (
    _THREAD_EXITS,
    FlushOpts,
    T,
    _check_seconds,
    _check_timeout,
    _emitting,
    _LayerBase,
    _monotonic_ns,
    _next_attempt,
    _PartState,
    _registry,
    _SyncWaiter,
    logger,
)
from ._compat import BufferCore
from ._errors import BufferClosed, BufferFull, FlushTimeout

__all__ = ("AsyncBuffer",)

_get_ident = threading.get_ident
_isawaitable = inspect.isawaitable


class _NoRoom(BufferFull):
    """``BufferFull`` from a plain insert into a full partition, with what ``ainsert`` needs to go on.

    Shown to users as ``BufferFull``: it is one, and the rest is private.
    """

    def __init__(self, message: str, *, partition: int, seq: Sequence[Any], stored: int) -> None:
        super().__init__(message, stored=stored)
        self.partition = partition
        self.seq = seq


_NoRoom.__name__ = _NoRoom.__qualname__ = BufferFull.__name__
_NoRoom.__module__ = "databuffer"


class _Attempt:
    """One call of ``handle_flush`` for a batch (owned by its flusher task)."""

    __slots__ = ("batch", "began_ns", "first", "opts", "start_ns")

    def __init__(self, batch: list[Any], opts: FlushOpts, first: int, began_ns: int = 0) -> None:
        self.batch = batch
        self.opts = opts
        self.first = first
        # When this attempt started, and when the batch's first attempt did.
        self.start_ns = 0
        self.began_ns = began_ns


class _LoopPartition(_PartState):
    """Per-partition state of the asyncio layer (the loop's thread owns it all).

    ``lock`` (from ``_PartState``) is taken by the shared reporting code
    around ``syncs`` and ``retried``; here only the loop's thread takes it.
    """

    def __init__(self, index: int) -> None:
        super().__init__(index)
        # Set by seals (through _sealed), flush requests and aclose(); the
        # flusher task clears it before it looks for batches.
        self.wake: asyncio.Event | None = None
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        # Loop time of the next timed flush; moved on by every flush.
        self.deadline = 0.0
        # ainsert/ainsert_batch calls waiting for room in this partition.
        self.room: list[asyncio.Future[None]] = []
        # The flusher was cancelled by someone else (the loop shutting
        # down): it flushes what is left (draining), then ends (drained).
        self.draining = False
        self.drained = False

    def stop_timer(self) -> None:
        """Cancel the partition's timed flushes."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class _AsyncLayer(_LayerBase[T]):
    """The asyncio layer of :class:`AsyncBuffer`: tasks, timers and flushing on one loop.

    ``AsyncBuffer`` is this layer over the compiled core (or the pure-Python
    one); the tests also build it over each core explicitly.
    """

    _handle_flush_def = "async def handle_flush(self, batch, opts)"
    _parts: list[_LoopPartition]

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
        flush_interval: float = 10.0,
        flush_jitter: float = 2.0,
        flush_timeout: float = 60.0,
        flush_meta: Any = None,
        insert_timeout: float = 5.0,
        max_retries: int = 0,
        retry_backoff: float = 0.1,
        retry_backoff_max: float = 10.0,
    ) -> None:
        self._configure(
            handle_flush=handle_flush,
            handle_flush_error=handle_flush_error,
            name=name,
            partitions=partitions,
            dispatch=dispatch,
            max_size=max_size,
            max_size_jitter=max_size_jitter,
            flush_interval=flush_interval,
            flush_jitter=flush_jitter,
            flush_timeout=flush_timeout,
            flush_meta=flush_meta,
            insert_timeout=insert_timeout,
            max_retries=max_retries,
            retry_backoff=retry_backoff,
            retry_backoff_max=retry_backoff_max,
            seal_hook=True,
        )
        fn = self._flush_fn
        if (inspect.isfunction(fn) or inspect.ismethod(fn)) and not inspect.iscoroutinefunction(fn):
            raise TypeError(
                f"{type(self).__name__} needs a coroutine function as handle_flush (async def), "
                f"not the plain function {getattr(fn, '__qualname__', fn)!r}; use Buffer for one"
            )
        self._random = random.Random()
        self._parts = [_LoopPartition(p) for p in range(self._partitions)]
        # Written once by start(), on the loop's thread, _loop last.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        # sync_flush/aclose calls waiting for finished flushes.
        self._progress: list[asyncio.Future[None]] = []
        self._stopping = False
        self._stopped = False
        # The loop shut down (its tasks were cancelled) while the buffer was
        # open: logged once, then every partition flushes what it holds.
        self._shut_down = False
        # In a forked child: closed, its loop belongs to the parent.
        self._forked = False
        # A plain insert found a partition full (set from any thread, a
        # benign race: it only makes one ainsert yield once more or less).
        self._room_wanted = False
        # aclose() scheduled from another thread at interpreter exit.
        self._exit_close: concurrent.futures.Future[None] | None = None
        _registry.add(self)

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

    _handle_flush_stub = handle_flush

    # -- lifecycle --------------------------------------------------------

    async def start(self) -> Self:
        """Bind the buffer to the running event loop and start its flusher tasks and timers.

        Idempotent on the same loop.  ``async with buffer:`` calls it.

        Raises:
            RuntimeError: the buffer is bound to another event loop, or closed.
        """
        loop = asyncio.get_running_loop()
        if self._is_closed():
            raise self._closed_error()
        if self._loop is not None:
            if self._loop is loop:
                return self
            raise RuntimeError(f"{self._describe()} is bound to another event loop")
        now = loop.time()
        for part in self._parts:
            part.wake = asyncio.Event()
            part.deadline = now + self._next_interval()
        self._loop_thread = _get_ident()
        self._loop = loop  # published last: _sealed reads it first
        for part in self._parts:
            self._start_flusher(part)
            part.timer = loop.call_at(part.deadline, self._on_timer, part)
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
        deadline = self._deadline(timeout)
        if self._stopped:
            return
        if self._loop is None and not self._forked:
            await self.start()
        self._require_loop("aclose")
        self._refuse_own_task("aclose")
        # Inserts stop at once, even while another aclose() is flushing.
        self._mark_closed()
        self._supervise()
        for part in self._parts:
            _wake_all(part.room)
        try:
            await self._flush_and_wait("close", deadline)
        except TimeoutError:
            raise TimeoutError(
                f"{self._describe()}: flushes still running when the timeout ran out; it is closed "
                "to inserts and its flushes go on: await aclose() again to wait for them"
            ) from None
        self._stopping = True
        tasks = []
        for part in self._parts:
            part.stop_timer()
            if part.task is not None:
                tasks.append(part.task)
            assert part.wake is not None
            part.wake.set()
        if tasks:
            # Each is idle by now: it sees _stopping and returns.
            try:
                async with asyncio.timeout_at(deadline):
                    await asyncio.wait(tasks)
            except TimeoutError:
                raise TimeoutError(
                    f"{self._describe()}: its flusher tasks did not stop before the timeout ran out"
                ) from None
        self._stopped = True
        _registry.discard_open(self)

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
        if self._stopped:
            return
        self._require_loop("flush")
        self._supervise()
        for part in self._parts:
            self._request(part, "manual")

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
        deadline = self._deadline(timeout)
        if self._stopped:
            return []
        self._require_loop("sync_flush")
        self._refuse_own_task("sync_flush")
        self._supervise()
        waiter = await self._flush_and_wait("manual", deadline)
        errors = [error for errs in waiter.errors for error in errs]
        if errors:
            raise BaseExceptionGroup(
                f"sync_flush of buffer {self._name!r}: {len(errors)} flush(es) failed", errors
            )
        return [result for results in waiter.results for result in results]

    async def ainsert(self, item: T, timeout: float | None = None) -> None:
        """Store one item, waiting for room while its partition is full and flushing.

        Returns at once while there is room (as :meth:`insert` does).

        Args:
            item: any object.
            timeout: seconds to wait at most for room; ``None``: the
                buffer's ``insert_timeout``.

        Raises:
            BufferFull: no room within ``timeout``; nothing was stored.
            BufferClosed: the buffer is closed (or closed while waiting).
            RuntimeError: it had to wait, and the buffer is not started or
                is bound to another event loop.
        """
        if timeout is not None:
            _check_seconds("timeout", timeout, zero_ok=True)
        if _core_py._insert_events and not getattr(_emitting, "insert", False):
            await self._ainstrumented(self._ainsert_raw, item, timeout, batch=False)
            return
        await self._ainsert_raw(item, timeout)

    async def ainsert_batch(self, items: Iterable[T], timeout: float | None = None) -> None:
        """Store every item of an iterable, in order, in one partition, waiting for room between chunks.

        Args:
            items: any iterable; it is consumed before anything is stored.
            timeout: seconds to wait at most for room, for each wait;
                ``None``: the buffer's ``insert_timeout``.

        Raises:
            BufferFull: no room within ``timeout``; its ``stored`` counts the
                leading items stored.
            BufferClosed: the buffer is closed (``stored`` as above).
            TypeError: ``items`` is not iterable.
            RuntimeError: as for :meth:`ainsert`.
        """
        if timeout is not None:
            _check_seconds("timeout", timeout, zero_ok=True)
        if _core_py._insert_events and not getattr(_emitting, "insert", False):
            await self._ainstrumented(self._ainsert_batch_raw, items, timeout, batch=True)
            return
        await self._ainsert_batch_raw(items, timeout)

    async def _ainstrumented(
        self, raw: Callable[[Any, Any], Awaitable[Any]], arg: Any, timeout: float | None, *, batch: bool
    ) -> None:
        """An ``ainsert``/``ainsert_batch`` with its insert events (the wait for room included)."""
        start = self._insert_started()
        try:
            result = await raw(arg, timeout)
        except BaseException as exc:  # a cancellation while it waited included
            self._insert_failed(start, exc)
            raise
        self._insert_done(start, result, batch=batch)

    async def _ainsert_raw(self, item: Any, timeout: float | None) -> int:
        try:
            p = self._insert_raw(item, None)
        except _NoRoom as full:
            p, seq = full.partition, full.seq
        else:
            if self._room_wanted:
                await self._let_flushers_run()
            return p
        await self._wait_for_room(p, seq, 0, timeout, batch=False)
        return p

    async def _ainsert_batch_raw(self, items: Iterable[Any], timeout: float | None) -> tuple[int, int]:
        try:
            p, n = self._insert_batch_raw(items, None)
        except _NoRoom as full:
            p, seq, stored = full.partition, full.seq, full.stored
        else:
            if self._room_wanted:
                await self._let_flushers_run()
            return p, n
        await self._wait_for_room(p, seq, stored, timeout, batch=True)
        return p, len(seq)

    async def _let_flushers_run(self) -> None:
        """Yield to the loop once, after a plain insert found a partition full.

        The usual hot path is ``insert``, then ``await ainsert`` on
        ``BufferFull``; with several partitions, round-robin stores that
        ``ainsert``'s item in another partition, which often has room, so it
        would return without ever yielding, and the full partition's flusher
        (woken by its seal) would not run until every partition was full.
        """
        self._room_wanted = False
        await asyncio.sleep(0)

    # -- slow paths called by the core ------------------------------------

    def _insert_wait(self, p: int, item: Any, timeout: float | None) -> None:
        """A plain insert found partition ``p`` full while flushing: refuse at once (never block the loop)."""
        raise self._no_room(p, (item,), 0, batch=False)

    def _insert_batch_wait(self, p: int, seq: Sequence[Any], start: int, timeout: float | None) -> None:
        raise self._no_room(p, seq, start, batch=True)

    def _no_room(self, p: int, seq: Sequence[Any], stored: int, *, batch: bool) -> _NoRoom:
        # The next ainsert that finds room yields once (_let_flushers_run).
        self._room_wanted = True
        call = "ainsert_batch" if batch else "ainsert"
        return _NoRoom(
            f"{self._full(p)}; await {call}() on the buffer's event loop to wait for room"
            + (f"; {stored} leading items stored" if batch else ""),
            partition=p,
            seq=seq,
            stored=stored,
        )

    async def _wait_for_room(
        self, p: int, seq: Sequence[Any], stored: int, timeout: float | None, *, batch: bool
    ) -> None:
        seconds = self._insert_timeout if timeout is None else float(timeout)
        try:
            loop = self._require_loop("ainsert_batch" if batch else "ainsert")
        except RuntimeError as exc:
            if batch:
                exc.add_note(f"ainsert_batch stored {stored} leading items of the call")
            raise
        part = self._parts[p]
        if self._own_task():
            # Room is made by this partition's flusher: a flush callback
            # that waited for it could be waiting for itself.
            raise BufferFull(
                f"{self._full(p)}, and an insert from the buffer's own flush callbacks "
                "does not wait for room" + (f"; {stored} leading items stored" if batch else ""),
                stored=stored,
            )
        try:
            async with asyncio.timeout(seconds):
                while (stored := self._push_many(p, seq, stored)) < len(seq):
                    room: asyncio.Future[None] = loop.create_future()
                    part.room.append(room)
                    await room
                    self._room_wanted = False  # this call yielded
        except TimeoutError:
            raise BufferFull(
                f"{self._full(p)}; gave up after {seconds}s"
                + (f" with {stored} leading items stored" if batch else ""),
                stored=stored,
            ) from None
        except asyncio.CancelledError as exc:
            if batch:
                exc.add_note(
                    f"ainsert_batch stored {stored} leading items of the call before it was cancelled"
                )
            raise

    def _sealed(self, p: int) -> None:
        """Called by the core after a seal (any thread): wake the partition's flusher task."""
        loop = self._loop
        if loop is None:
            return  # not started: the flushers take what is due when they start
        wake = self._parts[p].wake
        assert wake is not None
        if _get_ident() == self._loop_thread:
            wake.set()
            return
        try:
            loop.call_soon_threadsafe(wake.set)
        except RuntimeError:
            pass  # the loop is closed: see _close_blocking, at interpreter exit

    def _attend(self) -> None:
        """Never asked for (``_set_attention`` is not used by this layer)."""

    # -- flushing ---------------------------------------------------------

    def _deadline(self, timeout: float | None) -> float | None:
        """A deadline on the loop's clock (``None``: none); checks ``timeout``."""
        seconds = _check_timeout(timeout)
        if seconds is None:
            return None
        return asyncio.get_running_loop().time() + seconds

    def _describe(self) -> str:
        return f"{type(self).__name__} {self._name!r}"

    def _require_loop(self, call: str) -> asyncio.AbstractEventLoop:
        """The buffer's loop; raise unless it is the running one."""
        loop = self._loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is None:
            if self._forked:
                raise RuntimeError(f"{self._describe()} was inherited through fork(): it is closed here")
            raise RuntimeError(
                f"{call}() of {self._describe()} needs it started: use `async with buffer:` "
                "or `await buffer.start()` first"
            )
        if running is not loop:
            raise RuntimeError(
                f"{call}() of {self._describe()} must run on the event loop the buffer was started on"
            )
        return loop

    def _own_task(self) -> bool:
        """Whether the caller runs in one of this buffer's flusher tasks (a flush callback)."""
        task = asyncio.current_task()
        return task is not None and any(part.task is task for part in self._parts)

    def _refuse_own_task(self, call: str) -> None:
        if self._own_task():
            raise RuntimeError(
                f"{call}() of buffer {self._name!r} cannot be called from its own flush callbacks "
                "(handle_flush, handle_flush_error, telemetry handlers): it would wait for itself; "
                "use flush(), or call it from another task"
            )

    def _in_own_thread(self) -> bool:
        """Whether the caller is the thread running the buffer's loop (it cannot wait for it)."""
        loop = self._loop
        return loop is not None and _get_ident() == self._loop_thread and loop.is_running()

    def _request(self, part: _LoopPartition, trigger: str, upto: int | None = None) -> None:
        """Ask the flusher of ``part`` to flush items up to sequence ``upto``."""
        if self._note_request(part, trigger, upto) and part.wake is not None:
            part.wake.set()

    async def _flush_and_wait(self, trigger: str, deadline: float | None) -> _SyncWaiter:
        """Flush every partition with ``trigger`` and wait for it (sync_flush, aclose)."""
        loop = self._loop
        assert loop is not None
        waiter = _SyncWaiter(self._partitions)
        try:
            self._join_flushes(waiter, trigger)
            async with asyncio.timeout_at(deadline):
                while not self._reached(waiter.targets):
                    progress: asyncio.Future[None] = loop.create_future()
                    self._progress.append(progress)
                    await progress
        finally:
            self._leave_flushes(waiter)
        return waiter

    def _progressed(self) -> None:
        """A batch was settled: let the waiting sync_flush/aclose calls check again."""
        if self._progress:
            waiting, self._progress = self._progress, []
            _wake_all(waiting)

    def _on_timer(self, part: _LoopPartition) -> None:
        """A partition's timer: request a timed flush when due, then re-arm for the next."""
        part.timer = None
        if self._stopping or self._shut_down:
            return
        loop = self._loop
        assert loop is not None
        try:
            now = loop.time()
            if now >= part.deadline:
                part.deadline = now + self._next_interval()
                self._supervise()
                self._request(part, "interval")
        finally:
            # Flushes move the deadline on (_run): re-armed lazily, here.
            part.timer = loop.call_at(part.deadline, self._on_timer, part)

    def _start_flusher(self, part: _LoopPartition) -> None:
        loop = self._loop
        assert loop is not None
        task = loop.create_task(
            self._flusher_main(part), name=f"databuffer-{self._name}-flusher-{part.index}"
        )
        part.task = task
        task.add_done_callback(lambda task: self._flusher_done(part, task))

    def _flusher_done(self, part: _LoopPartition, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._stopping or task is not part.task:
            return
        exc = task.exception()
        if exc is None:
            return  # ended after draining (the loop shut down)
        logger.error(
            "buffer %r: the flusher of partition %d ended on %s; a new one starts on the "
            "next flush or timer round",
            self._name,
            part.index,
            type(exc).__name__,
            exc_info=(type(exc), exc, exc.__traceback__),
        )

    def _supervise(self) -> None:
        """Start a new flusher task in place of one that ended early (it logged why)."""
        if self._stopping or self._shut_down:
            return
        for part in self._parts:
            task = part.task
            if task is not None and task.done():
                self._start_flusher(part)
                logger.warning(
                    "buffer %r: started a new flusher for partition %d (the last one ended)",
                    self._name,
                    part.index,
                )

    async def _flusher_main(self, part: _LoopPartition) -> None:
        p = part.index
        wake = part.wake
        assert wake is not None
        take, flush_one = self._take, self._flush_one
        while True:
            wake.clear()
            taken = take(p, part.flush_upto)
            while taken is not None:
                if part.room:
                    _wake_all(part.room)
                try:
                    await flush_one(part, taken)
                except _THREAD_EXITS:
                    raise
                except asyncio.CancelledError:
                    # The batch is settled (_settle's finally).  A cancellation
                    # of this task is the loop shutting down; any other was
                    # raised by a callback.
                    if _cancelling():
                        if not self._cancelled_by_loop(part):
                            raise
                    else:
                        self._log_callback_escape(p)
                except BaseException:
                    self._log_callback_escape(p)
                # The next batch, or the partition marked idle, before any
                # other task runs: who waited for this flush sees it done.
                taken = take(p, part.flush_upto)
                if taken is not None:
                    # Let the rest of the loop run between batches.
                    try:
                        await asyncio.sleep(0)
                    except asyncio.CancelledError as exc:
                        if not self._cancelled_by_loop(part):
                            # Cancelled again while draining: the batch taken fails.
                            await self._fail_taken(part, taken, exc)
                            raise
            if part.room:
                _wake_all(part.room)
            if self._stopping:
                return
            if part.draining:
                self._drained(part)
                # The cancellation that started the drain, honoured.
                raise asyncio.CancelledError
            try:
                await wake.wait()
            except asyncio.CancelledError:
                if not self._cancelled_by_loop(part):
                    raise

    async def _flush_one(self, part: _LoopPartition, taken: tuple[list[Any], bool, int]) -> None:
        attempt: _Attempt | None = self._first_attempt(part, taken)
        del taken
        while attempt is not None:
            attempt = await self._run(part, attempt)

    def _first_attempt(self, part: _LoopPartition, taken: tuple[list[Any], bool, int]) -> _Attempt:
        """The first attempt at a batch the core handed out (``_take``); emits its ``start`` event."""
        batch, by_size, first = taken
        trigger = "size" if by_size else part.flush_trigger
        opts = FlushOpts(self._flush_meta, len(batch), part.index, self._name, trigger)
        self._report_start(opts)
        return _Attempt(batch, opts, first)

    async def _fail_taken(
        self, part: _LoopPartition, taken: tuple[list[Any], bool, int], error: BaseException
    ) -> None:
        """Report a batch taken from the core as failed without calling ``handle_flush``."""
        attempt = self._first_attempt(part, taken)
        attempt.start_ns = attempt.began_ns = _monotonic_ns()
        await self._settle(part, attempt, None, error)

    async def _run(self, part: _LoopPartition, attempt: _Attempt) -> _Attempt | None:
        """Await ``handle_flush`` for one attempt; returns the next attempt (a retry) or None."""
        loop = self._loop
        assert loop is not None
        attempt.start_ns = _monotonic_ns()
        if not attempt.began_ns:
            attempt.began_ns = attempt.start_ns
        # The flush happens now: the partition's next timed flush counts from here.
        part.deadline = loop.time() + self._next_interval()
        result: Any = None
        error: BaseException | None = None
        give_up: BaseException | None = None
        again = False
        scope: asyncio.Timeout | None = None
        try:
            # With retries, each attempt gets its own copy: a handle_flush
            # that consumed its list must not empty the next try.
            batch = list(attempt.batch) if self._max_retries else attempt.batch
            call = self._flush_fn(batch, attempt.opts)
            del batch
            if not _isawaitable(call):
                raise TypeError(
                    f"handle_flush of {self._describe()} returned {type(call).__name__}, not an "
                    "awaitable: define it with async def"
                )
            async with asyncio.timeout(self._flush_timeout) as scope:
                result = await call
            if scope.expired():
                # It swallowed the cancellation and returned late.
                error = self._timed_out(attempt, None)
        except TimeoutError as exc:
            error = self._timed_out(attempt, exc) if scope is not None and scope.expired() else exc
        except asyncio.CancelledError as exc:
            # Ours (flush_timeout) became TimeoutError above: this one is
            # the flusher task's own cancellation, or handle_flush's.
            error = exc
            if _cancelling():
                if self._cancelled_by_loop(part):
                    again = True  # the loop is shutting down: the drain tries it again
                else:
                    give_up = exc  # cancelled again while draining: stop here
        except BaseException as exc:  # any failure of the callback is the batch's failure
            error = exc
        try:
            return await self._conclude(part, attempt, result, error, final=give_up is not None, again=again)
        finally:
            error = None  # the traceback holds this frame
            if give_up is not None:
                raise give_up

    def _timed_out(self, attempt: _Attempt, cause: BaseException | None) -> FlushTimeout:
        opts = attempt.opts
        error = FlushTimeout(
            f"handle_flush of buffer {self._name!r} partition {opts.partition} ran past "
            f"flush_timeout={self._flush_timeout}s with a batch of {opts.size} items; it was cancelled"
        )
        error.__cause__ = cause
        return error

    async def _conclude(
        self,
        part: _LoopPartition,
        attempt: _Attempt,
        result: Any,
        error: BaseException | None,
        *,
        final: bool = False,
        again: bool = False,
    ) -> _Attempt | None:
        """After an attempt: settle the batch, or return its next attempt (a retry).

        ``final``: settle it whatever the retries left.  ``again``: the
        attempt was interrupted by the loop shutting down; it is tried again
        at once, whatever the retries left (the drain flushes it).
        """
        opts = attempt.opts
        if (
            error is None
            or final
            or isinstance(error, _THREAD_EXITS)
            or (opts.attempt > self._max_retries and not again)
        ):
            await self._settle(part, attempt, result, error)
            if isinstance(error, _THREAD_EXITS):
                raise error
            return None
        delay = self._report_retry(part, opts, attempt.start_ns, error, 0.0 if again else None)
        if delay > 0:
            try:
                await asyncio.sleep(delay)
            except asyncio.CancelledError as exc:
                if not self._cancelled_by_loop(part):
                    await self._settle(part, attempt, None, exc)
                    raise
        return _Attempt(attempt.batch, _next_attempt(opts), attempt.first, attempt.began_ns)

    async def _settle(
        self, part: _LoopPartition, attempt: _Attempt, result: Any, error: BaseException | None
    ) -> None:
        """Report a finished batch: telemetry, error handler, counters, waiters."""
        opts = attempt.opts
        try:
            self._report_outcome(opts, attempt.began_ns, error)
            if error is not None:
                try:
                    outcome = self._error_fn(attempt.batch, opts, error)
                    if _isawaitable(outcome):
                        await outcome
                except asyncio.CancelledError:
                    if _cancelling():
                        raise  # the flusher task's own cancellation
                    self._log_error_handler_failure(opts)
                except Exception:
                    self._log_error_handler_failure(opts)
        finally:
            # Whatever a callback raised, the batch is finished and counted.
            self._record(part, opts, attempt.first, result, error)
            self._progressed()

    # -- the loop shutting down, and interpreter exit ----------------------

    def _cancelled_by_loop(self, part: _LoopPartition) -> bool:
        """A flusher task was cancelled by someone else: its loop is shutting down.

        ``asyncio.run()`` (and ``asyncio.Runner``) cancel every task left
        when the main coroutine returns.  The first time, the flusher takes
        the cancellation back (``uncancel``), the buffer closes to inserts
        and logs a warning (once), and the partition flushes what it holds
        (an attempt the cancellation interrupted included, see ``_run``)
        before the flusher ends.  Returns False when it was cancelled again
        while doing so: it gives up, and the batch at hand fails.
        """
        if part.draining or self._stopping:
            return False
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        if not self._shut_down:
            self._shut_down = True
            stats = self.stats()
            left = stats["size"] + stats["in_flight"]
            logger.warning(
                "%s was still open when its event loop shut down (its tasks were cancelled), "
                "holding %d items (%d buffered, %d in flight): flushing them now; close it with "
                "`async with` or `await aclose()` before the loop ends",
                self._describe(),
                left,
                stats["size"],
                stats["in_flight"],
            )
            self._mark_closed()
            for other in self._parts:
                other.stop_timer()
                other.flush_trigger = "close"
                other.flush_upto = sys.maxsize
                _wake_all(other.room)
        part.draining = True
        part.flush_trigger = "close"
        part.flush_upto = sys.maxsize
        return True

    def _drained(self, part: _LoopPartition) -> None:
        """A draining flusher flushed everything; the last one marks the buffer stopped."""
        part.drained = True
        if all(other.drained for other in self._parts):
            self._stopped = True
            _registry.discard_open(self)

    def _begin_close(self) -> None:
        """At interpreter exit: schedule aclose() on the loop if it runs in another thread."""
        loop = self._loop
        if self._stopped or loop is None or self._exit_close is not None:
            return
        if loop.is_running() and not loop.is_closed() and not self._in_own_thread():
            try:
                self._exit_close = asyncio.run_coroutine_threadsafe(self.aclose(), loop)
            except RuntimeError:
                pass  # closed meanwhile

    def _close_blocking(self, timeout: float | None) -> None:
        """Close from another thread than the loop's (``close_open_buffers``, at interpreter exit).

        If the loop runs in another thread, ``aclose()`` runs there.  If it
        stopped and is not closed, it is run here until ``aclose()``
        returns.  If it is closed (or the buffer never started), nothing can
        run the flushes: a warning names the buffer and the items left.
        """
        if self._stopped:
            return
        loop = self._loop
        if loop is not None and not loop.is_closed():
            if loop.is_running():
                self._begin_close()
                if self._exit_close is not None:
                    try:
                        self._exit_close.result(timeout)
                    except concurrent.futures.TimeoutError:
                        raise TimeoutError(f"{self._describe()}: not closed within {timeout}s") from None
                    return
            else:
                loop.run_until_complete(self.aclose(timeout))
                return
        stats = self.stats()
        self._mark_closed()
        self._stopping = self._stopped = True
        _registry.discard_open(self)
        left = stats["size"] + stats["in_flight"]
        if left or loop is not None:
            logger.warning(
                "%s was left open when its event loop %s: %d items are left unflushed "
                "(%d buffered, %d in flight); close it with `async with` or `await aclose()`",
                self._describe(),
                "closed" if loop is not None else "ended (it was never started)",
                left,
                stats["size"],
                stats["in_flight"],
            )

    # -- fork (see _shutdown's os.register_at_fork hooks) ----------------------

    def _fork_before(self) -> None:
        self._fork_prepare()

    def _fork_after_parent(self) -> None:
        self._fork_parent()

    def _fork_after_child(self) -> list[Any]:
        """In a forked child: closed and empty (its items and its loop are the parent's)."""
        dropped = self._fork_child()
        self._mark_closed()
        self._forked = True
        self._loop = None
        self._stopping = self._stopped = True
        _registry.discard_open(self)
        self._parts = [_LoopPartition(p) for p in range(self._partitions)]
        self._progress = []
        return dropped

    def _closed_error(self, stored: int = 0) -> BufferClosed:
        error = super()._closed_error(stored)
        if self._forked:
            error.add_note("it was inherited through fork(): an AsyncBuffer is closed in a forked child")
        return error


def _cancelling() -> int:
    """How many cancellations of the current task are pending (0 outside a task)."""
    task = asyncio.current_task()
    return 0 if task is None else task.cancelling()


def _wake_all(futures: list[asyncio.Future[None]]) -> None:
    """Resolve every pending future of the list, and empty it."""
    for future in futures:
        if not future.done():
            future.set_result(None)
    futures.clear()


class AsyncBuffer(_AsyncLayer[T], BufferCore):
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
        flush_interval: seconds between timed flushes of a partition,
            counted from its last flush of any kind (default 10.0).
        flush_jitter: a random 0..n seconds added to ``flush_interval``,
            drawn anew after every flush (default 2.0).
        flush_timeout: seconds one ``handle_flush`` call may run before it
            is cancelled and reported as :class:`FlushTimeout` (default 60.0).
        flush_meta: any object, handed to every flush as ``opts.meta``.
        insert_timeout: default seconds ``ainsert``/``ainsert_batch`` wait
            for room before raising :class:`BufferFull` (default 5.0).
        max_retries: how many times a failed or timed-out batch is handed to
            ``handle_flush`` again before it goes to ``handle_flush_error``
            (default 0); as for :class:`Buffer`.
        retry_backoff: base of the random wait before a retry, in seconds
            (default 0.1), as for :class:`Buffer`.
        retry_backoff_max: the cap on that wait (default 10.0).

    Raises:
        TypeError: no ``handle_flush``, a plain function as
            ``handle_flush``, or an option of the wrong type.
        ValueError: an option out of range.
    """

    if TYPE_CHECKING:
        # Defined by the core (compiled or pure-Python): declared here with
        # the item type, for type checkers and the API reference.

        def insert(self, item: T) -> None:  # type: ignore[override]  # it never waits
            """Store one item in a partition (the next one round-robin, or the thread's own).

            Never waits: safe on the event loop and from any thread.  (The
            core's ``timeout`` argument, if given, is ignored.)

            Raises:
                BufferFull: the partition is full while its previous batch
                    is flushing; nothing was stored (``await ainsert()``
                    waits for room instead).
                BufferClosed: the buffer is closed.
            """

        def insert_batch(self, items: Iterable[T]) -> None:  # type: ignore[override]
            """Store every item of an iterable, in order, in one partition; never waits.

            Raises:
                BufferFull: no room for all of them; its ``stored`` counts
                    the leading items stored (``await ainsert_batch()``
                    waits for room instead).
                BufferClosed: the buffer is closed (``stored`` as above).
                TypeError: ``items`` is not iterable.
            """
