"""Build the compiled core; all metadata lives in pyproject.toml."""

import os
import platform
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

NO_EXTENSIONS = bool(os.environ.get("DATABUFFER_NO_EXTENSIONS")) or (
    platform.python_implementation() != "CPython"
)
SANITIZE = os.environ.get("DATABUFFER_SANITIZE", "")
if SANITIZE not in ("", "address"):
    sys.exit(f"DATABUFFER_SANITIZE={SANITIZE!r}: the only sanitizer supported is 'address'")
# A sanitized build is always a debug build: -O0 keeps ASan's stacks exact.
DEBUG_BUILD = bool(os.environ.get("DATABUFFER_DEBUG_BUILD")) or bool(SANITIZE)


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


class BuildExt(build_ext):
    """Adds the optimization, debug and sanitizer flags of the compiler in use."""

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


if NO_EXTENSIONS:
    print("*********************", file=sys.stderr)
    print("* Pure Python build *", file=sys.stderr)
    print("*********************", file=sys.stderr)
    # No extension: setuptools tags the wheel py3-none-any.
    ext_modules = []
else:
    from Cython.Build import cythonize

    if DEBUG_BUILD:
        undef_macros = ["NDEBUG"]
        if SANITIZE:
            print("* ASan debug build of databuffer._core (AddressSanitizer, asserts on) *", file=sys.stderr)
        else:
            print("* Debug build of databuffer._core (debug info, asserts on) *", file=sys.stderr)
    else:
        undef_macros = []
        print("* Optimized build of databuffer._core *", file=sys.stderr)
    ext_modules = cythonize(
        [
            Extension(
                "databuffer._core",
                ["src/_core/_core.pyx"],
                include_dirs=["src/_core"],
                undef_macros=undef_macros,
            )
        ],
        compiler_directives={"language_level": "3", "embedsignature": True},
        annotate=bool(os.environ.get("DATABUFFER_ANNOTATE")),
    )

setup(ext_modules=ext_modules, cmdclass={"build_ext": BuildExt})
