"""Cost of ``Buffer.insert`` beside ``collections.deque.append``, same process.

Both are called as bound methods held in a local, in blocks of BLOCK calls,
interleaved, many times; this machine is shared and noisy, so each figure is
the minimum over the blocks and the report is a ratio.

Two figures for the buffer (``max_size=1000, partitions=4``, a counting
``handle_flush``, buffer running):

* call cost: the best block, i.e. an insert that only stores the item;
* amortized: total time of all blocks over all calls, i.e. including the
  share of sealing batches, waking flushers and waiting for them under the
  GIL (the deque baseline is amortized the same way).

Run: ``python benchmarks/insert_vs_deque.py`` (``--py`` adds the pure-Python
core).
"""

from __future__ import annotations

import argparse
import collections
import time

from databuffer import USING_EXTENSION, Buffer

BLOCK = 1000


def _blocks(fn, rounds: int) -> tuple[float, float]:
    """(best block, total) in seconds for ``rounds`` blocks of BLOCK calls."""
    perf = time.perf_counter
    best = float("inf")
    total = 0.0
    items = range(BLOCK)
    # One small object, inserted again and again: the figure is the cost of
    # the call, not of allocating and freeing items.
    item = ("tick", 1)
    for _ in range(rounds):
        t0 = perf()
        for _ in items:
            fn(item)
        dt = perf() - t0
        total += dt
        best = min(best, dt)
    return best, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000, help="blocks per measurement")
    parser.add_argument("--repeat", type=int, default=5, help="interleaved repetitions")
    parser.add_argument("--py", action="store_true", help="also measure the pure-Python core")
    args = parser.parse_args()

    flushed = [0]

    def count(batch, opts):
        flushed[0] += len(batch)

    classes = [("compiled" if USING_EXTENSION else "pure-Python", Buffer)]
    if args.py and USING_EXTENSION:
        from databuffer import _buffer, _core_py

        class PyBuffer(_buffer._BufferLayer, _core_py.BufferCore):
            pass

        classes.append(("pure-Python", PyBuffer))

    results: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
    for _ in range(args.repeat):
        d = collections.deque()
        results["deque.append"].append(_blocks(d.append, args.rounds))
        d.clear()
        for label, cls in classes:
            buf = cls(handle_flush=count, max_size=1000, partitions=4, flush_interval=60.0)
            results[label].append(_blocks(buf.insert, args.rounds))
            buf.close()

    calls = args.rounds * BLOCK
    base_best = min(b for b, _ in results["deque.append"]) / BLOCK
    base_amort = min(t for _, t in results["deque.append"]) / calls
    print(f"{'':<14} {'call ns':>9} {'ratio':>7} {'amortized ns':>13} {'ratio':>7}")
    for label, runs in results.items():
        best = min(b for b, _ in runs) / BLOCK
        amort = min(t for _, t in runs) / calls
        print(
            f"{label:<14} {best * 1e9:>9.1f} {best / base_best:>6.2f}x "
            f"{amort * 1e9:>13.1f} {amort / base_amort:>6.2f}x"
        )


if __name__ == "__main__":
    main()
