"""Build cbuffer's Cython extensions (configuration lives in pyproject.toml)."""
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

# CBUFFER_DEBUG=1: warnings on, optimisation off, asserts kept.
debug = os.environ.get("CBUFFER_DEBUG") == "1"
cflags = ["-std=gnu11", "-O0", "-g", "-Wall", "-Wextra"] if debug else ["-std=gnu11", "-O2"]
# CBUFFER_SANITIZE=1: AddressSanitizer + UndefinedBehaviorSanitizer (see .ci/sanitize).
sanitize = (["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g", "-O1"]
            if os.environ.get("CBUFFER_SANITIZE") == "1" else [])

extensions = [
    Extension(f"cbuffer.{name}", [f"cbuffer/{name}.pyx"], include_dirs=["cbuffer"],
              extra_compile_args=cflags + sanitize, extra_link_args=sanitize, libraries=["pthread"])
    for name in ("_buffer", "_sink", "_ring", "_writer", "_text", "_testing")
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": 3, "embedsignature": True, "binding": False},
        annotate=False,
    ),
)
