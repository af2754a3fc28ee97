"""Do timed flushes of processes started together spread out?  A stand-alone script.

    python benchmarks/jitter_processes.py                     # about 55 s: 4 variants x 12 s
    python benchmarks/jitter_processes.py --plot docs/img/jitter.png
    python benchmarks/jitter_processes.py --processes 8 --interval 1 --duration 20 --rate 200

Like the workers of one pre-fork server after a deploy: ``--processes`` (8)
processes, each with an identical ``Buffer(flush_interval=I, max_size=huge,
partitions=1)``, insert at the same steady rate (``--rate`` items/s, in
chunks every 50 ms) for ``--duration`` seconds from one shared wall-clock
start.  ``max_size`` is far above what an interval brings, so every flush
is a timed one (``opts.trigger == "interval"``); ``handle_flush`` records
``time.time()`` at its entry (the wall clock: comparable across processes)
and the child sends the list back when it is done.  The final ``close``
flush is not counted.

Variants (each a fresh set of processes; the "fork" context by default, the
parent has imported databuffer and made nothing else):

``child``   each child makes its buffer at the shared start (the parent
            made none): the worker builds its buffer at startup.
``parent``  the parent makes the buffer, then forks the children (one after
            the other, as a pre-fork server does) and closes its own, which
            it never used.  In each child the buffer starts over, empty, at
            the fork (see "Fork" in docs/concepts/shutdown.md), so its timed
            flushes count from the fork; the children start inserting at the
            shared start.  Fork only (skipped with ``--context spawn``).

each with ``flush_jitter=None`` (the default: 20 % of the interval) and
``flush_jitter=0``.

Reported per variant, over all the timed flush starts of all processes:

``max in 100 ms``   the largest number of distinct processes with a flush
                    start in one ``--window`` (100 ms) window: for every
                    flush start ``t``, the processes with a start in
                    ``[t, t + window)``; the maximum over all ``t``
``mean/interval``   the run cut into spans of one ``flush_interval``: in each,
                    the largest such count of a window starting in it; the
                    mean over the spans (the typical worst bunch per round)
``max, 2nd half``   the maximum over the starts in the second half of the
                    run (how far the spread has come after a while)

and the same figures for a reference in which every process's flush starts
are placed at independent uniformly random times over the same span
(``random``, the mean of ``--trials`` draws): what perfectly independent
processes would show.  ``--plot FILE.png`` draws the flush starts per
process on a timeline, one panel per variant (needs matplotlib).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import statistics
import sys
import time
import warnings
from typing import Any

import databuffer
from databuffer import Buffer
from databuffer._compat import USING_EXTENSION

# Filled in by handle_flush, in each child (a forked child has its own copy).
STARTS: list[float] = []


def record_start(batch: list[Any], opts: Any) -> None:
    if opts.trigger == "interval":
        STARTS.append(time.time())


def make_buffer(interval: float, jitter: float | None) -> Buffer[Any]:
    # The ring of the compiled core is allocated up front: large enough for
    # several intervals at the rate, not "infinite".
    return Buffer(
        handle_flush=record_start,
        flush_interval=interval,
        flush_jitter=jitter,
        max_size=1_000_000,
        partitions=1,
    )


def _sleep_until(wall: float) -> None:
    while (left := wall - time.time()) > 0:
        time.sleep(min(left, 0.05))


def worker(
    index: int,
    results: Any,
    start_at: float,
    settings: dict[str, Any],
    inherited: Buffer[Any] | None,
) -> None:
    """One process: (make the buffer,) insert steadily from ``start_at`` for the duration, report."""
    forked_at = time.time()
    _sleep_until(start_at)
    buf = inherited if inherited is not None else make_buffer(settings["interval"], settings["jitter"])
    made_at = time.time()
    chunk_every = 0.05
    per_chunk = max(1, round(settings["rate"] * chunk_every))
    chunks = int(settings["duration"] / chunk_every)
    inserted = 0
    for k in range(chunks):
        buf.insert_batch([(index, k)] * per_chunk)
        inserted += per_chunk
        _sleep_until(start_at + (k + 1) * chunk_every)
    buf.close(timeout=30)
    info = buf.info()[0]
    results.put(
        {
            "index": index,
            "pid": os.getpid(),
            "forked_at": forked_at,
            "made_at": made_at,
            "starts": list(STARTS),
            "inserted": inserted,
            "flushed": info["flushed"],
            "flush_jitter": info["flush_jitter"],
        }
    )


def run_variant(ctx: Any, made_in: str, jitter: float | None, args: argparse.Namespace) -> dict[str, Any]:
    settings = {"interval": args.interval, "jitter": jitter, "rate": args.rate, "duration": args.duration}
    results = ctx.Queue()
    parent_buf = make_buffer(args.interval, jitter) if made_in == "parent" else None
    # Every child is started (forked or spawned) before the shared start.
    start_at = time.time() + args.lead
    procs = [
        ctx.Process(target=worker, args=(i, results, start_at, settings, parent_buf))
        for i in range(args.processes)
    ]
    for proc in procs:
        proc.start()
    if parent_buf is not None:
        parent_buf.close(timeout=30)  # the parent's own copy: never used, nothing to flush
    reports = [results.get(timeout=args.lead + args.duration + 60) for _ in procs]
    for proc in procs:
        proc.join(30)
    late = [r["index"] for r in reports if r["forked_at"] > start_at]
    if late:
        print(f"  warning: processes {late} started after the shared start; raise --lead", file=sys.stderr)
    reports.sort(key=lambda r: r["index"])
    for r in reports:
        # Every item flushed; only the close flush is not among the starts.
        assert r["flushed"] == r["inserted"], r
    return {"made_in": made_in, "jitter": jitter, "start_at": start_at, "reports": reports}


# -- statistics ------------------------------------------------------------


def window_counts(events: list[tuple[float, int]], window: float) -> list[tuple[float, int]]:
    """For each flush start ``t`` (sorted ``(t, process)``): the distinct processes in ``[t, t + window)``."""
    events = sorted(events)
    out = []
    j = 0
    for i, (t, _) in enumerate(events):
        j = max(j, i)
        while j < len(events) and events[j][0] < t + window:
            j += 1
        out.append((t, len({p for _, p in events[i:j]})))
    return out


def spread(
    events: list[tuple[float, int]], window: float, begin: float, end: float, interval: float
) -> dict[str, float]:
    counts = window_counts(events, window)
    half = begin + (end - begin) / 2
    second = [c for t, c in counts if t >= half]
    # Per interval: the largest count of a window starting in each interval-long span of the run.
    per_span: dict[int, int] = {}
    for t, c in counts:
        span = int((t - begin) // interval)
        per_span[span] = max(per_span.get(span, 0), c)
    return {
        "max": max((c for _, c in counts), default=0),
        "mean": statistics.fmean(per_span.values()) if per_span else 0.0,
        "max_2nd_half": max(second, default=0),
        "starts": len(counts),
    }


def random_reference(
    per_process: list[int],
    window: float,
    begin: float,
    end: float,
    interval: float,
    trials: int,
    rng: random.Random,
) -> dict[str, float]:
    """The same figures for independent, uniformly random flush starts (same counts, same span)."""
    runs = []
    for _ in range(trials):
        events = [(rng.uniform(begin, end), p) for p, n in enumerate(per_process) for _ in range(n)]
        runs.append(spread(events, window, begin, end, interval))
    return {key: statistics.fmean(r[key] for r in runs) for key in runs[0]}


def analyse(run: dict[str, Any], args: argparse.Namespace, rng: random.Random) -> dict[str, Any]:
    events = [(t, r["index"]) for r in run["reports"] for t in r["starts"]]
    begin, end = run["start_at"], run["start_at"] + args.duration
    per_process = [len(r["starts"]) for r in run["reports"]]
    return {
        "measured": spread(events, args.window, begin, end, args.interval),
        "random": random_reference(per_process, args.window, begin, end, args.interval, args.trials, rng),
        "per_process": per_process,
        "flush_jitter": run["reports"][0]["flush_jitter"],
    }


# -- output ------------------------------------------------------------------


def label(run: dict[str, Any]) -> str:
    jitter = "flush_jitter=None (20 %)" if run["jitter"] is None else f"flush_jitter={run['jitter']:g}"
    return f"made in {run['made_in']}, {jitter}"


def print_table(runs: list[dict[str, Any]], args: argparse.Namespace) -> None:
    ms = round(args.window * 1000)
    print(
        f"\n{args.processes} processes, flush_interval={args.interval:g} s, {args.rate:g} items/s each, "
        f"{args.duration:g} s, context {args.context!r}, databuffer {databuffer.__version__}, "
        f"{'compiled' if USING_EXTENSION else 'pure-Python'} core"
    )
    print(
        f"distinct processes flushing within {ms} ms of a flush start (random: independent uniform starts)\n"
    )
    header = (
        f"| variant | flushes per process | max in {ms} ms | mean/interval | max, 2nd half "
        f"| random: max | random: mean/interval | random: max, 2nd half |"
    )
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for run in runs:
        a = run["analysis"]
        m, r = a["measured"], a["random"]
        counts = a["per_process"]
        flushes = f"{min(counts)}" if min(counts) == max(counts) else f"{min(counts)}-{max(counts)}"
        print(
            f"| {label(run)} | {flushes} | {m['max']} | {m['mean']:.2f} | {m['max_2nd_half']} "
            f"| {r['max']:.1f} | {r['mean']:.2f} | {r['max_2nd_half']:.1f} |"
        )


def plot(runs: list[dict[str, Any]], args: argparse.Namespace) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"--plot: matplotlib is not importable, {args.plot} not written", file=sys.stderr)
        return
    fig, axes = plt.subplots(len(runs), 1, figsize=(8, 1.3 + 1.25 * len(runs)), sharex=True, squeeze=False)
    for ax, run in zip(axes[:, 0], runs, strict=True):
        for r in run["reports"]:
            xs = [t - run["start_at"] for t in r["starts"]]
            ax.plot(xs, [r["index"]] * len(xs), "|", markersize=9, color="tab:blue")
        m = run["analysis"]["measured"]
        ax.set_title(
            f"{label(run)}: max {m['max']} processes within {round(args.window * 1000)} ms, "
            f"mean/interval {m['mean']:.2f}",
            fontsize=9,
        )
        ax.set_yticks(range(args.processes))
        ax.set_ylim(-0.7, args.processes - 0.3)
        ax.set_ylabel("process", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    axes[-1, 0].set_xlabel("seconds since the shared start (timed flush starts)", fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.plot)), exist_ok=True)
    fig.savefig(args.plot, dpi=90)
    print(f"\nplot written to {args.plot}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--interval", type=float, default=1.0, help="flush_interval, seconds (1.0)")
    parser.add_argument("--duration", type=float, default=12.0, help="seconds of inserting per variant (12)")
    parser.add_argument("--rate", type=float, default=200.0, help="items/s per process (200)")
    parser.add_argument("--window", type=float, default=0.1, help="window, seconds (0.1)")
    parser.add_argument(
        "--lead", type=float, default=1.5, help="seconds from starting the processes to the start"
    )
    parser.add_argument(
        "--context", choices=("fork", "spawn"), default="fork" if hasattr(os, "fork") else "spawn"
    )
    parser.add_argument("--made-in", choices=("child", "parent", "both"), default="both")
    parser.add_argument("--trials", type=int, default=200, help="draws of the random reference (200)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random reference (1)")
    parser.add_argument("--plot", metavar="FILE.png", help="draw the flush starts (needs matplotlib)")
    args = parser.parse_args(argv)

    made_ins = ["child", "parent"] if args.made_in == "both" else [args.made_in]
    if args.context == "spawn" and "parent" in made_ins:
        print("made in parent: needs the fork context, skipped", file=sys.stderr)
        made_ins.remove("parent")
    if not made_ins:
        return 2
    # fork() with the parent's buffer threads running (3.12+ warns); the buffer handles it.
    warnings.simplefilter("ignore", DeprecationWarning)
    ctx = multiprocessing.get_context(args.context)
    rng = random.Random(args.seed)
    runs = []
    t0 = time.monotonic()
    for made_in in made_ins:
        for jitter in (None, 0.0):
            run = run_variant(ctx, made_in, jitter, args)
            run["analysis"] = analyse(run, args, rng)
            runs.append(run)
            print(f"  {label(run)}: done ({time.monotonic() - t0:.0f} s)", file=sys.stderr)
    print_table(runs, args)
    if args.plot:
        plot(runs, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
