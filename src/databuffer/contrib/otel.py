"""OpenTelemetry metrics from databuffer's telemetry events.

Install with ``pip install 'databuffer[otel]'`` (it adds ``opentelemetry-api``;
an SDK or a distro configures where the metrics go).  Then, once, at startup:

```python
from databuffer.contrib.otel import instrument

instrumentation = instrument()  # the global MeterProvider
...
instrumentation.uninstrument()  # or use it as a context manager
```

The metrics, on the meter ``"databuffer"`` (version
``databuffer.__version__``):

| metric | instrument | unit | recorded from |
|---|---|---|---|
| `databuffer.items.inserted` | counter | `{item}` | insert `stop` (with `count_inserts`) |
| `databuffer.items.flushed` | counter | `{item}` | flush `stop` |
| `databuffer.items.failed` | counter | `{item}` | flush `exception` |
| `databuffer.items.dropped` | counter | `{item}` | insert `drop` (by a drop `on_full` policy) |
| `databuffer.flush.retries` | counter | `{retry}` | flush `retry` (one per retried attempt) |
| `databuffer.batch.size` | histogram | `{item}` | flush `stop` and `exception` |
| `databuffer.flush.duration` | histogram | `s` | flush `stop` and `exception` |
| `databuffer.items.buffered` | observable gauge | `{item}` | each open buffer's `info()` |

`databuffer.flush.duration` spans a batch from its first attempt to its
last, retries and backoffs included.  `databuffer.items.buffered` is
observed when the metrics are collected: the items each partition of each
open buffer holds and has not yet handed to its flusher (buffers with the
same name are added up).

Attributes: `databuffer.buffer` (the buffer's name) on all of them;
`databuffer.partition` (0-based) on all of them, except on an empty
`insert_batch`, which is not counted; `databuffer.trigger` (`"size"`,
`"interval"`, `"manual"` or `"close"`) on the flush metrics and retries;
`databuffer.on_full` (the policy) on `databuffer.items.dropped`; and
`error.type` (the exception's class name, such as `"ValueError"` or
`"FlushTimeout"`) on `databuffer.items.failed`, `databuffer.flush.retries` and
the histogram points of failed batches.

Importing this module without OpenTelemetry installed raises
:class:`ImportError`; ``import databuffer`` never imports OpenTelemetry.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any

try:
    from opentelemetry import metrics
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "databuffer.contrib.otel needs OpenTelemetry, which is not installed: pip install 'databuffer[otel]'"
    ) from exc

from .. import __version__, telemetry
from .._registry import registry

__all__ = ("Instrumentation", "instrument")

logger = logging.getLogger("databuffer")

_METER_NAME = "databuffer"

# Attribute keys.
_BUFFER = "databuffer.buffer"
_PARTITION = "databuffer.partition"
_ON_FULL = "databuffer.on_full"
_TRIGGER = "databuffer.trigger"
_ERROR_TYPE = "error.type"

# Bucket boundaries for flush durations in seconds: OpenTelemetry's
# recommendation for durations (the SDK's default ones suit milliseconds),
# extended to the default flush_timeout and beyond (retries add up).
_DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    30.0,
    60.0,
    120.0,
)

_NS_PER_S = 1_000_000_000

_Metadata = Mapping[str, Any]


# The instrumentations that are not uninstrumented, and the ids handed out.
# Rebound under _lock, never mutated: gauge callbacks read it without it.
_lock = threading.Lock()
_instrumentations: tuple[Instrumentation, ...] = ()
_ids = itertools.count(1)


def _after_fork_in_child() -> None:
    """In a forked child: a fresh lock (a thread of the parent may have held it)."""
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def instrument(
    meter_provider: metrics.MeterProvider | None = None, *, count_inserts: bool = True
) -> Instrumentation:
    """Record databuffer's telemetry events as OpenTelemetry metrics.

    Attaches a telemetry handler (see :mod:`databuffer.telemetry`) that
    records every buffer's flushes, failures, retries and, with
    ``count_inserts``, inserts, and registers an observable gauge of the items
    each open buffer holds.  Each call makes a new, independent
    instrumentation with its own handler id; two of them on the same meter
    provider count every event twice.

    Args:
        meter_provider: where the metrics go; ``None``: the global one
            (``opentelemetry.metrics.get_meter_provider()``).
        count_inserts: record ``databuffer.items.inserted``.  This attaches
            a handler to the insert ``stop`` event, which puts every insert
            call of every buffer in the process on the telemetry path: while
            no handler listens to an insert event, inserts skip telemetry
            entirely; with one, each ``insert`` or ``insert_batch`` call
            emits its ``start`` and ``stop`` events and updates the counter,
            which takes microseconds instead of about a hundred nanoseconds
            (the counter update of the OpenTelemetry SDK alone costs
            microseconds).  Pass ``False`` where inserts are hot, or insert
            in batches; ``info()`` and ``stats()`` count inserts anyway.

    Returns:
        The :class:`Instrumentation`; call its
        :meth:`~Instrumentation.uninstrument` (or leave its ``with`` block)
        to stop.
    """
    return Instrumentation(meter_provider, count_inserts=count_inserts)


class Instrumentation:
    """One bridge from databuffer's telemetry to OpenTelemetry metrics.

    Made by :func:`instrument`.  Works as a context manager: leaving the
    ``with`` block uninstruments it.
    """

    def __init__(
        self, meter_provider: metrics.MeterProvider | None = None, *, count_inserts: bool = True
    ) -> None:
        """Create the instruments and attach the handler (see :func:`instrument`)."""
        global _instrumentations
        # The provider the meter comes from.  The gauge's callback reports
        # while any instrumentation on this provider is active: a provider
        # keeps the first callback registered for an instrument name and
        # ignores those of later registrations, so the callback of an
        # uninstrumented instrumentation may be the one that serves a newer
        # one.
        self._provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
        meter = metrics.get_meter(_METER_NAME, __version__, meter_provider)
        self._count_inserts = bool(count_inserts)
        self._inserted = meter.create_counter(
            "databuffer.items.inserted", unit="{item}", description="Items stored by inserts."
        )
        self._flushed = meter.create_counter(
            "databuffer.items.flushed",
            unit="{item}",
            description="Items in batches whose handle_flush returned.",
        )
        self._failed = meter.create_counter(
            "databuffer.items.failed",
            unit="{item}",
            description="Items in batches that failed for good (handed to handle_flush_error).",
        )
        self._dropped = meter.create_counter(
            "databuffer.items.dropped",
            unit="{item}",
            description="Items dropped by on_full when their partition had no room.",
        )
        self._retries = meter.create_counter(
            "databuffer.flush.retries",
            unit="{retry}",
            description="Failed handle_flush attempts that were retried.",
        )
        self._batch_size = meter.create_histogram(
            "databuffer.batch.size", unit="{item}", description="Items per flushed or failed batch."
        )
        self._duration = meter.create_histogram(
            "databuffer.flush.duration",
            unit="s",
            description="Time to flush a batch, from its first attempt to its last (backoffs included).",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        meter.create_observable_gauge(
            "databuffer.items.buffered",
            callbacks=[self._observe_buffered],
            unit="{item}",
            description="Items buffered in a partition and not yet handed to its flusher.",
        )
        self._dispatch: dict[tuple[str, ...], Callable[[_Metadata, _Metadata], None]] = {
            telemetry.FLUSH_STOP: self._on_flush_stop,
            telemetry.FLUSH_EXCEPTION: self._on_flush_exception,
            telemetry.FLUSH_RETRY: self._on_flush_retry,
            telemetry.INSERT_DROP: self._on_insert_drop,
        }
        if self._count_inserts:
            self._dispatch[telemetry.INSERT_STOP] = self._on_insert_stop
        with _lock:
            self._handler_id = f"databuffer.contrib.otel-{next(_ids)}"
            self._active = True
            _instrumentations = (*_instrumentations, self)
        telemetry.attach_many(self._handler_id, list(self._dispatch), self._handle)

    @property
    def handler_id(self) -> str:
        """The id of its telemetry handler (see :func:`databuffer.telemetry.list_handlers`)."""
        return self._handler_id

    @property
    def count_inserts(self) -> bool:
        """Whether it records ``databuffer.items.inserted``."""
        return self._count_inserts

    @property
    def active(self) -> bool:
        """Whether it still records: not uninstrumented yet."""
        return self._active

    def uninstrument(self) -> None:
        """Stop recording: detach the handler; the gauge reports nothing from then on.

        Idempotent.  An event that another thread is handling at that moment
        may still be recorded.  Instruments cannot be removed from a meter,
        so they stay registered, without new measurements (the counters and
        histograms keep what they recorded so far, as cumulative exporters
        show it).
        """
        global _instrumentations
        with _lock:
            if not self._active:
                return
            self._active = False
            _instrumentations = tuple(inst for inst in _instrumentations if inst is not self)
        telemetry.detach(self._handler_id)

    def __enter__(self) -> Instrumentation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.uninstrument()

    def __repr__(self) -> str:
        state = "active" if self._active else "uninstrumented"
        return f"<Instrumentation {self._handler_id!r} count_inserts={self._count_inserts} {state}>"

    # -- telemetry handlers ----------------------------------------------

    def _handle(
        self,
        event: tuple[str, ...],
        measurements: Mapping[str, Any],
        metadata: Mapping[str, Any],
        config: Any,
    ) -> None:
        on_event = self._dispatch.get(event)
        if on_event is not None:
            on_event(measurements, metadata)

    def _on_insert_stop(self, measurements: _Metadata, metadata: _Metadata) -> None:
        size = metadata["size"]
        partition = metadata["partition"]
        # An empty insert_batch (size 0, partition None) stored nothing anywhere.
        if size and partition is not None:
            self._inserted.add(size, {_BUFFER: metadata["buffer"], _PARTITION: partition})

    def _on_insert_drop(self, measurements: _Metadata, metadata: _Metadata) -> None:
        attributes = {
            _BUFFER: metadata["buffer"],
            _PARTITION: metadata["partition"],
            _ON_FULL: metadata["policy"],
        }
        self._dropped.add(measurements["count"], attributes)

    def _on_flush_stop(self, measurements: _Metadata, metadata: _Metadata) -> None:
        self._record_batch(self._flushed, measurements, metadata, _flush_attributes(metadata))

    def _on_flush_exception(self, measurements: _Metadata, metadata: _Metadata) -> None:
        attributes = _flush_attributes(metadata)
        attributes[_ERROR_TYPE] = _error_type(metadata)
        self._record_batch(self._failed, measurements, metadata, attributes)

    def _record_batch(
        self,
        counter: metrics.Counter,
        measurements: _Metadata,
        metadata: _Metadata,
        attributes: dict[str, str | int],
    ) -> None:
        """A finished batch: its items on ``counter``, its size and duration on the histograms."""
        size = metadata["size"]
        counter.add(size, attributes)
        self._batch_size.record(size, attributes)
        self._duration.record(measurements["duration"] / _NS_PER_S, attributes)

    def _on_flush_retry(self, measurements: _Metadata, metadata: _Metadata) -> None:
        attributes = _flush_attributes(metadata)
        attributes[_ERROR_TYPE] = _error_type(metadata)
        self._retries.add(1, attributes)

    # -- gauge -------------------------------------------------------------

    def _observe_buffered(self, options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        """One observation per open buffer name and partition: its ``size``."""
        if not any(inst._provider is self._provider for inst in _instrumentations):
            return []
        sizes: dict[tuple[str, int], int] = {}
        for buf in registry.open_engines():
            try:
                partitions = buf.info()
            except Exception:  # closing or forked meanwhile: skip it this time
                logger.debug("databuffer.items.buffered: info() of %r failed", buf, exc_info=True)
                continue
            for part in partitions:
                key = (part["name"], part["partition"])
                # Buffers with the same name share their attributes: add them up.
                sizes[key] = sizes.get(key, 0) + part["size"]
        return [
            metrics.Observation(size, {_BUFFER: name, _PARTITION: partition})
            for (name, partition), size in sizes.items()
        ]


def _flush_attributes(metadata: _Metadata) -> dict[str, str | int]:
    return {
        _BUFFER: metadata["buffer"],
        _PARTITION: metadata["partition"],
        _TRIGGER: metadata["trigger"],
    }


def _error_type(metadata: _Metadata) -> str:
    """The failure's exception class name; its ``kind`` if there is no exception."""
    reason = metadata.get("reason")
    if isinstance(reason, BaseException):
        return type(reason).__qualname__
    return str(metadata.get("kind") or "_OTHER")
