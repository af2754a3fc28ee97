"""The buffers of this process: closed at interpreter exit, quiesced around ``fork()``."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._lifecycle import Engine

__all__ = ("Registry", "registry")


class Registry:
    """Every buffer's engine, open or closed (each is quiesced around
    ``fork()``), and the open ones (closed at interpreter exit).

    Weak: the registry keeps no buffer alive (an open buffer is kept alive
    by its own threads or tasks).  Guarded by ``lock``: a WeakSet cannot be
    copied while another thread adds to it.  The GC's removals need no lock
    (a WeakSet defers them while it is iterated).  Around ``fork()`` the
    forking thread holds ``lock``.
    """

    def __init__(self) -> None:
        # Re-entrant: a finalizer run by the garbage collector under it may
        # close a buffer from the same thread.
        self.lock = threading.RLock()
        self._open: weakref.WeakSet[Engine[Any]] = weakref.WeakSet()
        self._all: weakref.WeakSet[Engine[Any]] = weakref.WeakSet()
        # Called after each add, without the lock (it may take
        # multiprocessing's locks): _shutdown._on_new_buffer.  Set once, at
        # the import of _shutdown; read by any thread.
        self.on_add: Callable[[], None] | None = None

    def add(self, engine: Engine[Any]) -> None:
        with self.lock:
            self._open.add(engine)
            self._all.add(engine)
        if self.on_add is not None:
            self.on_add()

    def discard_open(self, engine: Engine[Any]) -> None:
        with self.lock:
            self._open.discard(engine)

    def open_engines(self) -> list[Engine[Any]]:
        """A copy of the open buffers' engines."""
        with self.lock:
            return _alive(self._open)

    def all_engines_locked(self) -> list[Engine[Any]]:
        """A copy of every buffer's engine; the caller holds ``lock``."""
        return _alive(self._all)


def _alive(engines: weakref.WeakSet[Engine[Any]]) -> list[Engine[Any]]:
    """The engines of ``engines`` still alive.

    Its references are copied first, in one C call: iterating the WeakSet
    itself runs Python code, where a finalizer that closes a buffer (the
    lock is re-entrant) would change the set under the iteration.
    """
    refs = engines.data.copy()  # type: ignore[attr-defined]  # WeakSet's set of weak references
    return [engine for ref in refs if (engine := ref()) is not None]


registry = Registry()
