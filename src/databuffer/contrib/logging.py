"""A ``logging`` handler that buffers records and hands them to a target in batches.

No extra is needed: it uses the standard library only.

```python
import logging, sys
from databuffer.contrib.logging import BufferingHandler

console = logging.StreamHandler(sys.stdout)
handler = BufferingHandler(console, flush_level="ERROR")
logging.getLogger().addHandler(handler)
```

:class:`BufferingHandler` is a ``logging.Handler`` whose ``emit`` inserts
the record into a :class:`databuffer.Buffer` (by default dropping the oldest
buffered records when it is full, never waiting), and whose flushes, on the
buffer's flusher thread, hand each batch to a target: another
``logging.Handler`` (each record through ``target.handle``, in order) or a
callable ``(records) -> None``.

It subclasses ``logging.handlers.MemoryHandler`` so that
``logging.config.dictConfig`` resolves ``"target": "<handler name>"`` for it,
as it does for ``MemoryHandler``; it is not to be confused with
``logging.handlers.BufferingHandler``, the standard library's base class of
``MemoryHandler``.
"""

from __future__ import annotations

import copy
import logging
import logging.handlers
import threading
from collections.abc import Callable
from typing import Any, cast

from .. import Buffer, BufferClosed, FlushOpts
from .._buffer import BufferMethods
from .._front import engine_of
from .._options import is_async_callable

__all__ = ("BufferingHandler", "Target")

#: What a :class:`BufferingHandler` hands its batches to: a handler, or a
#: callable that takes the list of records.
Target = logging.Handler | Callable[[list[logging.LogRecord]], object]


def _buffer_options() -> dict[str, Any]:
    """The ``Buffer`` options, with their defaults: its constructor's keyword-only parameters.

    Read from the function itself (under any ``functools.wraps`` decorator),
    so that an option added to ``Buffer`` is passed through.
    """
    init: Any = BufferMethods.__init__
    while hasattr(init, "__wrapped__"):
        init = init.__wrapped__
    return dict(init.__kwdefaults__ or {})


# The Buffer options this handler passes through: all of them but
# handle_flush, its own.
_BUFFER_OPTIONS = {name: default for name, default in _buffer_options().items() if name != "handle_flush"}
# Where BufferingHandler's defaults differ from Buffer's: an emit never
# waits, and a log line is written within about a second.
_DEFAULTS: dict[str, Any] = {"name": "BufferingHandler", "on_full": "drop_oldest", "flush_interval": 1.0}
# How long flush() and close() wait for the flusher while the calling thread
# holds logging's module lock (logging.config closing the handlers it
# replaces): the flusher may need that lock (a target that logs, or calls
# logging.getLogger, takes it), so an unbounded wait could deadlock.
_LOCKED_WAIT = 2.0
# Formats the traceback of a record whose target has no formatter of its own.
_DEFAULT_FORMATTER = logging.Formatter()


def _holds_logging_lock() -> bool:
    """Whether the calling thread holds ``logging``'s module lock (an ``RLock``)."""
    is_owned = getattr(getattr(logging, "_lock", None), "_is_owned", None)
    return bool(is_owned()) if callable(is_owned) else False


def _check_level(value: object) -> int:
    """``flush_level``: a level number, or the name of a registered level (``"ERROR"``)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(
            f"flush_level must be a logging level (an int, or a level name such as 'ERROR'), "
            f"not {type(value).__name__} {value!r}"
        )
    if isinstance(value, str):
        levels = logging.getLevelNamesMapping()
        if value not in levels:
            raise ValueError(
                f"flush_level {value!r} is not a level name; the names are {', '.join(sorted(levels))}"
            )
        return levels[value]
    return value


def _check_target(value: object, handler: logging.Handler | None = None) -> Target:
    if value is handler and handler is not None:
        raise ValueError("a BufferingHandler cannot be its own target")
    if isinstance(value, logging.Handler):
        return value
    if isinstance(value, type):
        raise TypeError(
            f"target must be a logging.Handler or a callable (records) -> None, not the class "
            f"{value.__qualname__} (pass an instance)"
        )
    if not callable(value):
        hint = (
            ' (logging.config resolves a handler\'s name given as "target" with "class", not "()")'
            if isinstance(value, str)
            else ""
        )
        raise TypeError(
            f"target must be a logging.Handler or a callable (records) -> None, "
            f"not {type(value).__name__} {value!r}{hint}"
        )
    if is_async_callable(value):
        raise TypeError(
            f"target must be a plain callable (records) -> None, not the coroutine function {value!r}: "
            "the handler calls it from a thread without awaiting it"
        )
    return cast("Callable[[list[logging.LogRecord]], object]", value)


class BufferingHandler(logging.handlers.MemoryHandler):
    """A ``logging.Handler`` that buffers records and hands them to ``target`` in batches.

    ``emit`` prepares the record (see :meth:`prepare`) and inserts it into
    :attr:`buffer`, a :class:`databuffer.Buffer`; the buffer's flusher
    thread hands each batch to the target.  With the default
    ``on_full="drop_oldest"`` an emit never waits: when the buffer is full,
    its oldest records are dropped, counted in ``buffer.stats()["dropped"]``
    and reported by a warning on the ``databuffer`` logger at most every
    10 s.

    The target gets the records in the order they were logged (with one
    partition, the default).  A ``logging.Handler`` target gets them one by
    one, as a logger hands a record to its handlers: those below its level
    are skipped, the others go through ``target.handle(record)``, which
    applies its filters and holds its lock while it emits, and an error
    that escapes it goes to ``target.handleError(record)``.  A callable
    gets each batch as a list; an error it raises fails the batch (see the
    ``max_retries`` and ``handle_flush_error`` options).

    A record at ``flush_level`` or above makes the buffer flush at once
    (the emit does not wait for it).  :meth:`flush` hands every buffered
    record to the target and waits for it; :meth:`close` does the same,
    then closes the buffer, and leaves the target open (as
    ``MemoryHandler`` does: close it yourself, or let ``logging.shutdown``
    do it).  A record logged after ``close()`` goes straight to the target.

    Records logged on the buffer's own threads, while the target runs (a
    target that logs) or about the buffer's flushes (a failing target
    reported by ``handle_flush_error``), are not buffered, which would feed
    the target its own records: they go to ``logging.lastResort`` (standard
    error, ``WARNING`` and above), as records with no handler do.

    Args:
        target: a ``logging.Handler``, or a callable ``(records) -> None``
            called with each batch (a list of records).
        flush_level: a level number, or the name of a level (``"ERROR"``,
            the default, as for ``MemoryHandler``): a record at or above it
            triggers a flush.
        level: this handler's level (``logging.NOTSET`` by default).
        **options: :class:`databuffer.Buffer` options, but
            ``handle_flush`` (the handler's own).  Defaults that differ
            from ``Buffer``'s: ``name="BufferingHandler"`` (the buffer's
            name, in its logs, telemetry and thread names; the handler's
            own name is ``handler.name``), ``on_full="drop_oldest"`` and
            ``flush_interval=1.0``.

    Raises:
        TypeError: ``target`` is not a handler nor a callable,
            ``flush_level`` is not a level, an option is unknown, or a
            ``Buffer`` option has the wrong type.
        ValueError: ``flush_level`` names no level, or a ``Buffer`` option
            is out of range.
    """

    #: The buffer that holds the records (its ``stats()`` and ``info()``
    #: answer for the handler).  ``MemoryHandler`` has a list here.
    buffer: Buffer[logging.LogRecord]  # type: ignore[assignment]
    #: Where the batches go; :meth:`setTarget` replaces it.  Written under
    #: the handler's lock, read without it by the flusher (one reference).
    target: Target  # type: ignore[assignment]

    def __init__(
        self,
        target: Target,
        *,
        flush_level: int | str = logging.ERROR,
        level: int | str = logging.NOTSET,
        **options: Any,
    ) -> None:
        target = _check_target(target)
        flush_levelno = _check_level(flush_level)
        if "handle_flush" in options:
            raise TypeError("BufferingHandler() does not take handle_flush: it hands each batch to target")
        for option in options:
            if option not in _BUFFER_OPTIONS:
                raise TypeError(
                    f"BufferingHandler() got an unknown option {option!r}; it takes target, flush_level, "
                    f"level and the Buffer options {', '.join(sorted(_BUFFER_OPTIONS))}"
                )
        options = {**_DEFAULTS, **options}
        super().__init__(
            capacity=options.get("max_size", _BUFFER_OPTIONS["max_size"]),
            flushLevel=flush_levelno,
            target=None,
            flushOnClose=True,
        )
        self.target = target
        self.setLevel(level)
        # Per thread: the records logged while that thread is inside emit
        # (None outside it), and whether it is calling the target directly.
        # Each thread reads and writes only its own.
        self._local = threading.local()
        self.buffer = Buffer(handle_flush=self._deliver, **options)
        # Whether the calling thread is one of the buffer's (its flushers, its timer).
        self._in_own_thread = engine_of(self.buffer).in_own_thread

    # -- logging.Handler ------------------------------------------------

    def handle(self, record: logging.LogRecord) -> Any:
        """Filter ``record`` and emit it, without taking the handler's lock.

        ``logging.Handler.handle`` holds the lock around ``emit``; here
        ``emit`` only inserts into the buffer, which is thread-safe, and not
        holding the lock keeps records logged by the flusher (or under
        ``logging.shutdown``, which holds it while it flushes and closes
        the handler) from waiting for a thread that waits for the flusher.
        """
        rv = self.filter(record)
        if isinstance(rv, logging.LogRecord):  # Python 3.12+: a filter may return a new record
            record = rv
        if rv:
            self.emit(record)
        return rv

    def emit(self, record: logging.LogRecord) -> None:
        """Prepare ``record`` and insert it into the buffer; never raises (``handleError``)."""
        local = self._local
        if getattr(local, "calling", False) or self._in_own_thread():
            # Logged while the target runs, or by databuffer about this
            # buffer's flushes: buffering it would hand the target its own
            # records (and a failing target its own failures).
            last = logging.lastResort
            if last is not None and record.levelno >= last.level:
                last.handle(record)
            return
        try:
            prepared = self.prepare(record)
        except Exception:
            self.handleError(record)
            return
        pending: list[logging.LogRecord] | None = getattr(local, "pending", None)
        if pending is not None:
            # Logged while this thread is inside emit: by the insert itself
            # (the warning about drops, on the databuffer logger) or
            # something it called.  Inserted after the outer record, not
            # in the middle of its insert.
            pending.append(prepared)
            return
        local.pending = pending = [prepared]
        try:
            while pending:
                self._insert(pending.pop(0))
        finally:
            local.pending = None

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        """The record to buffer: a copy of ``record`` that keeps no reference to the caller's objects.

        Called on the thread that logs, as ``QueueHandler.prepare`` is.  The
        copy has ``msg`` set to the message (``record.getMessage()``, the
        arguments merged in now) and ``args`` set to ``None``; an exception
        (``exc_info``) is formatted into ``exc_text`` and ``exc_info`` set
        to ``None``, so that no traceback, and none of its frames, is kept
        until the flush.  The formatter that would format the record formats
        the exception: the target handler's, this handler's for a callable
        target, or ``logging``'s default one.  A formatter then shows the
        message and ``exc_text`` as it would have shown the original;
        ``stack_info`` is already text.  ``record`` itself is not changed
        (other handlers see it as it is).  Override it to keep more or less.
        """
        prepared = copy.copy(record)
        message = record.getMessage()
        prepared.msg = prepared.message = message
        prepared.args = None
        if record.exc_info:
            if not prepared.exc_text:
                prepared.exc_text = self._formatter_for_target().formatException(record.exc_info)
            prepared.exc_info = None
        return prepared

    def shouldFlush(self, record: logging.LogRecord) -> bool:
        """Whether ``record`` triggers a flush: its level is ``flush_level`` or above."""
        return record.levelno >= self.flushLevel

    def flush(self) -> None:
        """Hand every buffered record to the target, and wait until it has them.

        Failed batches were reported to ``handle_flush_error`` and are not
        raised.  It only asks for the flush, without waiting, from the
        buffer's own threads (a target that calls it) and with
        ``logging``'s module lock held (by ``logging.config``, which
        flushes and closes the handlers it replaces: :meth:`close` then
        waits, boundedly), as the flusher may need that lock.  The target
        itself is not flushed (``logging.shutdown`` flushes every handler).
        """
        if self._in_own_thread():
            self.buffer.flush()
            return
        if _holds_logging_lock():
            # logging.shutdown (from logging.config) calls close() next,
            # which waits, boundedly: one bounded wait, not two.
            self.buffer.flush()
            return
        try:
            self.buffer.sync_flush()
        except ExceptionGroup:
            pass  # each failed batch went to handle_flush_error

    def close(self) -> None:
        """Hand the buffered records to the target, close the buffer, then the handler.

        The target is left open.  With ``logging``'s module lock held
        (``logging.config`` replacing the handler) it waits 2 seconds at
        most, as the flusher may need that lock (a target that logs, or
        calls ``logging.getLogger``, takes it); the flusher then finishes
        once the lock is released.  Records logged afterwards go straight to the
        target from the thread that logs them.
        """
        try:
            self.buffer.close(_LOCKED_WAIT if _holds_logging_lock() else None)
        except TimeoutError:
            pass  # only with the module lock held: closed to inserts, the flusher goes on
        finally:
            # Not MemoryHandler.close, which would flush again and drop the target.
            logging.Handler.close(self)

    def setTarget(self, target: Target) -> None:  # type: ignore[override]
        """Hand the next batches to ``target`` (a handler or a callable), checked as in the constructor."""
        target = _check_target(target, self)
        self.acquire()
        try:
            self.target = target
        finally:
            self.release()

    def __repr__(self) -> str:
        level = logging.getLevelName(self.level)
        name = getattr(getattr(self, "buffer", None), "name", None)  # None while __init__ runs
        name = "" if name is None else f" {name!r}"
        return f"<{type(self).__name__}{name} -> {getattr(self, 'target', None)!r} ({level})>"

    # -- delivery -----------------------------------------------------------

    def _insert(self, record: logging.LogRecord) -> None:
        try:
            self.buffer.insert(record)
        except BufferClosed:
            self._call_target([record])  # closed (at exit, for one): deliver it now
            return
        except Exception:
            self.handleError(record)
            return
        if self.shouldFlush(record):
            self.buffer.flush()

    def _call_target(self, records: list[logging.LogRecord]) -> None:
        """Hand ``records`` to the target from the thread that logged them (the buffer is closed)."""
        local = self._local
        local.calling = True
        try:
            self._deliver(records, None)
        except Exception:
            self.handleError(records[0])
        finally:
            local.calling = False

    def _deliver(self, records: list[logging.LogRecord], opts: FlushOpts | None) -> None:
        """``handle_flush``: hand a batch to the target, in order."""
        target = self.target
        if isinstance(target, logging.Handler):
            # What Logger.callHandlers does for each of a logger's handlers
            # (handle() applies the filters and takes the lock, not the
            # level), and what a handler's emit should do when it fails
            # (handleError): one bad record does not cost the rest.
            for record in records:
                if record.levelno >= target.level:
                    try:
                        target.handle(record)
                    except Exception:
                        target.handleError(record)
        else:
            target(records)

    def _formatter_for_target(self) -> logging.Formatter:
        target = self.target
        formatter = target.formatter if isinstance(target, logging.Handler) else self.formatter
        return formatter or _DEFAULT_FORMATTER
