"""Process life of a ConcurrentBufferedWriter, in real subprocesses:
exit-time flushing, daemon threads still writing at exit, os.fork(), and
``python -m cbuffer``."""
import os
import subprocess
import sys
import textwrap

import pytest

import cbuffer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(cbuffer.__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))
TIMEOUT = 30


def run(script, *args, timeout=TIMEOUT):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, TESTS]))
    env.pop("PYTHONWARNINGS", None)
    try:
        return subprocess.run([sys.executable, "-c", textwrap.dedent(script), *map(str, args)],
                              env=env, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"subprocess hung: {exc}")


def read(path):
    with open(path, "rb") as f:
        return f.read()


LINES = b"".join(b"line %05d\n" % i for i in range(2000))


# ------------------------------------------------------------------ exit flush

@pytest.mark.parametrize("how", ["fall-off-end", "sys.exit", "uncaught-exception"])
def test_exit_flushes_without_close(tmp_path, how):
    path = tmp_path / "exit"
    ending = {"fall-off-end": "", "sys.exit": "sys.exit(0)",
              "uncaught-exception": "raise SystemExit(0) from KeyError('x')"}[how]
    proc = run(f"""
        import sys, cbuffer
        w = cbuffer.open(sys.argv[1], buffer_size=1 << 20)
        for i in range(2000):
            w.write(b"line %05d\\n" % i)
        {ending}
        """, path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert read(path) == LINES


def test_exit_flushes_after_error_exit(tmp_path):
    path = tmp_path / "exit"
    proc = run("""
        import sys, cbuffer
        w = cbuffer.open(sys.argv[1], buffer_size=1 << 20)
        w.write(b"accepted before the crash\\n")
        raise RuntimeError("the program failed")
        """, path)
    assert proc.returncode == 1
    assert b"RuntimeError: the program failed" in proc.stderr
    assert read(path) == b"accepted before the crash\n"


@pytest.mark.parametrize("raw", ["fd", "fileio", "bufferedwriter",
                                 "pipe"])
def test_exit_flushes_each_raw_kind(tmp_path, raw):
    path = tmp_path / "exit"
    proc = run("""
        import io, os, sys, cbuffer
        path, kind = sys.argv[1], sys.argv[2]
        if kind == "fd":
            w = cbuffer.ConcurrentBufferedWriter(os.open(path, os.O_WRONLY | os.O_CREAT))
        elif kind == "fileio":
            w = cbuffer.ConcurrentBufferedWriter(io.FileIO(path, "wb"))
        elif kind == "bufferedwriter":
            w = cbuffer.ConcurrentBufferedWriter(open(path, "wb"))
        else:
            w = cbuffer.ConcurrentBufferedWriter(sys.stdout.fileno(), closefd=False)
        for i in range(2000):
            w.write(b"line %05d\\n" % i)
        w.write(b"L" * 300000)      # larger than a buffer: written through
        w.write(b"end\\n")
        """, path, raw, timeout=10)
    assert proc.returncode == 0, proc.stderr.decode()
    got = proc.stdout if raw == "pipe" else read(path)
    assert got == LINES + b"L" * 300000 + b"end\n"


def test_exit_with_python_raw_writer_left_open():
    """A writer over a write()-only raw still open when the interpreter
    exits: the process must exit (and exit 0)."""
    proc = run("""
        import io, cbuffer
        w = cbuffer.ConcurrentBufferedWriter(io.BytesIO())
        w.write(b"x")
        """, timeout=8)
    assert proc.returncode == 0, proc.stderr.decode()


def test_exit_flushes_many_writers_and_threads(tmp_path):
    proc = run("""
        import sys, threading, cbuffer
        from cbuffer._testing import make_record
        ws = [cbuffer.open(sys.argv[1] + str(k), buffer_size=4096) for k in range(3)]
        def worker(tid):
            for seq in range(300):
                for w in ws:
                    w.write(make_record(tid, seq, 28 + (seq * 13) % 200, 0))
        ts = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
        for t in ts: t.start()
        for t in ts: t.join()
        """, tmp_path / "w")
    assert proc.returncode == 0, proc.stderr.decode()
    from records import check_stream
    for k in range(3):
        check_stream(read(tmp_path / f"w{k}"), 8, 300, positions=False)


def test_daemon_thread_writing_at_exit_does_not_block_exit(tmp_path):
    path = tmp_path / "daemon"
    proc = run("""
        import sys, threading, time, cbuffer
        w = cbuffer.open(sys.argv[1], buffer_size=4096, buffer_count=2)
        started = threading.Event()
        def spin():
            i = 0
            while True:
                w.write(b"daemon %08d\\n" % i)
                i += 1
                started.set()
        threading.Thread(target=spin, daemon=True).start()
        started.wait(10)
        time.sleep(0.05)
        w.write(b"MAIN DONE\\n")
        """, path, timeout=20)
    assert proc.returncode == 0, proc.stderr.decode()
    data = read(path)
    lines = data.split(b"\n")
    assert b"MAIN DONE" in lines  # accepted before exit: flushed
    # every write lands whole: the file ends on a line end, every line is
    # MAIN DONE or a whole daemon line, and the daemon's lines are in order
    assert lines[-1] == b""
    for line in lines[:-1]:
        assert line == b"MAIN DONE" or (line.startswith(b"daemon ") and len(line) == 15), line
    seqs = [int(line[7:]) for line in lines[:-1] if line.startswith(b"daemon ")]
    assert seqs == list(range(len(seqs)))


def test_daemon_thread_blocked_on_full_ring_does_not_block_exit(tmp_path):
    """The daemon waits for ring space behind a slow Python raw at exit."""
    path = tmp_path / "daemon"
    proc = run("""
        import sys, threading, time, cbuffer
        class Slow:
            def __init__(self, f): self.f = f
            def write(self, b):
                time.sleep(0.01)
                self.f.write(b)
            def flush(self): self.f.flush()
            def close(self): self.f.close()
        w = cbuffer.ConcurrentBufferedWriter(Slow(open(sys.argv[1], "wb")),
                                             buffer_size=4096, buffer_count=1)
        started = threading.Event()
        def spin():
            while True:
                w.write(b"d" * 1000)
                started.set()
        for _ in range(4):
            threading.Thread(target=spin, daemon=True).start()
        started.wait(10)
        w.write(b"MAIN")
        """, path, timeout=20)
    assert proc.returncode == 0, proc.stderr.decode()
    data = read(path)
    assert data.count(b"MAIN") == 1
    assert data.replace(b"MAIN", b"") == b"d" * (len(data) - 4)
    assert (len(data) - 4) % 1000 == 0


# ------------------------------------------------------------------ fork

FORK_SCRIPT = """
import os, sys, warnings
warnings.simplefilter("ignore", DeprecationWarning)   # fork with threads (3.12+)
import cbuffer
path, auto = sys.argv[1], sys.argv[2] == "auto"
w = cbuffer.open(path, "ab", buffer_size=1 << 20, auto_flush=auto)
w.write(b"A" * 1000)                      # pending in the parent's ring
w.write(b"\\n")
pid = os.fork()
if pid == 0:
    code = 1
    try:
        w.write(b"C" * 500)
        w.write(b"\\n")
        w.close()
        code = 0
    finally:
        os._exit(code)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
w.write(b"B" * 700)
w.write(b"\\n")
w.close()
print("ok")
"""


@pytest.mark.parametrize("auto", ["auto", "manual"])
def test_fork_no_duplicated_output(tmp_path, auto):
    path = tmp_path / "fork"
    proc = run(FORK_SCRIPT, path, auto)
    assert proc.returncode == 0, proc.stderr.decode()
    data = read(path)
    assert sorted(data.split(b"\n")) == sorted([b"A" * 1000, b"C" * 500, b"B" * 700, b""])
    if auto == "auto":
        # the parent flushed before fork(): its data comes first
        assert data.startswith(b"A" * 1000 + b"\n")


def test_fork_child_flushes_at_exit_and_has_own_flusher(tmp_path):
    path = tmp_path / "fork"
    proc = run("""
        import os, sys, time, warnings
        warnings.simplefilter("ignore", DeprecationWarning)
        import cbuffer
        w = cbuffer.open(sys.argv[1], "ab", buffer_size=4096)
        w.write(b"parent-before\\n")
        pid = os.fork()
        if pid == 0:
            for i in range(1000):                 # fills buffers: needs a flusher
                w.write(b"child %04d\\n" % i)
            sys.exit(0)                           # exit flush in the child
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        w.write(b"parent-after\\n")
        """, path)
    assert proc.returncode == 0, proc.stderr.decode()
    lines = read(path).splitlines()
    assert lines[0] == b"parent-before"
    assert lines.count(b"parent-before") == 1
    assert lines.count(b"parent-after") == 1
    child = [x for x in lines if x.startswith(b"child")]
    assert child == [b"child %04d" % i for i in range(1000)]


@pytest.mark.parametrize("lanes", [0, 2])
def test_fork_child_counts_go_on_from_the_parents(tmp_path, lanes):
    """stats()["writes"] in a forked child starts from the parent's count at the fork,
    writes still in the open buffer or a lane included, and counts each of its own."""
    path = tmp_path / "fork"
    proc = run("""
        import os, sys, warnings
        warnings.simplefilter("ignore", DeprecationWarning)
        import cbuffer
        w = cbuffer.open(sys.argv[1], "ab", lanes=int(sys.argv[2]))
        for i in range(45):                       # 32 + 13: a carried count and a live one
            w.write(b"p%02d," % i)
        r, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:
            at_fork = w.stats()["writes"]
            for i in range(7):
                w.write(b"c%d," % i)
            w.flush()
            os.write(wfd, b"%d %d" % (at_fork, w.stats()["writes"]))
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        print(os.read(r, 100).decode(), w.stats()["writes"])
        w.close()
        """, path, lanes)
    assert proc.returncode == 0, proc.stderr.decode()
    child_at_fork, child_after, parent = map(int, proc.stdout.split())
    assert (child_at_fork, child_after, parent) == (45, 52, 45)
    data = read(path)
    assert data.count(b"p") == 45 and data.count(b"c") == 7


def test_fork_while_threads_write(tmp_path):
    """fork() while other threads are mid-write: the child neither hangs nor
    repeats the parent's bytes; every record is whole and appears once."""
    path = tmp_path / "fork"
    proc = run("""
        import os, sys, threading, warnings
        warnings.simplefilter("ignore", DeprecationWarning)
        import cbuffer
        from cbuffer._testing import make_record
        w = cbuffer.open(sys.argv[1], "ab", buffer_size=4096, buffer_count=2)
        stop = threading.Event()
        counts = [0] * 4
        def worker(tid):
            seq = 0
            while not stop.is_set():
                w.write(make_record(tid, seq, 28 + seq % 100, 0))
                seq += 1
            counts[tid] = seq
        ts = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
        for t in ts: t.start()
        for k in range(5):
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    for seq in range(50):
                        w.write(make_record(10 + k, seq, 40, 0))
                    w.close()
                    code = 0
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
        stop.set()
        for t in ts: t.join()
        w.close()
        print(*counts)
        """, path)
    assert proc.returncode == 0, proc.stderr.decode()
    counts = list(map(int, proc.stdout.split()))
    from records import parse
    recs = parse(read(path))
    seen = {}
    for r in recs:
        assert (r.tid, r.seq) not in seen, f"record {(r.tid, r.seq)} written twice"
        seen[(r.tid, r.seq)] = r
    for tid in range(4):
        assert sorted(s for t, s in seen if t == tid) == list(range(counts[tid]))
    for k in range(5):
        assert sorted(s for t, s in seen if t == 10 + k) == list(range(50))


# ------------------------------------------------------------------ python -m cbuffer

def test_python_m_cbuffer():
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-m", "cbuffer", "--threads", "4", "--lines", "2000"],
                          env=env, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"every line present" in proc.stdout


def test_python_m_cbuffer_defaults():
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-m", "cbuffer"], env=env, capture_output=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
