"""docs/architecture.md stays true: every name of code it shows exists.

The page is a code map: it names functions, classes, attributes, locks and C
functions in backticks.  This test collects every backticked span that looks
like a name of code and resolves it against the project:

- ``Class.member``: a class of one of the project's modules (``MODULES``),
  with ``member`` as an attribute, a method, a slot, a class-level
  annotation, or an instance attribute assigned in the source of the class
  or of one of its project bases (``self.member = ...``); or a class or
  struct of the compiled core (``src/_core``: ``Core._store_many``,
  ``Part.lock``, ``db_event.mutex``);
- ``module.name``: a top-level name of a project module (also one defined
  under ``if TYPE_CHECKING:``, such as ``_contract._conforms``);
- ``instance.member`` for a few instance names the page uses (``ALIASES``);
- a bare name with an underscore or a capital letter (``insert_one``,
  ``Engine``, ``handle_flush``): a project module, a top-level name, a member
  of a project class, or a definition in the compiled core's sources;
- a file name (``_core.pyx``, ``contrib/otel.py``): the file exists.

A bare lowercase word without an underscore (``insert``, ``taken``) reads as
prose and is not checked.  Python's builtins and the short ``NOT_PROJECT``
allow-list (the standard library, CPython's C API) resolve as they are.
Anything else fails the test, named.
"""

from __future__ import annotations

import builtins
import importlib
import inspect
import re
from functools import cache
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "architecture.md"
SRC = ROOT / "src" / "databuffer"
CORE_SRC = ROOT / "src" / "_core"
if not PAGE.is_file() or not CORE_SRC.is_dir():
    # Run from a copy of tests/ alone (cibuildwheel, .ci/check-dist).
    pytest.skip("no docs/architecture.md or src/_core next to tests/", allow_module_level=True)

#: The project's modules, by the short name the page uses: import name and source file.
MODULES: dict[str, tuple[str, Path]] = {
    "databuffer": ("databuffer", SRC / "__init__.py"),
    **{
        name: (f"databuffer.{name}", SRC / f"{name}.py")
        for name in (
            "_contract",
            "_core_py",
            "_lifecycle",
            "_threaded",
            "_asyncio",
            "_front",
            "_buffer",
            "_async",
            "_options",
            "_types",
            "_registry",
            "_shutdown",
            "_instrument",
            "_compat",
            "_notify",
            "_errors",
            "_support",
            "telemetry",
        )
    },
    # Read as text if their imports (opentelemetry, sqlite3) are missing.
    "otel": ("databuffer.contrib.otel", SRC / "contrib" / "otel.py"),
    "demo": ("databuffer._cli.demo", SRC / "_cli" / "demo.py"),
}
#: The compiled core's sources, searched as text for C and Cython names.
COMPILED = ("_core.pyx", "_decl.pxd", "_part.h", "_event.h", "_atomic.h")
#: Instance names the page writes for "an object of this class".
ALIASES = {
    "core": ("Core",),
    "engine": ("Engine", "ThreadEngine", "AsyncEngine"),
    "part": ("PartState", "_Partition", "_LoopPartition", "Part"),
    "ring": ("_Ring",),
    "buf": ("Buffer", "AsyncBuffer"),
}
#: Names the page may show that are not the project's code.
NOT_PROJECT = frozenset(
    {
        "asyncio.Event",
        "asyncio.sleep",
        "asyncio.timeout",
        "concurrent.futures.Future",
        "loop.call_at",
        "loop.call_soon_threadsafe",
        "threading.Condition",
        "threading.Lock",
        "threading.RLock",
        "threading.local",
        "Thread.start",
        "time.sleep",
        "typing.Generic",
        "_is_protocol",  # set on the front class by typing.Generic
        "__del__",  # Python's data model
        "PyMutex",  # CPython's C API
    }
)
#: The page's sections, in order (each heading starts with one of these).
SECTIONS = (
    "The modules and what each owns",
    "The three objects of a buffer",
    "The life of a batch, for threads and for asyncio",
    "The core <-> engine contract",
    "Every lock, condition and event",
    "The lock order",
    "What never runs under a lock",
)
#: Kinds of resolved names that count as functions.
FUNCTION_KINDS = frozenset({"function", "c function"})

_SPAN = re.compile(r"`([^`\n]+)`")
_NAME = re.compile(r"^(?P<name>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)(?:\(.*\))?$")
_FILE = re.compile(r"^[\w./-]*\w\.(?:py|pyx|pxd|h|c|md|yml|toml)$")
_FENCE = re.compile(r"^\s*```")


# -- the page ------------------------------------------------------------------


def code_spans(text: str) -> list[str]:
    """The inline code spans of a Markdown text, fenced blocks left out."""
    spans: list[str] = []
    fenced = False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            spans.extend(match.group(1).strip() for match in _SPAN.finditer(line))
    return spans


def checked_names(text: str) -> tuple[set[str], set[str]]:
    """``(names, files)``: the spans that name code, and those that name files."""
    names: set[str] = set()
    files: set[str] = set()
    for span in code_spans(text):
        if _FILE.match(span):
            files.add(span)
            continue
        match = _NAME.match(span)
        if match is None:
            continue
        name = match["name"]
        if "." in name or "_" in name or name != name.lower():
            names.add(name)
    return names, files


# -- the project's Python modules ----------------------------------------------


@cache
def _module(short: str) -> ModuleType | None:
    try:
        return importlib.import_module(MODULES[short][0])
    except ImportError:
        return None


@cache
def _source(short: str) -> str:
    return MODULES[short][1].read_text(encoding="utf-8")


def _kind_of(value: object) -> str:
    if inspect.isclass(value):
        return "class"
    if inspect.ismodule(value):
        return "module"
    if callable(value) or isinstance(value, (property, staticmethod, classmethod)):
        return "function"
    return "attribute"


def _top_level(short: str, name: str) -> str | None:
    """The kind of the top-level name ``name`` of module ``short``, or None."""
    module = _module(short)
    if module is not None and name in vars(module):
        return _kind_of(vars(module)[name])
    source = _source(short)
    # Also what is defined under "if TYPE_CHECKING:" (one level in).
    if re.search(rf"^(?: {{4}})?(?:async\s+)?def\s+{re.escape(name)}\b", source, re.M):
        return "function"
    if re.search(rf"^(?: {{4}})?class\s+{re.escape(name)}\b", source, re.M):
        return "class"
    if re.search(rf"^{re.escape(name)}\s*(?::[^=\n]*)?=", source, re.M):
        return "attribute"
    return None


def _class_block(source: str, name: str) -> str | None:
    """The text of ``class name`` at the top level of ``source``."""
    match = re.search(rf"^class\s+{re.escape(name)}\b.*?(?=^\S|\Z)", source, re.M | re.S)
    return None if match is None else match.group(0)


def _member_in_text(block: str, member: str) -> str | None:
    m = re.escape(member)
    if re.search(rf"^\s+(?:async\s+)?def\s+{m}\s*\(", block, re.M):
        return "function"
    if re.search(rf"\bself\.{m}\s*(?::[^=\n]*)?=(?!=)", block):
        return "attribute"
    if re.search(rf"^ {{4}}{m}\s*:", block, re.M):  # a class-level annotation
        return "attribute"
    slots = re.search(r"__slots__\s*=\s*\((.*?)\)", block, re.S)
    if slots and re.search(rf"[\"']{m}[\"']", slots.group(1)):
        return "attribute"
    return None


@cache
def _class_source(cls: type) -> str:
    """The source of a project class ("" for the compiled core's)."""
    try:
        return inspect.getsource(cls)
    except (OSError, TypeError):
        return ""


@cache
def _python_classes(name: str) -> tuple[tuple[type | None, str], ...]:
    """Each project class called ``name``: the class (if importable) and its source text."""
    found: dict[object, tuple[type | None, str]] = {}
    for short in MODULES:
        module = _module(short)
        value = None if module is None else vars(module).get(name)
        if inspect.isclass(value) and value.__module__.startswith("databuffer"):
            found[value] = (value, _class_source(value))
        elif module is None:
            block = _class_block(_source(short), name)
            if block is not None:
                found[(short, name)] = (None, block)
    return tuple(found.values())


@cache
def _python_member(name: str, member: str) -> str | None:
    for cls, text in _python_classes(name):
        if cls is not None:
            for klass in cls.__mro__:
                if member in vars(klass):
                    return _kind_of(vars(klass)[member])
            for klass in cls.__mro__:
                if klass.__module__.startswith("databuffer"):
                    kind = _member_in_text(_class_source(klass), member)
                    if kind is not None:
                        return kind
        kind = _member_in_text(text, member) if text else None
        if kind is not None:
            return kind
    return None


@cache
def _project_classes() -> tuple[str, ...]:
    names = set()
    for short in MODULES:
        module = _module(short)
        if module is not None:
            names.update(
                n
                for n, v in vars(module).items()
                if inspect.isclass(v) and v.__module__.startswith("databuffer")
            )
        names.update(re.findall(r"^class\s+(\w+)", _source(short), re.M))
    return tuple(sorted(names))


# -- the compiled core's sources -----------------------------------------------


@cache
def _compiled(file: str) -> str:
    return (CORE_SRC / file).read_text(encoding="utf-8")


def _compiled_top_level(name: str) -> str | None:
    n = re.escape(name)
    pyx = _compiled("_core.pyx")
    if re.search(rf"^(?:cdef|cpdef|def)\b[^\n]*?\b{n}\s*\(", pyx, re.M):
        return "c function"
    if re.search(rf"^(?:cdef\s+)?class\s+{n}\b", pyx, re.M):
        return "class"
    if re.search(rf"^(?:cdef\s+[\w ]+\s+)?{n}\s*=|^\s+{n}\s*=\s*\d|\bcimport\b[^\n]*\b{n}\b", pyx, re.M):
        return "attribute"
    for file in COMPILED[1:]:
        text = _compiled(file)
        if re.search(
            rf"^{n}\s*\(|^static\s+inline\b[^\n(]*\b{n}\s*\(|^\s+[\w ]+\**\s*\b{n}\s*\(", text, re.M
        ):
            return "c function"
        if re.search(
            rf"^#define\s+{n}\b|}}\s*{n}\s*;|^typedef\b[^;]*\b{n}\s*;|^\s*ctypedef\s+struct\s+{n}\b"
            rf"|^static\b[^\n(]*\b{n}\b",
            text,
            re.M,
        ):
            return "attribute"
    return None


def _compiled_member(name: str, member: str) -> str | None:
    n, m = re.escape(name), re.escape(member)
    pyx = _compiled("_core.pyx")
    block = re.search(rf"^(?:cdef\s+)?class\s+{n}\b.*?(?=^\S|\Z)", pyx, re.M | re.S)
    if block is not None:
        text = block.group(0)
        if re.search(rf"^\s+(?:async\s+)?(?:def|cdef|cpdef)\b[^\n]*?\b{m}\s*\(", text, re.M):
            return "function"
        if re.search(rf"^ {{4}}cdef\b[^\n(]*\b{m}\b", text, re.M):
            return "attribute"
    for file in COMPILED[1:]:
        text = _compiled(file)
        structs = [
            match.group(1)
            for match in re.finditer(rf"typedef\s+struct\b[^{{}}]*{{([^{{}}]*)}}\s*{n}\s*;", text)
        ]
        pxd = re.search(rf"^([ \t]*)ctypedef\s+struct\s+{n}\s*:\n((?:\1[ \t]+\S.*\n)+)", text, re.M)
        if pxd is not None:
            structs.append(pxd.group(2))
        for body in structs:
            if re.search(rf"\b{m}\s*;|^\s*[\w ]+\**\s*\b{m}\s*$", body, re.M):
                return "attribute"
    return None


# -- resolving a name ----------------------------------------------------------


@cache
def resolve(name: str) -> str | None:
    """What ``name`` is (``"function"``, ``"class"``, ...), or None if the project has no such thing."""
    if name in NOT_PROJECT:
        return "not project"
    head, _, rest = name.partition(".")
    if not rest:
        return _resolve_bare(name)
    if head == "databuffer":
        return _resolve_import_path(name)
    if head in MODULES and "." not in rest:
        return _top_level(head, rest)
    if head == "_core" and "." not in rest:
        return _compiled_top_level(rest)
    if "." in rest:
        return None  # deeper paths: write them from a class or a module
    for cls in ALIASES.get(head, (head,)):
        kind = _python_member(cls, rest) or _compiled_member(cls, rest)
        if kind is not None:
            return kind
    return None


def _resolve_import_path(name: str) -> str | None:
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            value: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            if not hasattr(value, attr):
                return None
            value = getattr(value, attr)
        return _kind_of(value)
    return None


def _resolve_bare(name: str) -> str | None:
    if hasattr(builtins, name):
        return "not project"
    if name in MODULES or (SRC / f"{name}.py").is_file() or (SRC / name).is_dir():
        return "module"
    for short in MODULES:
        kind = _top_level(short, name)
        if kind is not None:
            return kind
    kind = _compiled_top_level(name)
    if kind is not None:
        return kind
    for cls in _project_classes():
        kind = _python_member(cls, name)
        if kind is not None:
            return kind
    for cls in ("Core", "BufferCore", "Part", "db_event"):
        kind = _compiled_member(cls, name)
        if kind is not None:
            return kind
    return None


def _file_exists(name: str) -> bool:
    return any(
        (base / name).is_file()
        for base in (ROOT, SRC, SRC / "contrib", SRC / "_cli", CORE_SRC, ROOT / "tests", ROOT / "docs")
    )


def unresolved(text: str) -> list[str]:
    """The names of code in ``text`` (Markdown) that name nothing in the project, sorted."""
    names, files = checked_names(text)
    missing = [name for name in names if resolve(name) is None]
    missing += [f"{name} (file)" for name in files if not _file_exists(name)]
    return sorted(missing)


def project_functions(text: str) -> set[str]:
    """The names in ``text`` that resolve to functions or methods of the project."""
    names, _files = checked_names(text)
    return {name for name in names if name not in NOT_PROJECT and resolve(name) in FUNCTION_KINDS}


# -- the tests -----------------------------------------------------------------


def _page() -> str:
    return PAGE.read_text(encoding="utf-8")


def test_every_name_of_code_on_the_page_exists() -> None:
    missing = unresolved(_page())
    assert not missing, (
        "docs/architecture.md names code that does not exist (rename it on the page, or, "
        f"if it is not the project's, add it to NOT_PROJECT): {', '.join(missing)}"
    )


def test_the_page_has_its_sections_in_order() -> None:
    headings = [line[3:].strip() for line in _page().splitlines() if line.startswith("## ")]
    positions = []
    for section in SECTIONS:
        found = [i for i, heading in enumerate(headings) if heading.lower().startswith(section.lower())]
        assert found, f"docs/architecture.md has no section {section!r}; its sections: {headings}"
        positions.append(found[0])
    assert positions == sorted(positions), f"the sections are out of order: {headings}"


def test_the_page_names_enough_of_the_code_to_be_a_map() -> None:
    functions = project_functions(_page())
    assert len(functions) >= 25, sorted(functions)
    # The names the map is for, one of each kind.
    names, files = checked_names(_page())
    for name in (
        "Engine.life",
        "ThreadEngine._flusher_main",
        "AsyncEngine._drive",
        "insert_one",
        "db_event_set",
        "Part.lock",
        "_Ring.lock",
        "ThreadEngine._timer_bell",
        "_contract._conforms",
    ):
        assert name in names, name
        assert resolve(name) is not None, name
    assert {"_core.pyx", "_part.h", "_event.h", "_atomic.h", "_decl.pxd"} <= files


def test_the_checker_reports_names_that_do_not_exist() -> None:
    text = (
        "The flusher runs `ThreadEngine._flusher_main` and then `ThreadEngine._no_such_thing`;\n"
        "the core calls `no_such_c_function`, holds `Part.no_such_field`, reads `_core_py.nowhere`\n"
        "and `_gone.py`; `time.sleep` is not ours, `insert` is prose, and\n"
        "```text\n`Fenced._ignored`\n```\n"
    )
    assert unresolved(text) == [
        "Part.no_such_field",
        "ThreadEngine._no_such_thing",
        "_core_py.nowhere",
        "_gone.py (file)",
        "no_such_c_function",
    ]
    assert project_functions(text) == {"ThreadEngine._flusher_main"}


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("ThreadEngine._timer_bell", "attribute"),  # assigned in ThreadEngine._start
        ("_Partition.lock", "attribute"),  # assigned in its base, PartState
        ("_Ring.lock", "attribute"),  # a slot
        ("CoreAPI.hooks", "attribute"),  # a class-level annotation
        ("Core._store_many", "function"),  # a cdef method of the compiled core
        ("db_event.mutex", "attribute"),  # a C struct's field
        ("db_event_set", "c function"),
        ("_contract._conforms", "function"),  # defined under TYPE_CHECKING
        ("core.hooks", "attribute"),  # an alias of Core
    ],
)
def test_the_checker_resolves_each_kind_of_name(name: str, kind: str) -> None:
    assert resolve(name) == kind
