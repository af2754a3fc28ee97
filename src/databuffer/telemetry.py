"""Telemetry events, in the shape of Elixir's ``:telemetry``.

Events are tuples of strings; a handler is called as
``fn(event, measurements, metadata, config)``.  A handler that raises is
detached and logged, so a broken handler never breaks a buffer.

Events emitted by databuffer, with their measurements and metadata:

- ``("data_buffer", "insert", "start")``: ``system_time``, ``monotonic_time``;
  ``buffer``.
- ``("data_buffer", "insert", "stop")``: ``duration``, ``monotonic_time``;
  ``buffer``, ``partition``, ``size`` (items in the call).
- ``("data_buffer", "insert", "exception")``: ``duration``,
  ``monotonic_time``; ``buffer``, ``kind``, ``reason``, ``stacktrace``.
- ``("data_buffer", "insert", "drop")``: ``count`` (items dropped),
  ``monotonic_time``; ``buffer``, ``partition``, ``policy`` (the buffer's
  ``on_full``).  Emitted by an insert that dropped items under
  ``on_full="drop_newest"`` or ``"drop_oldest"``, whether or not handlers
  listen to the other insert events.
- ``("data_buffer", "flush", "start")``: ``system_time``, ``monotonic_time``;
  ``buffer``, ``partition``, ``size``, ``trigger``.
- ``("data_buffer", "flush", "retry")``: ``duration`` (of the failed
  attempt), ``delay`` (the backoff before the next attempt),
  ``monotonic_time``; ``buffer``, ``partition``, ``size``, ``trigger``,
  ``attempt`` (the attempt that failed), ``kind``, ``reason``,
  ``stacktrace``.
- ``("data_buffer", "flush", "stop")``: ``duration``, ``monotonic_time``;
  ``buffer``, ``partition``, ``size``, ``trigger``, ``attempt`` (the attempt
  that succeeded).
- ``("data_buffer", "flush", "exception")``: ``duration``,
  ``monotonic_time``; as ``stop`` (``attempt``: the last one) plus ``kind``,
  ``reason``, ``stacktrace``.

A batch has one ``start`` and one ``stop`` or ``exception`` event, whatever
its number of attempts; ``duration`` spans all of them.  Each failed attempt
that is retried emits a ``retry`` event in between.

Times are integer nanoseconds (``time.time_ns()``, ``time.monotonic_ns()``).
While no handler is attached to an insert event, inserts skip telemetry
entirely (a flag checked in the core).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ._compat import LOADED_CORES
from ._text import closest, join_or, short_repr

__all__ = (
    "EVENTS",
    "FLUSH_EXCEPTION",
    "FLUSH_RETRY",
    "FLUSH_START",
    "FLUSH_STOP",
    "INSERT_DROP",
    "INSERT_EXCEPTION",
    "INSERT_START",
    "INSERT_STOP",
    "Handler",
    "attach",
    "attach_many",
    "detach",
    "execute",
    "list_handlers",
)

Event = tuple[str, ...]
Handler = Callable[[Event, Mapping[str, Any], Mapping[str, Any], Any], object]

INSERT_START: Event = ("data_buffer", "insert", "start")
"""An insert call began."""

INSERT_STOP: Event = ("data_buffer", "insert", "stop")
"""An insert call returned: its items are stored."""

INSERT_EXCEPTION: Event = ("data_buffer", "insert", "exception")
"""An insert call raised (``BufferFull``, ``BufferClosed``, ...)."""

INSERT_DROP: Event = ("data_buffer", "insert", "drop")
"""An insert dropped items of a full partition (``on_full="drop_newest"`` or ``"drop_oldest"``)."""

FLUSH_START: Event = ("data_buffer", "flush", "start")
"""A batch's flush began."""

FLUSH_STOP: Event = ("data_buffer", "flush", "stop")
"""A batch was flushed: its ``handle_flush`` returned."""

FLUSH_RETRY: Event = ("data_buffer", "flush", "retry")
"""A failed attempt of a batch is to be retried."""

FLUSH_EXCEPTION: Event = ("data_buffer", "flush", "exception")
"""A batch failed for good: its last attempt raised or timed out (it goes to ``handle_flush_error``)."""

EVENTS: tuple[Event, ...] = (
    INSERT_START,
    INSERT_STOP,
    INSERT_EXCEPTION,
    INSERT_DROP,
    FLUSH_START,
    FLUSH_STOP,
    FLUSH_EXCEPTION,
    FLUSH_RETRY,
)
"""Every event databuffer emits: :func:`attach` refuses any other under ``"data_buffer"``."""

# The first element of every event databuffer emits.
_PREFIX = "data_buffer"
_KNOWN = frozenset(EVENTS)
_INSERT_EVENTS = frozenset((INSERT_START, INSERT_STOP, INSERT_EXCEPTION))

logger = logging.getLogger("databuffer")


class _Attached:
    __slots__ = ("config", "event", "function", "handler_id")

    def __init__(self, handler_id: object, event: Event, function: Handler, config: Any) -> None:
        self.handler_id = handler_id
        self.event = event
        self.function = function
        self.config = config


# Registry.  _handlers maps an event to a tuple of attachments (replaced, never
# mutated, so emitters read it without the lock); _order keeps attach order
# for list_handlers.  Both are written only under _lock.
_lock = threading.Lock()
_handlers: dict[Event, tuple[_Attached, ...]] = {}
_order: list[_Attached] = []
#: Whether any handler is attached (to any event): the flushers test it
#: once per batch before looking up an event.  Rebound with ``_handlers``.
_listening = False


def _after_fork_in_child() -> None:
    """In a forked child: a fresh registry lock (a parent thread may have held it)."""
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    # Registered before databuffer._shutdown's hooks (this module is imported
    # first), so it runs first in the child: buffers restarted there may emit.
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _as_event(event: object) -> Event:
    if isinstance(event, str) or not isinstance(event, (tuple, list)):
        raise TypeError(
            f"an event is a tuple of strings, such as {FLUSH_STOP!r}, not {type(event).__name__} {event!r}"
        )
    if not event or not all(isinstance(part, str) for part in event):
        raise TypeError(f"an event is a non-empty tuple of strings, such as {FLUSH_STOP!r}, not {event!r}")
    event = tuple(event)
    if event[0] == _PREFIX and event not in _KNOWN:
        raise ValueError(_unknown_event(event))
    return event


def _unknown_event(event: Event) -> str:
    """The message for an event under databuffer's prefix that it never emits."""
    spelled = {".".join(known): known for known in EVENTS}
    matches = closest(".".join(event), spelled)
    hint = f" (did you mean {join_or([repr(spelled[match]) for match in matches])}?)" if matches else ""
    return (
        f"databuffer never emits the event {event!r}{hint}, so a handler attached to it would never "
        f"run; the events it emits, telemetry.EVENTS, are {', '.join(map(repr, EVENTS))}"
    )


def _rebuild() -> None:
    """Recompute the per-event index and the insert flag (under _lock)."""
    index: dict[Event, list[_Attached]] = {}
    for att in _order:
        index.setdefault(att.event, []).append(att)
    global _handlers
    # Rebound, never mutated: emitters read it without the lock.
    _handlers = {event: tuple(atts) for event, atts in index.items()}
    global _listening
    _listening = bool(_handlers)
    inserts = any(event in _INSERT_EVENTS for event in _handlers)
    for core in LOADED_CORES:
        core.set_insert_telemetry(inserts)


def attach(handler_id: object, event: Iterable[str], function: Handler, config: Any = None) -> None:
    """Call ``function(event, measurements, metadata, config)`` on ``event``.

    Args:
        handler_id: a unique, hashable id, used to detach.
        event: the event, a tuple of strings such as
            ``("data_buffer", "flush", "stop")`` (:data:`FLUSH_STOP`).
            Events of other libraries and of your own, emitted with
            :func:`execute`, may be attached too.
        function: the handler.
        config: any object, handed to every call.

    Raises:
        ValueError: ``handler_id`` is attached already, or ``event`` starts
            with ``"data_buffer"`` but is none of the events databuffer
            emits (:data:`EVENTS`), such as ``("data_buffer", "flush",
            "stopp")``: the message names the closest one and lists them.
        TypeError: ``event`` is not a tuple of strings, ``function`` is not
            callable, or ``handler_id`` is not hashable.
    """
    attach_many(handler_id, [tuple(event) if isinstance(event, list) else event], function, config)


def attach_many(
    handler_id: object, events: Iterable[Iterable[str]], function: Handler, config: Any = None
) -> None:
    """Attach one handler to several events under one id (see :func:`attach`).

    Every event is checked before any is attached: one that :func:`attach`
    refuses leaves the handler attached to none.
    """
    if isinstance(events, (str, tuple)) and events and isinstance(next(iter(events)), str):
        raise TypeError(
            f"attach_many() takes a list of events, not one event {events!r}: "
            "use attach() for one event, or put it in a list"
        )
    checked = [_as_event(event) for event in events]
    if not checked:
        raise ValueError("attach_many() needs at least one event")
    if not callable(function):
        raise TypeError(
            "a telemetry handler must be a function fn(event, measurements, metadata, config), "
            f"not {type(function).__name__} {short_repr(function)}"
        )
    try:
        hash(handler_id)
    except TypeError:
        raise TypeError(
            f"handler_id must be hashable (a str or a tuple, say), not {type(handler_id).__name__} "
            f"{short_repr(handler_id)}"
        ) from None
    with _lock:
        if any(att.handler_id == handler_id for att in _order):
            raise ValueError(
                f"a telemetry handler with id {handler_id!r} is attached already: "
                "detach() it first, or choose another id"
            )
        _order.extend(_Attached(handler_id, event, function, config) for event in dict.fromkeys(checked))
        _rebuild()


def detach(handler_id: object) -> bool:
    """Detach every event of ``handler_id``; return whether it was attached."""
    with _lock:
        before = len(_order)
        _order[:] = [att for att in _order if att.handler_id != handler_id]
        if len(_order) == before:
            return False
        _rebuild()
        return True


def list_handlers(prefix: Iterable[str] = ()) -> list[dict[str, Any]]:
    """The attached handlers whose event starts with ``prefix``.

    Returns a list of dicts with keys ``id``, ``event``, ``function`` and
    ``config``, in the order they were attached.
    """
    prefix = tuple(prefix)
    with _lock:
        return [
            {"id": att.handler_id, "event": att.event, "function": att.function, "config": att.config}
            for att in _order
            if att.event[: len(prefix)] == prefix
        ]


def has_handlers(event: Event) -> bool:
    """Whether any handler listens to ``event``."""
    return event in _handlers


def execute(event: Event, measurements: Mapping[str, Any], metadata: Mapping[str, Any]) -> None:
    """Call every handler attached to ``event``; detach and log one that raises.

    Any exception counts, ``asyncio.CancelledError`` and other
    ``BaseException`` subclasses included, but ``SystemExit`` and
    ``KeyboardInterrupt``: those go on (a Ctrl-C may land in any handler),
    and the handler stays attached.
    """
    for att in _handlers.get(event, ()):
        try:
            att.function(event, measurements, metadata, att.config)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            logger.exception(
                "telemetry handler %r raised on event %r and was detached (from all its events); "
                "attach it again once it is fixed",
                att.handler_id,
                event,
            )
            _detach_attachment(att)


def _detach_attachment(att: _Attached) -> None:
    """Detach the whole handler id that ``att`` belongs to, if still attached."""
    with _lock:
        if att in _order:
            _order[:] = [other for other in _order if other.handler_id != att.handler_id]
            _rebuild()
