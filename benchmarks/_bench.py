"""Shared machinery of the benchmark suite (not collected: no ``test_`` prefix).

Sizes come from environment variables, so a quick run is one variable away:

``DATABUFFER_BENCH_QUICK=1``        small defaults for everything below
``DATABUFFER_BENCH_ROUNDS``         rounds of the per-call benchmarks (full 2000, quick 100)
``DATABUFFER_BENCH_ITEMS``          items per end-to-end round (full 10_000_000, quick 200_000)
``DATABUFFER_BENCH_E2E_ROUNDS``     rounds of each end-to-end benchmark (full 3, quick 1)
``DATABUFFER_BENCH_THREAD_ITEMS``   items inserted by EACH producer thread (full 1_000_000, quick 50_000)
``DATABUFFER_BENCH_THREAD_ROUNDS``  rounds of each thread benchmark (full 3, quick 1)
``DATABUFFER_BENCH_MEMORY_ITEMS``   buffered ``None``s of the memory figures (1_000_000 in both modes)
``DATABUFFER_BENCH_FLUSHER_CYCLES`` cycles of each flusher-per-batch subject (full 2000, quick 100)
``DATABUFFER_BENCH_TIMEOUT``        per-test timeout in seconds (900), replacing pyproject's 120
"""

from __future__ import annotations

import asyncio
import itertools
import os
import statistics
import sys
import sysconfig
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

import databuffer
from databuffer._cli.bench import OTelBaseline, OTelUnavailable, otel_processor, queue_configs


def _env_int(name: str, full: int, quick: int) -> int:
    raw = os.environ.get(name)
    if raw:
        return int(raw.replace("_", ""))
    return quick if QUICK else full


QUICK = bool(os.environ.get("DATABUFFER_BENCH_QUICK"))
CALLS = 1000  # calls per round of the per-call benchmarks; figures are divided by it
BATCH_LEN = 1000  # items in the list given to insert_batch / list.extend
BATCH_CALLS = 10  # insert_batch / list.extend calls per round
ROUNDS = _env_int("DATABUFFER_BENCH_ROUNDS", 2000, 100)
WARMUP = max(1, ROUNDS // 20)
E2E_ITEMS = _env_int("DATABUFFER_BENCH_ITEMS", 10_000_000, 200_000)
E2E_ROUNDS = _env_int("DATABUFFER_BENCH_E2E_ROUNDS", 3, 1)
E2E_CHUNK = 1000  # items per insert_batch call in the end-to-end insert_batch variant
E2E_MAX_SIZES = (1000, 10_000)
THREAD_ITEMS = _env_int("DATABUFFER_BENCH_THREAD_ITEMS", 1_000_000, 50_000)
THREAD_ROUNDS = _env_int("DATABUFFER_BENCH_THREAD_ROUNDS", 3, 1)
THREAD_MAX_SIZE = 1000
MEMORY_ITEMS = _env_int("DATABUFFER_BENCH_MEMORY_ITEMS", 1_000_000, 1_000_000)
FLUSHER_CYCLES = _env_int("DATABUFFER_BENCH_FLUSHER_CYCLES", 2000, 100)
TIMEOUT = _env_int("DATABUFFER_BENCH_TIMEOUT", 900, 900)

# A running buffer's timed flushes are pushed far out, so the per-call
# figures are about size-triggered flushes only.
FLUSH_INTERVAL = 60.0


#: The buffer under test: ``databuffer.Buffer`` (the compiled core when it is available).
SUBJECT = databuffer.Buffer
COMPILED = databuffer.USING_EXTENSION
SUBJECT_LABEL = "databuffer" if COMPILED else "databuffer (pure core!)"

#: ``max_queued_batches``: ``[0, default]``, or ``[default]`` alone when this
#: build has no such option (QUEUE_NOTE says which); see
#: ``databuffer._cli.bench.queue_configs``.
QUEUE_CONFIGS, QUEUE_NOTE = queue_configs(SUBJECT)
#: Subject names of the buffers compared, in QUEUE_CONFIGS order: "databuffer-mqb0", "databuffer".
QUEUE_SUBJECTS = {
    ("databuffer" if config is QUEUE_CONFIGS[-1] else "databuffer-mqb0"): config for config in QUEUE_CONFIGS
}


def queue_label(subject: str) -> str:
    """The row label of a subject of QUEUE_SUBJECTS: SUBJECT_LABEL, and its setting when two are compared."""
    if len(QUEUE_CONFIGS) == 1:
        return SUBJECT_LABEL
    return f"{SUBJECT_LABEL}, {QUEUE_SUBJECTS[subject].label}"


def gil_enabled() -> bool | None:
    """``sys._is_gil_enabled()`` when the interpreter has it (3.13+), else None."""
    fn = getattr(sys, "_is_gil_enabled", None)
    return bool(fn()) if fn is not None else None


def environment_lines() -> list[str]:
    gil = gil_enabled()
    ft_build = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
    gil_text = (
        "enabled (no sys._is_gil_enabled: Python < 3.13)"
        if gil is None
        else ("enabled" if gil else "DISABLED")
    )
    core = "compiled (databuffer._core)" if COMPILED else "pure-Python (compiled core unavailable)"
    try:
        load = "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:
        load = "load average n/a"
    return [
        f"python {sys.version.split()[0]} ({sys.executable}), "
        f"free-threaded build: {ft_build}, GIL: {gil_text}",
        f"databuffer core: {core}; cpus: {os.cpu_count()}; {load}",
        f"mode: {'QUICK' if QUICK else 'full'}; "
        f"per-call rounds {ROUNDS} x {CALLS} calls (+{WARMUP} warm-up); "
        f"end-to-end {E2E_ITEMS:,} items x {E2E_ROUNDS} rounds; threads {THREAD_ITEMS:,} items/thread "
        f"x {THREAD_ROUNDS} rounds; memory {MEMORY_ITEMS:,} items; flusher {FLUSHER_CYCLES} cycles",
        QUEUE_NOTE,
    ]


# -- loops ---------------------------------------------------------------------
#
# Every subject and baseline runs a loop compiled from the same source text;
# only the attribute name differs between the "attr" loops.  Each benchmark
# compiles its own code object, so the specializing interpreter adapts each
# loop to its own callee (no baseline inherits another's specialization).

# "local": ``def loop(fn, item, rng)`` calling ``fn(item)``; "attr":
# ``def loop(obj, item, rng)`` calling ``obj.NAME(item)``.
_LOOP_SRC = """
def loop({target}, item, rng):
    for _ in rng:
        {call}(item)
"""

STYLES = {
    "local": "bound method in a local (ins = buf.insert; ins(x))",
    "attr": "attribute call (buf.insert(x))",
}


def make_loop(style: str, name: str = "") -> Callable[[Any, Any, Any], None]:
    if style == "local":
        src = _LOOP_SRC.format(target="fn", call="fn")
    elif style == "attr":
        if not name.isidentifier():
            raise ValueError(name)
        src = _LOOP_SRC.format(target="obj", call=f"obj.{name}")
    else:
        raise ValueError(style)
    namespace: dict[str, Any] = {}
    exec(compile(src, f"<bench loop {style} {name}>", "exec"), namespace)
    return namespace["loop"]


def reps(n: int) -> Any:
    """The ``rng`` of a loop: n iterations, allocating nothing per step."""
    return itertools.repeat(None, n)


def run_loop_rounds(
    benchmark: Any,
    *,
    style: str,
    method: str,
    get_target: Callable[[], Any],
    item: Any,
    calls: int,
    rounds: int = ROUNDS,
    warmup: int = WARMUP,
) -> int:
    """Benchmark ``rounds`` rounds of ``calls`` calls of ``get_target().<method>(item)``.

    ``get_target`` runs before each round, outside the timing (a baseline
    clears or replaces its container there).  Returns the number of calls
    made in all, warm-up included.
    """
    loop = make_loop(style, method)
    made = [0]

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        target = get_target()
        made[0] += 1
        arg = getattr(target, method) if style == "local" else target
        return (arg, item, reps(calls)), {}

    benchmark.pedantic(loop, setup=setup, rounds=rounds, warmup_rounds=warmup, iterations=1)
    return made[0] * calls


# -- flush targets ----------------------------------------------------------------


class FlushCounter:
    """``handle_flush`` that only counts items and calls (flushers of several partitions call it)."""

    def __init__(self) -> None:
        self.items = 0
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, batch: list[Any], opts: Any) -> None:
        with self._lock:
            self.items += len(batch)
            self.calls += 1


def new_buffer(cls: type, counter: FlushCounter, **options: Any) -> Any:
    options.setdefault("flush_interval", FLUSH_INTERVAL)
    return cls(handle_flush=counter, **options)


def shut(obj: Any, runner: asyncio.Runner | None = None) -> None:
    """Stop what a failed round left open or running, then close ``runner``.

    ``obj``: a buffer, an ``AsyncBuffer`` on ``runner``'s loop, an object
    with ``shutdown()`` (the OTel processor), or anything else (left as is).
    """
    try:
        if isinstance(obj, databuffer.AsyncBuffer) and runner is not None:
            runner.run(obj.aclose(timeout=60))
        elif hasattr(obj, "close"):
            obj.close(timeout=60)
        elif hasattr(obj, "shutdown"):
            obj.shutdown()
    finally:
        if runner is not None:
            runner.close()


# -- OpenTelemetry SDK BatchProcessor -----------------------------------------------


class CountingExporter:
    """The no-op exporter's batch call: counts what it is given."""

    def __init__(self) -> None:
        self.items = 0
        self.calls = 0

    def export(self, batch: list[Any], /) -> None:
        self.items += len(batch)
        self.calls += 1


def otel_batch_processor(batch_size: int, queue_size: int) -> tuple[OTelBaseline, CountingExporter]:
    """The SDK's batch processor (``databuffer._cli.bench.otel_processor``) into a counting exporter.

    ``max_export_batch_size=batch_size`` (the counterpart of ``max_size``),
    ``max_queue_size=queue_size`` (large enough that nothing is dropped: the
    callers check the exported count), an hour's schedule delay (exports are
    triggered by the batch size, as the buffer's flushes are).  Recent SDKs
    give ``_shared_internal.BatchProcessor`` (``emit``); older ones a
    ``BatchSpanProcessor`` (``on_end`` of a span), as the label says.
    Skips the test when opentelemetry-sdk is not installed.
    """
    exporter = CountingExporter()
    try:
        otel = otel_processor(batch_size, queue_size, exporter.export)
    except OTelUnavailable as exc:
        pytest.skip(f"OTel baseline skipped: {exc}")
    return otel, exporter


# -- results --------------------------------------------------------------------------


@dataclass
class Row:
    label: str
    role: str  # "baseline" or "subject"
    min_ns: float  # per item, from the fastest round
    median_ns: float  # per item, from the median round
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Group:
    title: str
    kind: str  # "per-item", "throughput", "threads"
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class Results:
    """Figures of one run, filled by the tests and printed by conftest's summary."""

    def __init__(self) -> None:
        self.groups: dict[str, Group] = {}
        self.memory: dict[str, dict[str, Any]] = {}

    def group(self, title: str, kind: str = "per-item") -> Group:
        if title not in self.groups:
            self.groups[title] = Group(title, kind)
        return self.groups[title]

    def add(
        self,
        benchmark: Any,
        per_round: int,
        *entries: tuple[str, str, str],
        kind: str = "per-item",
        extra: dict[str, Any] | None = None,
    ) -> Row | None:
        """Record ``benchmark``'s stats, divided by ``per_round`` items.

        Each entry is ``(table title, row label, "baseline" or "subject")``:
        one measurement can be a subject in one table and the baseline of
        another.
        """
        meta = getattr(benchmark, "stats", None)
        if meta is None:  # --benchmark-disable: nothing was timed
            return None
        st = meta.stats
        row = None
        for title, label, role in entries:
            row = Row(label, role, st.min / per_round * 1e9, st.median / per_round * 1e9, dict(extra or {}))
            self.group(title, kind).rows.append(row)
        assert row is not None
        benchmark.extra_info.update(
            {
                "label": entries[0][1],
                "items_per_round": per_round,
                "ns_per_item_min": row.min_ns,
                "ns_per_item_median": row.median_ns,
                "items_per_s_min_time": 1e9 / row.min_ns if row.min_ns > 0 else None,
                "items_per_s_median_time": 1e9 / row.median_ns if row.median_ns > 0 else None,
                **row.extra,
            }
        )
        return row


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "n/a"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
