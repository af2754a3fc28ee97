"""The core's seal hook (``_core_init(..., seal_hook=True)``), on both cores.

``AsyncBuffer`` learns of each seal through it; ``Buffer`` does not ask for it.
The hook runs after the seal, with no partition lock held, once per seal of
a single insert and at least once per call that sealed.
"""

from __future__ import annotations

import pytest
from conftest import Background

from databuffer import BufferFull


def _core_class(Buffer: type) -> type:
    return next(c for c in Buffer.__mro__ if c.__name__ == "BufferCore")


def _hooked(Buffer: type, *, partitions: int = 2, max_size: int = 4, seal_hook: bool = True):
    """A bare core whose layer callbacks record the seal hook's calls."""
    core = _core_class(Buffer)

    class Hooked(core):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            self.sealed: list[int] = []
            self.locked_seen: list[bool] = []

        def _sealed(self, p: int) -> None:
            self.sealed.append(p)
            # The partition's lock must be free: another thread can read it.
            reader = Background(self._stats, p)
            self.locked_seen.append(not reader.done.wait(1))

        def _insert_wait(self, p: int, item: object, timeout: object) -> None:
            raise BufferFull("full")

        def _insert_batch_wait(self, p: int, seq: object, start: int, timeout: object) -> None:
            raise BufferFull("full", stored=start)

        def _check_timeout(self, timeout: object) -> None:
            pass

        def _iterate(self, items: object) -> object:
            return iter(items)  # type: ignore[call-overload]

    hooked = Hooked()
    hooked._core_init(partitions, max_size, 0, False, seal_hook)
    return hooked


def test_each_seal_of_an_insert_calls_the_hook_once_without_the_lock(Buffer: type) -> None:
    core = _hooked(Buffer)
    for i in range(3):
        core.insert(i)
    assert core.sealed == []
    for i in range(5):
        core.insert(i)  # round-robin: the 4th item of partition 0 seals it, then partition 1's
    assert core.sealed == [0, 1]
    assert core.locked_seen == [False, False]
    # Partition 0 holds a sealed batch; the next four fill it again, with no
    # second seal until its flusher takes the batch.
    for i in range(8):
        core.insert(i)
    assert core.sealed == [0, 1]
    with pytest.raises(BufferFull):
        core.insert("one too many")
    taken = core._take(0, 0)
    assert taken is not None and len(taken[0]) == 4
    assert core.sealed == [0, 1]  # a flusher's take is not a seal


def test_insert_batch_and_push_many_call_the_hook_after_sealing(Buffer: type) -> None:
    core = _hooked(Buffer, partitions=1, max_size=3)
    core.insert_batch(range(2))
    assert core.sealed == []
    core.insert_batch(range(2, 5))  # fills and seals the first 3 items
    assert core.sealed and set(core.sealed) == {0}
    assert core.locked_seen and not any(core.locked_seen)
    calls = len(core.sealed)
    assert core._push_many(0, (5,), 0) == 1  # the ring holds 3 again: room only after the take
    assert len(core.sealed) == calls
    batch, by_size, first = core._take(0, 0)
    assert batch == [0, 1, 2] and by_size and first == 0
    core._finish(0, 3, True)
    rest = core._take(0, 0)  # full again: the flusher takes it by size
    assert rest is not None and rest[0] == [3, 4, 5]
    assert len(core.sealed) == calls


def test_without_seal_hook_the_core_never_calls_it(Buffer: type) -> None:
    core = _hooked(Buffer, partitions=1, max_size=2, seal_hook=False)
    core.insert_batch(range(4))
    core.insert_batch([])
    assert core._wait_wake(0, 0.0) is True  # sealed: the wake event was set
    assert core.sealed == []


def test_buffer_does_not_ask_for_the_seal_hook(make_buffer) -> None:
    """``Buffer`` has no ``_sealed``: a seal calling it would raise AttributeError."""
    got: list[int] = []
    buf = make_buffer(handle_flush=lambda batch, opts: got.extend(batch), max_size=2)
    assert not hasattr(buf, "_sealed")
    buf.insert_batch(range(5))
    buf.sync_flush(timeout=10)
    assert got == [0, 1, 2, 3, 4]


def test_a_hook_that_raises_fails_the_insert_after_storing(Buffer: type) -> None:
    """The layer's hook must not raise (AsyncBuffer's never does); if it does, the item stays stored."""
    core = _hooked(Buffer, partitions=1, max_size=2)

    def broken(p: int) -> None:
        raise RuntimeError("hook broke")

    core._sealed = broken
    core.insert(1)
    with pytest.raises(RuntimeError, match="hook broke"):
        core.insert(2)
    size, _threshold, busy, inserted, taken, _flushed, _failed = core._stats(0)
    assert (inserted, taken, size, busy) == (2, 2, 0, True)


def test_the_lock_check_of_these_tests_can_fail() -> None:
    """The hook's check sees a partition lock that is held (pure-Python core, where it can be held here)."""
    from conftest import PyBuffer

    core = _hooked(PyBuffer, partitions=1)
    with core._core_parts[0].lock:
        core._sealed(0)
    assert core.locked_seen == [True]
