"""``python -m databuffer bench``: the command line, its table, JSON and checks (tiny sizes, no timing)."""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Any

import pytest
from conftest import run_cli

from databuffer._cli import bench as _bench
from databuffer._cli import build_parser, main
from databuffer._support import available_loops

ITEMS = 20_000
# The smallest run: one round of each interleaved figure, one end-to-end run.
TINY = ["--items", str(ITEMS), "--memory-items", str(ITEMS), "--rounds", "1", "--repeat", "1"]

HANDOFF = "thread hand-off per 1,000-item batch"
KEYED = "insert(item, key='AAPL'): call (best block)"
ASYNC_CALL = "AsyncBuffer.insert: call (best block)"
ASYNC_AMORTIZED = "AsyncBuffer.insert: amortized"
# AsyncBuffer.insert beside deque.append, Buffer.insert, and Buffer.insert timed the same way.
ASYNC_INSERT = [ASYNC_CALL, ASYNC_AMORTIZED] * 3
ASYNC_VERSUS = (
    ["deque.append"] * 2
    + ["Buffer.insert, same rounds"] * 2
    + ["Buffer.insert timed the same way (coroutine, yield per block)"] * 2
)
LOOPS = available_loops()
# (partitions, max_size, loops): AsyncBuffer's defaults on every loop, then
# the options of the Buffer end-to-end figures on asyncio's loop.
ASYNC_CONFIGS = [(1, 5000, LOOPS), (4, 1000, ["asyncio"])]


def async_end_to_end() -> list[tuple[str, int, int]]:
    """The AsyncBuffer end-to-end rows (figure, partitions, max_size), in table order."""
    return [
        (f"AsyncBuffer end to end {p}x{m:,}, {how}" + ("" if loop == "asyncio" else f", {loop}"), p, m)
        for p, m, loops in ASYNC_CONFIGS
        for how in ("insert_batch(1,000)/ainsert_batch", "insert/ainsert")
        for loop in loops
    ]


FIGURES = [
    "insert: call (best block)",
    "insert: amortized",
    HANDOFF,
    KEYED,
    *ASYNC_INSERT,
    "insert_batch(1,000): call (best block)",
    "insert_batch(1,000): amortized",
    "end to end, insert_batch(1,000)",
    "end to end, insert",
    *(figure for figure, _, _ in async_end_to_end()),
    f"memory, {ITEMS:,} buffered Nones",
]
ROW = re.compile(
    r"^(?P<figure>.+?)\s{2,}(?P<unit>ns/item|items/s|bytes/item)\s+(?P<databuffer>[\d,.]+)\s+"
    r"(?P<baseline>[\d,.]+)\s+(?P<ratio>[\d.]+)x\s+(?P<versus>.+)$"
)


def table_rows(stdout: str) -> list[dict[str, str]]:
    return [m.groupdict() for line in stdout.splitlines() if (m := ROW.match(line))]


def positive_finite(value: Any) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_bench_prints_the_table(core_name: str) -> None:
    proc = run_cli("bench", *TINY, core=core_name)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    header = out.splitlines()[0]
    assert "Python" in header or "CPython" in header
    assert f"USING_EXTENSION={core_name == 'c'}" in header
    assert re.search(r"GIL (enabled|disabled)", header)

    rows = table_rows(out)
    figures = [row["figure"] for row in rows]
    if core_name == "c":
        # The compiled core is also compared with the pure-Python one.
        expected = FIGURES[:4] + FIGURES[:2] + FIGURES[4:]
        assert [row["versus"] for row in rows[4:6]] == ["same, pure-Python core"] * 2
        assert "ring not seen by tracemalloc" in rows[-1]["versus"]
        assert "skipped" not in out
    else:
        expected = FIGURES
        assert "insert vs the pure-Python core: skipped" in out
    assert figures == expected, out
    for row in rows:
        for column in ("databuffer", "baseline", "ratio"):
            assert positive_finite(float(row[column].replace(",", ""))), row
    assert rows[0]["versus"] == "deque.append"
    assert rows[2]["versus"].startswith("deque.append; with the GIL")
    assert rows[3]["versus"] == "insert(item), same rounds"
    assert "flushes" in rows[-2]["versus"]
    assert "check: OK, every item flushed exactly once" in out


def test_bench_progress_names_each_phase_and_the_time_of_the_last(core_name: str) -> None:
    proc = run_cli("bench", *TINY, core=core_name)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0] == "databuffer bench: insert (Buffer and AsyncBuffer)"
    for line in lines[1:]:
        assert re.fullmatch(r"databuffer bench: .+ \(previous phase: \d+\.\d s\)", line), line
    assert lines[1].startswith("databuffer bench: insert_batch (previous phase: ")
    assert any(line.startswith("databuffer bench: memory (previous phase: ") for line in lines)
    assert any(
        line.startswith(
            "databuffer bench: AsyncBuffer end to end 4x1,000, insert (asyncio) (previous phase: "
        )
        for line in lines
    )
    assert re.fullmatch(r"databuffer bench: done, [\d.]+ s in all \(previous phase: [\d.]+ s\)", lines[-1])


def test_bench_table_has_the_async_rows(core_name: str) -> None:
    proc = run_cli("bench", *TINY, core=core_name)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    rows = table_rows(out)
    by_figure: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_figure.setdefault(row["figure"], []).append(row)
    # AsyncBuffer.insert: against deque.append, Buffer.insert, and the control.
    async_insert = [row for row in rows if row["figure"].startswith("AsyncBuffer.insert")]
    assert [row["figure"] for row in async_insert] == ASYNC_INSERT
    assert [row["versus"] for row in async_insert] == ASYNC_VERSUS
    # The same denominators as the Buffer rows of the same run.
    buffer_call, buffer_amortized = (
        by_figure["insert: call (best block)"][0],
        by_figure["insert: amortized"][0],
    )
    assert async_insert[0]["baseline"] == buffer_call["baseline"]  # deque.append
    assert async_insert[2]["baseline"] == buffer_call["databuffer"]  # Buffer.insert
    assert async_insert[3]["baseline"] == buffer_amortized["databuffer"]
    for call, amortized in zip(async_insert[::2], async_insert[1::2], strict=True):
        # Per item, a call is never dearer than the amortized cost.
        assert float(call["databuffer"].replace(",", "")) <= float(amortized["databuffer"].replace(",", ""))
    # End to end: items/s beside a Buffer of the same options, with flush counts.
    e2e = [row for row in rows if row["figure"].startswith("AsyncBuffer end to end")]
    expected = async_end_to_end()
    assert [row["figure"] for row in e2e] == [figure for figure, _, _ in expected]
    for row, (_, _, max_size) in zip(e2e, expected, strict=True):
        assert row["unit"] == "items/s"
        assert row["versus"].startswith("Buffer, same options and N; ")
        flushes = re.search(r"; ([\d,]+) flushes, ", row["versus"])
        assert flushes is not None, row
        # At least N / max_size batches: more when a partition's share is not a multiple.
        assert int(flushes.group(1).replace(",", "")) >= ITEMS // max_size
    settings = out.splitlines()[1]
    for partitions, max_size, loops in ASYNC_CONFIGS:
        assert (
            f"AsyncBuffer end to end {partitions}x{max_size:,} = partitions={partitions}, "
            f"max_size={max_size:,}, loops: {', '.join(loops)}"
        ) in settings
    # The idiom is spelled out; no development target (the benchmarks report it).
    assert "`try: buf.insert(x)` `except BufferFull: await buf.ainsert(x)`" in out
    assert "target" not in out


def test_bench_json_parses(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--json", *TINY]) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert data["ok"] is True
    assert data["problems"] == []
    env = data["environment"]
    assert env["using_extension"] is _bench.USING_EXTENSION
    assert isinstance(env["gil_enabled"], bool)
    assert env["python"] == ".".join(map(str, sys.version_info[:3]))
    assert data["settings"] == {
        "rounds": 1,
        "items": ITEMS,
        "repeat": 1,
        "memory_items": ITEMS,
        "async_end_to_end": [{"partitions": p, "max_size": m, "loops": lp} for p, m, lp in ASYNC_CONFIGS],
    }
    assert len(data["rows"]) == len(FIGURES) + (2 if _bench.USING_EXTENSION else 0)
    for row in data["rows"]:
        for key in ("databuffer", "baseline", "ratio"):
            assert positive_finite(row[key]), row
    results = data["results"]
    assert [r["mode"] for r in results["end_to_end"]] == ["insert_batch", "insert"]
    assert all(r["flushed"] == ITEMS and r["flushes"] >= ITEMS // 1000 for r in results["end_to_end"])
    assert results["memory"]["items"] == ITEMS
    insert = results["insert"]
    for key in ("async_buffer", "async_control"):
        assert insert[key]["items"] == _bench.BLOCK
        assert 0 < insert[key]["best"] <= insert[key]["total"]
    async_e2e = results["async_end_to_end"]
    assert [(r["partitions"], r["max_size"], r["mode"], r["loop"]) for r in async_e2e] == [
        (p, m, mode, loop)
        for p, m, loops in ASYNC_CONFIGS
        for mode in ("insert_batch", "insert")
        for loop in loops
    ]
    for r in async_e2e:
        assert r["items"] == r["flushed"] == ITEMS
        assert r["flushes"] >= ITEMS // r["max_size"]
        assert r["problems"] == []
        for key in ("items_per_second", "buffer_items_per_second", "flushes_per_second"):
            assert positive_finite(r[key]), r
    assert "async_target" not in results  # a development target, not the user's business
    # The pipeline's ceiling: a deque.append loop plus one wake-up round trip
    # per max_queued_batches+2 batches, below the loop, higher with a longer queue.
    pipeline = data["pipeline"]
    trip = pipeline["wake_round_trip_us"]
    assert positive_finite(trip)
    deque_rate = pipeline["end_to_end_items_per_second"]["deque.append loop"]
    configs = pipeline["max_queued_batches"]["configs"]
    ceilings = pipeline["ceilings"]
    assert list(ceilings) == [c["label"] for c in configs]
    for config in configs:
        expected = 1 / (1 / deque_rate + trip * 1e-6 / ((config["depth"] + 2) * _bench.MAX_SIZE))
        assert ceilings[config["label"]] == pytest.approx(expected)
        assert ceilings[config["label"]] < deque_rate
    depths = [c["depth"] for c in configs]
    assert [ceilings[c["label"]] for c in configs] == sorted(ceilings.values()) and depths == sorted(depths)
    ceiling_rows = [r for r in pipeline["rows"] if r["figure"].startswith("end to end, insert: ceiling")]
    assert [r["baseline"] for r in ceiling_rows] == ["deque.append loop", "its ceiling"] * len(configs)


def test_count_mismatch_fails_loudly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def lossy(self: Any, batch: list[Any], opts: Any) -> None:
        if opts.partition == 0:  # the batches of the other partitions are lost
            self.items[0] += len(batch)
            self.batches[0] += 1

    monkeypatch.setattr(_bench._Counter, "handle_flush", lossy)
    status = main(["bench", *TINY])
    captured = capsys.readouterr()
    assert status == 1
    assert "check: FAILED" in captured.out
    assert (
        f"check failed: end to end (insert): handle_flush got {ITEMS // 4:,} items, expected {ITEMS:,}"
        in captured.err
    )
    assert f"end to end (insert_batch): handle_flush got {ITEMS // 4:,} items" in captured.err


def test_async_count_mismatch_fails_loudly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def lossy(self: Any, batch: list[Any], opts: Any) -> None:
        self.items[opts.partition] += len(batch) - 1  # one item of every batch is lost
        self.batches[opts.partition] += 1

    monkeypatch.setattr(_bench._AsyncCounter, "handle_flush", lossy)
    status = main(["bench", *TINY])
    captured = capsys.readouterr()
    assert status == 1
    assert "check: FAILED" in captured.out
    # N / max_size batches (N/4 per partition is a multiple of max_size), an item short each.
    for partitions, max_size, loops in ASYNC_CONFIGS:
        short = ITEMS - ITEMS // max_size
        for mode in ("insert", "insert_batch"):
            for loop in loops:
                assert (
                    f"check failed: AsyncBuffer end to end {partitions}x{max_size:,} ({mode}, {loop}): "
                    f"handle_flush got {short:,} items, expected {ITEMS:,}"
                ) in captured.err
    assert "check failed: AsyncBuffer.insert: handle_flush got" in captured.err
    # The Buffer figures were not touched.
    assert "check failed: end to end" not in captured.err


@pytest.mark.parametrize("argv", [["--help"], ["bench", "--help"]])
def test_help_lists_the_commands_and_options(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 0
    out = capsys.readouterr().out
    if argv == ["--help"]:
        assert "bench" in out and "demo" in out
    else:
        for option in ("--items", "--memory-items", "--rounds", "--repeat", "--json"):
            assert option in out
        assert "default: 2000000" in out


def test_bench_functions_with_tiny_sizes() -> None:
    insert = _bench.bench_insert(rounds=1, blocks=4, pure=True, pure_blocks=4)
    assert insert.problems == []
    assert insert.pure is not None
    assert insert.handoff is not None
    # A round trip counts as one batch of MAX_SIZE items.
    assert insert.handoff.items == _bench.HANDOFF_TRIPS * _bench.MAX_SIZE
    assert 0 < insert.handoff.best <= insert.handoff.total
    for timing in (insert.buffer, insert.deque, insert.pure):
        assert timing.items == _bench.BLOCK
        assert timing.total_items == 4 * _bench.BLOCK
        assert 0 < timing.best <= timing.total
        assert positive_finite(timing.call_ns) and timing.call_ns <= timing.amortized_ns

    for timing in (insert.async_buffer, insert.async_control):
        assert timing is not None
        assert timing.items == _bench.BLOCK
        assert timing.total_items == 4 * _bench.BLOCK
        assert 0 < timing.best <= timing.total
        assert positive_finite(timing.call_ns) and timing.call_ns <= timing.amortized_ns
    plain = _bench.bench_insert(rounds=1, blocks=2, pure=False, asynchronous=False)
    assert plain.problems == [] and plain.async_buffer is None and plain.async_control is None

    batch = _bench.bench_insert_batch(rounds=2, blocks=1)
    assert batch.problems == []
    assert batch.buffer.items == batch.extend.items == _bench.BATCH_CALLS * _bench.BLOCK
    assert batch.buffer.total_items == 2 * _bench.BATCH_CALLS * _bench.BLOCK

    e2e = _bench.bench_end_to_end("insert_batch", items=2_500, repeat=2)
    assert e2e.problems == [] and e2e.flushed == 2_500
    assert e2e.flushes >= 3  # two full batches and the rest, at least
    assert positive_finite(e2e.items_per_second) and positive_finite(e2e.baseline_items_per_second)

    with pytest.raises(ValueError, match="mode"):
        _bench.bench_end_to_end("append", items=10)


@pytest.mark.parametrize("partitions", [1, 4])
@pytest.mark.parametrize("mode", ["insert", "insert_batch"])
def test_bench_async_end_to_end_counts(AsyncBuffer: type, Buffer: type, mode: str, partitions: int) -> None:
    # 5,000 items in batches of at most 500: BufferFull, then ainsert/ainsert_batch, on every loop.
    results = _bench.bench_async_end_to_end(
        mode,
        items=5_000,
        repeat=2,
        partitions=partitions,
        max_size=500,
        async_class=AsyncBuffer,
        buffer_class=Buffer,
    )
    assert [r.loop for r in results] == LOOPS
    for r in results:
        assert r.problems == [] and r.flushed == 5_000
        assert (r.mode, r.items, r.partitions, r.max_size) == (mode, 5_000, partitions, 500)
        assert r.flushes >= 10
        assert positive_finite(r.items_per_second) and positive_finite(r.buffer_items_per_second)
        assert positive_finite(r.flushes_per_second)
    assert len({r.buffer_seconds for r in results}) == 1  # one baseline for every loop
    with pytest.raises(ValueError, match="mode"):
        _bench.bench_async_end_to_end("append", items=10)
    with pytest.raises(ValueError, match="loop"):
        _bench.bench_async_end_to_end("insert", items=10, loops=["trio"])


def test_bench_memory_counts_the_buffered_items(Buffer: type) -> None:
    result = _bench.bench_memory(ITEMS, buffer_class=Buffer)
    assert result.problems == []
    pointer = 8 if sys.maxsize > 2**32 else 4
    # A list of N Nones holds N pointers, over-allocated a little.
    assert pointer <= result.list_bytes_per_item < 2 * pointer
    assert result.bytes_per_item >= pointer
    if _bench._is_compiled(Buffer):
        assert result.untraced_ring_bytes == (ITEMS + 1) * pointer
    else:
        assert result.untraced_ring_bytes == 0
    with pytest.raises(ValueError, match="items"):
        _bench.bench_memory(10)
