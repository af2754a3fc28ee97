"""How late is ``flush_timeout`` enforced?  A stand-alone script (not collected by pytest).

A ``Buffer`` with ``flush_timeout=0.25``, ``max_retries=0`` and a
``handle_flush`` that, for a random subset of batches, blocks on an Event
(released only at the end) and returns at once for the others.  Producer
threads insert steadily (a chunk of items, then a short sleep), so flushes
start at random phases relative to the buffer's timer thread.

Lateness of one timed-out call, with ``start`` = ``time.monotonic()`` at the
entry of the blocked ``handle_flush`` and ``deadline = start + flush_timeout``:

``detected``   the ``FlushTimeout`` is created (the timer thread gave up on
               the call; a subclass put in ``databuffer._threaded`` records
               the time, the library is not edited) minus ``deadline``
``telemetry``  ``monotonic_time`` of the ``("data_buffer", "flush",
               "exception")`` event with that ``FlushTimeout`` (the first
               moment the abandonment is observable through the public API;
               emitted by the replacement flusher) minus ``deadline``
``error_cb``   ``handle_flush_error`` is called with it, minus ``deadline``

Baselines, in the same process under the same load: at the entry of a
``handle_flush`` call that does *not* block and between producer chunks
(moments of the same kind, at random phases; not the blocked calls, so a
baseline does not wake at the very moment the timer does), an idle baseline
thread (one per partition, at least 2) is handed ``start`` and sleeps with
``threading.Event().wait(start + flush_timeout - now)``, like the engine's
timer thread:

``base wait``         it wakes, minus ``deadline``
``base wait+thread``  it then starts a new thread (like ``_abandon`` starts the
                      replacement flusher); that thread's first statement,
                      minus ``deadline``

For P > 1 the run also splits ``detected`` between the timeouts whose
deadline came while the timer was busy with another one (between that one's
``FlushTimeout`` and its telemetry event: the timer waits in
``Thread.start()`` for the replacement flusher) and the others.

Each configuration (core x partitions) runs in its own subprocess (the
pure-Python core with ``DATABUFFER_NO_EXTENSIONS=1``), which prints JSON; the
parent prints the table.  ``--model`` adds runs of a copy of the engine's
timer logic (``_ModelEngine`` below, not the library) with fixes switched on
one at a time, to show what each would change.

    python benchmarks/flush_timeout_lateness.py                 # both cores, partitions 1 and 4
    python benchmarks/flush_timeout_lateness.py --timeouts 100 --seconds 30 --cores compiled
    python benchmarks/flush_timeout_lateness.py --pause 0       # producers never sleep: GIL-bound load
    python benchmarks/flush_timeout_lateness.py --hogs 2        # plus 2 other processes spinning
    python benchmarks/flush_timeout_lateness.py --model         # also the instrumented copy, with fixes
"""

from __future__ import annotations

import _thread
import argparse
import itertools
import json
import math
import os
import queue
import random
import subprocess
import sys
import threading
import time
from typing import Any

_monotonic = time.monotonic

SERIES = ("detected", "telemetry", "error_cb", "base wait", "base wait+thread")


# -- statistics ------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (q in 0..100)."""
    if not sorted_values:
        return math.nan
    k = max(0, math.ceil(q / 100 * len(sorted_values)) - 1)
    return sorted_values[k]


def summary(values: list[float]) -> dict[str, float]:
    s = sorted(values)
    return {
        "n": len(s),
        "p50": percentile(s, 50),
        "p90": percentile(s, 90),
        "p99": percentile(s, 99),
        "max": s[-1] if s else math.nan,
    }


# -- load and baseline (shared by the library run and the model run) -------------


class Baseline:
    """Idle threads that each sleep until ``start + timeout`` and record how late they woke."""

    def __init__(self, threads: int, timeout: float) -> None:
        self.timeout = timeout
        self.idle = threading.Semaphore(threads)
        self.requests: queue.SimpleQueue[float | None] = queue.SimpleQueue()
        self.wait: list[float] = []
        self.wait_thread: list[float] = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for thread in self.threads:
            thread.start()

    def offer(self, start: float) -> None:
        """Called at the entry of a flush that does not block: start a baseline if a thread is idle."""
        if self.idle.acquire(blocking=False):
            self.requests.put(start)

    def _run(self) -> None:
        sleeper = threading.Event()  # never set: Event().wait(seconds)
        box: list[float] = []
        while (start := self.requests.get()) is not None:
            deadline = start + self.timeout
            remaining = deadline - _monotonic()
            if remaining > 0:
                sleeper.wait(remaining)
            woke = _monotonic()
            thread = threading.Thread(target=lambda: box.append(_monotonic()))
            thread.start()
            thread.join()
            self.wait.append(woke - deadline)
            self.wait_thread.append(box.pop() - deadline)
            self.idle.release()

    def stop(self) -> None:
        for _ in self.threads:
            self.requests.put(None)
        for thread in self.threads:
            thread.join()


class Producers:
    """Threads inserting ``chunk`` items, then sleeping ``pause`` seconds, until stopped.

    Inserts never wait for room (``timeout=0``): an item that finds its
    partition full (its flusher is stuck) is dropped and counted, so the
    load stays steady.
    """

    def __init__(
        self,
        insert: Any,
        full_error: type[BaseException],
        count: int,
        chunk: int,
        pause: float,
        baseline: Baseline,
    ) -> None:
        self.insert = insert
        self.baseline = baseline
        self.full_error = full_error
        self.chunk = chunk
        self.pause = pause
        self.ids = itertools.count()
        self.stopping = threading.Event()
        self.inserted = [0] * count
        self.dropped = [0] * count
        self.threads = [threading.Thread(target=self._run, args=(k,), daemon=True) for k in range(count)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def _run(self, k: int) -> None:
        insert, full_error, ids, chunk, pause = self.insert, self.full_error, self.ids, self.chunk, self.pause
        stopping, offer = self.stopping, self.baseline.offer
        inserted = dropped = 0
        while not stopping.is_set():
            offer(_monotonic())
            for _ in range(chunk):
                try:
                    insert(next(ids), 0)
                    inserted += 1
                except full_error:
                    dropped += 1
            if pause:
                time.sleep(pause)
        self.inserted[k] = inserted
        self.dropped[k] = dropped

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join()


class Run:
    """The callbacks and records of one run: which calls block, when they started, when they were reported."""

    def __init__(self, args: argparse.Namespace, timeout_type: type[BaseException]) -> None:
        self.args = args
        self.timeout_type = timeout_type
        self.release = threading.Event()
        self.done = threading.Event()
        self.rng = random.Random(args.seed)
        self.starts: dict[Any, float] = {}
        self.flushes = 0
        self.blocked = 0
        self.records: list[tuple[float, float | None, float | None, float]] = []
        self.other_errors: list[str] = []
        self.baseline = Baseline(max(2, args.partitions), args.flush_timeout)

    def handle_flush(self, batch: list[Any], opts: Any) -> None:
        start = _monotonic()
        self.flushes += 1
        if not self.release.is_set() and self.rng.random() < self.args.block:
            self.blocked += 1
            self.starts[batch[0]] = start
            self.release.wait()
            return
        if not self.done.is_set():
            self.baseline.offer(start)

    def handle_flush_error(self, batch: list[Any], opts: Any, error: BaseException) -> None:
        now = _monotonic()
        if not isinstance(error, self.timeout_type):
            self.other_errors.append(repr(error))
            return
        start = self.starts.pop(batch[0], None)
        if start is None:
            self.other_errors.append(f"FlushTimeout for a batch that did not block: {error}")
            return
        self.records.append((start, getattr(error, "created", None), getattr(error, "observed", None), now))
        if len(self.records) >= self.args.timeouts:
            self.done.set()

    def on_exception_event(self, event: Any, measurements: Any, metadata: Any, config: Any) -> None:
        reason = metadata.get("reason")
        if isinstance(reason, self.timeout_type):
            reason.observed = measurements["monotonic_time"] * 1e-9  # type: ignore[attr-defined]

    def result(self, extra: dict[str, Any]) -> dict[str, Any]:
        t = self.args.flush_timeout
        series: dict[str, list[float]] = {name: [] for name in SERIES}
        for start, created, observed, called in self.records:
            deadline = start + t
            if created is not None:
                series["detected"].append(created - deadline)
            if observed is not None:
                series["telemetry"].append(observed - deadline)
            series["error_cb"].append(called - deadline)
        # Timeouts whose deadline came while the timer was still busy with
        # another one (between that one's FlushTimeout and its report by the
        # replacement flusher, which the timer waits for in Thread.start):
        # their detection waited for that thread start.
        queued: list[float] = []
        alone: list[float] = []
        spans = [(created, observed) for _s, created, observed, _c in self.records if created and observed]
        for start, created, _observed, _called in self.records:
            if created is None:
                continue
            deadline = start + t
            behind = any(c < deadline < o and c != created for c, o in spans)
            (queued if behind else alone).append(created - deadline)
        series["base wait"] = list(self.baseline.wait)
        series["base wait+thread"] = list(self.baseline.wait_thread)
        return {
            "flushes": self.flushes,
            "blocked": self.blocked,
            "timeouts": len(self.records),
            "other_errors": self.other_errors[:5],
            "series": series,
            "detected_queued": summary(queued),
            "detected_alone": summary(alone),
            **extra,
        }


# -- the library run ---------------------------------------------------------


def run_library(args: argparse.Namespace) -> dict[str, Any]:
    import databuffer
    from databuffer import Buffer, BufferFull, FlushTimeout, telemetry

    # Record when each FlushTimeout is made (by the timer thread, in
    # _abandon), with a subclass put where the engine looks the name up.
    class StampedFlushTimeout(FlushTimeout):
        def __init__(self, *a: Any) -> None:
            self.created = _monotonic()
            super().__init__(*a)

    try:
        import databuffer._threaded as threaded_engine

        stamped = getattr(threaded_engine, "FlushTimeout", None) is FlushTimeout
        if stamped:
            threaded_engine.FlushTimeout = StampedFlushTimeout  # type: ignore[attr-defined]
    except ImportError:
        stamped = False

    run = Run(args, FlushTimeout)
    telemetry.attach("flush-timeout-lateness", telemetry.FLUSH_EXCEPTION, run.on_exception_event)
    buf = Buffer(
        handle_flush=run.handle_flush,
        handle_flush_error=run.handle_flush_error,
        name="lateness",
        partitions=args.partitions,
        max_size=args.max_size,
        flush_interval=args.flush_interval,
        flush_timeout=args.flush_timeout,
        max_retries=0,
    )
    producers = Producers(buf.insert, BufferFull, args.producers, args.chunk, args.pause, run.baseline)
    began = _monotonic()
    producers.start()
    run.done.wait(args.seconds)
    elapsed = _monotonic() - began
    run.done.set()
    producers.stop()
    run.release.set()
    buf.close(30)
    run.baseline.stop()
    telemetry.detach("flush-timeout-lateness")
    return run.result(
        {
            "subject": "databuffer",
            "using_extension": databuffer.USING_EXTENSION,
            "stamped": stamped,
            "elapsed": elapsed,
            "inserted": sum(producers.inserted),
            "dropped": sum(producers.dropped),
        }
    )


# -- an instrumented copy of the engine's timer logic (--model) ------------------


class _ModelWatch:
    __slots__ = ("claim", "deadline", "key")

    def __init__(self, key: Any, deadline: float) -> None:
        self.key = key
        self.deadline = deadline
        self.claim = threading.Lock()


class _ModelPart:
    def __init__(self) -> None:
        self.flight: _ModelWatch | None = None
        self.deadline = math.inf  # timed flushes are off in the model (flush_interval is long)
        self.queue: queue.SimpleQueue[list[Any]] = queue.SimpleQueue()


class _ModelEngine:
    """The timeout path of ``databuffer._threaded.ThreadEngine``, copied: the same timer loop.

    ``_timer_loop``, ``_call``, ``_abandon`` and ``_wake_timer_before`` as in
    the engine (sleeping on a ``threading.Condition``; the engine's
    ``Notifier`` behaves the same for this purpose); a flusher per partition
    that takes batches from a queue (the producers put them there, in
    batches of ``max_size``).  Fixes, one flag each:

    ``wake_on_flight``    ``_call`` wakes the timer when the watch's deadline
                          comes before the time the timer sleeps until
    ``report_in_timer``   the timer creates and reports the ``FlushTimeout``
                          (the time it is observable) before it starts the
                          replacement flusher; the thread start is off the path
    ``spare_thread``      a replacement flusher is started ahead of time, parked
                          on a lock; ``_abandon`` only releases it
    ``start_nowait``      ``_abandon`` starts the replacement with
                          ``_thread.start_new_thread``: the timer does not wait
                          for it to run (``Thread.start`` waits for ``_started``)

    Every timer round is recorded: when it meant to wake and when it did.
    """

    def __init__(self, run: Run, args: argparse.Namespace, fix: str) -> None:
        self.run = run
        self.timeout = args.flush_timeout
        self.fix = fix
        self.parts = [_ModelPart() for _ in range(args.partitions)]
        self.cond = threading.Condition(threading.Lock())
        self.wake_at = math.inf
        self.stopping = False
        # woke - planned wake, for the rounds that slept until a flight deadline
        self.oversleep: list[float] = []
        self.abandon_cost: list[float] = []  # time the timer spends in _abandon (starting the replacement)
        self.rr = itertools.cycle(self.parts)
        self.max_size = args.max_size
        self.pending: list[list[Any]] = [[] for _ in self.parts]
        self.pending_lock = threading.Lock()
        self.spares: list[tuple[threading.Lock, list[Any]] | None] = [None] * len(self.parts)
        for i, part in enumerate(self.parts):
            self._start_flusher(i, part, None)
        self.timer = threading.Thread(target=self._timer_loop, daemon=True)
        self.timer.start()

    # producers
    def insert(self, item: Any, timeout: float) -> None:
        part = next(self.rr)
        i = self.parts.index(part)
        with self.pending_lock:
            pending = self.pending[i]
            if len(pending) >= self.max_size:
                # A sealed batch waits for the flusher, as in the core: the partition is full.
                if not part.queue.empty():
                    raise _ModelFull
                self.pending[i] = []
                part.queue.put(pending)
                pending = self.pending[i]
            pending.append(item)

    # flushers
    def _start_flusher(self, i: int, part: _ModelPart, resume: Any) -> None:
        if self.fix == "spare_thread" and resume is not None:
            spare = self.spares[i]
            if spare is not None:
                gate, box = spare
                box.append(resume)
                self.spares[i] = None
                gate.release()
                return
        if self.fix == "start_nowait" and resume is not None:
            _thread.start_new_thread(self._flusher_main, (i, part, [resume]))
            return
        thread = threading.Thread(target=self._flusher_main, args=(i, part, [resume]), daemon=True)
        thread.start()

    def _park_spare(self, i: int, part: _ModelPart) -> None:
        gate = threading.Lock()
        gate.acquire()
        box: list[Any] = []

        def spare() -> None:
            gate.acquire()
            if box:
                self._flusher_main(i, part, box)

        self.spares[i] = (gate, box)
        threading.Thread(target=spare, daemon=True).start()

    def _flusher_main(self, i: int, part: _ModelPart, resumes: list[Any]) -> None:
        resume = resumes.pop()
        if resume is not None:
            batch, error = resume
            if error is not None:
                self._report(batch, error)
        if self.fix == "spare_thread":
            self._park_spare(i, part)
        while not self.stopping:
            try:
                batch = part.queue.get(timeout=0.5)
            except queue.Empty:
                continue
            if not self._call(part, batch):
                return

    def _call(self, part: _ModelPart, batch: list[Any]) -> bool:
        now = _monotonic()
        watch = _ModelWatch(batch, now + self.timeout)
        part.flight = watch
        if self.fix == "wake_on_flight" and watch.deadline < self.wake_at:
            with self.cond:
                self.cond.notify()
        self.run.handle_flush(batch, None)
        if not watch.claim.acquire(False):
            return False
        part.flight = None
        return True

    def _report(self, batch: list[Any], error: BaseException) -> None:
        if getattr(error, "observed", None) is None:
            error.observed = _monotonic()  # type: ignore[attr-defined]
        self.run.handle_flush_error(batch, None, error)

    # the timer
    def _timer_loop(self) -> None:
        cond = self.cond
        with cond:
            while not self.stopping:
                now = _monotonic()
                wake = now + self.timeout
                flight_wake = False
                overdue = []
                for part in self.parts:
                    wake = min(wake, part.deadline)
                    watch = part.flight
                    if watch is not None:
                        if watch.deadline <= now:
                            overdue.append((part, watch))
                        elif watch.deadline <= wake:
                            wake = watch.deadline
                            flight_wake = True
                if overdue:
                    cond.release()
                    try:
                        for part, watch in overdue:
                            self._abandon(part, watch)
                    finally:
                        cond.acquire()
                    continue
                self.wake_at = wake
                cond.wait(wake - now)
                self.wake_at = math.inf
                if flight_wake:
                    self.oversleep.append(_monotonic() - wake)

    def _abandon(self, part: _ModelPart, watch: _ModelWatch) -> None:
        if not watch.claim.acquire(False):
            return
        part.flight = None
        error = self.run.timeout_type("model: ran past flush_timeout")
        error.created = _monotonic()  # type: ignore[attr-defined]
        if self.fix == "report_in_timer":
            error.observed = _monotonic()  # type: ignore[attr-defined]
        i = self.parts.index(part)
        self._start_flusher(i, part, (watch.key, error))
        self.abandon_cost.append(_monotonic() - error.created)  # type: ignore[attr-defined]

    def close(self) -> None:
        self.stopping = True
        with self.cond:
            self.cond.notify()
        self.timer.join(5)
        for gate, _box in filter(None, self.spares):
            gate.release()


class _ModelTimeout(TimeoutError):
    pass


class _ModelFull(Exception):
    pass


def run_model(args: argparse.Namespace) -> dict[str, Any]:
    run = Run(args, _ModelTimeout)
    engine = _ModelEngine(run, args, args.fix)
    producers = Producers(engine.insert, _ModelFull, args.producers, args.chunk, args.pause, run.baseline)
    began = _monotonic()
    producers.start()
    run.done.wait(args.seconds)
    elapsed = _monotonic() - began
    run.done.set()
    producers.stop()
    run.release.set()
    engine.close()
    run.baseline.stop()
    over = sorted(engine.oversleep)
    return run.result(
        {
            "subject": f"model:{args.fix}",
            "using_extension": None,
            "stamped": True,
            "elapsed": elapsed,
            "inserted": sum(producers.inserted),
            "dropped": sum(producers.dropped),
            "timer_oversleep": summary(over),
            "abandon_cost": summary(engine.abandon_cost),
        }
    )


# -- the parent: one subprocess per configuration, then the table ------------------


def child_argv(args: argparse.Namespace, partitions: int, fix: str | None) -> list[str]:
    argv = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        "--partitions-one",
        str(partitions),
        "--timeouts",
        str(args.timeouts),
        "--seconds",
        str(args.seconds),
        "--producers",
        str(args.producers),
        "--chunk",
        str(args.chunk),
        "--pause",
        str(args.pause),
        "--max-size",
        str(args.max_size),
        "--block",
        str(args.block),
        "--flush-timeout",
        str(args.flush_timeout),
        "--flush-interval",
        str(args.flush_interval),
        "--switch-interval",
        str(args.switch_interval),
        "--seed",
        str(args.seed),
    ]
    if fix is not None:
        argv += ["--fix", fix]
    return argv


def run_child(argv: list[str], pure: bool, hogs: int) -> dict[str, Any]:
    env = dict(os.environ)
    env.pop("DATABUFFER_NO_EXTENSIONS", None)
    if pure:
        env["DATABUFFER_NO_EXTENSIONS"] = "1"
    # Other processes spinning on the CPUs (a noisier machine), for the run only.
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(hogs)]
    try:
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({proc.returncode}): {' '.join(argv)}\n{proc.stderr}")
    if proc.stderr.strip():
        print(proc.stderr.rstrip(), file=sys.stderr)
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def fmt_ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1e3:7.1f}"


def print_table(results: list[tuple[str, int, dict[str, Any]]], flush_timeout: float) -> None:
    print()
    print(f"flush_timeout lateness, ms after start + {flush_timeout}s (nearest-rank percentiles)")
    header = (
        f"{'subject':<22} {'P':>2} {'series':<17} {'n':>5} "
        f"{'p50':>7} {'p90':>7} {'p99':>7} {'max':>7}  {'p99/base':>8}"
    )
    print(header)
    print("-" * len(header))
    for label, partitions, res in results:
        stats = {name: summary(values) for name, values in res["series"].items()}
        base = stats["base wait+thread"]["p99"]
        for name in SERIES:
            s = stats[name]
            if not s["n"]:
                continue
            ratio = ""
            if name in ("detected", "telemetry", "error_cb") and base > 0:
                # against "base wait" for detection (a wake-up), "base wait+thread" for the rest
                ref = stats["base wait"]["p99"] if name == "detected" else base
                ratio = f"{s['p99'] / ref:8.1f}" if ref > 0 else ""
            print(
                f"{label:<22} {partitions:>2} {name:<17} {s['n']:>5} "
                f"{fmt_ms(s['p50'])} {fmt_ms(s['p90'])} {fmt_ms(s['p99'])} {fmt_ms(s['max'])}  {ratio:>8}"
            )
        extra = (
            f"   ({res['timeouts']} timeouts in {res['elapsed']:.1f}s, {res['flushes']} flushes, "
            f"{res['inserted']} items inserted, {res['dropped']} dropped on a full partition"
        )
        if "timer_oversleep" in res and res["timer_oversleep"]["n"]:
            o = res["timer_oversleep"]
            extra += (
                f"; timer woke after its planned flight wake by p50 {fmt_ms(o['p50']).strip()} "
                f"p99 {fmt_ms(o['p99']).strip()} max {fmt_ms(o['max']).strip()} ms"
            )
        if "abandon_cost" in res and res["abandon_cost"]["n"]:
            o = res["abandon_cost"]
            extra += (
                f"; _abandon took p50 {fmt_ms(o['p50']).strip()} p99 {fmt_ms(o['p99']).strip()} "
                f"max {fmt_ms(o['max']).strip()} ms"
            )
        q, a = res.get("detected_queued"), res.get("detected_alone")
        if q and a and q["n"]:
            extra += (
                f"; 'detected' of the {q['n']} whose deadline came while the timer was starting "
                f"another replacement: p50 {fmt_ms(q['p50']).strip()} p99 {fmt_ms(q['p99']).strip()}"
                f", of the other {a['n']}: p50 {fmt_ms(a['p50']).strip()} "
                f"p99 {fmt_ms(a['p99']).strip()} ms"
            )
        if res["other_errors"]:
            extra += f"; OTHER ERRORS: {res['other_errors']}"
        print(extra + ")")
    print(
        "p99/base: p99 over the baseline's p99 in the same process (detected: over 'base wait'; "
        "telemetry, error_cb: over 'base wait+thread')."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", default="compiled,pure", help="compiled,pure (default both)")
    parser.add_argument("--partitions", default="1,4", help="partition counts, one run each (default 1,4)")
    parser.add_argument("--timeouts", type=int, default=200, help="timed-out calls per run (default 200)")
    parser.add_argument("--seconds", type=float, default=55.0, help="at most this long per run (default 55)")
    parser.add_argument("--producers", type=int, default=2, help="producer threads (default 2)")
    parser.add_argument("--chunk", type=int, default=20, help="items each producer inserts between sleeps")
    parser.add_argument(
        "--pause", type=float, default=0.002, help="producers' sleep (s) between chunks; 0: none"
    )
    parser.add_argument("--max-size", type=int, default=200, help="max_size of the buffer (default 200)")
    parser.add_argument("--block", type=float, default=0.5, help="fraction of handle_flush calls that block")
    parser.add_argument("--flush-timeout", type=float, default=0.25)
    parser.add_argument("--flush-interval", type=float, default=10.0)
    parser.add_argument(
        "--switch-interval", type=float, default=0.0, help="sys.setswitchinterval (0: leave it)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--hogs", type=int, default=0, help="other processes spinning on the CPUs during each run"
    )
    parser.add_argument(
        "--model",
        action="store_true",
        help="also run the copy of the engine's timer logic: as is and with each fix",
    )
    parser.add_argument("--fixes", default="none,wake_on_flight,start_nowait,spare_thread,report_in_timer")
    # internal: one configuration in this process
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--partitions-one", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--fix", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        args.partitions = args.partitions_one
        if args.switch_interval:
            sys.setswitchinterval(args.switch_interval)
        res = run_model(args) if args.fix is not None else run_library(args)
        res["switch_interval"] = sys.getswitchinterval()
        print(json.dumps(res))
        return

    cores = [c.strip() for c in args.cores.split(",") if c.strip()]
    partitions = [int(p) for p in args.partitions.split(",")]
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, switch interval "
        f"{args.switch_interval or sys.getswitchinterval()}s; {args.producers} producers x "
        f"({args.chunk} items, sleep {args.pause}s), max_size={args.max_size}, "
        f"block fraction {args.block}, flush_timeout={args.flush_timeout}s, "
        f"flush_interval={args.flush_interval}s; {args.hogs} CPU-hog processes; "
        f"up to {args.timeouts} timeouts or {args.seconds}s per run",
        flush=True,
    )
    results: list[tuple[str, int, dict[str, Any]]] = []
    for core in cores:
        for p in partitions:
            res = run_child(child_argv(args, p, None), pure=core == "pure", hogs=args.hogs)
            wanted = core == "compiled"
            if res["using_extension"] != wanted:
                print(f"warning: asked for the {core} core, got using_extension={res['using_extension']}")
            label = f"databuffer {core}" + ("" if res["stamped"] else " (no 'detected')")
            results.append((label, p, res))
            done = f"{res['timeouts']} timeouts in {res['elapsed']:.1f}s"
            print(f"  done: {label} partitions={p}: {done}", flush=True)
    if args.model:
        for fix in [f.strip() for f in args.fixes.split(",") if f.strip()]:
            for p in partitions:
                res = run_child(child_argv(args, p, fix), pure=False, hogs=args.hogs)
                results.append((f"model {fix}", p, res))
                print(f"  done: model {fix} partitions={p}: {res['timeouts']} timeouts", flush=True)
    print_table(results, args.flush_timeout)


if __name__ == "__main__":
    main()
