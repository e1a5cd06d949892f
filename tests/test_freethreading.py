"""Free-threaded CPython: importing cbuffer must leave the GIL off (every
extension module declares itself free-threading compatible), and threads
writing through their own bound ``write`` lose and reorder nothing."""
import subprocess
import sys
import sysconfig
import threading

import pytest

import cbuffer
from cbuffer._testing import make_record
from records import check_stream

FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


@pytest.mark.skipif(not FREE_THREADED, reason="needs a free-threaded (--disable-gil) CPython")
def test_import_keeps_the_gil_disabled():
    # every module of the package, so a new one cannot be forgotten here
    code = ("import importlib, pkgutil, sys, cbuffer\n"
            "for m in pkgutil.iter_modules(cbuffer.__path__):\n"
            "    if m.name != '__main__':\n"
            "        importlib.import_module('cbuffer.' + m.name)\n"
            "print(sys._is_gil_enabled())")
    # -W error: the RuntimeWarning CPython gives when a module re-enables the GIL fails the run
    proc = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.strip() == b"False"


def test_bound_writes_from_many_threads(tmp_path):
    path = tmp_path / "ft"
    threads, per_thread = 8, 5000
    w = cbuffer.open(path, buffer_size=16384)
    told = {}
    start = threading.Barrier(threads)

    def worker(tid):
        append = w.append  # each thread its own bound method
        start.wait(30)
        for seq in range(per_thread):
            rec = make_record(tid, seq, 28 + (seq * 7 + tid) % 90, 0)
            told[(tid, seq)] = (append(rec), rec)

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(60)
    w.close()
    data = path.read_bytes()
    check_stream(data, threads, per_thread, positions=False)
    for pos, rec in told.values():
        assert data[pos:pos + len(rec)] == rec
