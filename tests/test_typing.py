"""The typed API as a user's type checker sees it: mypy --strict on a small program.

Each line of ``PROGRAM`` that ends in ``# reveal: T`` must make mypy reveal
exactly the type T; each that ends in ``# error: text`` must be an error whose
message contains text; every other line must be clean.  mypy checks the
installed package, so this also proves that ``py.typed`` ships.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("mypy")

PROGRAM = textwrap.dedent(
    """
    from dataclasses import dataclass

    import asyncio

    from databuffer import AsyncBuffer, Buffer, BufferFull, FlushOpts, telemetry


    @dataclass
    class Event:
        name: str


    class EventBuffer(Buffer[Event]):
        def handle_flush(self, batch: list[Event], opts: FlushOpts) -> None:
            reveal_type(batch)  # reveal: builtins.list[prog.Event]
            reveal_type(opts.attempt)  # reveal: builtins.int
            reveal_type(opts.trigger)  # reveal: builtins.str


    buf = EventBuffer(max_size=10, partitions=2, name="events")
    buf.insert(Event("a"))
    buf.insert(Event("a"), timeout=0.5)
    buf.insert_batch([Event("b"), Event("c")])
    buf.insert_batch(Event(n) for n in "de")
    buf.insert("not an event")  # error: Argument 1 to "insert" of "Buffer" has incompatible type "str"
    buf.insert_batch([1])  # error: List item 0 has incompatible type "int"; expected "Event"
    buf.insert(Event("a"), timeout="1")  # error: Argument "timeout" to "insert"
    reveal_type(buf.dump())  # reveal: builtins.list[prog.Event]
    reveal_type(buf.size())  # reveal: builtins.int
    reveal_type(buf.stats()["inserted"])  # reveal: builtins.int
    reveal_type(buf.stats()["closed"])  # reveal: builtins.bool
    reveal_type(buf.info()[0]["flush_interval"])  # reveal: builtins.float
    buf.stats()["no_such_key"]  # error: TypedDict "BufferStats" has no key "no_such_key"
    reveal_type(buf.sync_flush(timeout=1.0))  # reveal: builtins.list[Any]
    reveal_type(buf.name)  # reveal: builtins.str
    buf.close()
    Buffer(max_size=0.5)  # error: Argument "max_size" to "Buffer" has incompatible type "float"

    with EventBuffer() as inside:
        reveal_type(inside)  # reveal: prog.EventBuffer


    def write_ints(batch: list[int], opts: FlushOpts) -> int:
        return len(batch)


    inferred = Buffer(handle_flush=write_ints)
    reveal_type(inferred)  # reveal: databuffer._buffer.Buffer[builtins.int]
    inferred.insert(1)
    inferred.insert("1")  # error: Argument 1 to "insert" of "Buffer" has incompatible type "str"

    explicit = Buffer[int](handle_flush=write_ints, max_retries=2)
    Buffer(handle_flush=write_ints, retry_on=(ConnectionError, TimeoutError), flush_jitter=None)
    Buffer(handle_flush=write_ints, max_retries=2, retry_on=lambda error: isinstance(error, OSError))
    Buffer(handle_flush=write_ints, retry_on="ConnectionError")  # error: Argument "retry_on" to "Buffer" has
    reveal_type(explicit.dump())  # reveal: builtins.list[builtins.int]
    Buffer[str](handle_flush=write_ints)  # error: Argument "handle_flush" to "Buffer" has incompatible type

    try:
        explicit.insert_batch(range(3))
    except BufferFull as exc:
        reveal_type(exc.stored)  # reveal: builtins.int


    def on_flush(event: tuple[str, ...], measurements: object, metadata: object, config: object) -> None:
        pass


    telemetry.attach("typed", telemetry.FLUSH_STOP, on_flush, None)


    class AsyncEventBuffer(AsyncBuffer[Event]):
        async def handle_flush(self, batch: list[Event], opts: FlushOpts) -> None:
            reveal_type(batch)  # reveal: builtins.list[prog.Event]
            await asyncio.sleep(0)

        async def handle_flush_error(self, batch: list[Event], opts: FlushOpts, error: BaseException) -> None:
            await asyncio.sleep(0)


    async def write_strs(batch: list[str], opts: FlushOpts) -> int:
        return len(batch)


    async def use_async() -> None:
        async with AsyncEventBuffer(max_size=10, flush_timeout=5.0) as abuf:
            reveal_type(abuf)  # reveal: prog.AsyncEventBuffer
            abuf.insert(Event("a"))
            abuf.insert_batch([Event("b")])
            abuf.insert(Event("a"), timeout=1.0)  # error: Unexpected keyword argument "timeout" for "insert"
            abuf.insert(1)  # error: Argument 1 to "insert" of "AsyncBuffer" has incompatible type "int"
            await abuf.ainsert(Event("c"), timeout=0.5)
            await abuf.ainsert_batch([Event("d")])
            await abuf.ainsert("e")  # error: Argument 1 to "ainsert" of "AsyncBufferMethods" has
            await abuf.flush()
            reveal_type(await abuf.sync_flush())  # reveal: builtins.list[Any]
            reveal_type(abuf.stats()["flushed"])  # reveal: builtins.int
        await abuf.aclose(timeout=1.0)
        strs = AsyncBuffer(handle_flush=write_strs)
        reveal_type(strs)  # reveal: databuffer._async.AsyncBuffer[builtins.str]
        reveal_type(await strs.start())  # reveal: databuffer._async.AsyncBuffer[builtins.str]
        AsyncBuffer(handle_flush=write_ints)  # error: Argument "handle_flush" to "AsyncBuffer" has
    """
)

_EXPECT = re.compile(r"#\s*(reveal|error):\s*(.+?)\s*$")
_REPORT = re.compile(r"^prog\.py:(\d+): (note|error): (.*)$")
# Some mypy releases follow an error about a call with a note in the package
# (".../databuffer/_async.py:N: note: "insert" of "AsyncBuffer" defined here").
_DEFINED_HERE = re.compile(r"^\S+:\d+: note: .* defined here$")


def _plain(type_text: str) -> str:
    return type_text.replace("builtins.", "")


def test_mypy_strict_on_a_user_program(tmp_path: Path) -> None:
    (tmp_path / "prog.py").write_text(PROGRAM)
    expected: dict[int, tuple[str, str]] = {}
    for lineno, line in enumerate(PROGRAM.splitlines(), start=1):
        match = _EXPECT.search(line)
        if match:
            expected[lineno] = (match[1], match[2])
    assert len(expected) > 20

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-error-summary",
            "--show-error-codes",
            "--hide-error-context",
            "--no-pretty",
            "--cache-dir",
            str(tmp_path / ".mypy_cache"),
            "prog.py",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    got: dict[int, list[tuple[str, str]]] = {}
    for line in proc.stdout.splitlines():
        if _DEFINED_HERE.match(line):
            continue  # an error's pointer to the definition (older mypy releases)
        match = _REPORT.match(line)
        assert match, f"unexpected mypy output: {line!r}\n{proc.stdout}"
        lineno, kind, message = int(match[1]), match[2], match[3]
        if kind == "note" and not message.startswith("Revealed type is"):
            continue  # the explanation that follows an error
        got.setdefault(lineno, []).append(("reveal" if kind == "note" else "error", message))

    problems = []
    for lineno, (kind, text) in expected.items():
        reports = got.pop(lineno, [])
        if kind == "reveal":
            # mypy releases differ in spelling builtins.int or int.
            want = f'Revealed type is "{_plain(text)}"'
            ok = [("reveal", want)] == [(k, _plain(m)) for k, m in reports]
        else:
            ok = len(reports) == 1 and reports[0][0] == "error" and text in reports[0][1]
        if not ok:
            problems.append(f"line {lineno}: expected {kind} {text!r}, mypy said {reports}")
    for lineno, reports in got.items():
        problems.append(f"line {lineno}: unexpected {reports}")
    assert not problems, "\n".join(problems) + "\n\nsource:\n" + PROGRAM
