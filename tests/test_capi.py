"""The C-level API exported in cbuffer's .pxd files works for outside Cython
code: a consumer module is compiled against the installed package and used.
It must build; a skip would prove nothing."""
import os
import shutil
import subprocess
import sys

import pytest

import cbuffer

HERE = os.path.dirname(__file__)

BUILD = """
from setuptools import Extension, setup
from Cython.Build import cythonize
import cbuffer
setup(
    name="consumer",
    ext_modules=cythonize([Extension("consumer", ["consumer.pyx"],
                                     include_dirs=[cbuffer.get_include()])],
                          quiet=True),
    script_args=["build_ext", "--inplace"],
)
"""


@pytest.fixture(scope="module")
def consumer(tmp_path_factory):
    where = tmp_path_factory.mktemp("capi")
    shutil.copy(os.path.join(HERE, "capi", "consumer.pyx"), where)
    (where / "build.py").write_text(BUILD)
    # Build against the very cbuffer these tests import.
    env = dict(os.environ)
    top = os.path.dirname(os.path.dirname(os.path.abspath(cbuffer.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [top, env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "build.py"], cwd=where, capture_output=True,
                          text=True, timeout=240, env=env)
    assert proc.returncode == 0, f"consumer did not build:\n{proc.stdout}\n{proc.stderr}"
    sys.path.insert(0, str(where))
    try:
        import consumer
        yield consumer
    finally:
        sys.path.remove(str(where))


@pytest.mark.timeout(300)
def test_consumer_appends_through_ring_api(consumer, collector):
    ring = cbuffer.BufferRing(2, 4096, collector)
    positions = consumer.append_many(ring, b"0123456789", 1000)
    ring.close()
    assert positions == [10 * i for i in range(1000)]
    assert collector.data == b"0123456789" * 1000


@pytest.mark.timeout(300)
def test_consumer_appends_through_buffer_api(consumer):
    buf = cbuffer.ConcurrentBuffer(8)
    assert consumer.region_put(buf, b"abcde") == (0, 0)
    status, _ = consumer.region_put(buf, b"abcd")
    assert status == 2  # CB_NO_ROOM: nothing written
    assert buf.flush() == b"abcde"


def test_get_include_holds_the_headers():
    inc = cbuffer.get_include()
    for name in ("_atomic.h", "_event.h", "_state.h", "_state.pxd", "_ring.pxd", "__init__.pxd"):
        assert os.path.exists(os.path.join(inc, name)), name
