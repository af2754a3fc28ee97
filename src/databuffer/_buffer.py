"""The ``Buffer`` class: the Python layer over the core.

The core (``BufferCore``, compiled or pure Python) stores items and keeps the
counters; this layer validates options, runs one timer thread per buffer and
one flusher thread per partition, calls ``handle_flush`` and reports failures
and telemetry.
"""

from __future__ import annotations

import logging
import math
import numbers
import random
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Generic, Literal, Self, TypedDict, TypeVar, cast, overload

from . import telemetry
from ._compat import BufferCore
from ._errors import BufferClosed, BufferFull, FlushTimeout

if TYPE_CHECKING:
    # The layer calls the core's methods; both cores have the same ones, and
    # the pure-Python core is the typed spelling of them.
    from ._core_py import BufferCore as _CoreMethods
else:

    class _CoreMethods:
        __slots__ = ()


__all__ = ("Buffer", "BufferStats", "FlushOpts", "PartitionInfo")

#: The type of the items a buffer holds: ``Buffer[Event]`` holds ``Event``s.
T = TypeVar("T")
_E = TypeVar("_E", bound=BaseException)

logger = logging.getLogger("databuffer")

_monotonic = time.monotonic
_monotonic_ns = time.monotonic_ns

# Each partition allocates its ring (a pointer per item) up front.
_MAX_CAPACITY = sys.maxsize // 16

# A pending flush request is never downgraded by a weaker one.
_TRIGGER_RANK = {"interval": 0, "manual": 1, "close": 2}
_DISPATCH = ("round_robin", "thread")
# The item counters of stats() and info(), in that order.
_CounterKey = Literal["inserted", "size", "in_flight", "flushed", "retried", "failed"]
_COUNTERS: tuple[_CounterKey, ...] = ("inserted", "size", "in_flight", "flushed", "retried", "failed")

# Raised by a callback, these end the thread that ran it (after the batch is
# reported); any other exception is the batch's failure and the thread goes on.
_THREAD_EXITS = (SystemExit, KeyboardInterrupt)


class FlushOpts:
    """What ``handle_flush`` is told about a batch.

    Attributes:
        meta: the buffer's ``flush_meta``.
        size: the number of items in the batch (``len(batch)``).
        partition: the 0-based partition the batch comes from.
        buffer: the buffer's name.
        trigger: why it was flushed: ``"size"``, ``"interval"``,
            ``"manual"`` or ``"close"``.
        attempt: which call of ``handle_flush`` this is for the batch: 1 for
            the first, 2 for the first retry, up to ``max_retries + 1``.
    """

    __slots__ = ("attempt", "buffer", "meta", "partition", "size", "trigger")

    def __init__(
        self, meta: Any, size: int, partition: int, buffer: str, trigger: str, attempt: int = 1
    ) -> None:
        self.meta = meta
        self.size = size
        self.partition = partition
        self.buffer = buffer
        self.trigger = trigger
        self.attempt = attempt

    def __repr__(self) -> str:
        return (
            f"FlushOpts(meta={self.meta!r}, size={self.size}, partition={self.partition}, "
            f"buffer={self.buffer!r}, trigger={self.trigger!r}, attempt={self.attempt})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FlushOpts):
            return NotImplemented
        return all(getattr(self, k) == getattr(other, k) for k in self.__slots__)

    __hash__ = None  # type: ignore[assignment]


class _Counters(TypedDict):
    # The item counters of stats() and info(); see Buffer.stats.
    inserted: int
    size: int
    in_flight: int
    flushed: int
    retried: int
    failed: int


class BufferStats(_Counters):
    """What :meth:`Buffer.stats` returns: ``name``, ``partitions``, ``closed``
    and the item counters over all partitions (``inserted``, ``size``,
    ``in_flight``, ``flushed``, ``retried``, ``failed``)."""

    name: str
    partitions: int
    closed: bool


class PartitionInfo(_Counters):
    """What :meth:`Buffer.info` returns for each partition: its settings and
    state, and its item counters (as in :class:`BufferStats`)."""

    partition: int
    name: str
    flush_size: int
    flush_interval: float
    flush_jitter: float
    flush_timeout: float
    flushing: bool


class _Flight:
    """One attempt at flushing a batch (owned by its flusher thread).

    Exactly one of the flusher (the call returned) and the timer thread (the
    call ran past ``flush_timeout``) concludes the attempt: whoever takes
    ``claim`` first, a non-blocking acquire.  A retry is a new ``_Flight``
    for the same batch, so a late timer can never claim it by mistake.
    """

    __slots__ = ("batch", "claim", "deadline", "first", "opts", "start_ns", "began_ns")

    def __init__(self, batch: list[Any], opts: FlushOpts, first: int, began_ns: int = 0) -> None:
        self.batch = batch
        self.opts = opts
        self.first = first
        # When this attempt started, and when the batch's first attempt did.
        self.start_ns = 0
        self.began_ns = began_ns
        self.deadline = math.inf
        self.claim = threading.Lock()


class _SyncWaiter:
    """One ``sync_flush``/``close`` call waiting for its partitions."""

    __slots__ = ("errors", "results", "starts", "targets")

    def __init__(self, partitions: int) -> None:
        # Per partition: sequence numbers [start, target) that this call flushes.
        self.starts = [0] * partitions
        self.targets = [0] * partitions
        self.results: list[list[Any]] = [[] for _ in range(partitions)]
        self.errors: list[list[BaseException]] = [[] for _ in range(partitions)]


class _PartState:
    """Per-partition state that both layers keep: what the shared reporting code uses."""

    def __init__(self, index: int) -> None:
        self.index = index
        # Guards syncs, retried and the flush request (see each layer's
        # partition class for who writes them).
        self.lock = threading.Lock()
        self.syncs: list[_SyncWaiter] = []
        # Items handed to handle_flush again after a failed attempt.
        self.retried = 0
        # The pending flush request: flush the items before sequence
        # flush_upto, with this trigger (see _LayerBase._note_request).
        self.flush_upto = 0
        self.flush_trigger = "manual"


def _next_attempt(opts: FlushOpts) -> FlushOpts:
    """The opts of a batch's next attempt (a retry)."""
    return FlushOpts(opts.meta, opts.size, opts.partition, opts.buffer, opts.trigger, opts.attempt + 1)


class _Partition(_PartState):
    """Per-partition state of the Python layer."""

    def __init__(self, index: int) -> None:
        super().__init__(index)
        # self.lock guards the writes of flush_upto, flush_trigger, syncs
        # and retried (only the thread concluding an attempt adds to
        # retried).  The flusher reads flush_upto and flush_trigger without
        # it: a stale read is harmless, since every request also wakes the
        # flusher, which then reads them again.
        # The batch in handle_flush: written by its flusher thread, read by
        # the timer thread; _Flight.claim decides who settles it.
        self.flight: _Flight | None = None
        # Inserts waiting for room wait on this condition; waiters is
        # written under it (the flusher reads it unlocked, then takes the
        # lock to notify, so a waiter that registered is never missed).
        self.room = threading.Condition(threading.Lock())
        self.waiters = 0
        # Next timed flush (monotonic seconds).  Re-armed by the flusher
        # when it starts a flush and by the timer when it fires; the timer thread
        # reads it, and is woken (_wake_timer_before) when it moves earlier.
        self.deadline = math.inf
        # The current flusher thread: replaced by the timer thread after a
        # timeout (published before it starts), joined by close().
        self.thread: threading.Thread | None = None
        # Set (by the timer thread, once) when a flusher timed out and no
        # thread could replace it (at interpreter shutdown on Python 3.12,
        # for one): the partition's batches are then reported failed with
        # this error instead of waiting for a flusher that will not come.
        self.orphaned: BaseException | None = None


def _check_count(option: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{option} must be an int, not {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{option} must be >= {minimum}, got {value!r}")
    return value


def _check_seconds(option: str, value: object, *, zero_ok: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{option} must be a number of seconds, not {type(value).__name__} {value!r}")
    seconds = float(value)
    if not math.isfinite(seconds):
        raise ValueError(f"{option} must be a finite number of seconds, got {value!r}")
    if seconds < 0 or (seconds == 0 and not zero_ok):
        bound = ">= 0" if zero_ok else "> 0"
        raise ValueError(f"{option} must be {bound} seconds, got {value!r}")
    return seconds


def _check_timeout(value: object) -> float | None:
    if value is None:
        return None
    return _check_seconds("timeout", value, zero_ok=True)


class _LayerBase(_CoreMethods, Generic[T]):
    """What :class:`Buffer` and :class:`AsyncBuffer` share over the core.

    Option checking, counters, ``info``/``stats``/``dump``, insert telemetry
    and the pieces of flush reporting that do not depend on how flushes run
    (threads for ``Buffer``, tasks on an event loop for ``AsyncBuffer``).
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # The compiled core's insert methods, in descriptors made for this
        # class, so that CPython can specialize buf.insert(x) (see the core).
        own = getattr(cls, "_own_methods", None)
        if own is not None:
            own(cls)

    # Set by each layer: its own handle_flush stub, which a subclass
    # overrides, and how error messages spell its definition.
    _handle_flush_stub: Callable[..., Any]
    _handle_flush_def = "def handle_flush(self, batch, opts)"
    _configured = False
    # Defined by each layer (a subclass overrides it).
    handle_flush: Callable[..., Any]
    # Made by each layer (and again in a forked child).
    _parts: Sequence[_PartState]
    _random: random.Random

    def _configure(
        self,
        *,
        handle_flush: Callable[..., Any] | None,
        handle_flush_error: Callable[..., Any] | None,
        name: str | None,
        partitions: int,
        dispatch: str,
        max_size: int,
        max_size_jitter: int,
        flush_interval: float,
        flush_jitter: float,
        flush_timeout: float,
        flush_meta: Any,
        insert_timeout: float,
        max_retries: int,
        retry_backoff: float,
        retry_backoff_max: float,
        seal_hook: bool = False,
    ) -> None:
        """Check the options (naming any bad value) and initialise the core."""
        if self._configured:
            raise RuntimeError(f"{type(self).__name__}.__init__ was called twice")
        self._configured = True
        has_method = type(self).handle_flush is not type(self)._handle_flush_stub
        if handle_flush is None and not has_method:
            raise TypeError(
                f"{type(self).__name__} needs a handle_flush: define the method "
                f"{self._handle_flush_def} or pass handle_flush=fn"
            )
        if handle_flush is not None and has_method:
            raise TypeError(
                f"{type(self).__name__} defines handle_flush already; do not pass handle_flush= as well"
            )
        if handle_flush is not None and not callable(handle_flush):
            raise TypeError(f"handle_flush must be callable, not {handle_flush!r}")
        if handle_flush_error is not None and not callable(handle_flush_error):
            raise TypeError(f"handle_flush_error must be callable, not {handle_flush_error!r}")
        if name is None:
            name = type(self).__name__
        elif not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__} {name!r}")
        self._name = name
        self._partitions = _check_count("partitions", partitions, 1)
        if not isinstance(dispatch, str):
            raise TypeError(f"dispatch must be a str, not {type(dispatch).__name__} {dispatch!r}")
        if dispatch not in _DISPATCH:
            raise ValueError(f"dispatch must be one of {', '.join(map(repr, _DISPATCH))}, got {dispatch!r}")
        self._max_size = _check_count("max_size", max_size, 1)
        self._max_size_jitter = _check_count("max_size_jitter", max_size_jitter, 0)
        if self._max_size + self._max_size_jitter > _MAX_CAPACITY:
            raise ValueError(
                f"max_size + max_size_jitter must be <= {_MAX_CAPACITY}, "
                f"got {self._max_size} + {self._max_size_jitter}"
            )
        self._flush_interval = _check_seconds("flush_interval", flush_interval, zero_ok=False)
        self._flush_jitter = _check_seconds("flush_jitter", flush_jitter, zero_ok=True)
        self._flush_timeout = _check_seconds("flush_timeout", flush_timeout, zero_ok=False)
        self._insert_timeout = _check_seconds("insert_timeout", insert_timeout, zero_ok=False)
        self._max_retries = _check_count("max_retries", max_retries, 0)
        self._retry_backoff = _check_seconds("retry_backoff", retry_backoff, zero_ok=True)
        self._retry_backoff_max = _check_seconds("retry_backoff_max", retry_backoff_max, zero_ok=True)
        self._flush_meta = flush_meta
        self._flush_fn: Callable[[list[T], FlushOpts], Any] = handle_flush or self.handle_flush
        self._error_fn: Callable[[list[T], FlushOpts, BaseException], Any] = (
            handle_flush_error or self.handle_flush_error
        )
        self._stopping = False
        self._stopped = False
        self._core_init(
            self._partitions,
            self._max_size,
            self._max_size_jitter,
            dispatch == "thread",
            seal_hook,
        )

    def handle_flush_error(self, batch: list[T], opts: FlushOpts, error: BaseException) -> object:
        """Called with a batch whose ``handle_flush`` raised or timed out.

        The default logs the failure on the ``databuffer`` logger at ERROR,
        with the buffer's name, the partition, the batch size and the
        traceback.  Override it to retry, spool or count.
        """
        logger.error(
            "buffer %r partition %d: handle_flush failed for a batch of %d items (trigger %s)",
            opts.buffer,
            opts.partition,
            opts.size,
            opts.trigger,
            exc_info=(type(error), error, error.__traceback__),
        )
        return None

    def dump(self) -> list[T]:
        """A copy of the buffered items, removing nothing.

        Partition order, insertion order within a partition.  Items already
        handed to a flusher are not included.
        """
        return self._dump()

    def size(self) -> int:
        """Items buffered and not yet handed to a flusher, over all partitions."""
        return int(self._size())

    def info(self) -> list[PartitionInfo]:
        """One dict per partition: its settings, state and counters.

        Keys: ``partition``, ``name``, ``size``, ``flush_size`` (the current
        threshold), ``flush_interval``, ``flush_jitter``, ``flush_timeout``,
        ``flushing`` (a batch is with the flusher), and the item counters
        ``inserted``, ``in_flight``, ``flushed``, ``retried`` and ``failed``
        (see :meth:`stats`).  Each dict is one consistent snapshot:
        ``inserted == size + in_flight + flushed + failed``.
        """
        out: list[PartitionInfo] = []
        for part in self._parts:
            counters, threshold, busy = self._counters(part)
            out.append(
                {
                    "partition": part.index,
                    "name": self._name,
                    "flush_size": threshold,
                    "flush_interval": self._flush_interval,
                    "flush_jitter": self._flush_jitter,
                    "flush_timeout": self._flush_timeout,
                    "flushing": busy,
                    **counters,
                }
            )
        return out

    def stats(self) -> BufferStats:
        """The buffer's item counters, over all partitions.

        The counters, all in items:

        - ``inserted``: stored by inserts since the buffer started;
        - ``size``: buffered, not yet handed to a flusher;
        - ``in_flight``: handed to a flusher and not finished (sealed, in
          ``handle_flush``, or waiting for a retry);
        - ``flushed``: in batches whose ``handle_flush`` returned;
        - ``failed``: in batches that failed for good (reported to
          ``handle_flush_error``);
        - ``retried``: handed to ``handle_flush`` again after a failed
          attempt (an item retried twice counts twice; not part of the sum
          below).

        At every moment ``inserted == size + in_flight + flushed + failed``:
        each partition is read in one snapshot under its lock.  Still
        answers once the buffer is closed.

        Returns:
            A :class:`BufferStats`: ``name``, ``partitions``, ``closed`` and
            the counters.
        """
        totals = cast(_Counters, dict.fromkeys(_COUNTERS, 0))
        for part in self._parts:
            counters, _threshold, _busy = self._counters(part)
            for key in _COUNTERS:
                totals[key] += counters[key]
        return {"name": self._name, "partitions": self._partitions, "closed": self.closed, **totals}

    def _counters(self, part: _PartState) -> tuple[_Counters, int, bool]:
        """A partition's item counters (one snapshot), its threshold, and whether it is flushing."""
        size, threshold, busy, inserted, taken, flushed, failed = self._stats(part.index)
        counters: _Counters = {
            "inserted": inserted,
            "size": size,
            "in_flight": taken - flushed - failed,
            "flushed": flushed,
            "retried": part.retried,
            "failed": failed,
        }
        return counters, threshold, busy

    @property
    def name(self) -> str:
        """The buffer's name."""
        return self._name

    @property
    def closed(self) -> bool:
        """Whether the buffer is closed to inserts (``close()``, or ``aclose()`` of an ``AsyncBuffer``)."""
        return bool(self._is_closed())

    def __repr__(self) -> str:
        state = "closed" if self._is_closed() else "open"
        return (
            f"<{type(self).__name__} name={self._name!r} partitions={self._partitions} "
            f"size={self.size()} {state}>"
        )

    def _closed_error(self, stored: int = 0) -> BufferClosed:
        if stored:
            return BufferClosed(
                f"buffer {self._name!r} was closed after {stored} leading items of the batch were stored",
                stored=stored,
            )
        return BufferClosed(f"buffer {self._name!r} is closed")

    def _check_timeout(self, timeout: object) -> None:
        _check_seconds("timeout", timeout, zero_ok=True)

    def _full(self, p: int) -> str:
        """The start of a ``BufferFull`` message: partition ``p`` is full while it flushes."""
        return (
            f"buffer {self._name!r} partition {p} is full ({self._stats(p)[1]} items) "
            "while its previous batch is flushing"
        )

    def _iterate(self, items: object) -> Iterable[Any]:
        try:
            return iter(items)  # type: ignore[call-overload,no-any-return]
        except TypeError:
            raise TypeError(
                f"insert_batch() needs an iterable of items, not {type(items).__name__} {items!r}"
            ) from None

    def _insert_instrumented(self, item: Any, timeout: float | None) -> None:
        self._instrumented(self._insert_raw, item, timeout, batch=False)

    def _insert_batch_instrumented(self, items: Iterable[Any], timeout: float | None) -> None:
        self._instrumented(self._insert_batch_raw, items, timeout, batch=True)

    def _instrumented(self, raw: Callable[[Any, Any], Any], arg: Any, timeout: Any, *, batch: bool) -> None:
        if getattr(_emitting, "insert", False):
            # An insert from an insert telemetry handler: its own events
            # would call the handler again, without end.
            raw(arg, timeout)
            return
        start = self._insert_started()
        try:
            result = raw(arg, timeout)
        except Exception as exc:
            self._insert_failed(start, exc)
            raise
        self._insert_done(start, result, batch=batch)

    def _insert_started(self) -> int:
        """Emit an insert's ``start`` event; returns its start time."""
        start = _monotonic_ns()
        _emit_insert_event(
            telemetry.INSERT_START,
            {"system_time": time.time_ns(), "monotonic_time": start},
            {"buffer": self._name},
        )
        return start

    def _insert_failed(self, start: int, exc: BaseException) -> None:
        end = _monotonic_ns()
        _emit_insert_event(
            telemetry.INSERT_EXCEPTION,
            {"duration": end - start, "monotonic_time": end},
            {"buffer": self._name, "kind": "error", "reason": exc, "stacktrace": exc.__traceback__},
        )

    def _insert_done(self, start: int, result: Any, *, batch: bool) -> None:
        """Emit an insert's ``stop`` event; ``result`` is what the core's raw insert returned."""
        end = _monotonic_ns()
        if batch:
            partition, size = result
            partition = None if partition < 0 else partition
        else:
            partition, size = result, 1
        _emit_insert_event(
            telemetry.INSERT_STOP,
            {"duration": end - start, "monotonic_time": end},
            {"buffer": self._name, "partition": partition, "size": size},
        )

    def _next_interval(self) -> float:
        # uniform(0, jitter) as random.uniform computes it, without its frame.
        return self._flush_interval + self._flush_jitter * self._random.random()

    def _reached(self, targets: list[int]) -> bool:
        for p, target in enumerate(targets):
            stats = self._stats(p)
            # min(): the pure-Python core counts an append as inserted before
            # it checks it, and takes it back out if the buffer closed or
            # the partition was full, so "inserted" can drop below a target
            # read while such an append was in flight (never in the
            # compiled core, where it never decreases).
            if stats[5] + stats[6] < min(target, stats[3]):
                return False
        return True

    def _log_callback_escape(self, p: int) -> None:
        # Only a BaseException from a callback gets here (the batch is
        # already counted); the flusher must outlive it.
        logger.exception(
            "buffer %r partition %d: a flush callback raised; the flusher goes on", self._name, p
        )

    def _emit_flush_event(self, event: tuple[str, ...], measurements: dict[str, Any], metadata: Any) -> None:
        """Emit an event in the middle of a batch's flush: a handler's failure must not stop it."""
        try:
            telemetry.execute(event, measurements, metadata)
        except _THREAD_EXITS:
            raise
        except BaseException:
            self._log_callback_escape(metadata["partition"])

    def _report_start(self, opts: FlushOpts) -> None:
        """The ``flush`` ``start`` event of a batch."""
        if telemetry.has_handlers(telemetry.FLUSH_START):
            self._emit_flush_event(
                telemetry.FLUSH_START,
                {"system_time": time.time_ns(), "monotonic_time": _monotonic_ns()},
                {
                    "buffer": self._name,
                    "partition": opts.partition,
                    "size": opts.size,
                    "trigger": opts.trigger,
                },
            )

    def _report_retry(
        self,
        part: _PartState,
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
            bound = min(self._retry_backoff_max, self._retry_backoff * 2.0 ** min(opts.attempt - 1, 1000))
            delay = bound * self._random.random()
        with part.lock:
            part.retried += opts.size
        if telemetry.has_handlers(telemetry.FLUSH_RETRY):
            end = _monotonic_ns()
            self._emit_flush_event(
                telemetry.FLUSH_RETRY,
                {"duration": end - start_ns, "delay": int(delay * 1e9), "monotonic_time": end},
                {
                    "buffer": self._name,
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

    def _report_outcome(self, opts: FlushOpts, began_ns: int, error: BaseException | None) -> None:
        """The ``flush`` ``stop`` or ``exception`` event of a settled batch."""
        event = telemetry.FLUSH_STOP if error is None else telemetry.FLUSH_EXCEPTION
        if telemetry.has_handlers(event):
            end = _monotonic_ns()
            metadata: dict[str, Any] = {
                "buffer": self._name,
                "partition": opts.partition,
                "size": opts.size,
                "trigger": opts.trigger,
                "attempt": opts.attempt,
            }
            if error is not None:
                metadata.update(kind="error", reason=error, stacktrace=error.__traceback__)
            telemetry.execute(event, {"duration": end - began_ns, "monotonic_time": end}, metadata)

    # -- what the process-wide hooks (_shutdown) call on every buffer -------

    def _in_own_thread(self) -> bool:
        """Whether the caller cannot wait for this buffer (it runs the buffer's flushes)."""
        raise NotImplementedError

    def _begin_close(self) -> None:
        """Start closing without waiting (interpreter exit)."""
        raise NotImplementedError

    def _close_blocking(self, timeout: float | None) -> None:
        """Close from a thread that may wait, within ``timeout`` (interpreter exit)."""
        raise NotImplementedError

    def _fork_before(self) -> None:
        raise NotImplementedError

    def _fork_after_parent(self) -> None:
        raise NotImplementedError

    def _fork_after_child(self) -> list[Any]:
        raise NotImplementedError

    def _log_error_handler_failure(self, opts: FlushOpts) -> None:
        logger.exception("buffer %r partition %d: handle_flush_error raised", self._name, opts.partition)

    def _request(self, part: Any, trigger: str, upto: int | None = None) -> None:
        """Ask the flusher of ``part`` to flush items up to sequence ``upto`` (each layer)."""
        raise NotImplementedError

    def _note_request(
        self, part: _PartState, trigger: str, upto: int | None, *, when_empty: bool = False
    ) -> bool:
        """Record a flush request in ``part``; False if there is nothing to ask for.

        ``upto`` None: everything inserted so far, unless the partition holds
        nothing (and not ``when_empty``).  A pending request is never
        downgraded: its trigger only changes for one of higher rank, or once
        the flusher has taken what it asked for.  Under ``part.lock`` where
        other threads may request too.
        """
        size, _threshold, _busy, inserted, taken, _flushed, _failed = self._stats(part.index)
        if upto is None:
            if size == 0 and not when_empty:
                return False
            upto = inserted
        if taken >= part.flush_upto or _TRIGGER_RANK[trigger] >= _TRIGGER_RANK[part.flush_trigger]:
            part.flush_trigger = trigger
        part.flush_upto = max(part.flush_upto, upto)
        return True

    def _join_flushes(self, waiter: _SyncWaiter, trigger: str) -> None:
        """Make ``waiter`` wait for every item inserted so far, and request their flushes."""
        for part in self._parts:
            with part.lock:
                stats = self._stats(part.index)
                waiter.starts[part.index] = stats[4]
                waiter.targets[part.index] = stats[3]
                part.syncs.append(waiter)
            self._request(part, trigger, waiter.targets[part.index])

    def _leave_flushes(self, waiter: _SyncWaiter) -> None:
        for part in self._parts:
            with part.lock:
                if waiter in part.syncs:
                    part.syncs.remove(waiter)

    def _record(
        self, part: _PartState, opts: FlushOpts, first: int, result: Any, error: BaseException | None
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
        self._finish(opts.partition, opts.size, error is None)


class _BufferLayer(_LayerBase[T]):
    """The Python layer of :class:`Buffer`: options, threads, flushing, telemetry.

    ``Buffer`` is this layer over the compiled core (or the pure-Python one);
    the tests also build it over each core explicitly.
    """

    _parts: list[_Partition]

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
        )
        self._start()
        _registry.add(self)

    def _start(self) -> None:
        """Make the layer's state and start its threads (at construction, and in a forked child)."""
        self._random = random.Random()
        self._parts = [_Partition(p) for p in range(self._partitions)]
        # Guards starting threads (part.thread, _timer): _supervise must not
        # see a thread published but not started yet.
        self._threads_lock = threading.RLock()
        # Lifecycle: _close_lock serializes close(); _stopping is set once
        # every flush is done and tells the threads to exit.
        self._close_lock = threading.Lock()
        # sync_flush/close waiters wait on _progress for finished flushes;
        # _sync_count (guarded by it) lets flushers skip the notify.
        self._progress = threading.Condition(threading.Lock())
        self._sync_count = 0
        # The timer thread sleeps on _timer_cond until _timer_wake_at
        # (both guarded by it); the deadlines of the partitions too.
        self._timer_cond = threading.Condition(threading.Lock())
        self._timer_wake_at = math.inf
        # A thread of the buffer ended early: the timer runs _supervise.
        self._ended = False

        now = _monotonic()
        for part in self._parts:
            part.deadline = now + self._next_interval()
            self._start_flusher(part, None)
        self._start_timer()

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

    _handle_flush_stub = handle_flush

    # -- operations -------------------------------------------------------

    def flush(self) -> None:
        """Ask every non-empty partition to flush now; does not wait."""
        if self._stopped:
            return
        self._supervise()
        for part in self._parts:
            self._request(part, "manual")

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
        deadline = self._deadline(timeout)
        if self._stopped:
            return []
        self._refuse_flusher_thread("sync_flush")
        self._supervise()
        waiter = self._flush_and_wait("manual", deadline)
        errors = [error for errs in waiter.errors for error in errs]
        if errors:
            # An ExceptionGroup, or a BaseExceptionGroup if a batch failed
            # with a BaseException (which an ExceptionGroup cannot hold).
            raise BaseExceptionGroup(
                f"sync_flush of buffer {self._name!r}: {len(errors)} flush(es) failed", errors
            )
        return [result for results in waiter.results for result in results]

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
        deadline = self._deadline(timeout)
        if self._stopped:
            return
        self._refuse_flusher_thread("close")
        # Inserts stop at once, even while another thread is in close().
        self._mark_closed()
        self._supervise()
        if not self._close_lock.acquire(timeout=-1 if deadline is None else _wait_time(deadline)):
            raise TimeoutError(f"buffer {self._name!r}: another close() is still flushing")
        try:
            if self._stopped:
                return
            for part in self._parts:
                with part.room:
                    part.room.notify_all()
            self._flush_and_wait("close", deadline)
            self._stopping = True
            current = threading.current_thread()
            for part in self._parts:
                self._wake(part.index)
            with self._timer_cond:
                self._timer_cond.notify()
            for thread in [part.thread for part in self._parts] + [self._timer]:
                if thread is not None and thread is not current:
                    thread.join(_wait_time(deadline))
                    if thread.is_alive():
                        raise TimeoutError(
                            f"buffer {self._name!r}: its threads did not stop before the timeout ran out"
                        )
            self._stopped = True
            _registry.discard_open(self)
        finally:
            self._close_lock.release()

    def _close_blocking(self, timeout: float | None) -> None:
        """Close from any thread, waiting at most ``timeout`` (``close_open_buffers``)."""
        self.close(timeout=timeout)

    def _begin_close(self) -> None:
        """Refuse inserts and ask every partition to flush for close; do not wait."""
        if self._stopped:
            return
        self._mark_closed()
        self._supervise()
        for part in self._parts:
            self._request(part, "close")

    # -- fork (see _shutdown's os.register_at_fork hooks) ----------------------

    def _fork_before(self) -> None:
        """Quiesce before ``fork()``: hold the partitions' locks, the layer's then the core's."""
        for part in self._parts:
            part.lock.acquire()
        self._fork_prepare()

    def _fork_after_parent(self) -> None:
        self._fork_parent()
        for part in reversed(self._parts):
            part.lock.release()

    def _fork_after_child(self) -> list[Any]:
        """In a forked child: start over empty, with fresh locks and threads.

        The parent's items stay the parent's (it flushes them): the child
        drops its copies, so nothing is delivered twice.  Returns them, for
        the caller to release once every buffer is consistent again.
        """
        dropped = self._fork_child()
        if self._stopping or self._is_closed():
            # Closed (or closing) in the parent: nothing to flush here.
            self._stopping = self._stopped = True
            _registry.discard_open(self)
            self._parts = [_Partition(p) for p in range(self._partitions)]
            return dropped
        self._start()
        return dropped

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- slow paths called by the core ------------------------------------

    def _insert_wait(self, p: int, item: Any, timeout: float | None) -> None:
        """Wait for room in partition ``p`` and store ``item`` (backpressure)."""
        self._wait_for_room(p, (item,), 0, timeout, batch=False)

    def _insert_batch_wait(self, p: int, seq: Sequence[Any], start: int, timeout: float | None) -> None:
        """Store ``seq[start:]`` in partition ``p``, waiting for room between chunks."""
        self._wait_for_room(p, seq, start, timeout, batch=True)

    def _wait_for_room(
        self, p: int, seq: Sequence[Any], stored: int, timeout: float | None, *, batch: bool
    ) -> None:
        seconds = self._insert_timeout if timeout is None else float(timeout)
        part = self._parts[p]
        if self._in_own_thread():
            # Room is made by this buffer's flushers: a callback that waited
            # for it could be waiting for itself.
            raise BufferFull(
                f"{self._full(p)}, and an insert from the buffer's own flush callbacks "
                "(handle_flush, handle_flush_error, telemetry handlers) does not wait for room"
                + (f"; {stored} leading items stored" if batch else ""),
                stored=stored,
            )
        deadline = _monotonic() + seconds
        with part.room:
            part.waiters += 1
            try:
                while (stored := self._push_many(p, seq, stored)) < len(seq):
                    remaining = deadline - _monotonic()
                    if remaining <= 0:
                        raise BufferFull(
                            f"{self._full(p)}; gave up after {seconds}s"
                            + (f" with {stored} leading items stored" if batch else ""),
                            stored=stored,
                        )
                    part.room.wait(_interruptible(remaining))
            except KeyboardInterrupt as exc:
                # Ctrl-C while waiting: the items stored so far stay stored.
                if batch:
                    exc.add_note(
                        f"insert_batch stored {stored} leading items of the call before it was interrupted"
                    )
                raise
            finally:
                part.waiters -= 1

    # -- flushing ---------------------------------------------------------

    def _deadline(self, timeout: float | None) -> float | None:
        seconds = _check_timeout(timeout)
        return None if seconds is None else _monotonic() + seconds

    def _request(self, part: _Partition, trigger: str, upto: int | None = None) -> None:
        """Ask the flusher of ``part`` to flush items up to sequence ``upto``."""
        with part.lock:
            if not self._note_request(part, trigger, upto, when_empty=part.orphaned is not None):
                return
        if part.orphaned is not None:
            self._fail_buffered(part)
        else:
            self._wake(part.index)

    def _in_own_thread(self) -> bool:
        """Whether the caller is one of this buffer's threads (a flush callback).

        Flusher threads that were abandoned after a timeout count too.
        """
        return getattr(threading.current_thread(), "_databuffer_owner", None) is self

    def _refuse_flusher_thread(self, call: str) -> None:
        """Raise if called from this buffer's own flusher or timer thread.

        Such a call (from ``handle_flush``, ``handle_flush_error`` or a flush
        telemetry handler) would wait for the flush it is part of.
        """
        if self._in_own_thread():
            raise RuntimeError(
                f"{call}() of buffer {self._name!r} cannot be called from its own flush callbacks "
                "(handle_flush, handle_flush_error, telemetry handlers): it would wait for itself; "
                "use flush(), or call it from another thread"
            )

    def _flush_and_wait(self, trigger: str, deadline: float | None) -> _SyncWaiter:
        """Flush every partition with ``trigger`` and wait for it (sync_flush, close)."""
        waiter = _SyncWaiter(self._partitions)
        with self._progress:
            self._sync_count += 1
        try:
            self._join_flushes(waiter, trigger)
            with self._progress:
                while not self._reached(waiter.targets):
                    remaining = None if deadline is None else deadline - _monotonic()
                    if remaining is not None and remaining <= 0:
                        raise TimeoutError(
                            f"buffer {self._name!r}: flushes still running when the timeout ran out"
                        )
                    self._progress.wait(_interruptible(_wait_time(deadline)))
        finally:
            self._leave_flushes(waiter)
            with self._progress:
                self._sync_count -= 1
        return waiter

    def _start_flusher(self, part: _Partition, timed_out: tuple[_Flight, FlushTimeout] | None) -> None:
        thread = threading.Thread(
            target=self._flusher_main,
            args=(part, timed_out),
            name=f"databuffer-{self._name}-flusher-{part.index}",
            daemon=True,
        )
        thread._databuffer_owner = self  # type: ignore[attr-defined]  # see _in_own_thread
        with self._threads_lock:
            # Published before it runs: once it settles a timed-out batch,
            # close() may join part.thread, which must not be the stuck one.
            part.thread = thread
            thread.start()

    def _start_timer(self) -> None:
        thread = threading.Thread(target=self._timer_main, name=f"databuffer-{self._name}-timer", daemon=True)
        thread._databuffer_owner = self  # type: ignore[attr-defined]  # see _in_own_thread
        with self._threads_lock:
            self._timer = thread
            thread.start()

    def _attend(self) -> None:
        """Called by the core from one insert after ``_set_attention``."""
        self._supervise()

    def _supervise(self) -> None:
        """Start a new thread in place of any of the buffer's threads that ended early.

        A flusher whose batch timed out ends on purpose (it is no longer
        ``part.thread``), and all end once the buffer stops; any other
        thread of the buffer that is not alive has died.
        """
        if self._stopping:
            return
        with self._threads_lock:
            if self._stopping:
                return
            try:
                for part in self._parts:
                    thread = part.thread
                    if thread is not None and not thread.is_alive():
                        # It takes what is due before it first waits: no wake needed.
                        self._start_flusher(part, None)
                        logger.warning(
                            "buffer %r: started a new flusher for partition %d (the last one ended)",
                            self._name,
                            part.index,
                        )
                if not self._timer.is_alive():
                    self._start_timer()
                    logger.warning("buffer %r: started a new timer thread (the last one ended)", self._name)
            except RuntimeError as exc:  # no new threads: the interpreter is shutting down
                logger.error("buffer %r: cannot replace an ended thread: %s", self._name, exc)

    def _flusher_main(self, part: _Partition, timed_out: tuple[_Flight, FlushTimeout] | None) -> None:
        p = part.index
        try:
            if timed_out is not None:
                flight, error = timed_out
                timed_out = None  # do not hold the batch for the thread's life
                try:
                    if not self._run(part, self._conclude(part, flight, None, error)):
                        return
                except _THREAD_EXITS:
                    raise
                except BaseException:
                    self._log_callback_escape(p)
                finally:
                    flight = error = None  # type: ignore[assignment]
            # Bound once: this loop runs once per batch.
            take, flush_one, wait_wake = self._take, self._flush_one, self._wait_wake
            while True:
                while True:
                    taken = take(p, part.flush_upto)
                    _room_freed(part)
                    if taken is None:
                        break
                    try:
                        if not flush_one(part, taken):
                            return
                    except _THREAD_EXITS:
                        raise
                    except BaseException:
                        self._log_callback_escape(p)
                if self._stopping:
                    return
                # The core's wake event: set by sealing inserts, flush
                # requests and close.
                wait_wake(p)
        except BaseException as exc:
            self._thread_ended(f"the flusher of partition {p}", exc)

    def _thread_ended(self, which: str, exc: BaseException) -> None:
        """Log why one of the buffer's threads ends early; have it restarted.

        SystemExit and KeyboardInterrupt raised by a callback end the thread
        that ran it (after the batch was reported); anything else getting
        here is a fault of the buffer itself.  Either way the next insert,
        flush or timer round starts a new thread (``_supervise``).
        """
        if isinstance(exc, _THREAD_EXITS):
            logger.warning(
                "buffer %r: %s ends: a flush callback raised %s; a new one starts on the next "
                "insert or flush",
                self._name,
                which,
                type(exc).__name__,
            )
        else:
            logger.error(
                "buffer %r: %s ends on an error; a new one starts on the next insert or flush",
                self._name,
                which,
                exc_info=(type(exc), exc, exc.__traceback__),
            )
        self._set_attention()
        if threading.current_thread() is not self._timer:
            # The timer replaces it at once, too.
            with self._timer_cond:
                self._ended = True
                self._timer_cond.notify()

    def _flush_one(self, part: _Partition, taken: tuple[list[Any], bool, int]) -> bool:
        """Flush one batch, with its retries; False if an attempt was abandoned."""
        flight = self._new_flight(part, taken)
        self._report_start(flight.opts)
        return self._run(part, flight)

    def _new_flight(self, part: _Partition, taken: tuple[list[Any], bool, int]) -> _Flight:
        """The first attempt at a batch the core handed out (``_take``)."""
        batch, by_size, first = taken
        trigger = "size" if by_size else part.flush_trigger
        return _Flight(batch, FlushOpts(self._flush_meta, len(batch), part.index, self._name, trigger), first)

    def _run(self, part: _Partition, flight: _Flight | None) -> bool:
        """Call ``handle_flush`` for an attempt and its retries; False if abandoned."""
        while flight is not None:
            # One clock read (time.monotonic() is the same clock, in seconds).
            flight.start_ns = start_ns = _monotonic_ns()
            if not flight.began_ns:
                flight.began_ns = start_ns
            now = start_ns * 1e-9
            flight.deadline = now + self._flush_timeout
            part.flight = flight
            # The flush happens now: the partition's next timed flush counts from here.
            part.deadline = now + self._next_interval()
            # No wake for flight.deadline: the timer never sleeps longer than
            # flush_timeout, so it is awake by the deadline of any flush started
            # after it went to sleep.  Waking it for every batch cost a thread
            # switch per batch.
            self._wake_timer_before(part.deadline)
            result: Any = None
            error: BaseException | None = None
            try:
                try:
                    # With retries, each attempt gets its own copy: a
                    # handle_flush that consumed its list must not empty the next try.
                    batch = list(flight.batch) if self._max_retries else flight.batch
                    result = self._flush_fn(batch, flight.opts)
                except BaseException as exc:  # any failure of the callback is the batch's failure
                    error = exc
                batch = None  # type: ignore[assignment]
                if not flight.claim.acquire(False):
                    return False  # abandoned by the timer; a new flusher took it over
                part.flight = None
                flight = self._conclude(part, flight, result, error)
                if isinstance(error, _THREAD_EXITS):
                    raise error
            finally:
                # The error's traceback holds this frame: without this, the
                # batch would live on in a cycle until the cyclic GC runs.
                error = None
        return True

    def _conclude(
        self, part: _Partition, flight: _Flight, result: Any, error: BaseException | None
    ) -> _Flight | None:
        """After an attempt: settle the batch, or return its next attempt (a retry)."""
        opts = flight.opts
        if (
            error is None
            or opts.attempt > self._max_retries
            or isinstance(error, _THREAD_EXITS)
            or part.orphaned is not None
        ):
            self._settle(part, flight, result, error)
            return None
        delay = self._report_retry(part, opts, flight.start_ns, error)
        if delay > 0:
            time.sleep(delay)
        return _Flight(flight.batch, _next_attempt(opts), flight.first, flight.began_ns)

    def _wake_timer_before(self, deadline: float) -> None:
        """Make the timer thread wake by ``deadline`` (written before this call).

        The timer publishes the time it sleeps until in _timer_wake_at
        (math.inf while awake, when it rescans every deadline anyway), so
        the lock is only taken when the new deadline comes first.
        """
        if deadline < self._timer_wake_at:
            with self._timer_cond:
                self._timer_cond.notify()

    def _settle(self, part: _Partition, flight: _Flight, result: Any, error: BaseException | None) -> None:
        """Report a finished batch: telemetry, error handler, counters, waiters."""
        opts = flight.opts
        try:
            self._report_outcome(opts, flight.began_ns, error)
            if error is not None:
                try:
                    self._error_fn(flight.batch, opts, error)
                except Exception:
                    self._log_error_handler_failure(opts)
        finally:
            # Whatever a callback raised, the batch is finished and counted.
            self._record(part, opts, flight.first, result, error)
            if self._sync_count:
                with self._progress:
                    self._progress.notify_all()

    # -- timers -----------------------------------------------------------

    def _timer_main(self) -> None:
        try:
            self._timer_loop()
        except BaseException as exc:
            self._thread_ended("the timer thread", exc)

    def _timer_loop(self) -> None:
        cond = self._timer_cond
        with cond:
            while not self._stopping:
                if self._ended:
                    self._ended = False
                    cond.release()
                    try:
                        self._supervise()
                    finally:
                        cond.acquire()
                now = _monotonic()
                # Flushes that start while the timer sleeps do not wake it
                # (_flush_one): it rescans after at most flush_timeout.
                wake = now + self._flush_timeout
                due: list[_Partition] = []
                overdue: list[tuple[_Partition, _Flight]] = []
                for part in self._parts:
                    if part.deadline <= now:
                        part.deadline = now + self._next_interval()
                        due.append(part)
                    wake = min(wake, part.deadline)
                    flight = part.flight
                    if flight is not None:
                        if flight.deadline <= now:
                            overdue.append((part, flight))
                        else:
                            wake = min(wake, flight.deadline)
                if due or overdue:
                    cond.release()
                    try:
                        for part in due:
                            self._request(part, "interval")
                        for part, flight in overdue:
                            self._abandon(part, flight)
                    except _THREAD_EXITS:
                        raise
                    except BaseException:
                        # The timer enforces flush_timeout: it must outlive
                        # anything a callback run from here raises.
                        logger.exception("buffer %r: the timer thread caught an error", self._name)
                    finally:
                        cond.acquire()
                    continue
                self._timer_wake_at = wake
                cond.wait(None if wake == math.inf else min(wake - now, threading.TIMEOUT_MAX))
                self._timer_wake_at = math.inf

    def _abandon(self, part: _Partition, flight: _Flight) -> None:
        """Give up on a stuck ``handle_flush``: report it and start a new flusher."""
        if not flight.claim.acquire(False):
            return  # it returned in time after all
        part.flight = None
        error = _raised(
            FlushTimeout(
                f"handle_flush of buffer {self._name!r} partition {part.index} ran past "
                f"flush_timeout={self._flush_timeout}s with a batch of {flight.opts.size} items; "
                "the call was abandoned"
            )
        )
        try:
            self._start_flusher(part, (flight, error))
        except RuntimeError as exc:
            part.thread = None
            part.orphaned = _raised(
                RuntimeError(
                    f"buffer {self._name!r} partition {part.index}: batch not flushed because the "
                    f"partition's flusher timed out and no thread could replace it ({exc})"
                )
            )
            logger.error(
                "buffer %r partition %d: no thread could replace the timed-out flusher (%s); "
                "its batches are reported failed from now on",
                self._name,
                part.index,
                exc,
            )
            self._settle(part, flight, None, error)
            self._fail_buffered(part)
        finally:
            # The traceback links back to this frame: drop the error from it.
            error = None  # type: ignore[assignment]

    def _fail_buffered(self, part: _Partition) -> None:
        """Report every batch of an orphaned partition as failed."""
        error = part.orphaned
        assert error is not None
        while (taken := self._take(part.index, sys.maxsize)) is not None:
            _room_freed(part)
            flight = self._new_flight(part, taken)
            flight.start_ns = flight.began_ns = _monotonic_ns()
            self._settle(part, flight, None, error)


class Buffer(_BufferLayer[T], BufferCore):
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
        flush_interval: seconds between timed flushes of a partition,
            counted from its last flush of any kind (default 10.0).
        flush_jitter: a random 0..n seconds added to ``flush_interval``,
            drawn anew after every flush (default 2.0).
        flush_timeout: seconds one ``handle_flush`` call may run before it is
            reported as failed with :class:`FlushTimeout` (default 60.0).
        flush_meta: any object, handed to every flush as ``opts.meta``.
        insert_timeout: default seconds an insert waits under backpressure
            before raising :class:`BufferFull` (default 5.0).
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

    Raises:
        TypeError: no ``handle_flush``, or an option of the wrong type.
        ValueError: an option out of range.
    """

    if TYPE_CHECKING:
        # Defined by the core (compiled or pure-Python): declared here with
        # the item type, for type checkers and the API reference.

        def insert(self, item: T, timeout: float | None = None) -> None:
            """Store one item in a partition (the next one round-robin, or the thread's own).

            Args:
                item: any object; the buffer holds a reference until its
                    batch has been flushed.
                timeout: seconds to wait at most for room while the
                    partition is full and its previous batch is still
                    flushing; ``None``: the buffer's ``insert_timeout``.

            Raises:
                BufferFull: no room within ``timeout``; nothing was stored.
                BufferClosed: the buffer is closed.
            """

        def insert_batch(self, items: Iterable[T], timeout: float | None = None) -> None:
            """Store every item of an iterable, in order, in one partition.

            A batch larger than the flush threshold is split into
            consecutive flushes.

            Args:
                items: any iterable; it is consumed before anything is
                    stored, so one that raises midway stores nothing.
                timeout: as for :meth:`insert`, for each wait for room.

            Raises:
                BufferFull: no room within ``timeout``; its ``stored``
                    counts the leading items stored.
                BufferClosed: the buffer is closed (``stored`` as above).
                TypeError: ``items`` is not iterable.
            """


# How long the main thread waits at a time in a loop that checks again
# anyway: CPython 3.13t can miss a signal (Ctrl-C) that arrives just as a
# wait starts, until that wait ends.
_MAIN_THREAD_WAIT_STEP = 0.25


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


def _raised(error: _E) -> _E:
    """``error`` with a traceback, as if raised here, without a reference cycle."""
    try:
        raise error
    except BaseException:
        return error
    finally:
        error = None  # type: ignore[assignment]  # the traceback holds this frame


# Per thread: whether it is running insert telemetry handlers.
_emitting = threading.local()


def _emit_insert_event(event: tuple[str, ...], measurements: dict[str, Any], metadata: Any) -> None:
    _emitting.insert = True
    try:
        telemetry.execute(event, measurements, metadata)
    finally:
        _emitting.insert = False


def _room_freed(part: _Partition) -> None:
    """Let inserts waiting for room in ``part`` try again (after a take)."""
    if part.waiters:
        with part.room:
            part.room.notify_all()


class _Registry:
    """The buffers of this process.

    Every buffer, open or closed (each is quiesced around ``fork()``), and
    the open ones (closed at interpreter exit).  Weak: the registry keeps no
    buffer alive (an open buffer is kept alive by its own threads).

    Guarded by ``lock``: a WeakSet cannot be copied while another thread
    adds to it.  The GC's removals need no lock (a WeakSet defers them while
    it is iterated).  Around ``fork()`` the forking thread holds ``lock``.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._open: weakref.WeakSet[_LayerBase[Any]] = weakref.WeakSet()
        self._all: weakref.WeakSet[_LayerBase[Any]] = weakref.WeakSet()

    def add(self, buf: _LayerBase[Any]) -> None:
        with self.lock:
            self._open.add(buf)
            self._all.add(buf)

    def discard_open(self, buf: _LayerBase[Any]) -> None:
        with self.lock:
            self._open.discard(buf)

    def open_buffers(self) -> list[_LayerBase[Any]]:
        """A copy of the open buffers."""
        with self.lock:
            return list(self._open)

    def all_buffers_locked(self) -> list[_LayerBase[Any]]:
        """A copy of every buffer; the caller holds ``lock``."""
        return list(self._all)


_registry = _Registry()
