"""databuffer: buffer items in memory and flush them in batches.

>>> from databuffer import Buffer
>>> class EventBuffer(Buffer):
...     def handle_flush(self, batch, opts):
...         return len(batch)
"""

from . import telemetry
from ._async import AsyncBuffer
from ._buffer import Buffer, BufferStats, FlushOpts, PartitionInfo
from ._compat import USING_EXTENSION
from ._errors import BufferClosed, BufferFull, FlushTimeout
from ._shutdown import close_open_buffers, flush_on_sigterm, get_exit_timeout, set_exit_timeout

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
