"""Exceptions raised by databuffer."""

from __future__ import annotations

__all__ = ("BufferClosed", "BufferFull", "FlushTimeout")


class BufferFull(TimeoutError):
    """An insert waited for room under backpressure and ran out of time.

    A single ``insert`` that raises this stored nothing.  For ``insert_batch``
    the attribute ``stored`` counts the leading items of the call that were
    stored before time ran out (the rest were not).
    """

    def __init__(self, message: str, *, stored: int = 0) -> None:
        super().__init__(message)
        self.stored = stored


class BufferClosed(RuntimeError):
    """The buffer is closed: it accepts no more items.

    For an ``insert_batch`` that was waiting for room when the buffer was
    closed, ``stored`` counts the leading items of the call that were stored
    (and are flushed by ``close``); otherwise it is 0.
    """

    def __init__(self, message: str, *, stored: int = 0) -> None:
        super().__init__(message)
        self.stored = stored


class FlushTimeout(TimeoutError):
    """A ``handle_flush`` call ran past the buffer's ``flush_timeout``.

    It carries a note (``__notes__``, printed with its traceback) with the
    stack of the ``handle_flush`` call when its time ran out, from
    ``handle_flush`` inward: where the call was stuck.
    """
