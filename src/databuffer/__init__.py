"""databuffer: buffer items in memory and flush them in batches.

>>> from databuffer import Buffer
>>> class EventBuffer(Buffer):
...     def handle_flush(self, batch, opts):
...         return len(batch)
"""

from typing import TYPE_CHECKING, Any

from . import telemetry
from ._buffer import Buffer
from ._compat import USING_EXTENSION
from ._errors import BufferClosed, BufferFull, FlushTimeout
from ._shutdown import close_open_buffers, flush_on_sigterm, get_exit_timeout, set_exit_timeout
from ._types import BufferStats, FlushOpts, PartitionInfo

if TYPE_CHECKING:
    from ._async import AsyncBuffer

__version__ = "0.1.0"

__all__ = (
    "USING_EXTENSION",
    "AsyncBuffer",
    "Buffer",
    "BufferClosed",
    "BufferFull",
    "BufferStats",
    "FlushOpts",
    "FlushTimeout",
    "PartitionInfo",
    "__version__",
    "close_open_buffers",
    "flush_on_sigterm",
    "get_exit_timeout",
    "set_exit_timeout",
    "telemetry",
)


def __getattr__(name: str) -> Any:
    # AsyncBuffer, and with it asyncio, is imported on first use.
    if name == "AsyncBuffer":
        from ._async import AsyncBuffer

        globals()["AsyncBuffer"] = AsyncBuffer
        return AsyncBuffer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"AsyncBuffer"})
