"""The asyncio engine, behind ``AsyncBuffer``: everything runs on one event loop.

The loop is the one running when the buffer is started.  On it:

- one flusher task per partition, which sleeps on an ``asyncio.Event`` (its
  wake), takes the partition's batches from the core one at a time and runs
  each batch's life (``Engine.life``) to its end, carrying out its effects:
  it awaits ``handle_flush`` within ``flush_timeout``, ``asyncio.sleep``
  before a retry, and ``handle_flush_error``;
- one ``loop.call_at`` timer per partition for the timed flushes, and one,
  the watchdog (``_watch``), that cancels a ``handle_flush`` call past
  ``flush_timeout``: armed when a call starts and finds it unarmed or set
  later, re-armed lazily when it fires early (no timer made per batch);
- the core's seal hook (``sealed``), which sets a partition's wake: directly
  on the loop's thread, through ``loop.call_soon_threadsafe`` from others.

Ownership.  Every attribute of the engine and of its partitions is written
on the loop's thread only (after ``start()``), except where a comment says
otherwise; other threads only insert (the core is thread-safe), read the
counters (``stats``/``info``/``size``/``dump``, through the core), and reach
the loop through ``sealed``, which reads ``loop``, ``_loop_thread`` and the
partitions' wakes, all written once by ``start()`` before ``loop``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import sys
import threading
from collections.abc import Awaitable, Callable, Iterable, Sequence
from types import FrameType
from typing import Any, TypeVar

from . import _core_py, _instrument
from ._contract import Taken
from ._errors import BufferClosed, BufferFull, FlushTimeout
from ._lifecycle import (
    CALL,
    SLEEP,
    THREAD_EXITS,
    Attempt,
    DropTally,
    Engine,
    Life,
    Outcome,
    PartState,
    SyncWaiter,
    logger,
)
from ._options import Callbacks, Options, check_timeout
from ._text import plural, stack_note

__all__ = ("AsyncEngine", "NoRoom")

T = TypeVar("T")

_get_ident = threading.get_ident


class NoRoom(BufferFull):
    """``BufferFull`` from a plain insert into a full partition, with what ``ainsert`` needs to go on.

    Shown to users as ``BufferFull``: it is one, and the rest is private.
    """

    def __init__(self, message: str, *, partition: int, seq: Sequence[Any], stored: int) -> None:
        super().__init__(message, stored=stored)
        self.partition = partition
        self.seq = seq


NoRoom.__name__ = NoRoom.__qualname__ = BufferFull.__name__
NoRoom.__module__ = "databuffer"


class _LoopPartition(PartState):
    """Per-partition state of the asyncio engine (the loop's thread owns it all).

    ``lock`` (from ``PartState``) is taken by the shared code around
    ``syncs`` and ``retried``; here only the loop's thread takes it.
    """

    def __init__(self, index: int) -> None:
        super().__init__(index)
        # Set by seals (through sealed), flush requests and aclose(); the
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
        # flush_timeout: the attempt in handle_flush and its loop-time
        # deadline, watched by one loop timer per partition (watchdog),
        # re-armed lazily when it fires early; timed_out is the attempt the
        # watchdog cancelled the flusher task for.
        self.flight: Attempt | None = None
        self.flight_task: asyncio.Task[Any] | None = None
        self.flight_deadline = math.inf
        self.watchdog: asyncio.TimerHandle | None = None
        self.watchdog_at = math.inf
        self.timed_out: Attempt | None = None
        # Where the flusher task was when the watchdog cancelled it: the
        # note of its FlushTimeout.
        self.timed_out_where: str | None = None

    def stop_timer(self) -> None:
        """Cancel the partition's timed flushes."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class AsyncEngine(Engine[T]):
    """The machinery of an ``AsyncBuffer``: tasks, timers and flushing on one loop."""

    parts: list[_LoopPartition]

    def __init__(self, front: Any, options: Options, callbacks: Callbacks) -> None:
        super().__init__(front, options, callbacks, seal_hook=True)
        self.kind = type(front).__name__
        self.parts = [_LoopPartition(p) for p in range(options.partitions)]
        # Written once by start(), on the loop's thread, loop last.
        self.loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        # sync_flush/aclose calls waiting for finished flushes.
        self._progress: list[asyncio.Future[None]] = []
        # The loop shut down (its tasks were cancelled) while the buffer was
        # open: logged once, then every partition flushes what it holds.
        self._shut_down = False
        # In a forked child: closed, its loop belongs to the parent.
        self.forked = False
        # A plain insert found a partition full (set from any thread, a
        # benign race: it only makes one ainsert yield once more or less).
        self._room_wanted = False
        # aclose() scheduled from another thread at interpreter exit.
        self._exit_close: concurrent.futures.Future[None] | None = None
        self.register()

    def describe(self) -> str:
        return f"{self.kind} {self.name!r}"

    # -- lifecycle (called by AsyncBuffer) --------------------------------

    def start(self) -> None:
        """Bind the buffer to the running loop; start its flusher tasks and timers."""
        loop = asyncio.get_running_loop()
        if self.core.is_closed():
            raise self.closed_error()
        if self.loop is not None:
            if self.loop is loop:
                return
            raise RuntimeError(
                f"{self.describe()} is bound to another event loop, the one it was started on: "
                "an AsyncBuffer runs on one loop; make one buffer per event loop"
            )
        now = loop.time()
        for part in self.parts:
            part.wake = asyncio.Event()
            part.deadline = now + self.next_interval()
        self._loop_thread = _get_ident()
        self.loop = loop  # published last: sealed reads it first
        for part in self.parts:
            self._start_flusher(part)
            part.timer = loop.call_at(part.deadline, self._on_timer, part)

    async def aclose(self, timeout: float | None) -> None:
        deadline = self._deadline(timeout)
        if self.stopped:
            return
        if self.loop is None and not self.forked:
            self.start()
        self._require_loop("aclose")
        self._refuse_own_task("aclose")
        # Inserts stop at once, even while another aclose() is flushing.
        self.core.mark_closed()
        self._supervise()
        for part in self.parts:
            _wake_all(part.room)
        try:
            await self._flush_and_wait("close", deadline)
        except TimeoutError:
            raise self.out_of_time("aclose", timeout, "await") from None
        self.stopping = True
        tasks = []
        for part in self.parts:
            part.stop_timer()
            if part.task is not None:
                tasks.append(part.task)
            assert part.wake is not None
            part.wake.set()
        if tasks:
            # Each is idle by now: it sees stopping and returns.
            try:
                async with asyncio.timeout_at(deadline):
                    await asyncio.wait(tasks)
            except TimeoutError:
                raise TimeoutError(
                    f"aclose(timeout={timeout!r}) of {self.describe()} ran out of time waiting for its "
                    "flusher tasks to stop (every item is flushed): await aclose() again to wait for them"
                ) from None
        self.stopped = True
        self.unregister()

    # -- operations (called by AsyncBuffer) -------------------------------

    def flush(self) -> None:
        if self.stopped:
            return
        self._require_loop("flush")
        self._supervise()
        for part in self.parts:
            self.request(part, "manual")

    async def sync_flush(self, timeout: float | None) -> list[Any]:
        deadline = self._deadline(timeout)
        if self.stopped:
            return []
        self._require_loop("sync_flush")
        self._refuse_own_task("sync_flush")
        self._supervise()
        try:
            waiter = await self._flush_and_wait("manual", deadline)
        except TimeoutError:
            raise self.out_of_time("sync_flush", timeout, "await") from None
        return waiter.outcome(self.name)

    async def ainsert(self, item: Any, timeout: float | None, key: Any = None) -> None:
        await self._ainsert(self._ainsert_raw, item, timeout, key, batch=False)

    async def ainsert_batch(self, items: Iterable[Any], timeout: float | None, key: Any = None) -> None:
        await self._ainsert(self._ainsert_batch_raw, items, timeout, key, batch=True)

    async def _ainsert(
        self,
        raw: Callable[[Any, Any, Any], Awaitable[Any]],
        arg: Any,
        timeout: float | None,
        key: Any,
        *,
        batch: bool,
    ) -> None:
        """An ``ainsert``/``ainsert_batch``; its insert events, when on, include the wait for room."""
        check_timeout(timeout)
        if not _core_py.insert_telemetry() or getattr(_instrument.emitting, "insert", False):
            await raw(arg, timeout, key)
            return
        start = _instrument.insert_started(self.name)
        try:
            result = await raw(arg, timeout, key)
        except BaseException as exc:  # a cancellation while it waited included
            _instrument.insert_failed(self.name, start, exc)
            raise
        _instrument.insert_done(self.name, start, result, batch=batch)

    # A cancelled ainsert/ainsert_batch says in a note what it stored: it
    # yields only before it stores anything (_let_flushers_run) and while it
    # waits for room (_wait_for_room), never after its last item is stored.

    async def _ainsert_raw(self, item: Any, timeout: float | None, key: Any) -> int:
        if self._room_wanted:
            await self._let_flushers_run("ainsert")
        try:
            p = self.core.insert_raw(item, None, key)
        except NoRoom as full:
            p, seq = full.partition, full.seq
        else:
            return p
        await self._wait_for_room(p, seq, 0, timeout, batch=False)
        return p

    async def _ainsert_batch_raw(
        self, items: Iterable[Any], timeout: float | None, key: Any
    ) -> tuple[int, int]:
        if self._room_wanted:
            await self._let_flushers_run("ainsert_batch")
        try:
            p, n = self.core.insert_batch_raw(items, None, key)
        except NoRoom as full:
            p, seq, stored = full.partition, full.seq, full.stored
        else:
            return p, n
        await self._wait_for_room(p, seq, stored, timeout, batch=True)
        return p, len(seq)

    async def _let_flushers_run(self, call: str) -> None:
        """Yield to the loop once, before storing, after a plain insert found a partition full.

        The usual hot path is ``insert``, then ``await ainsert`` on
        ``BufferFull``; with several partitions, round-robin stores that
        ``ainsert``'s item in another partition, which often has room, so it
        would return without ever yielding, and the full partition's flusher
        (woken by its seal) would not run until every partition was full.
        """
        self._room_wanted = False
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError as exc:
            exc.add_note(f"{call} was cancelled before it stored anything")
            raise

    # -- CoreHooks: the slow paths of inserts -----------------------------

    def insert_wait(self, p: int, item: Any, timeout: float | None) -> None:
        """A plain insert found partition ``p`` full: apply ``on_full`` ("wait": refuse, never block)."""
        seq = (item,)
        if not self.overflow(p, seq, 0, batch=False):
            raise self._no_room(p, seq, 0, batch=False)

    def insert_batch_wait(self, p: int, seq: Sequence[Any], start: int, timeout: float | None) -> None:
        if not self.overflow(p, seq, start, batch=True):
            raise self._no_room(p, seq, start, batch=True)

    def _no_room(self, p: int, seq: Sequence[Any], stored: int, *, batch: bool) -> NoRoom:
        # The next ainsert that finds room yields once (_let_flushers_run).
        self._room_wanted = True
        call = "ainsert_batch" if batch else "ainsert"
        return NoRoom(
            f"{self.full(p)}; await {call}() on the buffer's event loop to wait for room"
            + (f"; {plural(stored, 'leading item')} stored" if batch else ""),
            partition=p,
            seq=seq,
            stored=stored,
        )

    def attend(self) -> None:
        """Never asked for (``set_attention`` is not used by this engine)."""

    def sealed(self, p: int) -> None:
        """Called by the core after a seal (any thread): wake the partition's flusher task."""
        loop = self.loop
        if loop is None:
            return  # not started: the flushers take what is due when they start
        wake = self.parts[p].wake
        assert wake is not None
        if _get_ident() == self._loop_thread:
            wake.set()
            return
        try:
            loop.call_soon_threadsafe(wake.set)
        except RuntimeError:
            pass  # the loop is closed: see close_blocking, at interpreter exit

    def closed_error(self, stored: int = 0) -> BufferClosed:
        error = super().closed_error(stored)
        if self.forked:
            error.add_note("it was inherited through fork(): an AsyncBuffer is closed in a forked child")
        return error

    async def _wait_for_room(
        self, p: int, seq: Sequence[Any], stored: int, timeout: float | None, *, batch: bool
    ) -> None:
        seconds = self.config.insert_timeout if timeout is None else float(timeout)
        try:
            loop = self._require_loop("ainsert_batch" if batch else "ainsert")
        except RuntimeError as exc:
            if batch:
                exc.add_note(f"ainsert_batch stored {plural(stored, 'leading item')} of the call")
            raise
        part = self.parts[p]
        if self._own_task():
            # Room is made by this partition's flusher: a flush callback
            # that waited for it could be waiting for itself.
            raise BufferFull(
                f"{self.full(p)}, and an insert from the buffer's own flush callbacks "
                "does not wait for room" + (f"; {plural(stored, 'leading item')} stored" if batch else ""),
                stored=stored,
            )
        push_many = self.core.push_many
        try:
            async with asyncio.timeout(seconds):
                while (stored := push_many(p, seq, stored)) < len(seq):
                    room: asyncio.Future[None] = loop.create_future()
                    part.room.append(room)
                    await room
                    self._room_wanted = False  # this call yielded
        except TimeoutError:
            raise BufferFull(
                f"{self.full(p)}; gave up waiting for room after {seconds}s"
                + (f" with {plural(stored, 'leading item')} stored" if batch else ""),
                stored=stored,
            ) from None
        except asyncio.CancelledError as exc:
            if batch:
                exc.add_note(
                    f"ainsert_batch stored {plural(stored, 'leading item')} of the call "
                    "before it was cancelled"
                )
            else:
                exc.add_note("ainsert was cancelled while waiting for room: its item was not stored")
            raise

    # -- flush requests and waits -----------------------------------------

    def _deadline(self, timeout: float | None) -> float | None:
        """A deadline on the loop's clock (``None``: none); checks ``timeout``."""
        seconds = check_timeout(timeout)
        if seconds is None:
            return None
        return asyncio.get_running_loop().time() + seconds

    def _require_loop(self, call: str) -> asyncio.AbstractEventLoop:
        """The buffer's loop; raise unless it is the running one."""
        loop = self.loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is None:
            if self.forked:
                raise RuntimeError(f"{self.describe()} was inherited through fork(): it is closed here")
            raise RuntimeError(
                f"{call}() of {self.describe()} needs it started: use `async with buffer:` "
                "or `await buffer.start()` first"
            )
        if running is not loop:
            raise RuntimeError(
                f"{call}() of {self.describe()} must run on the event loop the buffer was started on"
            )
        return loop

    def _own_task(self) -> bool:
        """Whether the caller runs in one of this buffer's flusher tasks (a flush callback)."""
        task = asyncio.current_task()
        return task is not None and any(part.task is task for part in self.parts)

    def _refuse_own_task(self, call: str) -> None:
        if self._own_task():
            raise RuntimeError(
                f"{call}() of buffer {self.name!r} cannot be called from its own flush callbacks "
                "(handle_flush, handle_flush_error, telemetry handlers): it would wait for itself; "
                "use flush(), or call it from another task"
            )

    def in_own_thread(self) -> bool:
        """Whether the caller is the thread running the buffer's loop (it cannot wait for it)."""
        loop = self.loop
        return loop is not None and _get_ident() == self._loop_thread and loop.is_running()

    def request(self, part: _LoopPartition, trigger: str, upto: int | None = None) -> None:
        """Ask the flusher of ``part`` to flush items up to sequence ``upto``."""
        if self.note_request(part, trigger, upto) and part.wake is not None:
            part.wake.set()

    async def _flush_and_wait(self, trigger: str, deadline: float | None) -> SyncWaiter:
        """Flush every partition with ``trigger`` and wait for it (sync_flush, aclose)."""
        loop = self.loop
        assert loop is not None
        waiter = SyncWaiter(self.config.partitions)
        try:
            self.join_flushes(waiter, trigger)
            async with asyncio.timeout_at(deadline):
                while not self.reached(waiter.targets):
                    progress: asyncio.Future[None] = loop.create_future()
                    self._progress.append(progress)
                    await progress
        finally:
            self.leave_flushes(waiter)
        return waiter

    def progressed(self) -> None:
        """A batch was settled: let the waiting sync_flush/aclose calls check again."""
        if self._progress:
            waiting, self._progress = self._progress, []
            _wake_all(waiting)

    def _on_timer(self, part: _LoopPartition) -> None:
        """A partition's timer: request a timed flush when due, then re-arm for the next."""
        part.timer = None
        if self.stopping or self._shut_down:
            return
        loop = self.loop
        assert loop is not None
        try:
            now = loop.time()
            if now >= part.deadline:
                part.deadline = now + self.next_interval()
                self._supervise()
                self.request(part, "interval")
        finally:
            # Flushes move the deadline on (_call): re-armed lazily, here.
            part.timer = loop.call_at(part.deadline, self._on_timer, part)

    # -- tasks --------------------------------------------------------------

    def _start_flusher(self, part: _LoopPartition) -> None:
        loop = self.loop
        assert loop is not None
        task = loop.create_task(self._flusher_main(part), name=f"databuffer-{self.name}-flusher-{part.index}")
        part.task = task
        task.add_done_callback(lambda task: self._flusher_done(part, task))

    def _flusher_done(self, part: _LoopPartition, task: asyncio.Task[None]) -> None:
        if part.watchdog is not None and task is part.task:
            # Nothing to watch until a new flusher calls handle_flush.
            part.watchdog.cancel()
            part.watchdog = None
            part.watchdog_at = math.inf
        if task.cancelled() or self.stopping or task is not part.task:
            return
        exc = task.exception()
        if exc is None:
            return  # ended after draining (the loop shut down)
        logger.error(
            "buffer %r: the flusher of partition %d ended on %s; a new one starts on the next "
            "flush or timer round",
            self.name,
            part.index,
            type(exc).__name__,
            exc_info=(type(exc), exc, exc.__traceback__),
        )

    def _supervise(self) -> None:
        """Start a new flusher task in place of one that ended early (it logged why)."""
        if self.stopping or self._shut_down:
            return
        for part in self.parts:
            task = part.task
            if task is not None and task.done():
                self._start_flusher(part)
                logger.warning(
                    "buffer %r: started a new flusher for partition %d (the last one ended)",
                    self.name,
                    part.index,
                )

    async def _flusher_main(self, part: _LoopPartition) -> None:
        p = part.index
        wake = part.wake
        assert wake is not None
        take, flush = self.core.take, self._flush
        # Batches flushed in a row without yielding to the loop: a full
        # queue and a full ring, then one yield per batch (a producer that
        # keeps up must not starve the loop's other tasks).
        run = self.config.max_queued_batches + 2
        while True:
            wake.clear()
            taken = take(p, part.flush_upto)
            flushed = 0
            while taken is not None:
                if part.room:
                    _wake_all(part.room)
                try:
                    await flush(part, taken)
                except THREAD_EXITS:
                    raise
                except asyncio.CancelledError:
                    # The batch is settled (its life's finally).  A
                    # cancellation of this task is the loop shutting down;
                    # any other was raised by a callback.
                    if _cancelling():
                        if not self._cancelled_by_loop(part):
                            raise
                    else:
                        self.log_callback_escape(p)
                except BaseException:
                    self.log_callback_escape(p)
                # The next batch, or the partition marked idle, before any
                # other task runs: who waited for this flush sees it done.
                taken = take(p, part.flush_upto)
                flushed += 1
                if taken is not None and flushed >= run:
                    # Let the rest of the loop run between batches.
                    try:
                        await asyncio.sleep(0)
                    except asyncio.CancelledError as exc:
                        if not self._cancelled_by_loop(part):
                            # Cancelled again while draining: the batch taken fails.
                            await self._drive(part, self.failed_life(part, taken, exc))
                            raise
            if part.room:
                _wake_all(part.room)
            if self.stopping:
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

    async def _flush(self, part: _LoopPartition, taken: Taken) -> None:
        """Flush a batch the core handed out (see ``_drive`` for what it raises)."""
        attempt = self.first_attempt(part, taken)
        outcome, give_up = await self._call(part, attempt)
        if outcome[1] is None:
            self.succeeded(part, attempt, outcome[0])
            return
        life = self.life(part, attempt, outcome)
        # As in the threaded engine: nothing of the batch stays in this frame.
        del taken, attempt, outcome
        await self._drive(part, life, give_up)

    async def _drive(self, part: _LoopPartition, life: Life, pending: BaseException | None = None) -> None:
        """Carry out a batch's life to its end.

        Raises, once the batch is counted, what ends the task: a cancellation
        it must honour, ``SystemExit``/``KeyboardInterrupt`` from a callback.
        """
        value: Any = None
        effect: tuple[Any, ...] | None = None
        try:
            while True:
                effect = life.send(value)
                value = None
                if effect[0] is CALL:
                    value, give_up = await self._call(part, effect[1])
                    pending = pending or give_up
                elif effect[0] is SLEEP:
                    value = await self._backoff(part, effect[1])
                    pending = pending or value
                else:
                    await self._handle_error(life, effect[1], effect[2])
        except StopIteration as stop:
            # Only an error to raise is kept (see the threaded engine's _drive).
            if isinstance(stop.value, THREAD_EXITS):
                pending = stop.value
        value = effect = None
        if pending is not None:
            try:
                raise pending
            finally:
                pending = None

    async def _call(self, part: _LoopPartition, attempt: Attempt) -> tuple[Outcome, BaseException | None]:
        """Await ``handle_flush`` within ``flush_timeout``; also returns a cancellation to honour after it.

        The timeout is the partition's watchdog (``_watch``), not an
        ``asyncio.timeout`` per call: that made and cancelled a timer handle
        for every batch, more than half of the flusher's own work per batch.
        """
        loop = self.loop
        assert loop is not None
        config = self.config
        now = loop.time()
        # The flush happens now: the partition's next timed flush counts
        # from here (Engine.next_interval, inlined: this runs once per batch).
        part.deadline = now + config.flush_interval + config.flush_jitter * self.random.random()
        result: Any = None
        error: BaseException | None = None
        give_up: BaseException | None = None
        again = False
        call: Any = None
        task = asyncio.current_task()
        # Cancellations pending before the call are not the watchdog's.
        pending = 0 if task is None else task.cancelling()
        try:
            call = self.flush_fn(self.batch_for(attempt), attempt.opts)
            if not hasattr(type(call), "__await__"):
                raise TypeError(
                    f"handle_flush of {self.describe()} returned {type(call).__name__}, not an "
                    "awaitable: define it with async def"
                )
            part.flight = attempt
            part.flight_task = task
            part.flight_deadline = deadline = now + config.flush_timeout
            if deadline < part.watchdog_at:
                self._arm_watchdog(part, deadline)
            try:
                result = await call
            finally:
                part.flight = part.flight_task = None
            if part.timed_out is attempt and task is not None and task.uncancel() <= pending:
                # It swallowed the watchdog's cancellation and returned late.
                error = self._timed_out(part, attempt, None)
        except asyncio.CancelledError as exc:
            error = exc
            if part.timed_out is attempt and task is not None and task.uncancel() <= pending:
                # The watchdog's, and no other: flush_timeout ran out.
                error = self._timed_out(part, attempt, exc)
            elif _cancelling():
                # The flusher task's own cancellation (or handle_flush's).
                if self._cancelled_by_loop(part):
                    again = True  # the loop is shutting down: the drain tries it again
                else:
                    give_up = exc  # cancelled again while draining: stop here
        except BaseException as exc:  # any failure of the callback is the batch's failure
            error = exc
        try:
            return (result, error, again, give_up is not None), give_up
        finally:
            # The error's traceback holds this frame: nor it nor the batch stay here.
            error = give_up = call = None
            if part.timed_out is attempt:
                part.timed_out = None
                part.timed_out_where = None
            del attempt

    def _arm_watchdog(self, part: _LoopPartition, when: float) -> None:
        """Make the partition's watchdog fire at loop time ``when`` (or earlier)."""
        loop = self.loop
        assert loop is not None
        if part.watchdog is not None:
            part.watchdog.cancel()
        part.watchdog_at = when
        part.watchdog = loop.call_at(when, self._watch, part)

    def _watch(self, part: _LoopPartition) -> None:
        """The watchdog fired: cancel a ``handle_flush`` past ``flush_timeout``, or re-arm for the next."""
        part.watchdog = None
        part.watchdog_at = math.inf
        attempt = part.flight
        if attempt is None:
            return  # idle: the next call arms it again
        loop = self.loop
        assert loop is not None
        if loop.time() < part.flight_deadline:
            self._arm_watchdog(part, part.flight_deadline)
            return
        task = part.flight_task
        if task is not None and not task.done() and part.timed_out is not attempt:
            part.timed_out = attempt
            part.timed_out_where = _where_awaiting(task)
            task.cancel()

    def _timed_out(self, part: _LoopPartition, attempt: Attempt, cause: BaseException | None) -> FlushTimeout:
        opts = attempt.opts
        error = FlushTimeout(
            f"handle_flush of buffer {self.name!r} partition {opts.partition} ran past "
            f"flush_timeout={self.config.flush_timeout}s with a batch of {plural(opts.size, 'item')} and "
            "was cancelled; raise flush_timeout if the sink is only slow"
        )
        if part.timed_out_where is not None:
            error.add_note(part.timed_out_where)
        error.__cause__ = cause
        return error

    async def _backoff(self, part: _LoopPartition, delay: float) -> BaseException | None:
        """Sleep before a retry; the cancellation that interrupted it, unless the loop is shutting down."""
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError as exc:
            if not self._cancelled_by_loop(part):
                return exc
        return None

    async def _handle_error(self, life: Life, attempt: Attempt, error: BaseException) -> None:
        try:
            outcome = self.error_fn(attempt.batch, attempt.opts, error)
            if hasattr(type(outcome), "__await__"):
                await outcome
        except asyncio.CancelledError as exc:
            if _cancelling():
                life.throw(exc)  # the flusher task's own cancellation: counted, then raised
            self.log_error_handler_failure(attempt.opts)
        except Exception:
            self.log_error_handler_failure(attempt.opts)
        except BaseException as exc:
            life.throw(exc)  # the batch is counted (its finally), then exc goes on

    # -- the loop shutting down, and interpreter exit ----------------------

    def _cancelled_by_loop(self, part: _LoopPartition) -> bool:
        """A flusher task was cancelled by someone else: its loop is shutting down.

        ``asyncio.run()`` (and ``asyncio.Runner``) cancel every task left
        when the main coroutine returns.  The first time, the flusher takes
        the cancellation back (``uncancel``), the buffer closes to inserts
        and logs a warning (once), and the partition flushes what it holds
        (an attempt the cancellation interrupted included, see ``_call``)
        before the flusher ends.  Returns False when it was cancelled again
        while doing so: it gives up, and the batch at hand fails.
        """
        if part.draining or self.stopping:
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
                "holding %s (%d buffered, %d in flight): flushing them now; close it with "
                "`async with` or `await aclose()` before the loop ends",
                self.describe(),
                plural(left, "item"),
                stats["size"],
                stats["in_flight"],
            )
            self.core.mark_closed()
            for other in self.parts:
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
        if all(other.drained for other in self.parts):
            self.stopped = True
            self.unregister()

    def begin_close(self) -> None:
        """At interpreter exit: schedule aclose() on the loop if it runs in another thread."""
        loop = self.loop
        if self.stopped or loop is None or self._exit_close is not None:
            return
        if loop.is_running() and not loop.is_closed() and not self.in_own_thread():
            try:
                self._exit_close = asyncio.run_coroutine_threadsafe(self.aclose(None), loop)
            except RuntimeError:
                pass  # closed meanwhile

    def close_blocking(self, timeout: float | None) -> None:
        """Close from another thread than the loop's (``close_open_buffers``, at interpreter exit).

        If the loop runs in another thread, ``aclose()`` runs there.  If it
        stopped and is not closed, it is run here until ``aclose()``
        returns.  If it is closed (or the buffer never started), nothing can
        run the flushes: a warning names the buffer and the items left.
        """
        if self.stopped:
            return
        loop = self.loop
        if loop is not None and not loop.is_closed():
            if loop.is_running():
                self.begin_close()
                if self._exit_close is not None:
                    try:
                        self._exit_close.result(timeout)
                    except concurrent.futures.TimeoutError:
                        raise TimeoutError(
                            f"aclose() of {self.describe()}, run on its event loop at exit, did not "
                            f"finish within {timeout}s"
                        ) from None
                    return
            else:
                loop.run_until_complete(self.aclose(timeout))
                return
        stats = self.stats()
        self.core.mark_closed()
        self.stopping = self.stopped = True
        self.unregister()
        left = stats["size"] + stats["in_flight"]
        if loop is not None:
            logger.warning(
                "%s was left open when its event loop closed: %s left unflushed (%d buffered, "
                "%d in flight); close it with `async with buffer:` or `await buffer.aclose()` before "
                "its loop closes",
                self.describe(),
                plural(left, "item"),
                stats["size"],
                stats["in_flight"],
            )
        elif left:
            logger.warning(
                "%s was never started: %s left unflushed at exit; start it with `async with buffer:` "
                "or `await buffer.start()` on the event loop that inserts into it",
                self.describe(),
                plural(left, "item"),
            )

    # -- fork (see _shutdown's os.register_at_fork hooks) ----------------------

    def fork_before(self) -> None:
        self.core.fork_prepare()

    def fork_after_parent(self) -> None:
        self.core.fork_parent()

    def fork_after_child(self) -> list[Any]:
        """In a forked child: closed and empty (its items and its loop are the parent's)."""
        dropped = self.core.fork_child()
        self.drops = DropTally()  # the parent's may have been locked by another thread
        self.core.mark_closed()
        self.forked = True
        self.loop = None
        self.stopping = self.stopped = True
        self.unregister()
        self.parts = [_LoopPartition(p) for p in range(self.config.partitions)]
        self._progress = []
        return dropped


def _where_awaiting(task: asyncio.Task[Any]) -> str | None:
    """Where a flusher task waits, from its ``handle_flush`` call inward: the note of its ``FlushTimeout``.

    Only when the watchdog cancels a call (``_watch``).  ``Task.get_stack``
    gives one frame of a suspended coroutine: the chain of coroutines each
    awaits (``cr_await``) gives the rest.  A ``handle_flush`` that is not a
    coroutine (it returned another awaitable) shows the flusher's frames.
    """
    stack: list[FrameType] = []  # outermost first
    awaiting: Any = task.get_coro()
    while awaiting is not None:
        frame = getattr(awaiting, "cr_frame", None) or getattr(awaiting, "gi_frame", None)
        if frame is None:
            break  # a future, or an awaitable written in C
        stack.append(frame)
        awaiting = getattr(awaiting, "cr_await", None) or getattr(awaiting, "gi_yieldfrom", None)
    try:
        inside = next((i for i, f in enumerate(stack) if f.f_code is _CALL_CODE), len(stack))
        frames = stack[inside + 1 :] or stack
        if not frames:
            return None
        return stack_note(
            f"handle_flush was here when flush_timeout ran out (task {task.get_name()!r})", frames
        )
    finally:
        # Frames of a suspended task: not kept past this call.
        del stack, awaiting


_CALL_CODE = AsyncEngine._call.__code__


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
