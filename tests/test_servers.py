"""Pre-fork servers, end to end: gunicorn and uvicorn workers writing to PostgreSQL.

Each test serves the app of docs/processes.md with a real server (4
workers), sends it ``DATABUFFER_SERVER_REQUESTS`` requests (20,000 by
default) from 8 client threads, each request one event with an id of its
own, then stops the server with SIGTERM and checks the table:

- after a graceful stop, with workers recycled or (gunicorn) reloaded
  during the run, and after gunicorn's quick stop, every acknowledged event
  is stored exactly once;
- with one worker killed by SIGKILL halfway, the killed worker lost at most
  what its buffer can hold (``partitions × (max_queued_batches + 2) ×
  (max_size + max_size_jitter)``, the bound docs/processes.md gives), and
  no other worker lost anything.

No event is stored twice and none that was not sent.  They run where
``DATABUFFER_TEST_POSTGRES`` names a PostgreSQL server and the servers are
installed (the ``servers`` extra); ``.ci/run`` runs them.
The figures of each run are printed (``pytest -rP`` shows them).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from servers import (
    Load,
    Server,
    check_exactly_once,
    child_env,
    docs_files,
    free_port,
    loss_bound,
    need,
    page,
    postgres_dsn,
    reset_events,
    stored_ids,
    wait_until,
    write_docs_files,
)

WORKERS = 4  # as gunicorn.conf.py and UVICORN's command say
REQUESTS = int(os.environ.get("DATABUFFER_SERVER_REQUESTS", "20000"))
LOAD_TIMEOUT = 240.0  # for the whole load: about 4 s here, 15 s with workers recycled
# What the log of a run must not hold: a traceback, a complaint of the buffer's.
_TROUBLE = re.compile(r"Traceback|buffer 'events'|databuffer")


@dataclass(frozen=True)
class Kind:
    """A server: the docs' files it serves, its command, how its buffer's ``info()`` is read."""

    files: tuple[str, ...]
    argv: Callable[[int], list[str]]  # port -> the command
    info: str  # a program printing the app's buffer's info() as JSON
    ready: str  # what the log says once for each worker ready to serve

    def bound(self, directory: Path, env: dict[str, str]) -> int:
        """The loss bound of the app's buffer, read in a process of its own."""
        out = subprocess.run(
            [sys.executable, "-c", self.info],
            cwd=directory,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return loss_bound(json.loads(out.stdout.splitlines()[-1]))


GUNICORN = Kind(
    files=("app.py", "gunicorn.conf.py"),
    argv=lambda port: [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        "gunicorn.conf.py",
        "--bind",
        f"127.0.0.1:{port}",
    ],
    info="import json, app; print(json.dumps(app.events.info())); app.events.close()",
    ready="Booting worker with pid",
)
UVICORN = Kind(
    files=("asgi_app.py",),
    argv=lambda port: (
        [sys.executable, "-m", "uvicorn", "asgi_app:app", "--workers", str(WORKERS)]
        + ["--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
        + ["--timeout-graceful-shutdown", "10"]  # as the page runs it
    ),
    info="""
import asyncio, json, asgi_app
async def main():
    async with asgi_app.lifespan(asgi_app.app) as state:
        print(json.dumps(state["events"].info()))
asyncio.run(main())
""",
    ready="Application startup complete.",
)


def serve(
    kind: Kind,
    args: list[str],
    tmp_path: Path,
    core: str = "c",
    midway: Callable[[Server, Load], int | None] | None = None,
    stop: int = signal.SIGTERM,
) -> dict[str, int]:
    """Serve the docs' app, load it, stop it (SIGTERM), check the table; the figures."""
    need("gunicorn", "uvicorn", "psycopg", "psycopg_pool")
    dsn = postgres_dsn()
    reset_events(dsn)
    write_docs_files(tmp_path, *kind.files)
    env = child_env(dsn, tmp_path)
    env.pop("DATABUFFER_NO_EXTENSIONS", None)
    if core == "py":
        env["DATABUFFER_NO_EXTENSIONS"] = "1"
    compiled = subprocess.run(
        [sys.executable, "-c", "import databuffer; print(databuffer.USING_EXTENSION)"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    if compiled != str(core == "c"):
        pytest.skip("the compiled core is not built")
    bound = kind.bound(tmp_path, env)
    port = free_port()
    srv = Server(kind.argv(port) + args, tmp_path, env, port)
    sent = range(1, REQUESTS + 1)
    load = Load(port, sent)
    try:
        srv.wait_ready(kind.ready, WORKERS)
        load.start()
        killed = None
        if midway is not None:
            wait_until(lambda: load.done() >= REQUESTS // 2, LOAD_TIMEOUT, "half the requests")
            killed = midway(srv, load)
        load.join(LOAD_TIMEOUT)
        before_stop = sum(stored_ids(dsn).values())
        started = time.monotonic()
        status = srv.stop(sig=stop)
        stop_seconds = time.monotonic() - started
    finally:
        load.stop()
        srv.kill()
    log = srv.log()
    assert status == 0, f"the server exited with {status}:\n{log[-4000:]}"
    trouble = [line for line in log.splitlines() if _TROUBLE.search(line)]
    assert not trouble, "the server's log reports trouble:\n" + "\n".join(trouble[:20])
    figures = check_exactly_once(dsn, load, sent, killed=killed, bound=bound)
    figures["stored_before_stop"] = before_stop
    figures["stop_ms"] = round(stop_seconds * 1000)
    print(json.dumps(figures))
    # Every request answered, but for those a killed or recycled worker
    # dropped mid-request (never acknowledged, never sent again).
    assert figures["acknowledged"] >= 0.99 * REQUESTS, figures
    # The stop had events to flush: the rings held the last second's events
    # (8 of them, each a multiple of max_size=50 items only by chance).
    assert before_stop < figures["stored"], figures
    return figures


def kill_a_worker(srv: Server, load: Load) -> int:
    """SIGKILL to a worker that has just answered; its pid."""
    pid = load.pids()[0]
    os.kill(pid, signal.SIGKILL)
    return pid


# -- gunicorn: sync workers, --preload ----------------------------------------


@pytest.mark.parametrize("core", ["c", "py"])
def test_gunicorn_graceful_stop_stores_every_event_once(core: str, tmp_path: Path) -> None:
    figures = serve(GUNICORN, ["--max-requests", "0"], tmp_path, core)
    assert figures["workers"] == WORKERS, figures


def test_gunicorn_without_preload(tmp_path: Path) -> None:
    # The buffer is then made in each worker, at import, after the fork.
    write_docs_files(tmp_path, "gunicorn.conf.py")
    conf = tmp_path / "gunicorn.conf.py"
    text = conf.read_text()
    assert "preload_app = True" in text
    conf.write_text(text.replace("preload_app = True", "preload_app = False"))
    kind = Kind(files=("app.py",), argv=GUNICORN.argv, info=GUNICORN.info, ready=GUNICORN.ready)
    figures = serve(kind, ["--max-requests", "0"], tmp_path)
    assert figures["workers"] == WORKERS, figures


def test_gunicorn_quick_stop_flushes_too(tmp_path: Path) -> None:
    # SIGINT (as SIGQUIT): the master stops at once, a worker raises SystemExit and exits.
    figures = serve(GUNICORN, ["--max-requests", "0"], tmp_path, stop=signal.SIGINT)
    assert figures["workers"] == WORKERS, figures


def test_gunicorn_reload_replaces_workers_without_loss(tmp_path: Path) -> None:
    def reload(srv: Server, load: Load) -> None:
        srv.proc.send_signal(signal.SIGHUP)  # new workers, the old ones stopped gracefully

    figures = serve(GUNICORN, ["--max-requests", "0"], tmp_path, midway=reload)
    assert figures["workers"] > WORKERS, f"the workers were not replaced: {figures}"


def test_gunicorn_gthread_workers(tmp_path: Path) -> None:
    args = ["--max-requests", "0", "--worker-class", "gthread", "--threads", "4"]
    figures = serve(GUNICORN, args, tmp_path)
    assert figures["workers"] == WORKERS, figures


def test_gunicorn_recycled_workers_flush_as_they_exit(tmp_path: Path) -> None:
    figures = serve(
        GUNICORN, ["--max-requests", str(REQUESTS // 12), "--max-requests-jitter", "100"], tmp_path
    )
    assert figures["workers"] > WORKERS + 2, f"the workers were not recycled: {figures}"


def test_gunicorn_sigkilled_worker_loses_at_most_its_buffer(tmp_path: Path) -> None:
    figures = serve(GUNICORN, ["--max-requests", "0"], tmp_path, midway=kill_a_worker)
    assert figures["workers"] >= WORKERS, figures


# -- uvicorn: --workers 4, an AsyncBuffer closed by the ASGI lifespan ----------


def test_uvicorn_graceful_stop_stores_every_event_once(tmp_path: Path) -> None:
    figures = serve(UVICORN, [], tmp_path)
    assert figures["workers"] == WORKERS, figures


def test_uvicorn_recycled_workers_flush_as_they_exit(tmp_path: Path) -> None:
    figures = serve(UVICORN, ["--limit-max-requests", str(REQUESTS // 12)], tmp_path)
    assert figures["workers"] > WORKERS + 2, f"the workers were not recycled: {figures}"


def test_uvicorn_sigkilled_worker_loses_at_most_its_buffer(tmp_path: Path) -> None:
    figures = serve(UVICORN, [], tmp_path, midway=kill_a_worker)
    assert figures["workers"] >= WORKERS, figures


# -- the page itself --------------------------------------------------------


def _gunicorn_config() -> dict[str, Any]:
    """The settings the page's gunicorn.conf.py makes (gunicorn runs it the same way)."""
    config: dict[str, Any] = {}
    exec(docs_files()["gunicorn.conf.py"], config)
    return config


def test_gunicorn_conf_runs_as_many_workers_as_the_tests_expect() -> None:
    assert _gunicorn_config()["workers"] == WORKERS


def test_every_file_of_the_page_is_served_by_a_test() -> None:
    assert set(docs_files()) == {*GUNICORN.files, *UVICORN.files, "celery_app.py"}  # tests/test_celery.py


def test_the_kubernetes_grace_period_covers_gunicorns_and_the_exit_flush() -> None:
    # The page's budget: the exit timeout < timeout / 2, and
    # the exit timeout < graceful_timeout < terminationGracePeriodSeconds.
    grace = re.search(r"terminationGracePeriodSeconds: (\d+)", page())
    assert grace is not None, "docs/processes.md gives no terminationGracePeriodSeconds"
    config = _gunicorn_config()
    exit_timeout = re.search(r"set_exit_timeout\(([\d.]+)\)", docs_files()["app.py"])
    assert exit_timeout is not None, "app.py does not set the exit timeout"
    seconds = float(exit_timeout[1])
    assert seconds < config["timeout"] / 2
    assert int(grace[1]) > config["graceful_timeout"] > seconds
