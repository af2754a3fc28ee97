"""The contract between core and engine (``databuffer._contract``), checked at run time.

mypy --strict checks the pure-Python core and both engines against the
protocols (see ``_contract._conforms``); this checks that the compiled core
has the same methods, with the same parameters, as the pure-Python one, and
that each engine implements every hook a core calls.
"""

from __future__ import annotations

import inspect
import sys
from types import ModuleType
from typing import Any

import pytest

from databuffer import _contract, _core_py
from databuffer._asyncio import AsyncEngine
from databuffer._threaded import ThreadEngine


def _members(protocol: type) -> set[str]:
    return {
        name
        for name, value in vars(protocol).items()
        if not name.startswith("_") and (callable(value) or name in protocol.__annotations__)
    } | {name for name in getattr(protocol, "__annotations__", {}) if not name.startswith("_")}


def _parameters(function: Any) -> list[tuple[str, Any]]:
    return [(p.name, p.default) for p in inspect.signature(function).parameters.values()]


def _core_modules(core_name: str) -> ModuleType:
    if core_name == "py":
        return _core_py
    from conftest import _CBuffer

    assert _CBuffer is not None
    return sys.modules[next(c for c in _CBuffer.__mro__ if c.__name__ == "BufferCore").__module__]


def test_the_protocols_name_what_the_cores_and_engines_call_each_other_with() -> None:
    api = _members(_contract.CoreAPI)
    hooks = _members(_contract.CoreHooks)
    # Not empty, and not the same list twice.
    assert {"take", "finish", "push_many", "stats", "finished_upto", "hooks"} <= api
    assert {"insert_wait", "sealed", "attend", "closed_error"} <= hooks
    assert not api & hooks


def test_each_core_has_every_method_of_the_contract_with_the_pure_cores_parameters(core_name: str) -> None:
    module = _core_modules(core_name)
    for name in _members(_contract.CoreAPI) - {"hooks"}:
        ours = getattr(module.Core, name)
        reference = getattr(_core_py.Core, name)
        assert _parameters(ours) == _parameters(reference), name
    # And no public method that the contract does not declare.
    methods = {
        name for name in dir(module.Core) if not name.startswith("_") and callable(getattr(module.Core, name))
    }
    assert methods == _members(_contract.CoreAPI) - {"hooks"}
    # The front's base: the two insert methods, and one reserved slot.
    front = {name for name in dir(module.BufferCore) if not name.startswith("__")}
    assert front == {"insert", "insert_batch", "_databuffer"}
    assert set(module.__all__) == {
        "BufferCore",
        "Core",
        "attach",
        "own_methods",
        "set_insert_telemetry",
        "insert_telemetry",
    }


def test_each_core_is_made_with_the_same_arguments_and_calls_its_hooks(core_name: str) -> None:
    module = _core_modules(core_name)
    calls: list[tuple[str, Any]] = []

    class Hooks:
        def sealed(self, p: int) -> None:
            calls.append(("sealed", p))

        def closed_error(self, stored: int = 0) -> Exception:
            calls.append(("closed_error", stored))
            return RuntimeError("closed")

    hooks = Hooks()
    core = module.Core(
        partitions=2, max_size=2, max_size_jitter=0, by_thread=False, seal_hook=True, hooks=hooks
    )
    assert core.hooks is hooks
    stats = core.stats(1)
    assert isinstance(stats, _contract.PartStats)
    assert stats == (0, 2, False, 0, 0, 0, 0, 0, 0, 0)
    assert core.push_many(1, (1, 2), 0) == 2
    assert calls == [("sealed", 1)]
    assert core.stats(1).taken == 2 and core.stats(1).busy
    assert not core.finished_upto(1, 2)
    core.finish(1, 2, True)
    assert core.finished_upto(1, 2)
    core.mark_closed()
    with pytest.raises(RuntimeError, match="closed"):
        core.push_many(0, (3,), 0)
    assert calls[-1] == ("closed_error", 0)


def test_a_core_queues_sealed_batches_up_to_max_queued_plus_one(core_name: str) -> None:
    # Core(..., max_queued=1): two batches sealed or with the flusher at most.
    module = _core_modules(core_name)

    class Hooks:
        def sealed(self, p: int) -> None:
            pass

    core = module.Core(1, 2, 0, False, False, Hooks(), 1)
    assert core.push_many(0, (1, 2, 3, 4, 5, 6, 7), 0) == 6  # two sealed, a full ring
    s = core.stats(0)
    assert (s.queued, s.size, s.taken, s.busy) == (2, 2, 4, True)
    assert core.take(0, 0) == ([1, 2], True, 0)
    assert core.stats(0).queued == 1
    assert core.push_many(0, (7,), 0) == 0  # still full: one queued, one with the flusher
    assert core.take(0, 0) == ([3, 4], True, 2)  # [1, 2] finished
    assert core.push_many(0, (7,), 0) == 1  # [5, 6] sealed, 7 in the ring
    s = core.stats(0)
    assert (s.queued, s.size, s.taken) == (1, 1, 6)
    assert core.take(0, 0) == ([5, 6], True, 4)
    assert core.take(0, 7) == ([7], False, 6)  # a flush request
    assert core.take(0, 7) is None
    assert not core.stats(0).busy


def test_a_core_evicts_buffered_items_only_and_keeps_sequence_numbers(core_name: str) -> None:
    # on_full="drop_oldest": evict() takes from the ring, never a sealed batch.
    module = _core_modules(core_name)

    class Hooks:
        def sealed(self, p: int) -> None:
            pass

    core = module.Core(1, 2, 0, False, False, Hooks(), 1)
    assert core.push_many(0, (1, 2, 3, 4, 5, 6), 0) == 6  # [1, 2], [3, 4] sealed, [5, 6] in the ring
    assert core.evict(0, 1) == [5]
    s = core.stats(0)
    assert (s.size, s.taken, s.evicted, s.inserted) == (1, 4, 1, 6)
    # An evicted item finishes nothing: the sealed batches before it are not done.
    assert core.finished_upto(0, 0) and not core.finished_upto(0, 1)
    assert core.evict(0, 5) == [6]  # only what the ring holds
    assert core.evict(0, 3) == []
    assert core.push_many(0, (7, 8), 0) == 2
    # The sealed batches keep their sequence numbers; 7 and 8 take over those of 5 and 6.
    assert core.take(0, 0) == ([1, 2], True, 0)
    assert core.take(0, 0) == ([3, 4], True, 2)
    assert core.take(0, 0) == ([7, 8], True, 4)
    assert not core.finished_upto(0, 1)
    core.finish(0, 6, True)
    assert core.finished_upto(0, 6)
    core.refuse(0, 3)
    s = core.stats(0)
    assert (s.inserted, s.refused, s.evicted, s.flushed, s.taken) == (8, 3, 2, 6, 6)
    for bad in (core.evict, core.refuse):
        with pytest.raises(ValueError, match="n must be >= 0"):
            bad(0, -1)


@pytest.mark.parametrize("engine", [ThreadEngine, AsyncEngine])
def test_each_engine_implements_every_hook_with_its_parameters(engine: type) -> None:
    for name in _members(_contract.CoreHooks):
        ours = getattr(engine, name, None)
        assert callable(ours), f"{engine.__name__} has no hook {name}"
        declared = getattr(_contract.CoreHooks, name)
        assert [n for n, _ in _parameters(ours)] == [n for n, _ in _parameters(declared)], name


def test_counters_come_back_as_a_named_record(make_buffer: Any) -> None:
    from databuffer._front import engine_of

    buf = make_buffer(handle_flush=lambda batch, opts: None, max_size=10, flush_interval=3600)
    buf.insert_batch([1, 2, 3])
    stats = engine_of(buf).core.stats(0)
    assert stats._fields == (
        "size",
        "threshold",
        "busy",
        "inserted",
        "taken",
        "flushed",
        "failed",
        "queued",
        "evicted",
        "refused",
    )
    assert (stats.size, stats.inserted, stats.taken) == (3, 3, 0)


def test_a_core_that_was_never_initialised_is_refused_not_used(core_name: str) -> None:
    """A Core made without its __init__ raises on use, and cannot be attached to a buffer."""
    module = _core_modules(core_name)
    bare = module.Core.__new__(module.Core)
    front = module.BufferCore()
    with pytest.raises(RuntimeError, match="not initialised"):
        module.attach(front, bare)
    with pytest.raises(TypeError):
        module.attach(None, bare)
    with pytest.raises(RuntimeError, match="BufferCore is not set up: its __init__ must call super"):
        front.insert(1)
    if core_name == "c":  # the pure core's missing attributes raise AttributeError
        for call in (
            lambda: bare.insert_raw(1, None),
            lambda: bare.insert_batch_raw([1], None),
            lambda: bare.take(0, 0),
        ):
            with pytest.raises(RuntimeError, match="not initialised"):
                call()
