"""Build cbuffer's Cython extensions (configuration lives in pyproject.toml)."""
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

# CBUFFER_DEBUG=1: warnings on, optimisation off, asserts kept.
debug = os.environ.get("CBUFFER_DEBUG") == "1"
cflags = ["-std=gnu11", "-O0", "-g", "-Wall", "-Wextra"] if debug else ["-std=gnu11", "-O2"]

extensions = [
    Extension(f"cbuffer.{name}", [f"cbuffer/{name}.pyx"], include_dirs=["cbuffer"],
              extra_compile_args=cflags, libraries=["pthread"])
    for name in ("_buffer", "_ring", "_writer", "_testing")
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": 3, "embedsignature": True, "binding": False},
        annotate=False,
    ),
)
