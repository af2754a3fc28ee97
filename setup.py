"""Build the compiled core; all metadata lives in pyproject.toml."""

import os
import platform
import sys

from setuptools import Extension, setup

NO_EXTENSIONS = bool(os.environ.get("DATABUFFER_NO_EXTENSIONS")) or (
    platform.python_implementation() != "CPython"
)
SANITIZE = os.environ.get("DATABUFFER_SANITIZE", "")
if SANITIZE not in ("", "address"):
    sys.exit(f"DATABUFFER_SANITIZE={SANITIZE!r}: the only sanitizer supported is 'address'")
# A sanitized build is always a debug build: -O0 keeps ASan's stacks exact.
DEBUG_BUILD = bool(os.environ.get("DATABUFFER_DEBUG_BUILD")) or bool(SANITIZE)

if NO_EXTENSIONS:
    print("*********************", file=sys.stderr)
    print("* Pure Python build *", file=sys.stderr)
    print("*********************", file=sys.stderr)
    ext_modules = []
else:
    from Cython.Build import cythonize

    extra_link_args = []
    if DEBUG_BUILD:
        extra_compile_args = ["-O0", "-g3", "-UNDEBUG"]
        undef_macros = ["NDEBUG"]
        if SANITIZE:
            sanitize_args = [f"-fsanitize={SANITIZE}", "-fno-omit-frame-pointer"]
            extra_compile_args += sanitize_args
            extra_link_args += sanitize_args
            print("* ASan debug build of databuffer._core (-O0 -g3, -fsanitize=address) *", file=sys.stderr)
        else:
            print("* Debug build of databuffer._core (-O0 -g3, asserts on) *", file=sys.stderr)
    else:
        extra_compile_args = ["-O3"]
        undef_macros = []
        print("* Optimized build of databuffer._core *", file=sys.stderr)
    ext_modules = cythonize(
        [
            Extension(
                "databuffer._core",
                ["src/_core/_core.pyx"],
                include_dirs=["src/_core"],
                extra_compile_args=extra_compile_args,
                extra_link_args=extra_link_args,
                undef_macros=undef_macros,
            )
        ],
        compiler_directives={"language_level": "3", "embedsignature": True},
        annotate=bool(os.environ.get("DATABUFFER_ANNOTATE")),
    )

setup(ext_modules=ext_modules)
