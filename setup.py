"""Build packetcore: the Cython engine ``packetcore.engine._engine`` inside the Python package.

Environment switches (read at build time):

* ``PACKETCORE_NO_EXTENSIONS=1`` builds the pure-Python package on purpose: no compiler
  is needed and ``packetcore.engine._pure`` is the only engine.  Without it a failed compile
  fails the build; there is no silent fallback.
* ``PACKETCORE_DEBUG=1`` compiles with line tracing, assertions and an annotated HTML
  report beside each ``.pyx`` (for coverage and profiling, never for benchmarks).
"""

import os

from setuptools import setup
from setuptools.command.build_py import build_py as _build_py

NO_EXTENSIONS = os.environ.get("PACKETCORE_NO_EXTENSIONS", "") not in ("", "0")
DEBUG = os.environ.get("PACKETCORE_DEBUG", "") not in ("", "0")


def engine_extensions():
    """Return the Cython engine's extension modules, cythonized."""
    import numpy
    from Cython.Build import cythonize
    from setuptools import Extension

    macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
    compile_args = ["-O3"]
    directives = {
        "language_level": "3",
        "boundscheck": False,
        "wraparound": False,
        "cdivision": True,
        "initializedcheck": False,
        "embedsignature": True,
    }
    if DEBUG:
        macros += [("CYTHON_TRACE_NOGIL", "1"), ("DEBUG", "1")]
        compile_args = ["-O0", "-g", "-UNDEBUG"]
        directives.update(linetrace=True, boundscheck=True, wraparound=True)

    engine = Extension(
        "packetcore.engine._engine",
        ["src/packetcore/engine/_engine.pyx"],
        include_dirs=[numpy.get_include(), "src/packetcore/engine"],
        define_macros=macros,
        extra_compile_args=compile_args,
    )
    return cythonize(
        [engine],
        include_path=["src"],
        compiler_directives=directives,
        annotate=DEBUG,
    )


class BuildPyWithMarker(_build_py):
    """Record in the package whether this build has the compiled engine."""

    def run(self):
        super().run()
        marker = os.path.join(self.build_lib, "packetcore", "_build.py")
        with open(marker, "w", encoding="ascii") as file:
            file.write(
                '"""Written by setup.py: how this copy of packetcore was built."""\n\n'
                f"COMPILED_ENGINE = {not NO_EXTENSIONS}\n"
            )


setup(
    ext_modules=[] if NO_EXTENSIONS else engine_extensions(),
    cmdclass={"build_py": BuildPyWithMarker},
)
