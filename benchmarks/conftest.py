"""Benchmark suite plumbing: the shared results and the ratio summary.

Run with ``python -m pytest benchmarks/`` (see benchmarks/README.md).  The
plain ``python -m pytest`` does not collect this directory (pyproject's
``testpaths`` is ``["tests"]``).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from _bench import (
    BATCH_CALLS,
    CALLS,
    MEMORY_ITEMS,
    THREAD_ITEMS,
    Group,
    Results,
    environment_lines,
    gil_enabled,
    ratio,
)

_RESULTS = pytest.StashKey[Results]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_RESULTS] = Results()
    if not config.pluginmanager.hasplugin("timeout"):
        # pyproject runs with --strict-markers; without pytest-timeout the
        # suite's timeout marks would be unknown.
        config.addinivalue_line("markers", "timeout(seconds): per-test timeout (pytest-timeout)")


def pytest_report_header(config: pytest.Config) -> list[str]:
    return ["databuffer benchmarks: " + line for line in environment_lines()]


@pytest.fixture(scope="session")
def results(pytestconfig: pytest.Config) -> Results:
    """Figures of this run; printed as ratio tables at the end."""
    return pytestconfig.stash[_RESULTS]


# -- summary ---------------------------------------------------------------------


def _fmt(x: float, width: int = 10) -> str:
    if math.isnan(x):
        return f"{'n/a':>{width}}"
    if x >= 1000:
        return f"{x:>{width},.0f}"
    if x < 10:
        return f"{x:>{width}.2f}"
    return f"{x:>{width}.1f}"


def _rate(ns: float) -> float:
    return 1e9 / ns if ns > 0 else float("nan")


def _per_item_table(group: Group, write: Any) -> None:
    subjects = [r for r in group.rows if r.role == "subject"]
    throughput = group.kind == "throughput"
    # "per-batch" rows hold ns per batch: shown in us.
    unit, scale = ("us/batch", 1e-3) if group.kind == "per-batch" else ("ns/item", 1.0)
    width = max([44, *(len(row.label) + 1 for row in group.rows)])
    write(f"\n== {group.title} ==")
    for note in group.notes:
        write(f"   {note}")
    head = f"   {'':<{width}}{unit:>10}{unit:>10}"
    head2 = f"   {'':<{width}}{'min':>10}{'median':>10}"
    if throughput:
        head += f"{'items/s':>14}{'items/s':>14}{'flushes/s':>11}"
        head2 += f"{'(min)':>14}{'(median)':>14}{'(median)':>11}"
    columns = [max(24, len(s.label) + 6) for s in subjects]
    for s, w in zip(subjects, columns, strict=True):
        name = f"{s.label} / row"
        head += f"   {name:>{w}}"
        head2 += f"   {'min | median':>{w}}"
    write(head)
    write(head2)
    for row in group.rows:
        line = f"   {row.label:<{width}}{_fmt(row.min_ns * scale)}{_fmt(row.median_ns * scale)}"
        if throughput:
            flushes = row.extra.get("flushes_per_s_median_time")
            line += f"{_fmt(_rate(row.min_ns), 14)}{_fmt(_rate(row.median_ns), 14)}"
            line += f"{_fmt(flushes, 11) if flushes is not None else f'{chr(45):>11}'}"
        for s, w in zip(subjects, columns, strict=True):
            if row is s:
                cell = "(subject)"
            else:
                # Against a baseline, or against another subject (e.g. another max_queued_batches).
                cell = f"{ratio(s.min_ns, row.min_ns)} | {ratio(s.median_ns, row.median_ns)}"
            line += f"   {cell:>{w}}"
        write(line)


def _threads_table(group: Group, write: Any) -> None:
    write(f"\n== {group.title} ==")
    for note in group.notes:
        write(f"   {note}")
    by_impl: dict[str, dict[int, Any]] = {}
    for row in group.rows:
        by_impl.setdefault(row.extra["impl"], {})[row.extra["threads"]] = row
    write(
        f"   {'':<58}{'threads':>8}{'items/s':>14}{'items/s':>14}"
        f"{'speedup vs 1 thread':>24}{'items/s vs floor':>22}"
    )
    write(f"   {'':<58}{'':>8}{'(min)':>14}{'(median)':>14}{'min | median':>24}{'min | median':>22}")
    floor = by_impl.get("floor", {})
    for impl, rows in by_impl.items():
        one = rows.get(1)
        for threads, row in sorted(rows.items()):
            speed = (
                f"{ratio(one.min_ns, row.min_ns)} | {ratio(one.median_ns, row.median_ns)}" if one else "n/a"
            )
            vs = ""
            if impl != "floor" and threads in floor:
                f = floor[threads]
                # throughput ratio: databuffer items/s over floor items/s
                vs = f"{ratio(f.min_ns, row.min_ns)} | {ratio(f.median_ns, row.median_ns)}"
            write(
                f"   {row.label:<58}{threads:>8}{_fmt(_rate(row.min_ns), 14)}{_fmt(_rate(row.median_ns), 14)}"
                f"{speed:>24}{vs:>22}"
            )


def _memory_table(memory: dict[str, dict[str, Any]], write: Any) -> None:
    write(
        f"\n== memory: bytes per buffered item, {MEMORY_ITEMS:,} Nones held, "
        "measured from before construction =="
    )
    write("   each figure in a fresh subprocess; tracemalloc sees Python allocations only (not the compiled")
    write(
        "   core's malloc'd ring); RSS = /proc/self/statm resident pages, read without tracemalloc running."
    )
    write("   diff = row's bytes/item minus the list's (tracemalloc | RSS)")
    bases = [b for b in ("list [None]*N", "list built by append") if b in memory]
    head = f"   {'':<36}{'tracemalloc':>12}{'RSS':>10}"
    head2 = f"   {'':<36}{'B/item':>12}{'B/item':>10}"
    for b in bases:
        head += f"{'diff vs ' + b:>32}"
        head2 += f"{'tracemalloc | RSS':>32}"
    write(head)
    write(head2)

    def num(x: Any, width: int, sign: str = "") -> str:
        return f"{x:>{sign}{width}.2f}" if x is not None else f"{'n/a':>{width}}"

    for label, fig in memory.items():
        tm, rss = fig.get("tracemalloc"), fig.get("rss")
        line = f"   {label:<36}{num(tm, 12)}{num(rss, 10)}"
        for b in bases:
            if b == label:
                line += f"{'':>32}"
                continue
            base = memory[b]
            d_tm = (
                tm - base["tracemalloc"] if tm is not None and base.get("tracemalloc") is not None else None
            )
            d_rss = rss - base["rss"] if rss is not None and base.get("rss") is not None else None
            cell = f"{num(d_tm, 0, '+').strip()} | {num(d_rss, 0, '+').strip()}"
            line += f"{cell:>32}"
        write(line)


# Tables in the order of the issue: insert, insert_batch, telemetry, end to end (the pipeline's
# last), flusher per batch, threads; the AsyncBuffer tables (test_bench_async.py) after the
# end-to-end ones.
_SECTIONS = (
    "insert,",
    "insert_batch",
    "insert with one telemetry",
    "end to end:",
    "end to end, pipeline",
    "flusher per batch",
    "AsyncBuffer",
    "threads",
)


def _section(group: Group) -> int:
    return next((i for i, prefix in enumerate(_SECTIONS) if group.title.startswith(prefix)), len(_SECTIONS))


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    res = config.stash.get(_RESULTS, None)
    if res is None or (not res.groups and not res.memory):
        return
    tr = terminalreporter
    tr.write_sep("=", "databuffer benchmark ratios (same run)")
    write = tr.write_line
    for line in environment_lines():
        write(line)
    gil = gil_enabled()
    write(f"sys._is_gil_enabled() at the end of the run: {gil if gil is not None else 'n/a (Python < 3.13)'}")
    write(
        "Per-item figures: ns/item = round time / items in the round (per-call benchmarks: "
        f"{CALLS} calls per round; insert_batch: {BATCH_CALLS} calls x 1000 items). 'min' uses the fastest"
    )
    write(
        "round (the cost of the call itself, least disturbed by the noisy machine), 'median' the median round"
        " (includes the amortized share of sealing batches and waking flushers)."
    )
    write(
        "'flusher per batch' tables: us per batch, min and median gap between handle_flush calls"
        " (see test_bench_flusher.py)."
    )
    write(
        "Ratio columns: the subject's figure divided by the row's, with the same statistic on both sides"
        " (min | median); > 1 means the subject is slower (per item) than that baseline."
    )
    for group in sorted(res.groups.values(), key=_section):
        if group.kind == "threads":
            _threads_table(group, write)
        else:
            _per_item_table(group, write)
    if res.memory:
        _memory_table(res.memory, write)
    if any(g.kind == "threads" for g in res.groups.values()):
        write(
            f"\nThreads: each thread inserts {THREAD_ITEMS:,} items; items/s = all items / (start barrier ->"
            " all inserted and flushed). Speedup > 1 = more items/s than 1 thread. 'floor' = each thread"
            " appends to its own deque (what the interpreter lets threads do in parallel)."
        )
