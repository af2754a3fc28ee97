"""The one place that chooses between the compiled and the pure-Python core.

Set ``DATABUFFER_NO_EXTENSIONS=1`` to use the pure-Python core; it is also
used on interpreters other than CPython and when the extension is missing.
"""

from __future__ import annotations

import os
import sys
from types import ModuleType
from typing import TYPE_CHECKING

from . import _core_py

NO_EXTENSIONS = bool(os.environ.get("DATABUFFER_NO_EXTENSIONS"))
if sys.implementation.name != "cpython":
    NO_EXTENSIONS = True

core: ModuleType
if TYPE_CHECKING or NO_EXTENSIONS:
    core = _core_py
else:
    try:
        from . import _core as core
    except ImportError:  # pragma: no cover - a source checkout without a build
        core = _core_py

USING_EXTENSION = core is not _core_py
"""True when the compiled core is in use."""

#: Every core module loaded in this process; telemetry switches insert events
#: on and off in each of them.
LOADED_CORES: tuple[ModuleType, ...] = (core,) if core is _core_py else (core, _core_py)

if TYPE_CHECKING:
    from ._core_py import BufferCore as BufferCore
else:
    BufferCore = core.BufferCore


def core_module_of(front: object) -> ModuleType:
    """The core module whose ``BufferCore`` ``front`` is built on (the tests build both)."""
    if core is not _core_py and isinstance(front, core.BufferCore):
        return core
    return _core_py


def own_methods(cls: type) -> None:
    """Let CPython specialize ``buf.insert(x)`` for ``cls`` (see the compiled core's ``own_methods``)."""
    module = core if core is not _core_py and issubclass(cls, core.BufferCore) else _core_py
    module.own_methods(cls)
