"""Insert telemetry: the ``insert`` events, emitted around the core's raw inserts.

The core switches to these paths only while a handler listens to an insert
event (``set_insert_telemetry``, called by ``databuffer.telemetry``); the
plain insert path never comes here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from . import telemetry

__all__ = ("emitting", "insert_done", "insert_failed", "insert_started", "instrumented")

_monotonic_ns = time.monotonic_ns

# Per thread: whether it is running insert telemetry handlers (written and
# read by that thread only).
emitting = threading.local()


def _emit(event: tuple[str, ...], measurements: dict[str, Any], metadata: Any) -> None:
    emitting.insert = True
    try:
        telemetry.execute(event, measurements, metadata)
    finally:
        emitting.insert = False


def insert_started(name: str) -> int:
    """Emit an insert's ``start`` event for buffer ``name``; returns its start time."""
    start = _monotonic_ns()
    _emit(
        telemetry.INSERT_START,
        {"system_time": time.time_ns(), "monotonic_time": start},
        {"buffer": name},
    )
    return start


def insert_failed(name: str, start: int, exc: BaseException) -> None:
    end = _monotonic_ns()
    _emit(
        telemetry.INSERT_EXCEPTION,
        {"duration": end - start, "monotonic_time": end},
        {"buffer": name, "kind": "error", "reason": exc, "stacktrace": exc.__traceback__},
    )


def insert_done(name: str, start: int, result: Any, *, batch: bool) -> None:
    """Emit an insert's ``stop`` event; ``result`` is what the core's raw insert returned."""
    end = _monotonic_ns()
    if batch:
        partition, size = result
        partition = None if partition < 0 else partition
    else:
        partition, size = result, 1
    try:
        _emit(
            telemetry.INSERT_STOP,
            {"duration": end - start, "monotonic_time": end},
            {"buffer": name, "partition": partition, "size": size},
        )
    except BaseException as exc:  # SystemExit or KeyboardInterrupt (telemetry.execute)
        exc.add_note(
            f"the insert into buffer {name!r} had stored its {'items' if batch else 'item'} "
            "before a telemetry handler of its stop event raised this"
        )
        raise


def instrumented(
    name: str, raw: Callable[[Any, Any, Any], Any], arg: Any, timeout: Any, key: Any, *, batch: bool
) -> None:
    """Run a raw insert with its events (not from an insert telemetry handler: see below)."""
    if getattr(emitting, "insert", False):
        # An insert from an insert telemetry handler: its own events
        # would call the handler again, without end.
        raw(arg, timeout, key)
        return
    start = insert_started(name)
    try:
        result = raw(arg, timeout, key)
    except Exception as exc:
        insert_failed(name, start, exc)
        raise
    insert_done(name, start, result, batch=batch)
