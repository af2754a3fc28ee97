"""Build the compiled core; all metadata lives in pyproject.toml.

Which source ``databuffer._core`` is built from, and when Cython is needed,
is decided in ``_build/databuffer_sources.py`` (which the PEP 517 backend,
``_build/databuffer_build.py``, uses too): nothing with
``DATABUFFER_NO_EXTENSIONS=1``; the sdist's generated ``src/_core/_core.c``
when building from an sdist; ``src/_core/_core.pyx`` through Cython in a git
checkout.  The sdist command (``python -m build --sdist``) runs Cython and
ships the generated C.  A failed compile names DATABUFFER_NO_EXTENSIONS=1.
"""

import os
import shutil
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.sdist import sdist
from setuptools.errors import CCompilerError, ExecError, PlatformError, SetupError

ROOT = os.path.dirname(os.path.abspath(__file__))
# The PEP 517 backend puts _build on sys.path; `python setup.py ...` does not.
sys.path.insert(0, os.path.join(ROOT, "_build"))
import databuffer_sources as plan  # noqa: E402

NO_EXTENSIONS = plan.no_extensions()
SANITIZE = os.environ.get("DATABUFFER_SANITIZE", "")
if SANITIZE not in ("", "address"):
    sys.exit(f"DATABUFFER_SANITIZE={SANITIZE!r}: the only sanitizer supported is 'address'")
# A sanitized build is always a debug build: -O0 keeps ASan's stacks exact.
DEBUG_BUILD = bool(os.environ.get("DATABUFFER_DEBUG_BUILD")) or bool(SANITIZE)
CYTHON_DIRECTIVES = {"language_level": "3", "embedsignature": True}


def build_flags(compiler_type):
    """``(extra_compile_args, extra_link_args)`` for the core, by compiler.

    GCC and Clang (``unix``, ``mingw32``, ...) take the GCC flags; MSVC its
    own: /O2, or /Od /Zi for a debug build, /fsanitize=address (which cl
    passes on to the linker itself).
    """
    if compiler_type == "msvc":
        if not DEBUG_BUILD:
            return ["/O2"], []
        compile_args, link_args = ["/Od", "/Zi", "/UNDEBUG"], ["/DEBUG"]
        if SANITIZE:
            compile_args.append(f"/fsanitize={SANITIZE}")
        return compile_args, link_args
    if not DEBUG_BUILD:
        return ["-O3"], []
    compile_args, link_args = ["-O0", "-g3", "-UNDEBUG"], []
    if SANITIZE:
        sanitize_args = [f"-fsanitize={SANITIZE}", "-fno-omit-frame-pointer"]
        compile_args += sanitize_args
        link_args += sanitize_args
    return compile_args, link_args


def import_cythonize(why):
    try:
        from Cython.Build import cythonize
    except ImportError as exc:
        raise SetupError(
            f"{why} needs {plan.CYTHON_REQUIREMENT}, which is not installed ({exc}).\n"
            "pip installs it by itself unless --no-build-isolation is given: install it, or build"
            " from the sdist (it ships the generated C and needs no Cython), or set"
            " DATABUFFER_NO_EXTENSIONS=1 to build the pure-Python core without a compiler."
        ) from None
    return cythonize


def core_extension(source):
    return Extension(
        "databuffer._core",
        [source],
        include_dirs=[plan.CORE_DIR],
        undef_macros=["NDEBUG"] if DEBUG_BUILD else [],
    )


def no_compiler_message(exc):
    return (
        f"building databuffer's compiled core (databuffer._core) failed: {exc}\n"
        "It needs a working C compiler and the Python headers (on Debian and Ubuntu:"
        " build-essential and python3-dev; on Windows: the Microsoft C++ Build Tools).\n"
        "To build databuffer without compiling anything, with the pure-Python core (same API, slower),"
        " set DATABUFFER_NO_EXTENSIONS=1 and build again,"
        " e.g.: DATABUFFER_NO_EXTENSIONS=1 pip install databuffer"
    )


class BuildExt(build_ext):
    """Picks the core's source, adds the compiler flags, names the way out of a failed compile."""

    def run(self):
        for ext in self.extensions:
            ext.sources = self.core_sources(ext)
        try:
            super().run()
        except (CCompilerError, ExecError, PlatformError) as exc:
            # No compiler, a failing one, no Python.h, no MSVC: say how to
            # build the pure-Python core instead (never fall back silently:
            # who asked for the compiled core must know they did not get it).
            raise type(exc)(no_compiler_message(exc)) from exc

    def core_sources(self, ext):
        """The C sources of the core: the sdist's shipped C, or Cython's output for the .pyx."""
        root = Path(ROOT)
        shipped = plan.shipped_c(root)
        if shipped is not None:
            print(f"* databuffer._core from the sdist's {plan.GENERATED_C} (no Cython) *", file=sys.stderr)
            return [plan.GENERATED_C]
        why = "building databuffer._core from src/_core/_core.pyx"
        if plan.in_sdist(root):
            why += " (this sdist's generated C is missing or does not match its .pyx/.pxd)"
        cythonize = import_cythonize(why)
        print(f"* databuffer._core from {plan.PYX} through Cython *", file=sys.stderr)
        [cythonized] = cythonize(
            [core_extension(plan.PYX)],
            compiler_directives=CYTHON_DIRECTIVES,
            annotate=bool(os.environ.get("DATABUFFER_ANNOTATE")),
            # In an sdist, a .c that is there but does not match is stale
            # whatever its time stamp says.
            force=plan.in_sdist(root),
        )
        return cythonized.sources

    def build_extensions(self):
        compiler_type = self.compiler.compiler_type
        compile_args, link_args = build_flags(compiler_type)
        print(
            f"* databuffer._core with the {compiler_type} compiler: compile {' '.join(compile_args)},"
            f" link {' '.join(link_args) or '-'} *",
            file=sys.stderr,
        )
        for ext in self.extensions:
            ext.extra_compile_args = [*compile_args, *ext.extra_compile_args]
            ext.extra_link_args = [*link_args, *ext.extra_link_args]
        super().build_extensions()


class Sdist(sdist):
    """Ships the C that Cython generates from the .pyx, so that building from the sdist needs no Cython."""

    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, files)
        target = os.path.join(base_dir, plan.GENERATED_C)
        shipped = plan.shipped_c(Path(ROOT))
        if shipped is not None:
            # An sdist made from an sdist: its C still matches its sources.
            print(f"* copying the generated {plan.GENERATED_C} *", file=sys.stderr)
            shutil.copyfile(shipped, target)
            return
        # MANIFEST.in leaves every .c out; generate the C afresh inside the
        # release tree (never the checkout's leftover src/_core/_core.c),
        # from there, so that it names its sources by relative paths.
        cythonize = import_cythonize("making the sdist (it ships the C generated from src/_core/_core.pyx)")
        print(f"* generating {plan.GENERATED_C} for the sdist with Cython *", file=sys.stderr)
        cwd = os.getcwd()
        os.chdir(base_dir)
        try:
            cythonize(
                [Extension("databuffer._core", [plan.PYX], include_dirs=[plan.CORE_DIR])],
                compiler_directives=CYTHON_DIRECTIVES,
                force=True,
            )
            digest = plan.core_sources_digest(Path("."))
            with open(plan.GENERATED_C, "a", encoding="ascii") as c_file:
                c_file.write(plan.stamp(digest))
        finally:
            os.chdir(cwd)


if NO_EXTENSIONS:
    print("*********************", file=sys.stderr)
    print("* Pure Python build *", file=sys.stderr)
    print("*********************", file=sys.stderr)
    # No extension: setuptools tags the wheel py3-none-any.
    ext_modules = []
else:
    if DEBUG_BUILD:
        if SANITIZE:
            print("* ASan debug build of databuffer._core (AddressSanitizer, asserts on) *", file=sys.stderr)
        else:
            print("* Debug build of databuffer._core (debug info, asserts on) *", file=sys.stderr)
    else:
        print("* Optimized build of databuffer._core *", file=sys.stderr)
    # The sources are chosen when build_ext runs (BuildExt.core_sources):
    # Cython is imported only by a build that compiles the .pyx.
    ext_modules = [core_extension(plan.PYX)]

setup(ext_modules=ext_modules, cmdclass={"build_ext": BuildExt, "sdist": Sdist})
