"""Helpers shared by the command line, the benchmarks and the tests: one definition of each.

* :class:`PyBuffer` and :class:`PyAsyncBuffer`: ``Buffer`` and
  ``AsyncBuffer`` over the pure-Python core, whichever core
  ``databuffer.Buffer`` uses, so that both cores can run in one process.
  Depend on their names only, never on how they are made.
* :func:`loop_factory` and :func:`available_loops`: the event loops the
  ``AsyncBuffer`` code runs on, asyncio's default one and uvloop's.

asyncio and uvloop are imported inside the functions that need them.
This module is private: it is not part of databuffer's API.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _core_py
from ._async import AsyncBufferMethods
from ._buffer import BufferMethods

if TYPE_CHECKING:
    import asyncio

__all__ = ("LOOPS", "PyAsyncBuffer", "PyBuffer", "available_loops", "loop_factory")

#: The event loops :func:`loop_factory` knows: asyncio's default one, and uvloop's.
LOOPS = ("asyncio", "uvloop")


class PyBuffer(BufferMethods[Any], _core_py.BufferCore):
    """``Buffer`` over the pure-Python core (``databuffer.Buffer`` may use the compiled one).

    It takes the options of :class:`databuffer.Buffer` and behaves as it does.
    """


class PyAsyncBuffer(AsyncBufferMethods[Any], _core_py.BufferCore):
    """``AsyncBuffer`` over the pure-Python core (``databuffer.AsyncBuffer`` may use the compiled one).

    It takes the options of :class:`databuffer.AsyncBuffer` and behaves as it does.
    """


def available_loops() -> list[str]:
    """The event loops that can run here: ``"asyncio"``, and ``"uvloop"`` when it is importable.

    Returns:
        Names for :func:`loop_factory`, asyncio's first.
    """
    loops = ["asyncio"]
    try:
        importlib.import_module("uvloop")
    except ImportError:
        pass
    else:
        loops.append("uvloop")
    return loops


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The ``loop_factory`` of ``asyncio.Runner`` (or ``asyncio.run``) for one of :data:`LOOPS`.

    Args:
        name: ``"asyncio"`` or ``"uvloop"``.

    Returns:
        ``None`` for ``"asyncio"`` (the runner makes asyncio's default loop),
        ``uvloop.new_event_loop`` for ``"uvloop"``.

    Raises:
        ImportError: ``"uvloop"`` and uvloop is not installed.
        ValueError: ``name`` is not one of :data:`LOOPS`.
    """
    if name == "asyncio":
        return None
    if name == "uvloop":
        uvloop = importlib.import_module("uvloop")
        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return factory
    raise ValueError(f"loop must be 'asyncio' or 'uvloop', got {name!r}")
