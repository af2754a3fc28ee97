"""The core's seal hook (``Core(..., seal_hook=True, hooks)``), on both cores.

``AsyncBuffer`` learns of each seal through it; ``Buffer`` does not ask for it.
The hook runs after the seal, with no partition lock held, once per seal of
a single insert and at least once per call that sealed.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest
from conftest import Background

from databuffer import BufferFull
from databuffer._front import engine_of


def _core_module(Buffer: type) -> Any:
    return sys.modules[next(c for c in Buffer.__mro__ if c.__name__ == "BufferCore").__module__]


class Hooked:
    """A bare core, whose hooks (``CoreHooks``) record the seal hook's calls, and a front over it."""

    def __init__(self, Buffer: type, partitions: int, max_size: int, seal_hook: bool) -> None:
        module = _core_module(Buffer)
        self.seals: list[int] = []
        self.locked_seen: list[bool] = []
        self.core = module.Core(partitions, max_size, 0, False, seal_hook, self)
        self.front = module.BufferCore()
        module.attach(self.front, self.core)
        self.insert = self.front.insert
        self.insert_batch = self.front.insert_batch

    def sealed(self, p: int) -> None:
        self.seals.append(p)
        # The partition's lock must be free: another thread can read it.
        reader = Background(self.core.stats, p)
        self.locked_seen.append(not reader.done.wait(1))

    def insert_wait(self, p: int, item: object, timeout: object) -> None:
        raise BufferFull("full")

    def insert_batch_wait(self, p: int, seq: object, start: int, timeout: object) -> None:
        raise BufferFull("full", stored=start)

    def check_timeout(self, timeout: object) -> None:
        pass

    def iterate(self, items: object) -> object:
        return iter(items)  # type: ignore[call-overload]


def _hooked(Buffer: type, *, partitions: int = 2, max_size: int = 4, seal_hook: bool = True) -> Hooked:
    return Hooked(Buffer, partitions, max_size, seal_hook)


def test_each_seal_of_an_insert_calls_the_hook_once_without_the_lock(Buffer: type) -> None:
    core = _hooked(Buffer)
    for i in range(3):
        core.insert(i)
    assert core.seals == []
    for i in range(5):
        core.insert(i)  # round-robin: the 4th item of partition 0 seals it, then partition 1's
    assert core.seals == [0, 1]
    assert core.locked_seen == [False, False]
    # Partition 0 holds a sealed batch; the next four fill it again, with no
    # second seal until its flusher takes the batch.
    for i in range(8):
        core.insert(i)
    assert core.seals == [0, 1]
    with pytest.raises(BufferFull):
        core.insert("one too many")
    taken = core.core.take(0, 0)
    assert taken is not None and len(taken[0]) == 4
    assert core.seals == [0, 1]  # a flusher's take is not a seal


def test_insert_batch_and_push_many_call_the_hook_after_sealing(Buffer: type) -> None:
    core = _hooked(Buffer, partitions=1, max_size=3)
    core.insert_batch(range(2))
    assert core.seals == []
    core.insert_batch(range(2, 5))  # fills and seals the first 3 items
    assert core.seals and set(core.seals) == {0}
    assert core.locked_seen and not any(core.locked_seen)
    calls = len(core.seals)
    assert core.core.push_many(0, (5,), 0) == 1  # the ring holds 3 again: room only after the take
    assert len(core.seals) == calls
    batch, by_size, first = core.core.take(0, 0)
    assert batch == [0, 1, 2] and by_size and first == 0
    core.core.finish(0, 3, True)
    rest = core.core.take(0, 0)  # full again: the flusher takes it by size
    assert rest is not None and rest[0] == [3, 4, 5]
    assert len(core.seals) == calls


def test_without_seal_hook_the_core_never_calls_it(Buffer: type) -> None:
    core = _hooked(Buffer, partitions=1, max_size=2, seal_hook=False)
    core.insert_batch(range(4))
    core.insert_batch([])
    assert core.core.wait_wake(0, 0.0) is True  # sealed: the wake event was set
    assert core.seals == []


def test_buffer_does_not_ask_for_the_seal_hook(make_buffer) -> None:
    """``Buffer``'s core is made without the seal hook: its engine's ``sealed`` is never called."""
    got: list[int] = []
    buf = make_buffer(handle_flush=lambda batch, opts: got.extend(batch), max_size=2)
    engine = engine_of(buf)
    calls: list[int] = []
    engine.sealed = calls.append
    buf.insert_batch(range(5))
    buf.sync_flush(timeout=10)
    assert got == [0, 1, 2, 3, 4]
    assert calls == []


def test_a_hook_that_raises_fails_the_insert_after_storing(Buffer: type) -> None:
    """The layer's hook must not raise (AsyncBuffer's never does); if it does, the item stays stored."""
    core = _hooked(Buffer, partitions=1, max_size=2)

    def broken(p: int) -> None:
        raise RuntimeError("hook broke")

    core.sealed = broken  # type: ignore[method-assign]
    core.insert(1)
    with pytest.raises(RuntimeError, match="hook broke"):
        core.insert(2)
    s = core.core.stats(0)
    assert (s.inserted, s.taken, s.size, s.busy) == (2, 2, 0, True)


def test_the_lock_check_of_these_tests_can_fail() -> None:
    """The hook's check sees a partition lock that is held (pure-Python core, where it can be held here)."""
    from conftest import PyBuffer

    core = _hooked(PyBuffer, partitions=1)
    with core.core.parts[0].lock:
        core.sealed(0)
    assert core.locked_seen == [True]
