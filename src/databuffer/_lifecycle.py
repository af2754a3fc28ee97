"""The life of a batch, written once for both engines.

``Engine`` is what the threaded engine (``_threaded.ThreadEngine``, behind
``Buffer``) and the asyncio engine (``_asyncio.AsyncEngine``, behind
``AsyncBuffer``) share: the core and its hooks (``CoreHooks``), the
counters, the flush requests, the ``sync_flush`` bookkeeping, telemetry,
and every decision about a batch.

A batch's first attempt is made by ``Engine.first_attempt``; the engine
calls ``handle_flush`` for it, and a success is settled by
``Engine.succeeded``: the common case makes no generator.  The rest of a
batch's life (``Engine.life``: retries, backoff, failure) is a generator:
it decides, and yields *effects* for the engine to carry out in its own
way:

- ``(CALL, attempt)``: call ``handle_flush`` for the attempt, within
  ``flush_timeout``; the engine sends back an ``Outcome``;
- ``(SLEEP, delay)``: wait ``delay`` seconds before a retry; the engine
  sends back None, or the exception that interrupted the wait (the batch is
  then settled with it, and the engine raises it once the life is over);
- ``(HANDLE_ERROR, attempt, error)``: call ``handle_flush_error``; a
  failure of it is logged, never raised (an exception that must end the
  flusher, the engine throws into the life: the batch is still counted).

The life returns the error the batch settled with.  So the engines differ
only in how they call, wait, sleep and time out (threads and a timer
thread; tasks, ``asyncio.timeout`` and ``asyncio.sleep``).
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Generator, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from . import _instrument, telemetry
from ._compat import core_module_of
from ._contract import CoreAPI, PartStats, Taken
from ._errors import BufferClosed, BufferFull
from ._options import Callbacks, Options, check_timeout
from ._registry import registry
from ._text import plural, short_repr
from ._types import COUNTERS, BufferStats, Counters, FlushOpts, PartitionInfo

if TYPE_CHECKING:
    from ._contract import CoreHooks

__all__ = (
    "CALL",
    "HANDLE_ERROR",
    "SLEEP",
    "THREAD_EXITS",
    "Attempt",
    "Engine",
    "Life",
    "Outcome",
    "PartState",
    "SyncWaiter",
    "logger",
    "raised",
)

T = TypeVar("T")
_E = TypeVar("_E", bound=BaseException)

logger = logging.getLogger("databuffer")

_monotonic_ns = time.monotonic_ns

# Raised by a callback, these end the thread (or task) that ran it, after
# the batch is reported; any other exception is the batch's failure.
THREAD_EXITS = (SystemExit, KeyboardInterrupt)
# The longest wait the engines ask for, in seconds (about 31 years): a
# retry's backoff is capped to it.  time.sleep() and the lock waits take
# their deadline in int64 nanoseconds of the monotonic clock and overflow
# from about 9.2e9 s; a wait this long means "practically never" anyway.
MAX_WAIT = 1e9

# A pending flush request is never downgraded by a weaker one.
_TRIGGER_RANK = {"interval": 0, "manual": 1, "close": 2}

# The effects a batch's life yields (see the module docstring).
CALL = "call"
SLEEP = "sleep"
HANDLE_ERROR = "handle_error"


class Attempt:
    """One call of ``handle_flush`` for a batch (owned by the flusher running its life)."""

    __slots__ = ("batch", "began_ns", "first", "opts", "start_ns")

    def __init__(self, batch: list[Any], opts: FlushOpts, first: int, began_ns: int = 0) -> None:
        self.batch = batch
        self.opts = opts
        # The sequence number of the batch's first item.
        self.first = first
        # When this attempt started, and when the batch's first attempt did.
        self.start_ns = 0
        self.began_ns = began_ns

    def start(self) -> None:
        self.start_ns = _monotonic_ns()
        if not self.began_ns:
            self.began_ns = self.start_ns

    def retry(self) -> Attempt:
        """The batch's next attempt."""
        o = self.opts
        opts = FlushOpts(o.meta, o.size, o.partition, o.buffer, o.trigger, o.attempt + 1)
        return Attempt(self.batch, opts, self.first, self.began_ns)


#: What a ``CALL`` effect came to: ``(result, error, again, final)``.
#: ``again``: the call was interrupted by the event loop shutting down; it
#: is tried again at once, whatever the retries left.  ``final``: settle the
#: batch whatever the retries left.  A plain tuple: one is made per batch.
Outcome = tuple[Any, "BaseException | None", bool, bool]


#: A batch's life: yields effects, is sent what they came to, returns the error it settled with.
Life = Generator[tuple[Any, ...], Any, BaseException | None]


class SyncWaiter:
    """One ``sync_flush``/``close`` call waiting for its partitions."""

    __slots__ = ("errors", "results", "starts", "targets")

    def __init__(self, partitions: int) -> None:
        # Per partition: sequence numbers [start, target) that this call flushes.
        self.starts = [0] * partitions
        self.targets = [0] * partitions
        self.results: list[list[Any]] = [[] for _ in range(partitions)]
        self.errors: list[list[BaseException]] = [[] for _ in range(partitions)]

    def outcome(self, name: str) -> list[Any]:
        """What ``sync_flush`` returns: the results in partition order; raises the failures."""
        errors = [error for errs in self.errors for error in errs]
        if errors:
            # An ExceptionGroup, or a BaseExceptionGroup if a batch failed
            # with a BaseException (which an ExceptionGroup cannot hold).
            raise BaseExceptionGroup(
                f"sync_flush() of buffer {name!r}: {plural(len(errors), 'batch')} failed", errors
            )
        return [result for results in self.results for result in results]


class DropTally:
    """Items dropped by ``on_full`` since the last warning, and when that was.

    Shared by every inserting thread of a buffer: guarded by ``lock``, which
    is taken with no other lock held and guards two numbers (nothing in it
    allocates or calls out).  A forked child gets a new one.
    """

    __slots__ = ("lock", "unreported", "warned_at")

    #: Seconds between two drop warnings of one buffer, at least.
    EVERY = 10.0

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.unreported = 0
        self.warned_at = -self.EVERY

    def add(self, n: int) -> int:
        """Count ``n`` drops; the number to warn about now, or 0 if a warning was given too recently."""
        now = time.monotonic()
        with self.lock:
            self.unreported += n
            if now - self.warned_at < self.EVERY:
                return 0
            self.warned_at = now
            report, self.unreported = self.unreported, 0
        return report

    def flush(self) -> int:
        """The drops not warned about yet (and forget them)."""
        with self.lock:
            report, self.unreported = self.unreported, 0
        return report


class PartState:
    """Per-partition state that both engines keep."""

    def __init__(self, index: int) -> None:
        self.index = index
        # Guards syncs, retried and the writes of the flush request.  The
        # flusher reads flush_upto and flush_trigger without it: a stale
        # read is harmless, since every request also wakes the flusher,
        # which then reads them again.
        # Re-entrant: a finalizer run by the garbage collector under it (it
        # allocates) may flush or close the buffer from the same thread.
        self.lock = threading.RLock()
        self.syncs: list[SyncWaiter] = []
        # Items handed to handle_flush again after a failed attempt.
        self.retried = 0
        # The pending flush request: flush the items before sequence
        # flush_upto, with this trigger (see Engine.note_request).
        self.flush_upto = 0
        self.flush_trigger = "manual"


def raised(error: _E) -> _E:
    """``error`` with a traceback, as if raised here, without a reference cycle."""
    try:
        raise error
    except BaseException:
        return error
    finally:
        error = None  # type: ignore[assignment]  # the traceback holds this frame


class Engine(Generic[T]):
    """The machinery of one buffer, shared by both engines (see the module docstring).

    Implements ``CoreHooks`` but for the hooks that depend on how the engine
    waits (``insert_wait``, ``insert_batch_wait``, ``attend``, ``sealed``).
    """

    parts: Sequence[PartState]

    def __init__(self, front: Any, options: Options, callbacks: Callbacks, *, seal_hook: bool) -> None:
        # Written once, here, before the buffer is shared.
        self.config = options
        self.name = options.name
        self.flush_fn = callbacks.flush
        self.error_fn = callbacks.flush_error
        # Whether each call of handle_flush gets a copy of its batch (batch_for):
        # not with the buffer's own handle_flush_error (it reads no item).
        from ._front import Front  # imported by then: it is what makes an engine

        self.copy_batches = options.max_retries > 0 or (
            getattr(self.error_fn, "__func__", None) is not Front.handle_flush_error
        )
        # Draws the jitter of timed flushes and retries (random.Random is thread-safe).
        self.random = random.Random()
        # Set once: every flush is done and the flushers are to end
        # (stopping), and they have (stopped).
        self.stopping = False
        self.stopped = False
        module = core_module_of(front)
        core: CoreAPI = module.Core(
            options.partitions,
            options.max_size,
            options.max_size_jitter,
            options.by_thread,
            seal_hook,
            cast("CoreHooks", self),
            options.max_queued_batches,
        )
        module.attach(front, core)
        self.core = core
        # Items dropped by on_full and not yet in a warning (see dropped()).
        self.drops = DropTally()

    # -- CoreHooks shared by both engines ---------------------------------

    def closed_error(self, stored: int = 0) -> BufferClosed:
        if stored:
            return BufferClosed(
                f"buffer {self.name!r} was closed while insert_batch was storing its items: "
                f"{plural(stored, 'leading item')} stored, the rest not",
                stored=stored,
            )
        return BufferClosed(f"buffer {self.name!r} is closed")

    def check_timeout(self, timeout: object) -> None:
        check_timeout(timeout)

    # -- on_full: what an insert does when its partition has no room -------

    def overflow(self, p: int, seq: Sequence[Any], stored: int, *, batch: bool) -> bool:
        """Apply ``on_full`` to an insert that found partition ``p`` full.

        Called by both engines' ``insert_wait``/``insert_batch_wait`` before
        they wait, with ``seq[stored:]`` not stored yet.  Returns False for
        ``"wait"`` (the engine waits for room as it does); raises
        ``BufferFull`` for ``"raise"``; drops items and returns True for the
        two drop policies (every item of the call is then stored or dropped).
        """
        policy = self.config.on_full
        if policy == "wait":
            return False
        if policy == "raise":
            raise BufferFull(
                f"{self.full(p)}; on_full='raise' does not wait for room"
                + (f" ({plural(stored, 'leading item')} of the batch stored)" if batch else ""),
                stored=stored,
            )
        n = len(seq) - stored
        if policy == "drop_newest":
            self.core.refuse(p, n)
            self.dropped(p, n, policy)
            return True
        # drop_oldest: make room by evicting the oldest buffered items (never
        # a sealed batch), then store; again if other producers took the room.
        push_many, evict = self.core.push_many, self.core.evict
        total = 0
        while stored < len(seq):
            total += len(evict(p, len(seq) - stored))  # released here, no lock held
            stored = push_many(p, seq, stored)
        if total:
            self.dropped(p, total, policy)
        return True

    def dropped(self, p: int, n: int, policy: str) -> None:
        """Tell about ``n`` items of partition ``p`` dropped by ``policy``: telemetry, then a warning.

        The warning comes at most once per ``DropTally.EVERY`` seconds per
        buffer, with the number dropped since the previous one; the rest is
        told at close (``unregister``).
        """
        if telemetry._listening:
            telemetry.execute(
                telemetry.INSERT_DROP,
                {"count": n, "monotonic_time": time.monotonic_ns()},
                {"buffer": self.name, "partition": p, "policy": policy},
            )
        report = self.drops.add(n)
        if report:
            logger.warning(
                "buffer %r dropped %s: a partition was full (on_full=%r); "
                "drops are logged at most every %g s and counted in stats()['dropped']",
                self.name,
                plural(report, "item"),
                policy,
                DropTally.EVERY,
            )

    def iterate(self, items: object) -> Iterator[Any]:
        if isinstance(items, (str, bytes, bytearray)):
            # Iterable, but almost always one item meant, not its characters.
            kind = type(items).__name__
            raise TypeError(
                f"insert_batch() was given a {kind} ({short_repr(items, 40)}), not a collection of items: "
                f"it would store each {'character' if kind == 'str' else 'byte'} as an item; to store "
                f"it as one item, call insert(value) or insert_batch([value])"
            )
        try:
            return iter(items)  # type: ignore[call-overload,no-any-return]
        except TypeError:
            raise TypeError(
                f"insert_batch() needs an iterable of items, not {type(items).__name__} {items!r}"
            ) from None

    def insert_instrumented(self, item: Any, timeout: float | None, key: Any = None) -> None:
        _instrument.instrumented(self.name, self.core.insert_raw, item, timeout, key, batch=False)

    def insert_batch_instrumented(self, items: Iterable[Any], timeout: float | None, key: Any = None) -> None:
        _instrument.instrumented(self.name, self.core.insert_batch_raw, items, timeout, key, batch=True)

    # -- state and counters -----------------------------------------------

    def describe(self) -> str:
        return f"buffer {self.name!r}"

    def out_of_time(self, call: str, timeout: float | None, again: str) -> TimeoutError:
        """The error of a ``sync_flush``/``close``/``aclose`` whose ``timeout`` ran out while flushes went on.

        ``again``: how to call it again, ``"call"`` or ``"await"``.
        """
        stats = self.stats()
        left = plural(stats["size"] + stats["in_flight"], "item")
        if call == "sync_flush":
            rest = f"the flushes go on: {again} sync_flush() again to wait for them"
        else:
            rest = (
                f"the buffer is closed to inserts and its flushes go on: {again} {call}() again "
                "to wait for the rest"
            )
        return TimeoutError(
            f"{call}(timeout={timeout!r}) of {self.describe()} ran out of time with {left} not yet "
            f"flushed; {rest}"
        )

    def full(self, p: int) -> str:
        """The start of a ``BufferFull`` message: partition ``p`` is full while it flushes."""
        queued = self.config.max_queued_batches
        waiting = f" and {plural(queued, 'more batch')} queued for its flusher" if queued else ""
        return (
            f"buffer {self.name!r} partition {p} is full ({plural(self.core.stats(p).threshold, 'item')}) "
            f"while its previous batch is flushing{waiting}"
        )

    def next_interval(self) -> float:
        """Seconds to a partition's next timed flush: the interval plus its jitter.

        Inlined in both engines' ``_call`` (once per batch): change them with it.
        """
        # uniform(0, jitter) as random.uniform computes it, without its frame.
        return self.config.flush_interval + self.config.flush_jitter * self.random.random()

    def counters(self, part: PartState) -> tuple[Counters, PartStats]:
        """A partition's item counters, and the core's snapshot they come from."""
        s = self.core.stats(part.index)
        # Dropped items count as inserted (the call took them) and dropped:
        # evicted ones had been stored (the core's inserted counts them),
        # refused ones never were.
        counters: Counters = {
            "inserted": s.inserted + s.refused,
            "size": s.size,
            "in_flight": s.taken - s.flushed - s.failed,
            "flushed": s.flushed,
            "retried": part.retried,
            "failed": s.failed,
            "dropped": s.evicted + s.refused,
        }
        return counters, s

    def info(self) -> list[PartitionInfo]:
        config = self.config
        out: list[PartitionInfo] = []
        for part in self.parts:
            counters, s = self.counters(part)
            out.append(
                {
                    "partition": part.index,
                    "name": self.name,
                    "flush_size": s.threshold,
                    "flush_interval": config.flush_interval,
                    "flush_jitter": config.flush_jitter,
                    "flush_timeout": config.flush_timeout,
                    "max_queued_batches": config.max_queued_batches,
                    "on_full": config.on_full,
                    "flushing": s.busy,
                    "queued": s.queued,
                    **counters,
                }
            )
        return out

    def stats(self) -> BufferStats:
        totals = cast(Counters, dict.fromkeys(COUNTERS, 0))
        for part in self.parts:
            counters, _snapshot = self.counters(part)
            for key in COUNTERS:
                totals[key] += counters[key]
        return {
            "name": self.name,
            "partitions": self.config.partitions,
            "closed": self.core.is_closed(),
            **totals,
        }

    # -- flush requests and sync_flush ------------------------------------

    def note_request(
        self, part: PartState, trigger: str, upto: int | None, *, when_empty: bool = False
    ) -> bool:
        """Record a flush request in ``part``; False if there is nothing to ask for.

        ``upto`` None: everything inserted so far, unless the partition holds
        nothing (and not ``when_empty``).  A pending request is never
        downgraded: its trigger only changes for one of higher rank, or once
        the flusher has taken what it asked for.  Under ``part.lock`` where
        other threads may request too.
        """
        s = self.core.stats(part.index)
        if upto is None:
            if s.size == 0 and not when_empty:
                return False
            upto = s.taken + s.size  # the end of the sequence numbers (see PartStats)
        if s.taken >= part.flush_upto or _TRIGGER_RANK[trigger] >= _TRIGGER_RANK[part.flush_trigger]:
            part.flush_trigger = trigger
        part.flush_upto = max(part.flush_upto, upto)
        return True

    def request(self, part: Any, trigger: str, upto: int | None = None) -> None:
        """Ask the flusher of ``part`` to flush the items before sequence ``upto`` (each engine)."""
        raise NotImplementedError

    def join_flushes(self, waiter: SyncWaiter, trigger: str) -> None:
        """Make ``waiter`` wait for every item inserted so far, and request their flushes."""
        for part in self.parts:
            with part.lock:
                s = self.core.stats(part.index)
                waiter.starts[part.index] = s.taken
                waiter.targets[part.index] = s.taken + s.size
                part.syncs.append(waiter)
            self.request(part, trigger, waiter.targets[part.index])

    def leave_flushes(self, waiter: SyncWaiter) -> None:
        for part in self.parts:
            with part.lock:
                if waiter in part.syncs:
                    part.syncs.remove(waiter)

    def reached(self, targets: list[int]) -> bool:
        """Whether every partition has finished the items before its target."""
        finished_upto = self.core.finished_upto
        return all(finished_upto(p, target) for p, target in enumerate(targets))

    # -- the life of a batch ----------------------------------------------

    def first_attempt(self, part: PartState, taken: Taken) -> Attempt:
        """The first attempt at a batch the core handed out (``take``); emits its ``start`` event."""
        batch, by_size, first = taken
        opts = FlushOpts(
            self.config.flush_meta,
            len(batch),
            part.index,
            self.name,
            "size" if by_size else part.flush_trigger,
        )
        if telemetry._listening:
            self.report_start(opts)
        attempt = Attempt(batch, opts, first)
        attempt.start_ns = attempt.began_ns = _monotonic_ns()  # Attempt.start, inlined: once per batch
        return attempt

    def succeeded(self, part: PartState, attempt: Attempt, result: Any) -> None:
        """Settle a batch whose attempt returned: the common case, with no error handler to call."""
        opts = attempt.opts
        try:
            if telemetry._listening:
                self.report_outcome(opts, attempt.began_ns, None)
        finally:
            # Whatever a telemetry handler raised, the batch is finished and counted.
            if part.syncs:
                self.record(part, opts, attempt.first, result, None)
            else:  # record() with no sync_flush waiting, without its call: once per batch
                self.core.finish(opts.partition, opts.size, True)
            self.progressed()

    def life(self, part: PartState, attempt: Attempt, outcome: Outcome) -> Life:
        """The rest of a batch's life once ``attempt`` came to ``outcome``: its retries and its settlement.

        The engine calls ``first_attempt``, performs the first ``CALL`` itself
        and settles a success with ``succeeded``: no generator for the
        common case.  Everything else goes through here.
        """
        max_retries = self.config.max_retries
        # What retry_on raised that must end the thread: raised once the batch is settled.
        exiting: BaseException | None = None
        while True:
            result, error, again, final = outcome
            if error is None:
                self.succeeded(part, attempt, result)
                return None
            if final or isinstance(error, THREAD_EXITS):
                break
            if not again:
                # An attempt the loop's shutdown interrupted (again) did not
                # fail: it is tried again whatever max_retries and retry_on say.
                if attempt.opts.attempt > max_retries:
                    break
                try:
                    if not self.retryable(attempt.opts, error):
                        break
                except THREAD_EXITS as exc:
                    exiting = exc
                    break
            delay = self.report_retry(part, attempt.opts, attempt.start_ns, error, 0.0 if again else None)
            if delay > 0:
                interrupted = yield (SLEEP, delay)
                if interrupted is not None:
                    result, error = None, interrupted
                    break
            attempt = attempt.retry()
            attempt.start()
            outcome = yield (CALL, attempt)
        try:
            settled = yield from self.settle(part, attempt, result, error)
            if exiting is not None:
                raise exiting  # as a handle_flush_error that raised it: the batch is counted first
            return settled
        finally:
            # The error's traceback may hold this frame: without this, the
            # batch would live on in a cycle until the cyclic GC runs.
            error = exiting = settled = None
            del outcome

    def retryable(self, opts: FlushOpts, error: BaseException) -> bool:
        """Whether ``retry_on`` lets the failed attempt ``opts`` be retried.

        A predicate that raises rejects the retry, and is logged (once per
        failure, on the ``databuffer`` logger); ``SystemExit`` and
        ``KeyboardInterrupt`` from it go on, for the life to raise once the
        batch is settled.  Called only while retries are left, by the
        thread (or task) that runs the batch's life, holding no lock.
        """
        retry_on = self.config.retry_on
        if retry_on is None:
            return True
        if isinstance(retry_on, tuple):
            return isinstance(error, retry_on)
        try:
            return bool(retry_on(error))
        except THREAD_EXITS:
            raise
        except BaseException:
            logger.exception(
                "buffer %r partition %d: retry_on raised on the %s of attempt %d; the batch is not "
                "retried and goes to handle_flush_error",
                self.name,
                opts.partition,
                type(error).__name__,
                opts.attempt,
            )
            return False

    def failed_life(self, part: PartState, taken: Taken, error: BaseException) -> Life:
        """A batch the core handed out, reported failed with ``error`` without calling ``handle_flush``."""
        return self.life(part, self.first_attempt(part, taken), (None, error, False, True))

    def batch_for(self, attempt: Attempt) -> list[Any]:
        """The list ``handle_flush`` gets: a copy when the batch may be needed after the call.

        A ``handle_flush`` that consumes its list (pops the items it sends)
        and then fails must leave the whole batch to its retry and to
        ``handle_flush_error``.  With no retries and the default
        ``handle_flush_error`` (which logs only the batch's size), nothing
        reads the batch after the call: no copy (one per batch, about
        0.7 us for 512 items).
        """
        return list(attempt.batch) if self.copy_batches else attempt.batch

    def settle(self, part: PartState, attempt: Attempt, result: Any, error: BaseException | None) -> Life:
        """Report a finished batch: telemetry, error handler, counters, waiters."""
        opts = attempt.opts
        try:
            self.report_outcome(opts, attempt.began_ns, error)
            if error is not None:
                yield (HANDLE_ERROR, attempt, error)
        finally:
            # Whatever a callback raised, the batch is finished and counted.
            self.record(part, opts, attempt.first, result, error)
            self.progressed()
        return error

    def record(
        self, part: PartState, opts: FlushOpts, first: int, result: Any, error: BaseException | None
    ) -> None:
        """Count a settled batch and hand its outcome to the waiting ``sync_flush`` calls."""
        if part.syncs:
            with part.lock:
                for waiter in part.syncs:
                    if waiter.starts[opts.partition] <= first < waiter.targets[opts.partition]:
                        if error is None:
                            waiter.results[opts.partition].append(result)
                        else:
                            waiter.errors[opts.partition].append(error)
        self.core.finish(opts.partition, opts.size, error is None)

    def progressed(self) -> None:
        """A batch was settled: let waiting ``sync_flush``/``close`` calls check again (each engine)."""
        raise NotImplementedError

    # -- reporting --------------------------------------------------------

    def log_callback_escape(self, p: int) -> None:
        # Only a BaseException from a callback gets here (the batch is
        # already counted); the flusher must outlive it.
        logger.exception(
            "buffer %r partition %d: a flush callback (handle_flush, handle_flush_error or a telemetry "
            "handler) raised; the batch is counted and the flusher goes on",
            self.name,
            p,
        )

    def log_error_handler_failure(self, opts: FlushOpts) -> None:
        logger.exception(
            "buffer %r partition %d: handle_flush_error raised while handling a failed batch of %s; "
            "the batch is counted as failed and the buffer goes on",
            self.name,
            opts.partition,
            plural(opts.size, "item"),
        )

    def emit_flush_event(self, event: tuple[str, ...], measurements: dict[str, Any], metadata: Any) -> None:
        """Emit an event in the middle of a batch's flush: a handler's failure must not stop it."""
        try:
            telemetry.execute(event, measurements, metadata)
        except THREAD_EXITS:
            raise
        except BaseException:
            self.log_callback_escape(metadata["partition"])

    def report_start(self, opts: FlushOpts) -> None:
        """The ``flush`` ``start`` event of a batch."""
        if telemetry.has_handlers(telemetry.FLUSH_START):
            self.emit_flush_event(
                telemetry.FLUSH_START,
                {"system_time": time.time_ns(), "monotonic_time": _monotonic_ns()},
                {
                    "buffer": self.name,
                    "partition": opts.partition,
                    "size": opts.size,
                    "trigger": opts.trigger,
                },
            )

    def report_retry(
        self,
        part: PartState,
        opts: FlushOpts,
        start_ns: int,
        error: BaseException,
        delay: float | None = None,
    ) -> float:
        """Count a failed attempt that will be retried and emit its event; returns the backoff.

        Full jitter: a random wait up to the exponential bound, so that
        partitions and processes failing together do not retry in step.
        ``delay``: the wait, when the caller already knows it.
        """
        if delay is None:
            config = self.config
            bound = min(config.retry_backoff_max, config.retry_backoff * 2.0 ** min(opts.attempt - 1, 1000))
            delay = min(bound * self.random.random(), MAX_WAIT)
        with part.lock:
            part.retried += opts.size
        if telemetry.has_handlers(telemetry.FLUSH_RETRY):
            end = _monotonic_ns()
            self.emit_flush_event(
                telemetry.FLUSH_RETRY,
                {"duration": end - start_ns, "delay": int(delay * 1e9), "monotonic_time": end},
                {
                    "buffer": self.name,
                    "partition": opts.partition,
                    "size": opts.size,
                    "trigger": opts.trigger,
                    "attempt": opts.attempt,
                    "kind": "error",
                    "reason": error,
                    "stacktrace": error.__traceback__,
                },
            )
        return delay

    def report_outcome(self, opts: FlushOpts, began_ns: int, error: BaseException | None) -> None:
        """The ``flush`` ``stop`` or ``exception`` event of a settled batch."""
        event = telemetry.FLUSH_STOP if error is None else telemetry.FLUSH_EXCEPTION
        if telemetry.has_handlers(event):
            end = _monotonic_ns()
            metadata: dict[str, Any] = {
                "buffer": self.name,
                "partition": opts.partition,
                "size": opts.size,
                "trigger": opts.trigger,
                "attempt": opts.attempt,
            }
            if error is not None:
                metadata.update(kind="error", reason=error, stacktrace=error.__traceback__)
            telemetry.execute(event, {"duration": end - began_ns, "monotonic_time": end}, metadata)

    def not_awaitable(self, result: Any, callback: str) -> TypeError | None:
        """The error of a callback that returned an awaitable to an engine that calls it from a thread.

        The awaitable is closed (a coroutine would otherwise warn that it
        was never awaited).  None for any other result.
        """
        if result is None or not hasattr(type(result), "__await__"):
            return None
        close = getattr(result, "close", None)
        if close is not None:
            # The batch fails with the TypeError below whatever close() does.
            with contextlib.suppress(Exception):
                close()
        what = "the batch was not flushed" if callback == "handle_flush" else "it did not run"
        return TypeError(
            f"{callback} of {self.describe()} returned {type(result).__name__}, an awaitable that "
            f"nothing awaits: {what}; Buffer calls {callback} from a thread, "
            f"use AsyncBuffer for an async {callback}"
        )

    # -- the process-wide hooks (_shutdown) call these on every buffer -----

    def register(self) -> None:
        registry.add(self)

    def unregister(self) -> None:
        registry.discard_open(self)
        # Closed: tell the drops no warning has told yet.
        left = self.drops.flush()
        if left:
            logger.warning(
                "buffer %r dropped %s before it closed (on_full=%r)",
                self.name,
                plural(left, "more item"),
                self.config.on_full,
            )

    def in_own_thread(self) -> bool:
        """Whether the caller cannot wait for this buffer (it runs the buffer's flushes)."""
        raise NotImplementedError

    def begin_close(self) -> None:
        """Start closing without waiting (interpreter exit)."""
        raise NotImplementedError

    def close_blocking(self, timeout: float | None) -> None:
        """Close from a thread that may wait, within ``timeout`` (interpreter exit)."""
        raise NotImplementedError

    def fork_before(self) -> None:
        raise NotImplementedError

    def fork_after_parent(self) -> None:
        raise NotImplementedError

    def fork_after_child(self) -> list[Any]:
        raise NotImplementedError
