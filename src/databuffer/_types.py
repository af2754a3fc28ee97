"""The public value types: what ``handle_flush`` is told, and what ``stats()``/``info()`` return."""

from __future__ import annotations

from typing import Any, Literal, TypedDict

__all__ = ("COUNTERS", "BufferStats", "Counters", "FlushOpts", "PartitionInfo")


class FlushOpts:
    """What ``handle_flush`` is told about a batch.

    Attributes:
        meta: the buffer's ``flush_meta``.
        size: the number of items in the batch (``len(batch)``).
        partition: the 0-based partition the batch comes from.
        buffer: the buffer's name.
        trigger: why it was flushed: ``"size"``, ``"interval"``,
            ``"manual"`` or ``"close"``.
        attempt: which call of ``handle_flush`` this is for the batch: 1 for
            the first, 2 for the first retry, up to ``max_retries + 1``.
    """

    __slots__ = ("attempt", "buffer", "meta", "partition", "size", "trigger")

    def __init__(
        self, meta: Any, size: int, partition: int, buffer: str, trigger: str, attempt: int = 1
    ) -> None:
        self.meta = meta
        self.size = size
        self.partition = partition
        self.buffer = buffer
        self.trigger = trigger
        self.attempt = attempt

    def __repr__(self) -> str:
        return (
            f"FlushOpts(meta={self.meta!r}, size={self.size}, partition={self.partition}, "
            f"buffer={self.buffer!r}, trigger={self.trigger!r}, attempt={self.attempt})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FlushOpts):
            return NotImplemented
        return all(getattr(self, k) == getattr(other, k) for k in self.__slots__)

    __hash__ = None  # type: ignore[assignment]


class Counters(TypedDict):
    # The item counters of stats() and info(); see Buffer.stats.
    inserted: int
    size: int
    in_flight: int
    flushed: int
    retried: int
    failed: int
    dropped: int


class BufferStats(Counters):
    """What :meth:`Buffer.stats` returns: ``name``, ``partitions``, ``closed``
    and the item counters over all partitions (``inserted``, ``size``,
    ``in_flight``, ``flushed``, ``retried``, ``failed``, ``dropped``)."""

    name: str
    partitions: int
    closed: bool


class PartitionInfo(Counters):
    """What :meth:`Buffer.info` returns for each partition: its settings and
    state, and its item counters (as in :class:`BufferStats`)."""

    partition: int
    name: str
    flush_size: int
    flush_interval: float
    flush_jitter: float
    flush_timeout: float
    max_queued_batches: int
    on_full: str
    flushing: bool
    queued: int


# The item counters of stats() and info(), in that order.
CounterKey = Literal["inserted", "size", "in_flight", "flushed", "retried", "failed", "dropped"]
COUNTERS: tuple[CounterKey, ...] = (
    "inserted",
    "size",
    "in_flight",
    "flushed",
    "retried",
    "failed",
    "dropped",
)
