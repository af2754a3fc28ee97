"""The flusher's own cost per batch, ``handle_flush`` excluded (a measurement, not a pytest-benchmark timing).

Runs ``databuffer._cli.bench.bench_flusher`` (the code of ``python -m
databuffer bench``'s flusher rows) for ``FLUSHER_CYCLES`` cycles per
subject, interleaved.  A cycle: the producer hands over one batch of 1000
(``insert_batch``, one partition, ``max_size=1000``), whose
``handle_flush`` call is held at a gate until the producer has queued all
that fits behind it (``max_queued_batches`` sealed batches and a full
ring), then the held call returns and the flusher takes the queued batches
one after the other.  ``handle_flush`` reads a clock at its entry and its
exit; the time from one call's exit to the next call's entry is the
flusher's own work for a batch that was already waiting:

- ``Buffer``: the flusher thread's CPU time (``time.thread_time``), beside
  ``SimpleQueueBatcher``'s consumer thread measured the same way (1000
  ``get`` + ``append`` per batch), with as many batches queued;
- ``AsyncBuffer`` (same options, ``async def`` sink): wall time, the event
  loop running nothing else, beside the ``Buffer`` figures.

Each for ``max_queued_batches=0`` and the default (the default alone when
the build has no such option).  Only correctness is asserted (every batch
handed over was flushed, whole).
"""

from __future__ import annotations

import pytest
from _bench import FLUSHER_CYCLES, QUEUE_CONFIGS, QUEUE_NOTE, SUBJECT, SUBJECT_LABEL, TIMEOUT, Results, Row

from databuffer._cli.bench import bench_flusher, stamp_overhead

pytestmark = pytest.mark.timeout(TIMEOUT)

CPU_TITLE = "flusher per batch, handle_flush excluded: Buffer flusher thread CPU, 1 partition, max_size=1000"
WALL_TITLE = "flusher per batch, handle_flush excluded: AsyncBuffer, wall time, loop otherwise idle"


def test_flusher_per_batch(results: Results) -> None:
    costs, problems = bench_flusher(FLUSHER_CYCLES, QUEUE_CONFIGS, buffer_class=SUBJECT)
    assert problems == []
    overhead = stamp_overhead()
    cpu = results.group(CPU_TITLE, kind="per-batch")
    wall = results.group(WALL_TITLE, kind="per-batch")
    notes = [
        f"{SUBJECT_LABEL}; {FLUSHER_CYCLES} cycles per subject, interleaved; the gaps from a call's exit "
        "to the next call's entry, batches waiting",
        f"stamping (two clock reads) adds {overhead:.2f} us to each gap; {QUEUE_NOTE}",
    ]
    cpu.notes += notes
    wall.notes += notes
    for name, cost in costs.items():
        assert cost.samples > 0, name
        row = Row(name, "baseline", cost.min_us * 1e3, cost.median_us * 1e3, {"samples": cost.samples})
        if name.startswith("AsyncBuffer"):
            row.role = "subject"
            wall.rows.append(row)
        else:
            if name.startswith("Buffer"):
                row.role = "subject"
                # The threaded flusher is also the baseline of the AsyncBuffer table.
                wall.rows.append(Row(row.label + " (thread CPU)", "baseline", row.min_ns, row.median_ns))
            cpu.rows.append(row)
