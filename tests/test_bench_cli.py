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

LOOPS = available_loops()
# (partitions, max_size, loops): AsyncBuffer's defaults on every loop, then
# the options of the Buffer end-to-end figures on asyncio's loop.
ASYNC_CONFIGS = [(1, 5000, LOOPS), (4, 1000, ["asyncio"])]
WIDTH = 100

# The first table's rows, footnote marks removed: (label, baseline is).
ASYNC_INSERT = [
    (label, versus)
    for versus in ("deque.append", "Buffer.insert, same rounds", "Buffer.insert in a coroutine")
    for label in ("AsyncBuffer.insert, call", "AsyncBuffer.insert, amortized")
]
PURE = [("insert, call", "insert, pure-Python core"), ("insert, amortized", "insert, pure-Python core")]
COST_ROWS = [
    ("insert, call", "deque.append"),
    ("insert, amortized", "deque.append"),
    ("thread hand-off per batch", "deque.append"),
    ("insert(x, key='AAPL'), call", "insert(x), same rounds"),
    *ASYNC_INSERT,
    ("insert_batch(1,000), call", "list.clear + list.extend"),
    ("insert_batch(1,000), amortized", "list.clear + list.extend"),
]


def end_to_end_rows() -> list[tuple[str, str, str]]:
    """The end-to-end table's rows: (group, label, baseline is), footnote marks removed."""
    rows = [
        ("Buffer, partitions=4, max_size=1,000", mode, "deque.append loop")
        for mode in ("insert_batch", "insert")
    ]
    rows += [
        (
            f"AsyncBuffer, partitions={p}, max_size={m:,}",
            mode + ("" if loop == "asyncio" else f", {loop}"),
            "Buffer, same options",
        )
        for p, m, loops in ASYNC_CONFIGS
        for mode in ("insert_batch", "insert")
        for loop in loops
    ]
    return rows


MARK = re.compile(r" \[(\d+)\]")
HEADER = re.compile(
    r"^(?P<title>.+?)\s{2,}(?:databuffer|value)\s+baseline\s+ratio\s+baseline is(?:\s+flushes\s+flushes/s)?$"
)
ROW = re.compile(
    r"^(?P<label>.+?)\s{2,}(?P<value>[\d,.]+|nan)\s+(?P<baseline>[\d,.]+|nan)\s+(?P<ratio>[\d.]+|nan)x"
    r"\s+(?P<versus>.+?)(?:\s{2,}(?P<flushes>[\d,]+)\s+(?P<per_second>[\d,]+))?$"
)


def unmark(text: str) -> str:
    return MARK.sub("", text).strip()


def tables(stdout: str) -> list[dict[str, Any]]:
    """Every table block: its title, and its rows (with the group heading above each)."""
    found: list[dict[str, Any]] = []
    block: dict[str, Any] | None = None
    group = ""
    for line in stdout.splitlines():
        if (m := HEADER.match(line)) is not None:
            block, group = {"title": m["title"], "rows": []}, ""
            found.append(block)
        elif block is None or set(line) <= {"-", " "}:
            if not line:
                block = None
        elif (m := ROW.match(line)) is not None:
            assert line.startswith("  ") == bool(group), line
            row = {k: v for k, v in m.groupdict().items() if v is not None}
            block["rows"].append({**row, "label": row["label"].strip(), "group": group})
        else:
            assert not line.startswith(" "), line  # a group heading
            group = line
    return found


def summary(stdout: str) -> list[str]:
    """The lines before the first blank one."""
    lines = stdout.splitlines()
    return lines[: lines.index("")]


def number(cell: str) -> float:
    return float(cell.replace(",", ""))


def shown_as(value: float, unit: str) -> float:
    """A figure as the table shows it: items/s in millions."""
    return value / 1e6 if unit == "items/s" else value


def positive_finite(value: Any) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_bench_output_fits_100_columns_summary_first(core_name: str) -> None:
    proc = run_cli("bench", *TINY, core=core_name)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    too_wide = [line for line in out.splitlines() if len(line) > WIDTH]
    assert too_wide == [], too_wide
    # The summary comes first: a title, then 4 to 8 lines in plain words.
    lines = summary(out)
    assert re.fullmatch(r"databuffer \S+ bench, in short \(.+\):", lines[0]), lines[0]
    assert 4 <= len(lines[1:]) <= 8, lines
    assert all(line.startswith(("- ", "  ")) for line in lines[1:]), lines
    text = " ".join(line.strip() for line in lines)
    assert re.search(r"- insert costs [\d.]+x a deque\.append \([\d.]+ ns a call\)", text), text
    assert re.search(
        r"end to end by insert, one producer: [\d.]+ M items/s, [\d.]+x as fast as a SimpleQueue", text
    )
    assert re.search(r"end to end by insert_batch\(1,000\): [\d.]+ M items/s", text), text
    assert re.search(r"the flusher's own work: [\d.]+ us a batch", text), text
    if core_name == "c":
        assert re.search(r"the pure-Python core: its insert costs [\d.]+x the compiled core's", text), text
        assert "compiled core" in lines[0]
    else:
        assert "this run used the pure-Python core" in text
        assert "pure-Python core" in lines[0]
    assert "- ratios compare with baselines timed in this run: above 1x costs more" in lines[-1]
    # No development target: those are the benchmarks' business.
    assert "target" not in out
    # Every footnote mark in a table has its note, and every note its mark.
    marks = set(MARK.findall("\n".join(line for line in out.splitlines() if not re.match(r"\[\d+\] ", line))))
    notes = set(re.findall(r"^\[(\d+)\] ", out, re.M))
    assert marks == notes == {str(n) for n in range(1, len(notes) + 1)}, (marks, notes)
    assert out.rstrip().splitlines()[-2] == "check: OK, every item flushed exactly once"
    assert re.fullmatch(r"time: [\d.]+ s", out.rstrip().splitlines()[-1])


def test_bench_prints_the_tables(core_name: str) -> None:
    proc = run_cli("bench", *TINY, core=core_name)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    # Where it ran: "run: " and its continuation lines.
    run = re.search(r"^run: .+(?:\n  .+)*", out, re.M)
    assert run is not None, out
    assert "Python" in run[0]
    assert f"(USING_EXTENSION={core_name == 'c'})" in run[0]
    assert re.search(r"GIL (enabled|disabled)", run[0])
    blocks = tables(out)
    assert [unmark(block["title"]) for block in blocks] == [
        "cost per item, ns",
        "end to end, M items/s",
        "memory, bytes/item",
        "end to end, M items/s",  # the pipeline's
        "amortized, ns/item",
        "flusher per batch, us",
    ]
    first = blocks[:3]
    cost, e2e, memory = (block["rows"] for block in first)
    expected = COST_ROWS[:4] + (PURE if core_name == "c" else []) + COST_ROWS[4:]
    assert [(unmark(r["label"]), unmark(r["versus"])) for r in cost] == expected, out
    if core_name == "c":
        assert "skipped" not in out
        assert MARK.search(memory[0]["label"])  # the ring tracemalloc does not see
        assert "ring, allocated where tracemalloc does not see it" in out
    else:
        assert "insert vs the pure-Python core: skipped" in out
    assert [(unmark(r["group"]), r["label"], r["versus"]) for r in e2e] == end_to_end_rows()
    assert [unmark(r["label"]) for r in memory] == [f"{ITEMS:,} buffered Nones"]
    assert memory[0]["versus"].startswith("list.append (")
    for block in first[:3]:
        for row in block["rows"]:
            for column in ("value", "baseline", "ratio"):
                assert positive_finite(number(row[column])), row
    for row in e2e:
        assert int(row["flushes"].replace(",", "")) >= ITEMS // 5000
        assert positive_finite(number(row["per_second"]))
    # A ratio is the row's value over its baseline (both rounded in the table).
    for row in cost + e2e + memory:
        assert number(row["ratio"]) == pytest.approx(
            number(row["value"]) / number(row["baseline"]), rel=0.05, abs=0.01
        )
    assert "check: OK, every item flushed exactly once" in out


def test_bench_progress_names_each_phase_and_the_time_of_the_last(core_name: str) -> None:
    proc = run_cli("bench", *TINY, core=core_name)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert all(len(line) <= WIDTH for line in lines), lines
    assert lines[0] == "databuffer bench: insert (Buffer and AsyncBuffer)"
    for line in lines[1:]:
        assert re.fullmatch(r"databuffer bench: .+ \(previous phase: \d+\.\d s\)", line), line
    assert lines[1].startswith("databuffer bench: insert_batch (previous phase: ")
    assert any(line.startswith("databuffer bench: memory (previous phase: ") for line in lines)
    assert any(
        line.startswith("databuffer bench: AsyncBuffer end to end 4x1,000, insert (previous phase: ")
        for line in lines
    )
    assert re.fullmatch(r"databuffer bench: done, [\d.]+ s in all \(previous phase: [\d.]+ s\)", lines[-1])


def test_bench_table_has_the_async_rows(core_name: str) -> None:
    proc = run_cli("bench", *TINY, core=core_name)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    cost = tables(out)[0]["rows"]
    # AsyncBuffer.insert: against deque.append, Buffer.insert, and the control.
    async_insert = [row for row in cost if row["label"].startswith("AsyncBuffer.insert")]
    assert [(unmark(r["label"]), unmark(r["versus"])) for r in async_insert] == ASYNC_INSERT
    # The same denominators as the Buffer rows of the same run.
    buffer_call, buffer_amortized = cost[0], cost[1]
    assert async_insert[0]["baseline"] == buffer_call["baseline"]  # deque.append
    assert async_insert[2]["baseline"] == buffer_call["value"]  # Buffer.insert
    assert async_insert[3]["baseline"] == buffer_amortized["value"]
    for call, amortized in zip(async_insert[::2], async_insert[1::2], strict=True):
        # Per item, a call is never dearer than the amortized cost.
        assert number(call["value"]) <= number(amortized["value"])
    # End to end: items/s beside a Buffer of the same options, with flush counts.
    e2e = [row for row in tables(out)[1]["rows"] if row["group"].startswith("AsyncBuffer")]
    expected = end_to_end_rows()[2:]
    assert [(unmark(r["group"]), r["label"], r["versus"]) for r in e2e] == expected
    for row in e2e:
        max_size = int(re.search(r"max_size=([\d,]+)", row["group"])[1].replace(",", ""))  # type: ignore[index]
        # At least N / max_size batches: more when a partition's share is not a multiple.
        assert int(row["flushes"].replace(",", "")) >= ITEMS // max_size
    for partitions, max_size, loops in ASYNC_CONFIGS:
        assert (
            f"  AsyncBuffer end to end: partitions={partitions}, max_size={max_size:,}, "
            f"loops: {', '.join(loops)}"
        ) in out.splitlines()
    # The idiom is spelled out in a note.
    assert "`try: buf.insert(x)` `except BufferFull: await buf.ainsert(x)`" in out
    assert "`except BufferFull as exc: await buf.ainsert_batch(chunk[exc.stored:])`" in out


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
    async_rows = 2 * sum(len(loops) for _, _, loops in ASYNC_CONFIGS)
    expected_rows = len(COST_ROWS) + 2 + async_rows + 1 + (2 if _bench.USING_EXTENSION else 0)
    assert len(data["rows"]) == expected_rows
    for row in data["rows"]:
        assert set(row) == {"figure", "unit", "databuffer", "baseline", "versus", "note", "ratio"}
        for key in ("databuffer", "baseline", "ratio"):
            assert positive_finite(row[key]), row
    assert data["rows"][0]["figure"] == "insert: call (best block)"
    results = data["results"]
    assert "async_target" not in results  # a development target, not the user's business
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
    for row in pipeline["rows"]:
        assert set(row) == {"figure", "unit", "subject", "value", "baseline", "baseline_value", "ratio"}


def test_bench_json_has_the_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--json", *TINY]) == 0
    data = json.loads(capsys.readouterr().out)
    figures = data["summary"]
    text = figures.pop("text")
    # The same lines as the table's summary, computed from the same figures.
    assert text[0].startswith(f"databuffer {data['environment']['databuffer']} bench, in short (")
    assert all(len(line) <= WIDTH for line in text)
    results, pipeline = data["results"], data["pipeline"]
    insert = results["insert"]
    call = insert["buffer"]["best"] / insert["buffer"]["items"] * 1e9
    deque_call = insert["deque"]["best"] / insert["deque"]["items"] * 1e9
    assert figures["insert_call_ns"] == pytest.approx(call)
    assert figures["insert_call_vs_deque_append"] == pytest.approx(call / deque_call)
    joined = " ".join(line.strip() for line in text)
    shown = re.search(r"insert costs ([\d.]+)x a deque\.append \(([\d.]+) ns a call\)", joined)
    assert shown is not None, joined
    assert float(shown[1]) == pytest.approx(figures["insert_call_vs_deque_append"], rel=0.05)
    assert float(shown[2]) == pytest.approx(call, rel=0.01)
    default = pipeline["max_queued_batches"]["configs"][-1]["label"]
    rates = pipeline["end_to_end_items_per_second"]
    rate = rates[f"insert, {default}"]
    assert figures["end_to_end_insert_items_per_second"] == pytest.approx(rate)
    assert figures["end_to_end_insert_vs_simple_queue"] == pytest.approx(
        rate / rates["SimpleQueue + consumer thread"]
    )
    shown = re.search(r"end to end by insert, one producer: ([\d.]+) M items/s, ([\d.]+)x as fast", joined)
    assert shown is not None, joined
    assert float(shown[1]) == pytest.approx(rate / 1e6, rel=0.01)
    assert float(shown[2]) == pytest.approx(figures["end_to_end_insert_vs_simple_queue"], rel=0.05)
    if pipeline["otel"]:
        assert figures["otel"] == pipeline["otel"]
        assert figures["end_to_end_insert_vs_otel"] == pytest.approx(rate / rates[pipeline["otel"]])
        assert "x OpenTelemetry's " in joined
    else:
        assert figures["end_to_end_insert_vs_otel"] is None and "not measured" in joined
    batch_rate = rates[f"insert_batch, {default}"]
    assert figures["end_to_end_insert_batch_vs_deque_extend_loop"] == pytest.approx(
        batch_rate / rates["deque.extend loop"]
    )
    flusher = pipeline["flusher"]
    assert figures["flusher_us_per_batch"] == pytest.approx(flusher[f"Buffer, {default}"]["median_us"])
    if _bench.USING_EXTENSION:
        pure = insert["pure"]["best"] / insert["pure"]["items"] * 1e9
        assert figures["pure_python_insert_call_vs_compiled"] == pytest.approx(pure / call)
    else:
        assert figures["pure_python_insert_call_vs_compiled"] is None


def test_the_table_shows_every_row_of_the_json() -> None:
    report = _bench.run(rounds=1, items=ITEMS, repeat=1, memory_items=ITEMS)
    data = report.to_json()
    blocks = tables(_bench.format_table(report))
    shown = [row for block in blocks[:3] for row in block["rows"]]
    assert [(number(r["value"]), number(r["ratio"])) for r in shown] == [
        (pytest.approx(shown_as(row["databuffer"], row["unit"]), rel=0.01), round(row["ratio"], 2))
        for row in data["rows"]
    ]
    shown = [row for block in blocks[3:] for row in block["rows"]]
    assert [(number(r["value"]), number(r["baseline"])) for r in shown] == [
        (
            pytest.approx(shown_as(row["value"], row["unit"]), rel=0.01),
            pytest.approx(shown_as(row["baseline_value"], row["unit"]), rel=0.01),
        )
        for row in data["pipeline"]["rows"]
    ]


def test_format_table_without_the_pipeline_or_opentelemetry() -> None:
    # A report with some parts: the summary says what there is, the lines still fit.
    insert = _bench.bench_insert(rounds=1, blocks=2, pure=False, asynchronous=False)
    e2e = _bench.bench_end_to_end("insert", items=2_500, repeat=1)
    report = _bench.BenchReport(
        env=_bench.environment(),
        settings={"rounds": 1, "items": 2_500, "repeat": 1, "memory_items": 0},
        insert=insert,
        end_to_end=[e2e],
    )
    out = _bench.format_table(report)
    assert all(len(line) <= WIDTH for line in out.splitlines())
    text = summary(out)
    assert text[1].startswith("- insert costs ")
    assert text[2].startswith("- end to end by insert: ") and "as fast as a bare deque.append loop" in text[2]
    assert report.summary()["end_to_end_insert_vs_simple_queue"] is None
    pipeline = _bench.bench_pipeline(2_000, 1, 1, 1, otel=False, asynchronous=False)
    report = _bench.BenchReport(env=report.env, settings=report.settings, pipeline=pipeline)
    out = _bench.format_table(report)
    assert all(len(line) <= WIDTH for line in out.splitlines())
    assert "(OpenTelemetry's processor: not measured, see the pipeline's notes)" in out
    assert "OTel baseline: skipped, not run" in out
    assert report.summary()["end_to_end_insert_vs_otel"] is None


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
