"""The threaded engine, behind ``Buffer``: one flusher thread per partition and one timer thread.

A flusher sleeps on its partition's wake event in the core
(``Core.wait_wake``); sealing inserts, flush requests and ``close`` wake
it.  It takes the partition's batches from the core one at a time and runs
each batch's life (``Engine.life``) to its end, carrying out its effects:
it calls ``handle_flush``, sleeps before a retry, calls
``handle_flush_error``.

The timer thread requests the timed flushes and enforces ``flush_timeout``:
it abandons a ``handle_flush`` call that runs past it (``_abandon``) and
starts a new flusher thread, which goes on with the batch's life where the
stuck call left it, reporting it as ``FlushTimeout``.  Exactly one of the
two concludes an attempt: whoever takes the attempt's ``claim`` first.

Locks, what each guards, and their order: see docs/architecture.md.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any, TypeVar, overload

from ._contract import Taken
from ._errors import BufferFull, FlushTimeout
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
    raised,
)
from ._notify import Notifier
from ._options import Callbacks, Options, check_timeout
from ._text import plural, stack_note

__all__ = ("ThreadEngine",)

T = TypeVar("T")

_monotonic = time.monotonic

# How long the main thread waits at a time in a loop that checks again
# anyway: CPython 3.13t can miss a signal (Ctrl-C) that arrives just as a
# wait starts, until that wait ends.
_MAIN_THREAD_WAIT_STEP = 0.25
# How long a constructor that failed waits for each thread it had started
# (they have nothing to do but end).
_STOP_WAIT = 5.0


class _OwnedThread(threading.Thread):
    """A thread of a buffer's engine (see ``ThreadEngine.in_own_thread``)."""

    def __init__(self, owner: ThreadEngine[Any], **kwargs: Any) -> None:
        super().__init__(daemon=True, **kwargs)
        self.owner = owner
        # Set by the thread itself once it has stopped working for the
        # buffer (_thread_ended): it may still be alive for a moment, but
        # _supervise replaces it at once.
        self.ended = False


class _Watch:
    """An attempt in ``handle_flush``, watched by the timer thread for ``flush_timeout``.

    Exactly one of the flusher (the call returned) and the timer thread (the
    call ran past ``deadline``) concludes the attempt: whoever takes
    ``claim`` first, a non-blocking acquire.  A retry is a new watch, so a
    late timer can never claim it by mistake.
    """

    __slots__ = ("attempt", "claim", "deadline", "life")

    def __init__(self, life: Life | None, attempt: Attempt, deadline: float) -> None:
        # The batch's life, once it has one (a retry); None for a first attempt.
        self.life = life
        self.attempt = attempt
        self.deadline = deadline
        self.claim = threading.Lock()


class _Partition(PartState):
    """Per-partition state of the threaded engine."""

    def __init__(self, index: int) -> None:
        super().__init__(index)
        # The attempt in handle_flush: written by its flusher thread, read by
        # the timer thread; _Watch.claim decides who concludes it.
        self.flight: _Watch | None = None
        # Inserts waiting for room wait on it, holding no lock, and try the
        # core again after every take (_room_freed) and at close.
        self.room = Notifier()
        # How many inserts wait for room (written under PartState.lock, read
        # without it).  It goes up before a waiter first tries the core
        # again, and the flusher reads it after its take: both pass through
        # the partition's lock in the core, which orders them, so a flusher
        # that reads 0 made its room before any waiter's try and may skip
        # the notify.
        self.room_waiting = 0
        # Next timed flush (monotonic seconds).  Re-armed by the flusher
        # when it starts a flush and by the timer when it fires; the timer
        # thread reads it, and is woken (ThreadEngine._call) when it moves earlier.
        self.deadline = math.inf
        # The current flusher thread: replaced by the timer thread after a
        # timeout (published before it starts), joined by close().
        self.thread: threading.Thread | None = None
        # Set (by the timer thread, once) when a flusher timed out and no
        # thread could replace it (at interpreter shutdown on Python 3.12,
        # for one): the partition's batches are then reported failed with
        # this error instead of waiting for a flusher that will not come.
        self.orphaned: BaseException | None = None


class ThreadEngine(Engine[T]):
    """The machinery of a ``Buffer``: threads, timer, waits for room, ``sync_flush`` and ``close``."""

    parts: list[_Partition]

    def __init__(self, front: Any, options: Options, callbacks: Callbacks) -> None:
        super().__init__(front, options, callbacks, seal_hook=False)
        self._start()
        self.register()

    def _start(self) -> None:
        """Make the engine's state and start its threads (at construction, and in a forked child)."""
        # Made here before any thread of the buffer starts, and made anew
        # only in a forked child, where no other thread runs yet.
        self.parts = [_Partition(p) for p in range(self.config.partitions)]
        # Guards starting threads (part.thread, _timer): _supervise must not
        # see a thread published but not started yet.
        self._threads_lock = threading.RLock()
        # The close() call that is closing the buffer: a token of that call,
        # (thread ident,), or None.  Guarded by _close_mutex; other close()
        # calls wait on _close_bell for it to end.  stopping is set once
        # every flush is done and tells the threads to exit.
        self._close_mutex = threading.RLock()
        self._closer: tuple[int] | None = None
        self._close_bell = Notifier()
        # sync_flush/close waiters wait on _progress for finished flushes;
        # _sync_count (guarded by _sync_lock, read without it) lets flushers
        # skip the notify when nobody waits.
        self._progress = Notifier()
        self._sync_lock = threading.Lock()
        self._sync_count = 0
        # The timer thread sleeps on _timer_bell until _timer_wake_at, which
        # only it writes; each flush (_call) reads it (a stale read only
        # costs a notify, or a wake that comes at most flush_timeout later:
        # the timer never sleeps longer).  The partitions' deadlines are
        # floats written by their flusher and by the timer, which reads them
        # anew on every round.
        self._timer_bell = Notifier()
        self._timer_wake_at = math.inf
        # A thread of the buffer ended early: the timer runs _supervise.
        # Set by the ending thread, cleared by the timer, then a notify.
        self._ended = False
        self._timer: threading.Thread | None = None

        now = _monotonic()
        try:
            for part in self.parts:
                part.deadline = now + self.next_interval()
                self._start_flusher(part, None)
            self._start_timer()
        except BaseException:
            # No more threads (or Ctrl-C): stop the ones started, which
            # would otherwise hold the half-made buffer for good.
            self._stop_threads()
            raise

    def _stop_threads(self) -> None:
        """Tell the threads started so far to end, and wait for them (a failed start)."""
        self.stopping = self.stopped = True
        for part in self.parts:
            self.core.wake(part.index)
        self._timer_bell.notify()
        for thread in [part.thread for part in self.parts] + [self._timer]:
            if thread is not None and thread.ident is not None:
                thread.join(_STOP_WAIT)

    # -- operations (called by Buffer) ------------------------------------

    def flush(self) -> None:
        if self.stopped:
            return
        self._supervise()
        for part in self.parts:
            self.request(part, "manual")

    def sync_flush(self, timeout: float | None) -> list[Any]:
        deadline = _deadline(timeout)
        if self.stopped:
            return []
        self._refuse_flusher_thread("sync_flush")
        self._supervise()
        if self.core.lock_held():
            self.flush()
            self._refuse_inside_core("sync_flush")
        return self._flush_and_wait("manual", deadline, timeout).outcome(self.name)

    def close(self, timeout: float | None) -> None:
        deadline = _deadline(timeout)
        if self.stopped:
            return
        self._refuse_flusher_thread("close")
        # Inserts stop at once, even while another thread is in close().
        self.core.mark_closed()
        self._supervise()
        if self.core.lock_held():
            for part in self.parts:
                self.request(part, "close")
            self._refuse_inside_core("close")
        token = (threading.get_ident(),)
        try:
            if not self._claim_close(token, deadline, timeout) or self.stopped:
                return
            for part in self.parts:
                part.room.notify()
            self._flush_and_wait("close", deadline, timeout)
            self.stopping = True
            current = threading.current_thread()
            for part in self.parts:
                self.core.wake(part.index)
            self._timer_bell.notify()
            # _supervise publishes and starts a thread under _threads_lock
            # and starts none once stopping is set: the threads read here
            # are started (a thread read without the lock could be one that
            # another thread was still starting, which join() refuses).
            with self._threads_lock:
                threads = [part.thread for part in self.parts] + [self._timer]
            for thread in threads:
                if thread is None or thread is current:
                    continue
                try:
                    thread.join(_wait_time(deadline))
                except RuntimeError:
                    # Not started yet: this very thread is starting it further
                    # up its stack (close() from a finalizer that ran inside
                    # _supervise); it sees stopping and ends.
                    continue
                if thread.is_alive():
                    raise TimeoutError(
                        f"close(timeout={timeout!r}) of buffer {self.name!r} ran out of time waiting for "
                        "its threads to stop (every item is flushed): call close() again to wait for them"
                    )
            self.stopped = True
            self.unregister()
        finally:
            # First in the block: nothing can interrupt it before the store.
            with self._close_mutex:
                if self._closer is token:
                    self._closer = None
            self._close_bell.notify()

    def _claim_close(self, token: tuple[int], deadline: float | None, timeout: float | None) -> bool:
        """Make the calling close() the one that closes: False if a close() of this thread is running.

        That is a finalizer (``__del__``) that ran inside close() and
        closes the same buffer: the outer close() finishes the job.
        Otherwise waits for another thread's close() to end.
        """
        bell = self._close_bell
        while True:
            seen = bell.epoch
            with self._close_mutex:
                closer = self._closer
                if closer is None:
                    self._closer = token
                    return True
                if closer[0] == token[0]:
                    return False
            remaining = _wait_time(deadline)
            if remaining is not None and remaining <= 0:
                raise TimeoutError(
                    f"close(timeout={timeout!r}) of buffer {self.name!r} ran out of time: another "
                    "thread's close() is still flushing it; call close() again to wait for it"
                )
            # At most Notifier.STEP at a time: the other close() announces its end
            # after its finally block's store, which an interrupt may cut short.
            bell.wait(seen, math.inf if remaining is None else remaining)

    def _refuse_inside_core(self, call: str) -> None:
        """Raise: this thread is inside an insert of this buffer that holds a partition lock.

        Only the pure-Python core holds one while Python code runs, and so
        while a finalizer (``__del__``) that the garbage collector runs
        there calls ``sync_flush``/``close``.  No flush can be waited for
        then (the flusher needs that lock): the caller has requested them;
        they finish once the insert returns.
        """
        raise RuntimeError(
            f"{call}() of buffer {self.name!r} was called while this thread is inside an insert into "
            "the same buffer (from a finalizer, __del__, that the garbage collector ran there, or a "
            "signal handler): it "
            "cannot wait here for the flushes, which the insert holds up; they were requested and "
            f"finish once the insert returns (call {call}() again from elsewhere to wait for them)"
        )

    # -- what _shutdown calls ----------------------------------------------

    def close_blocking(self, timeout: float | None) -> None:
        """Close from any thread, waiting at most ``timeout`` (``close_open_buffers``)."""
        self.close(timeout)

    def begin_close(self) -> None:
        """Refuse inserts and ask every partition to flush for close; do not wait."""
        if self.stopped:
            return
        self.core.mark_closed()
        self._supervise()
        for part in self.parts:
            self.request(part, "close")

    def fork_before(self) -> None:
        """Quiesce before ``fork()``: hold the partitions' locks, the engine's then the core's."""
        for part in self.parts:
            part.lock.acquire()
        self.core.fork_prepare()

    def fork_after_parent(self) -> None:
        self.core.fork_parent()
        for part in reversed(self.parts):
            part.lock.release()

    def fork_after_child(self) -> list[Any]:
        """In a forked child: start over empty, with fresh locks and threads.

        The parent's items stay the parent's (it flushes them): the child
        drops its copies, so nothing is delivered twice.  Returns them, for
        the caller to release once every buffer is consistent again.
        """
        dropped = self.core.fork_child()
        self.drops = DropTally()  # the parent's may have been locked by another thread
        # The child draws its own jitter and backoff: parent and child must
        # not flush and retry in step.
        self.random.seed()
        if self.stopping or self.core.is_closed():
            # Closed (or closing) in the parent: nothing to flush here.
            self.stopping = self.stopped = True
            self.unregister()
            self.parts = [_Partition(p) for p in range(self.config.partitions)]
            return dropped
        self._start()
        return dropped

    # -- CoreHooks: the slow paths of inserts -----------------------------

    def insert_wait(self, p: int, item: Any, timeout: float | None) -> None:
        """Partition ``p`` is full: apply ``on_full``, or wait for room and store ``item`` (backpressure)."""
        seq = (item,)
        if not self.overflow(p, seq, 0, batch=False):
            self._wait_for_room(p, seq, 0, timeout, batch=False)

    def insert_batch_wait(self, p: int, seq: Sequence[Any], start: int, timeout: float | None) -> None:
        """Store ``seq[start:]`` in partition ``p``: apply ``on_full``, or wait for room between chunks."""
        if not self.overflow(p, seq, start, batch=True):
            self._wait_for_room(p, seq, start, timeout, batch=True)

    def attend(self) -> None:
        """Called by the core from one insert after ``set_attention``."""
        self._supervise()

    def sealed(self, p: int) -> None:
        """Never called: this engine's flushers sleep on the core's wake event (no seal hook)."""

    def _wait_for_room(
        self, p: int, seq: Sequence[Any], stored: int, timeout: float | None, *, batch: bool
    ) -> None:
        seconds = self.config.insert_timeout if timeout is None else float(timeout)
        part = self.parts[p]
        if self.in_own_thread():
            # Room is made by this buffer's flushers: a callback that waited
            # for it could be waiting for itself.
            raise BufferFull(
                f"{self.full(p)}, and an insert from the buffer's own flush callbacks "
                "(handle_flush, handle_flush_error, telemetry handlers) does not wait for room"
                + (f"; {plural(stored, 'leading item')} stored" if batch else ""),
                stored=stored,
            )
        push_many = self.core.push_many
        room = part.room
        deadline = _monotonic() + seconds
        # No lock is held here: a finalizer run by the garbage collector
        # during the wait may use the buffer, and Ctrl-C leaves nothing held.
        with part.lock:
            part.room_waiting += 1
        try:
            while True:
                seen = room.epoch  # before the try: a take after it ends the wait at once
                if (stored := push_many(p, seq, stored)) >= len(seq):
                    return
                remaining = deadline - _monotonic()
                if remaining <= 0:
                    raise BufferFull(
                        f"{self.full(p)}; gave up waiting for room after {seconds}s"
                        + (f" with {plural(stored, 'leading item')} stored" if batch else ""),
                        stored=stored,
                    )
                room.wait(seen, _interruptible(remaining))
        except KeyboardInterrupt as exc:
            # Ctrl-C while waiting: the items stored so far stay stored.
            if batch:
                exc.add_note(
                    f"insert_batch stored {plural(stored, 'leading item')} of the call "
                    "before it was interrupted"
                )
            raise
        finally:
            # (A count left too high by an interrupt only costs flushers a notify.)
            with part.lock:
                part.room_waiting -= 1

    # -- flush requests and waits -----------------------------------------

    def request(self, part: _Partition, trigger: str, upto: int | None = None) -> None:
        """Ask the flusher of ``part`` to flush items up to sequence ``upto``."""
        with part.lock:
            if not self.note_request(part, trigger, upto, when_empty=part.orphaned is not None):
                return
        if part.orphaned is not None:
            self._fail_buffered(part)
        else:
            self.core.wake(part.index)

    def in_own_thread(self) -> bool:
        """Whether the caller is one of this buffer's threads (a flush callback).

        Flusher threads that were abandoned after a timeout count too.
        """
        thread = threading.current_thread()
        return isinstance(thread, _OwnedThread) and thread.owner is self

    def _refuse_flusher_thread(self, call: str) -> None:
        """Raise if called from this buffer's own flusher or timer thread.

        Such a call (from ``handle_flush``, ``handle_flush_error`` or a flush
        telemetry handler) would wait for the flush it is part of.
        """
        if self.in_own_thread():
            raise RuntimeError(
                f"{call}() of buffer {self.name!r} cannot be called from its own flush callbacks "
                "(handle_flush, handle_flush_error, telemetry handlers): it would wait for itself; "
                "use flush(), or call it from another thread"
            )

    def _flush_and_wait(self, trigger: str, deadline: float | None, timeout: float | None) -> SyncWaiter:
        """Flush every partition with ``trigger`` and wait for it (sync_flush, close, within ``timeout``)."""
        waiter = SyncWaiter(self.config.partitions)
        progress = self._progress
        with self._sync_lock:
            self._sync_count += 1
        try:
            self.join_flushes(waiter, trigger)
            while True:
                seen = progress.epoch
                if self.reached(waiter.targets):
                    break
                remaining = _wait_time(deadline)
                if remaining is not None and remaining <= 0:
                    raise self.out_of_time("close" if trigger == "close" else "sync_flush", timeout, "call")
                progress.wait(seen, _interruptible(remaining))
        finally:
            # First in the block: nothing can interrupt it before the store
            # (a count left too high would only cost flushers a notify).
            with self._sync_lock:
                self._sync_count -= 1
            self.leave_flushes(waiter)
        return waiter

    def progressed(self) -> None:
        # _sync_count goes up before a waiter first checks for progress:
        # a flusher that reads 0 finished before that check.
        if self._sync_count:
            self._progress.notify()

    # -- threads ----------------------------------------------------------

    def _start_flusher(self, part: _Partition, resume: _Resume | None) -> None:
        thread = _OwnedThread(
            self,
            target=self._flusher_main,
            # In a list the thread empties: the thread object keeps its
            # args for its whole life, and they would keep the batch alive.
            args=(part, [] if resume is None else [resume]),
            name=f"databuffer-{self.name}-flusher-{part.index}",
        )
        with self._threads_lock:
            # Published before it runs: once it settles a timed-out batch,
            # close() may join part.thread, which must not be the stuck one.
            part.thread = thread
            thread.start()

    def _start_timer(self) -> None:
        thread = _OwnedThread(self, target=self._timer_main, name=f"databuffer-{self.name}-timer")
        with self._threads_lock:
            self._timer = thread
            thread.start()

    def _supervise(self) -> None:
        """Start a new thread in place of any of the buffer's threads that ended early.

        A flusher whose batch timed out ends on purpose (it is no longer
        ``part.thread``), and all end once the buffer stops; any other
        thread of the buffer that is not alive has died.
        """
        if self.stopping:
            return
        started: list[int] = []  # partitions given a new flusher; -1: the timer
        failure: RuntimeError | None = None
        with self._threads_lock:
            if self.stopping:
                return
            try:
                for part in self.parts:
                    thread = part.thread
                    if thread is not None and _gone(thread):
                        # It takes what is due before it first waits: no wake needed.
                        self._start_flusher(part, None)
                        started.append(part.index)
                if self._timer is not None and _gone(self._timer):
                    self._start_timer()
                    started.append(-1)
            except RuntimeError as exc:  # no new threads: the interpreter is shutting down
                failure = exc
        # Logged once the lock is released: a logging handler may block (or
        # log through the buffer), and inserts that attend wait for this lock.
        for index in started:
            if index < 0:
                logger.warning("buffer %r: started a new timer thread (the last one ended)", self.name)
            else:
                logger.warning(
                    "buffer %r: started a new flusher for partition %d (the last one ended)", self.name, index
                )
        if failure is not None:
            logger.error(
                "buffer %r: cannot start a thread to replace one that ended (%s); the next flush() "
                "or close() tries again",
                self.name,
                failure,
            )
            failure = None

    def _thread_ended(self, which: str, exc: BaseException) -> None:
        """Log why one of the buffer's threads ends early; have it restarted.

        SystemExit and KeyboardInterrupt raised by a callback end the thread
        that ran it (after the batch was reported); anything else getting
        here is a fault of the buffer itself.  Either way the next insert,
        flush or timer round starts a new thread (``_supervise``).
        """
        thread = threading.current_thread()
        if isinstance(thread, _OwnedThread):
            thread.ended = True  # before anyone is told: it is replaced even while still alive
        self.core.set_attention()
        if thread is not self._timer:
            # The timer replaces it at once, too.
            self._ended = True
            self._timer_bell.notify()
        # Logged last: a logging handler may take its time, the thread is replaced meanwhile.
        if isinstance(exc, THREAD_EXITS):
            logger.warning(
                "buffer %r: %s ends: a flush callback raised %s; a new one starts on the next "
                "insert or flush",
                self.name,
                which,
                type(exc).__name__,
            )
        else:
            logger.error(
                "buffer %r: %s ends on an error; a new one starts on the next insert or flush",
                self.name,
                which,
                exc_info=(type(exc), exc, exc.__traceback__),
            )

    # -- flushing ---------------------------------------------------------

    def _flusher_main(self, part: _Partition, resumes: list[_Resume]) -> None:
        p = part.index
        try:
            if resumes:
                life, attempt, outcome = resumes.pop()
                try:
                    if life is None:
                        # The first attempt timed out: its life starts with the timeout.
                        if not self._drive(part, self.life(part, attempt, outcome)):
                            return
                    elif not self._drive(part, life, outcome):
                        return
                except THREAD_EXITS:
                    raise
                except BaseException:
                    self.log_callback_escape(p)
                finally:
                    life = attempt = outcome = None  # type: ignore[assignment]
            # Bound once: this loop runs once per batch.
            take, flush, wait_wake = self.core.take, self._flush, self.core.wait_wake
            while True:
                while True:
                    taken = take(p, part.flush_upto)
                    _room_freed(part)
                    if taken is None:
                        break
                    try:
                        if not flush(part, taken):
                            return
                    except THREAD_EXITS:
                        raise
                    except BaseException:
                        self.log_callback_escape(p)
                if self.stopping:
                    return
                # The core's wake event: set by sealing inserts, flush
                # requests and close.
                wait_wake(p)
        except BaseException as exc:
            self._thread_ended(f"the flusher of partition {p}", exc)

    def _flush(self, part: _Partition, taken: Taken) -> bool:
        """Flush a batch the core handed out; False if this thread was abandoned."""
        attempt = self.first_attempt(part, taken)
        outcome = self._call(part, attempt, None)
        if outcome is None:
            return False  # abandoned by the timer; a new flusher took it over
        if outcome[1] is None:
            self.succeeded(part, attempt, outcome[0])
            return True
        life = self.life(part, attempt, outcome)
        # The error's traceback reaches this frame (f_back): nor the error
        # nor the batch may stay in it, or they would live on in a cycle.
        del taken, attempt, outcome
        return self._drive(part, life)

    def _drive(self, part: _Partition, life: Life, value: Any = None) -> bool:
        """Carry out a batch's life from where it stands; False if this thread was abandoned.

        Raises what must end the thread (``SystemExit``, ``KeyboardInterrupt``
        from a callback), once the batch is counted.
        """
        effect: tuple[Any, ...] | None = None
        try:
            while True:
                effect = life.send(value)
                value = None
                if effect[0] is CALL:
                    value = self._call(part, effect[1], life)
                    if value is None:
                        return False  # abandoned by the timer; a new flusher took it over
                elif effect[0] is SLEEP:
                    time.sleep(effect[1])
                else:
                    self._handle_error(life, effect[1], effect[2])
        except StopIteration as stop:
            # Only the error that must end the thread is kept: the frame
            # outlives this call in the error's traceback (as an f_back),
            # and any other error kept here would keep its batch alive in a
            # cycle until the cyclic GC runs.
            ending = stop.value if isinstance(stop.value, THREAD_EXITS) else None
        value = effect = None
        if ending is not None:
            try:
                raise ending
            finally:
                ending = None
        return True

    def _call(self, part: _Partition, attempt: Attempt, life: Life | None) -> Outcome | None:
        """Call ``handle_flush`` under the timer's watch; None if the timer abandoned the call."""
        # One clock read (time.monotonic() is the same clock, in seconds).
        now = attempt.start_ns * 1e-9
        config = self.config
        watch = _Watch(life, attempt, now + config.flush_timeout)
        part.flight = watch
        # The flush happens now: the partition's next timed flush counts
        # from here (next_interval, inlined: this runs once per batch).
        part.deadline = deadline = now + config.flush_interval + config.flush_jitter * self.random.random()
        # No wake for the watch's deadline: the timer never sleeps longer than
        # flush_timeout, so it is awake by the deadline of any flush started
        # after it went to sleep.  Waking it for every batch cost a thread
        # switch per batch.  The timer publishes the time it sleeps until in
        # _timer_wake_at (math.inf while awake, when it rescans every
        # deadline anyway): it is notified only when this deadline comes first.
        if deadline < self._timer_wake_at:
            self._timer_bell.notify()
        result: Any = None
        error: BaseException | None = None
        try:
            try:
                # Engine.batch_for, inlined (each of these inlines is measured:
                # together about 0.45 us of the flusher's ~3.5 us per batch).
                result = self.flush_fn(
                    list(attempt.batch) if self.copy_batches else attempt.batch, attempt.opts
                )
            except BaseException as exc:  # any failure of the callback is the batch's failure
                error = exc
            if not watch.claim.acquire(False):
                return None
            part.flight = None
            if result is not None and (error := self.not_awaitable(result, "handle_flush")) is not None:
                result = None
            return (result, error, False, part.orphaned is not None)
        finally:
            # The error's traceback holds this frame: without this, the
            # error would keep the batch alive (in a cycle, until the
            # cyclic GC runs, or as long as whoever got the error keeps it).
            error = None
            del attempt, watch, life

    def _handle_error(self, life: Life, attempt: Attempt, error: BaseException) -> None:
        try:
            returned = self.error_fn(attempt.batch, attempt.opts, error)
            if returned is not None and (wrong := self.not_awaitable(returned, "handle_flush_error")):
                raise wrong
        except Exception:
            self.log_error_handler_failure(attempt.opts)
        except BaseException as exc:
            life.throw(exc)  # the batch is counted (its finally), then exc goes on

    # -- the timer ----------------------------------------------------------

    def _timer_main(self) -> None:
        try:
            self._timer_loop()
        except BaseException as exc:
            self._thread_ended("the timer thread", exc)

    def _timer_loop(self) -> None:
        bell = self._timer_bell
        while True:
            # Read before anything is checked: a notify after this point
            # (close setting stopping, a thread ending, an earlier deadline)
            # cuts the wait below short.
            seen = bell.epoch
            if self.stopping:
                return
            if self._ended:
                self._ended = False
                self._supervise()
            now = _monotonic()
            # Flushes that start while the timer sleeps do not wake it
            # (_call): it rescans after at most flush_timeout.
            wake = now + self.config.flush_timeout
            due: list[_Partition] = []
            overdue: list[tuple[_Partition, _Watch]] = []
            for part in self.parts:
                if part.deadline <= now:
                    part.deadline = now + self.next_interval()
                    due.append(part)
                wake = min(wake, part.deadline)
                watch = part.flight
                if watch is not None:
                    if watch.deadline <= now:
                        overdue.append((part, watch))
                    else:
                        wake = min(wake, watch.deadline)
            if due or overdue:
                try:
                    for part in due:
                        self.request(part, "interval")
                    for part, watch in overdue:
                        self._abandon(part, watch)
                except THREAD_EXITS:
                    raise
                except BaseException:
                    # The timer enforces flush_timeout: it must outlive
                    # anything a callback run from here raises.
                    logger.exception(
                        "buffer %r: the timer thread caught an error (from a timed flush request or a "
                        "timed-out batch's report); it goes on",
                        self.name,
                    )
                continue
            self._timer_wake_at = wake
            bell.wait(seen, min(wake - now, threading.TIMEOUT_MAX))
            self._timer_wake_at = math.inf

    def _abandon(self, part: _Partition, watch: _Watch) -> None:
        """Give up on a stuck ``handle_flush``: report it and start a new flusher."""
        if not watch.claim.acquire(False):
            return  # it returned in time after all
        part.flight = None
        error = FlushTimeout(
            f"handle_flush of buffer {self.name!r} partition {part.index} ran past "
            f"flush_timeout={self.config.flush_timeout}s with a batch of "
            f"{plural(watch.attempt.opts.size, 'item')}: the buffer stopped waiting for the call (it goes "
            "on in its thread, its outcome ignored) and a new flusher took over; raise flush_timeout "
            "if the sink is only slow"
        )
        # Before anyone sees the error: handle_flush_error, telemetry, logs.
        where = _where_stuck(part.thread)
        if where is not None:
            error.add_note(where)
        error = raised(error)
        try:
            self._start_flusher(part, (watch.life, watch.attempt, (None, error, False, False)))
        except RuntimeError as exc:
            part.thread = None
            part.orphaned = raised(
                RuntimeError(
                    f"buffer {self.name!r} partition {part.index}: batch not flushed because the "
                    f"partition's flusher timed out and no thread could replace it ({exc})"
                )
            )
            logger.error(
                "buffer %r partition %d: no thread could replace the timed-out flusher (%s); "
                "its batches are reported failed from now on",
                self.name,
                part.index,
                exc,
            )
            timed_out: Outcome = (None, error, False, True)
            if watch.life is None:
                self._drive(part, self.life(part, watch.attempt, timed_out))
            else:
                self._drive(part, watch.life, timed_out)
            self._fail_buffered(part)
        finally:
            # The traceback links back to this frame: drop the error from it.
            error = None  # type: ignore[assignment]

    def _fail_buffered(self, part: _Partition) -> None:
        """Report every batch of an orphaned partition as failed."""
        error = part.orphaned
        assert error is not None
        taken: Taken | None
        while (taken := self.core.take(part.index, sys.maxsize)) is not None:
            _room_freed(part)
            self._drive(part, self.failed_life(part, taken, error))


def _where_stuck(thread: threading.Thread | None) -> str | None:
    """Where a flusher thread is, from its ``handle_flush`` call inward: the note of its ``FlushTimeout``.

    Only when the timer gives up on a call (``_abandon``).  None if the
    thread is gone.  A ``handle_flush`` with no Python frame of its own (a
    C function) shows the flusher's whole stack.
    """
    if thread is None or thread.ident is None:
        return None
    frame = sys._current_frames().get(thread.ident)
    stack: list[FrameType] = []  # innermost first
    frames: list[FrameType] = []
    try:
        while frame is not None:
            stack.append(frame)
            frame = frame.f_back
        inside = next((i for i, f in enumerate(stack) if f.f_code is _CALL_CODE), 0)
        frames = stack[inside - 1 :: -1] if inside else stack[::-1]
        if not frames:
            return None
        return stack_note(
            f"handle_flush was here when flush_timeout ran out (thread {thread.name!r})", frames
        )
    finally:
        # Frames of a running thread: not kept past this call.
        del frame, stack, frames


_CALL_CODE = ThreadEngine._call.__code__


#: A batch's life to go on with in a new flusher, after a timeout: the life
#: (None if the timed-out call was its first attempt), the attempt, and the
#: outcome to go on with.
_Resume = tuple["Life | None", Attempt, Outcome]


def _room_freed(part: _Partition) -> None:
    """Let inserts waiting for room in ``part`` try again (after a take)."""
    if part.room_waiting:
        part.room.notify()


def _gone(thread: threading.Thread) -> bool:
    """Whether one of the buffer's threads no longer works for it (see ``_OwnedThread.ended``)."""
    return getattr(thread, "ended", False) or not thread.is_alive()


def _deadline(timeout: float | None) -> float | None:
    seconds = check_timeout(timeout)
    return None if seconds is None else _monotonic() + seconds


def _interruptible(seconds: float | None) -> float:
    """A wait of at most ``seconds`` (None: no limit) for a loop that checks its condition again."""
    step = threading.TIMEOUT_MAX
    if threading.current_thread() is threading.main_thread():
        step = _MAIN_THREAD_WAIT_STEP
    return step if seconds is None else min(seconds, step)


@overload
def _wait_time(deadline: float) -> float: ...
@overload
def _wait_time(deadline: float | None) -> float | None: ...
def _wait_time(deadline: float | None) -> float | None:
    """Seconds left until ``deadline`` for a blocking call (None if no deadline)."""
    if deadline is None:
        return None
    return min(max(0.0, deadline - _monotonic()), threading.TIMEOUT_MAX)
