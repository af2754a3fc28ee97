"""Celery's prefork pool: the tasks module of docs/processes.md stores every event once.

A real ``celery worker`` runs ``celery_app.py`` from the page with the
prefork pool, its two children replaced every 100 tasks, on kombu's
``filesystem://`` broker and Celery's ``file://`` result backend (folders in
the test's temporary directory, set by a test-only configuration module, so
the page's file stays as it is).  The test sends the tasks, waits until each
has a result, stops the worker with ``SIGTERM`` (a warm shutdown), and reads
the results and the table.  A child ends with ``os._exit()``, so what its
buffer holds reaches the table only through the page's
``worker_process_shutdown`` handler: with it every event is stored once; a
copy of the file without it loses events.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
from servers import (
    Process,
    child_env,
    need,
    postgres_dsn,
    reset_events,
    stored_ids,
    wait_until,
    write_docs_files,
)

TASKS = 2000
CHILDREN = 2
TASKS_PER_CHILD = 100  # --max-tasks-per-child: each child is replaced after that many tasks
# The line that connects the handler, removed in the copy without it.
HOOK = "@worker_process_shutdown.connect\n"
# In that copy no timed flush saves a child's events before it ends.
INTERVAL = re.compile(r"flush_interval=[\d.]+")
NO_TIMED_FLUSH = "flush_interval=3600.0"
CONFIG = "celery_test_config"


def _config(directory: Path) -> dict[str, object]:
    """The broker's folders and the result backend, under ``directory``."""
    folders = {name: directory / "broker" / name for name in ("queue", "control")}
    for folder in [*folders.values(), directory / "results"]:
        folder.mkdir(parents=True)
    return {
        "broker_transport_options": {
            "data_folder_in": str(folders["queue"]),
            "data_folder_out": str(folders["queue"]),
            "control_folder": str(folders["control"]),
            "polling_interval": 0.05,
        },
        "result_backend": (directory / "results").as_uri(),
    }


def _write_tasks_module(directory: Path, hook: bool) -> None:
    """The page's ``celery_app.py``; without ``hook``, a copy that does not connect its handler."""
    write_docs_files(directory, "celery_app.py")
    if not hook:
        path = directory / "celery_app.py"
        source = path.read_text(encoding="utf-8")
        assert source.count(HOOK) == 1, f"celery_app.py should connect its handler with {HOOK.strip()!r}"
        source, found = INTERVAL.subn(NO_TIMED_FLUSH, source.replace(HOOK, ""))
        assert found == 1, "celery_app.py should set the buffer's flush_interval once"
        path.write_text(source, encoding="utf-8")


def _results_written(directory: Path) -> int:
    return sum(1 for name in os.listdir(directory / "results") if name.startswith("celery-task-meta-"))


def _start_worker(directory: Path, env: dict[str, str]) -> Process:
    """``celery worker`` on ``celery_app.py`` in ``directory``."""
    argv = [sys.executable, "-m", "celery", "-A", "celery_app", "--config", CONFIG, "worker"]
    argv += ["--pool", "prefork", "--concurrency", str(CHILDREN)]
    argv += ["--max-tasks-per-child", str(TASKS_PER_CHILD)]
    argv += ["--without-mingle", "--without-gossip", "--loglevel", "INFO"]
    return Process(argv, directory, env, "worker.log")


@pytest.mark.parametrize("hook", [True, False], ids=["with-hook", "without-hook"])
def test_prefork_children_flush_at_exit(hook: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dsn = postgres_dsn()
    need("celery")
    from celery import Celery

    _write_tasks_module(tmp_path, hook)
    config = _config(tmp_path)
    (tmp_path / f"{CONFIG}.py").write_text(
        "".join(f"{key} = {value!r}\n" for key, value in config.items()), encoding="utf-8"
    )
    reset_events(dsn)
    env = child_env(dsn, tmp_path)
    env["CELERY_BROKER_URL"] = "filesystem://"  # read by celery_app.py; the folders are in CONFIG
    env.pop("CELERY_RESULT_BACKEND", None)
    # The client below: no broker or backend from this process's environment.
    for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "CELERY_CONFIG_MODULE"):
        monkeypatch.delenv(name, raising=False)
    worker = _start_worker(tmp_path, env)
    try:
        with Celery("client", broker="filesystem://", backend=str(config["result_backend"])) as client:
            client.conf.broker_transport_options = config["broker_transport_options"]
            sent = {client.send_task("celery_app.record", args=[i]).id: i for i in range(TASKS)}

            def all_ran() -> bool:
                worker.check_running()
                return _results_written(tmp_path) >= TASKS

            wait_until(all_ran, 80, f"the results of {TASKS} tasks", interval=0.1)
            # A warm shutdown: SIGTERM to the main process, which must then exit with status 0.
            status = worker.stop(30)
            assert status == 0, f"the worker exited with {status}:\n{worker.log(6000)}"
            succeeded = {i for task_id, i in sent.items() if client.AsyncResult(task_id).state == "SUCCESS"}
    finally:
        worker.kill()

    # The test's premise: children were replaced during the run.
    children = set(re.findall(r"ForkPoolWorker-(\d+)\]", worker.log()))
    assert len(children) >= TASKS // TASKS_PER_CHILD, f"only {len(children)} children ran the tasks"
    assert len(succeeded) == TASKS, f"{TASKS - len(succeeded)} tasks did not succeed:\n{worker.log(6000)}"
    stored = stored_ids(dsn)
    twice = sorted(i for i, n in stored.items() if n > 1)
    assert not twice, f"{len(twice)} events stored more than once, e.g. {twice[:10]}"
    unknown = sorted(set(stored) - succeeded)
    assert not unknown, f"{len(unknown)} events stored that were never sent, e.g. {unknown[:10]}"
    lost = sorted(succeeded - set(stored))
    print(f"{len(children)} children ran {TASKS} tasks; {len(stored)} events stored, {len(lost)} lost")
    if hook:
        assert not lost, f"{len(lost)} of {TASKS} events lost, e.g. {lost[:10]}:\n{worker.log(6000)}"
    else:
        assert lost, f"without the worker_process_shutdown handler no event was lost ({len(stored)} stored)"
