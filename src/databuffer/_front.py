"""What ``Buffer`` and ``AsyncBuffer`` share: the methods on the user's object.

The user's object holds no machinery: each method below reaches the
buffer's engine through the core in the object's one reserved slot,
``_databuffer`` (``engine_of``), never through an attribute a subclass could
define.  The names a subclass must leave alone are therefore the public API,
``_databuffer``, and ``_is_protocol`` (set by ``typing.Generic``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from ._compat import own_methods
from ._lifecycle import logger
from ._text import plural
from ._types import BufferStats, FlushOpts, PartitionInfo

if TYPE_CHECKING:
    from ._lifecycle import Engine

__all__ = ("Front", "engine_of")

T = TypeVar("T")


def engine_of(front: Any) -> Engine[Any]:
    """The engine of a buffer (through its core: the only reserved attribute)."""
    core = getattr(front, "_databuffer", None)
    if core is None:
        raise RuntimeError(
            f"{type(front).__name__} is not set up: its __init__ must call super().__init__(...) "
            "before the buffer is used"
        )
    return cast("Engine[Any]", core.hooks)


class Front(Generic[T]):
    """The methods ``Buffer`` and ``AsyncBuffer`` share (a mixin over a core's ``BufferCore``)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # The compiled core's insert methods, in descriptors made for this
        # class, so that CPython can specialize buf.insert(x) (see the core).
        own_methods(cls)

    def handle_flush_error(self, batch: list[T], opts: FlushOpts, error: BaseException) -> object:
        """Called with a batch whose ``handle_flush`` raised or timed out.

        The default logs the failure on the ``databuffer`` logger at ERROR,
        with the buffer's name, the partition, the batch size and the
        traceback; the batch is not kept (it counts as ``failed``).
        Override it to retry, spool or count.
        """
        logger.error(
            "buffer %r partition %d: handle_flush failed for a batch of %s (trigger %s, attempt %d); "
            "the batch counts as failed and is not kept: pass max_retries=n to retry it, or "
            "handle_flush_error=fn to keep it",
            opts.buffer,
            opts.partition,
            plural(opts.size, "item"),
            opts.trigger,
            opts.attempt,
            exc_info=(type(error), error, error.__traceback__),
        )
        return None

    def dump(self) -> list[T]:
        """A copy of the buffered items, removing nothing.

        Partition order, insertion order within a partition.  Items already
        handed to a flusher are not included.
        """
        return engine_of(self).core.dump()

    def size(self) -> int:
        """Items buffered and not yet handed to a flusher, over all partitions."""
        return int(engine_of(self).core.size())

    def info(self) -> list[PartitionInfo]:
        """One dict per partition: its settings, state and counters.

        Keys: ``partition``, ``name``, ``size``, ``flush_size`` (the current
        threshold), ``flush_interval``, ``flush_jitter`` (the seconds in
        force, 20 % of ``flush_interval`` by default), ``flush_timeout``,
        ``max_queued_batches``, ``on_full``, ``flushing`` (a batch is with
        the flusher), ``queued``, and the item counters ``inserted``,
        ``in_flight``, ``flushed``, ``retried``, ``failed`` and ``dropped``
        (see :meth:`stats`).  Each dict is one consistent snapshot:
        ``inserted == size + in_flight + flushed + failed + dropped``.
        """
        return engine_of(self).info()

    def stats(self) -> BufferStats:
        """The buffer's item counters, over all partitions.

        The counters, all in items:

        - ``inserted``: taken by insert calls since the buffer started:
          stored, or dropped by ``on_full``;
        - ``size``: buffered, not yet handed to a flusher;
        - ``in_flight``: handed to a flusher and not finished (sealed, in
          ``handle_flush``, or waiting for a retry);
        - ``flushed``: in batches whose ``handle_flush`` returned;
        - ``failed``: in batches that failed for good (reported to
          ``handle_flush_error``);
        - ``dropped``: dropped by ``on_full="drop_newest"`` (never stored)
          or ``"drop_oldest"`` (removed from the buffered items to make room);
        - ``retried``: handed to ``handle_flush`` again after a failed
          attempt (an item retried twice counts twice; not part of the sum
          below).

        At every moment ``inserted == size + in_flight + flushed + failed +
        dropped``:
        each partition is read in one snapshot under its lock.  Still
        answers once the buffer is closed.

        Returns:
            A :class:`BufferStats`: ``name``, ``partitions``, ``closed`` and
            the counters.
        """
        return engine_of(self).stats()

    @property
    def name(self) -> str:
        """The buffer's name."""
        return engine_of(self).name

    @property
    def closed(self) -> bool:
        """Whether the buffer is closed to inserts (``close()``, or ``aclose()`` of an ``AsyncBuffer``)."""
        return bool(engine_of(self).core.is_closed())

    def __repr__(self) -> str:
        core = getattr(self, "_databuffer", None)
        if core is None:
            return f"<{type(self).__name__} (not initialised)>"
        engine = engine_of(self)
        state = "closed" if core.is_closed() else "open"
        return (
            f"<{type(self).__name__} name={engine.name!r} partitions={engine.config.partitions} "
            f"size={core.size()} {state}>"
        )
