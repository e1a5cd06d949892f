"""Rotation, reopening and process life of cbuffer's file handlers, read back from the files.

Every record is self-checking (:func:`line`): the process and thread that
logged it, its number in that thread's sequence, filler of varying length
and a crc32 of all that, so a lost, duplicated, torn or reordered record
shows as such when the files are read back (:func:`parse`,
:func:`check_records`).  The files of a handler are read oldest first: the
numbered backups from the highest number down, or the timestamped ones in
time order, then the file itself.

What is checked against what the handlers document:

* several processes, several threads each, one path, a small ``maxBytes``
  (hundreds of rotations) or ``when="S"``: every record once, whole, each
  thread's in order, the right backups kept;
* a file stays within ``maxBytes`` unless one part of a batch (one buffer,
  or one record larger than a buffer) is larger, and then holds that part
  alone; across processes a batch of another process may still land in the
  file just rotated, one per process;
* logrotate: move then ``reopen()`` from a SIGHUP handler, copytruncate
  (``O_APPEND``), a watched file moved or deleted under the writer;
* gzip of rotated files off the write path: a ``.gz`` is complete whenever
  it is visible, retention applies to the ``.gz`` files;
* a stdlib dictConfig or fileConfig with only ``class`` changed;
* ``flush_level`` and the default ``flush_interval``;
* process life: normal exit, ``os.fork()``, a ``multiprocessing`` pool,
  ``logging.shutdown()`` then a late record.

Subprocesses have timeouts; in-process handlers are always closed.
"""
import collections
import gzip
import inspect
import json
import logging
import logging.config
import logging.handlers
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import weakref
import zlib

import pytest

import cbuffer
from cbuffer.handlers import (
    DEFAULT_FLUSH_INTERVAL,
    ConcurrentFileHandler,
    ConcurrentRotatingFileHandler,
    ConcurrentTimedRotatingFileHandler,
    ConcurrentWatchedFileHandler,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(cbuffer.__file__)))
TIMEOUT = 60
KINDS = ["file", "rotating", "timed", "watched"]


# ------------------------------------------------------------------ records and files

def line(tag, seq, pad=0):
    """One self-checking record: ``tag`` (``p<process>t<thread>``), its
    number in that thread's sequence, ``pad`` filler bytes and a crc32 of
    the rest.  23 bytes plus ``pad`` with its newline."""
    body = f"{tag} {seq:07d} {'x' * pad}"
    return f"{body} {zlib.crc32(body.encode()):08x}"


def logger_for(handler, name, fmt="%(message)s"):
    """A logger of its own writing only to ``handler``."""
    handler.setFormatter(logging.Formatter(fmt))
    log = logging.getLogger(f"cbuffer.test.rotation.{name}")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    for old in log.handlers[:]:
        log.removeHandler(old)
    log.addHandler(handler)
    return log


def make_handler(kind, path, **options):
    """A handler of each kind with the standard arguments: rotating ones
    keep (nearly) everything, the timed one rotates every second."""
    if kind == "file":
        return ConcurrentFileHandler(path, encoding="utf-8", **options)
    if kind == "rotating":
        return ConcurrentRotatingFileHandler(
            path, maxBytes=options.pop("maxBytes", 16384), backupCount=options.pop("backupCount", 1000),
            encoding="utf-8", **options)
    if kind == "timed":
        return ConcurrentTimedRotatingFileHandler(
            path, when=options.pop("when", "S"), backupCount=options.pop("backupCount", 1000),
            encoding="utf-8", **options)
    return ConcurrentWatchedFileHandler(path, encoding="utf-8", **options)


LINE = re.compile(rb"(p\d+t\d+) (\d{7}) x* ([0-9a-f]{8})")


def parse(data, name="file", torn_tail=False):
    """[(tag, seq)] of ``data``, failing on anything that
    is not a sequence of whole, intact records.  ``torn_tail``: the last
    line may be cut short (a copy taken while the file was written); it is
    left out."""
    lines = data.split(b"\n")
    tail = lines.pop()
    assert torn_tail or not tail, f"{name} ends inside a record: ...{tail[-60:]!r}"
    out = []
    for i, ln in enumerate(lines):
        m = LINE.fullmatch(ln)
        assert m is not None, f"{name}: line {i} is not a whole record: {ln[:120]!r}"
        assert zlib.crc32(ln[:m.start(3) - 1]) == int(m.group(3), 16), (
            f"{name}: line {i} is corrupted: {ln[:120]!r}")
        out.append((m.group(1).decode(), int(m.group(2))))
    return out


def check_records(files, expected, kept=False):
    """``files``: [(name, bytes)] oldest first; ``expected``: {tag: count}.
    Every record of every tag exactly once, each tag's in order across the
    files.  ``kept``: older files were deleted, so each tag's records are
    its last ones (from wherever they start) -- still once and in order."""
    seqs = {}
    for name, data in files:
        for tag, seq in parse(data, name):
            seqs.setdefault(tag, []).append(seq)
    assert set(seqs) <= set(expected), f"records of unknown tags {set(seqs) - set(expected)}"
    problems = []
    for tag, n in sorted(expected.items()):
        got = seqs.get(tag, [])
        if kept and not got:
            continue
        want = list(range(got[0] if kept else 0, n))
        if got != want:
            counts = collections.Counter(got)
            missing = sorted(set(want) - set(got))
            twice = sorted(s for s, c in counts.items() if c > 1)
            back = next((got[i] for i in range(1, len(got)) if got[i] < got[i - 1]), None)
            problems.append(f"{tag}: {len(got)} records of {len(want)}: {len(missing)} missing "
                            f"{missing[:5]}, {len(twice)} twice {twice[:5]}, first back in order "
                            f"at {back}")
    more = f"\n... {len(problems)} tags in all" if len(problems) > 8 else ""
    assert not problems, "\n".join(problems[:8]) + more
    return seqs


def read(path):
    with open(path, "rb") as f:
        data = f.read()
    return gzip.decompress(data) if str(path).endswith(".gz") else data


TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d")


def backups(path, suffix=""):
    """The backups of the file at ``path``, oldest first: ``path.N`` from the
    highest N (numbers without a gap), or ``path.<time>`` in time order.
    Fails on any other file beside the log but ``<path>.lock``."""
    d, base = os.path.split(str(path))
    numbered, timed, other = {}, [], []
    for name in os.listdir(d):
        if name in (base, base + ".lock") or not name.startswith(base + "."):
            continue
        rest = name[len(base) + 1:]
        if not rest.endswith(suffix):
            other.append(name)
            continue
        rest = rest[:len(rest) - len(suffix)]
        if rest.isdigit():
            numbered[int(rest)] = name
        elif TIMESTAMP.fullmatch(rest):
            timed.append(name)
        else:
            other.append(name)
    assert not other, f"unexpected files beside the log: {sorted(other)[:10]}"
    assert not (numbered and timed), "numbered and timestamped backups side by side"
    assert sorted(numbered) == list(range(1, len(numbered) + 1)), (
        f"backup numbers with a gap: {sorted(numbered)[:20]}")
    return ([os.path.join(d, numbered[n]) for n in sorted(numbered, reverse=True)]
            + [os.path.join(d, n) for n in sorted(timed)])


def all_files(path, suffix=""):
    """[(name, bytes)] of the backups (decompressed) and the file, oldest first."""
    names = backups(path, suffix)
    if os.path.exists(path):
        names.append(str(path))
    return [(name, read(name)) for name in names]


def tags(processes, threads):
    return [f"p{p}t{t}" for p in range(processes) for t in range(threads)]


# ------------------------------------------------------------------ subprocesses

PRELUDE = "\n".join([
    "import json, logging, os, sys, threading, time, zlib",
    "from cbuffer.handlers import (ConcurrentFileHandler, ConcurrentRotatingFileHandler,",
    "    ConcurrentTimedRotatingFileHandler, ConcurrentWatchedFileHandler)",
    inspect.getsource(line), inspect.getsource(logger_for), inspect.getsource(make_handler),
])


def _env():
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("PYTHONWARNINGS", None)
    return env


def start(script, *args, flags=(), **popen):
    popen.setdefault("stdout", subprocess.PIPE)
    popen.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen([sys.executable, *flags, "-c", textwrap.dedent(script), *map(str, args)],
                            env=_env(), **popen)


def finish(procs, timeout=TIMEOUT):
    """Wait for every process (all killed if one outlives ``timeout``);
    each must exit 0.  Returns their (stdout, stderr)."""
    deadline = time.monotonic() + timeout
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=max(0.1, deadline - time.monotonic())))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        stderr = [p.communicate()[1] for p in procs]
        pytest.fail(f"a process hung (all killed after {timeout} s); stderr: {stderr!r}")
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err.decode(errors="replace")
    return outs


def run(script, *args, flags=(), timeout=TIMEOUT):
    (out, err), = finish([start(script, *args, flags=flags)], timeout)
    return out.decode(), err.decode(errors="replace")


# ------------------------------------------------------------------ several processes, size

SIZE_WORKER = PRELUDE + """
path, proc, threads, per_thread, max_bytes, backup_count, compress, at = sys.argv[1:]
proc, threads, per_thread, max_bytes, backup_count = map(
    int, (proc, threads, per_thread, max_bytes, backup_count))
handler = ConcurrentRotatingFileHandler(path, maxBytes=max_bytes, backupCount=backup_count,
                                        encoding="utf-8", compress=compress or None)
log = logger_for(handler, f"p{proc}")
time.sleep(max(0.0, float(at) - time.time()))  # the processes start together


def work(t):
    tag = f"p{proc}t{t}"
    for i in range(per_thread):
        log.info(line(tag, i, (7 * i + 13 * t) % 61))


workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
for w in workers:
    w.start()
for w in workers:
    w.join()
handler.close()
print(json.dumps({"buffer_size": handler._writer_options["buffer_size"]}))
"""

PROCESSES, THREADS = 4, 4
MAX_BYTES = 8192
PER_THREAD = 2500  # 16 x 2500 records of 23-83 bytes: about 1.3 MB, some 200 files of 8 KiB


def _size_rotation(tmp_path, backup_count, compress=None):
    path = tmp_path / "app.log"
    at = time.time() + 1.0
    outs = finish([start(SIZE_WORKER, path, p, THREADS, PER_THREAD, MAX_BYTES, backup_count,
                         compress or "", at) for p in range(PROCESSES)])
    buffer_size = json.loads(outs[0][0].decode())["buffer_size"]
    return path, all_files(path, ".gz" if compress else ""), buffer_size


def check_sizes(files, max_bytes, buffer_size, processes=1):
    """No file over ``max_bytes`` unless it is a single part (a buffer, or
    one record larger than a buffer) -- plus, with several processes, one
    batch per other process that was already on its way when the file was
    found full or rotated (a batch being at most ``max_bytes`` once cut)."""
    over = []
    for name, data in files:
        records = data.count(b"\n")
        if len(data) <= max_bytes or records == 1 or len(data) <= buffer_size:
            continue
        if len(data) <= max_bytes + (processes - 1) * max(max_bytes, buffer_size):
            continue
        over.append((os.path.basename(name), len(data), records))
    assert not over, f"files over maxBytes={max_bytes} beyond the documented slack: {over[:10]}"


@pytest.mark.parametrize("compress", [None, "gzip"])
def test_processes_rotating_one_path_keep_every_record_once(tmp_path, compress):
    """4 processes x 4 threads, maxBytes 8 KiB, every backup kept: hundreds
    of rotations, and every record is in exactly one file, whole, each
    thread's in order from the oldest backup to the file itself."""
    path, files, buffer_size = _size_rotation(tmp_path, 400, compress)
    assert len(files) > 150, f"only {len(files) - 1} rotations"
    assert len(files) < 400, "backupCount reached: the test needs every file kept"
    check_records(files, dict.fromkeys(tags(PROCESSES, THREADS), PER_THREAD))
    check_sizes(files, MAX_BYTES, buffer_size, PROCESSES)


def test_processes_rotating_one_path_with_few_backups(tmp_path):
    """The same with backupCount=5: exactly 5 backups are left, and they and
    the file hold whole records, each thread's last ones, in order."""
    path, files, buffer_size = _size_rotation(tmp_path, 5)
    assert [os.path.basename(name) for name, _ in files] == [f"app.log.{n}" for n in range(5, 0, -1)] + [
        "app.log"]
    seqs = check_records(files, dict.fromkeys(tags(PROCESSES, THREADS), PER_THREAD), kept=True)
    assert any(s and s[-1] == PER_THREAD - 1 for s in seqs.values())
    check_sizes(files, MAX_BYTES, buffer_size, PROCESSES)


# ------------------------------------------------------------------ several processes, time

TIME_WORKER = PRELUDE + """
path, proc, threads, per_thread, backup_count, compress, at, period = sys.argv[1:]
proc, threads, per_thread, backup_count = map(int, (proc, threads, per_thread, backup_count))
time.sleep(max(0.0, float(at) - time.time()))  # the processes start together
handler = ConcurrentTimedRotatingFileHandler(path, when="S", backupCount=backup_count,
                                             encoding="utf-8", compress=compress or None)
log = logger_for(handler, f"p{proc}")
pause = float(period) / per_thread


def work(t):
    tag = f"p{proc}t{t}"
    for i in range(per_thread):
        log.info(line(tag, i, (7 * i + 13 * t) % 61))
        time.sleep(pause)


workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
for w in workers:
    w.start()
for w in workers:
    w.join()
handler.close()
"""

TIMED_PER_THREAD = 150
PERIOD = 3.0


def _time_rotation(tmp_path, backup_count, compress=None):
    path = tmp_path / "app.log"
    at = time.time() + 1.0
    finish([start(TIME_WORKER, path, p, THREADS, TIMED_PER_THREAD, backup_count, compress or "", at,
                  PERIOD) for p in range(PROCESSES)])
    return path, all_files(path, ".gz" if compress else "")


@pytest.mark.parametrize("compress", [None, "gzip"])
def test_processes_timed_rotation_every_second_keep_every_record_once(tmp_path, compress):
    """4 processes x 4 threads logging for 3 s through when="S" handlers on
    one path: a file per second, named as TimedRotatingFileHandler names
    them, and every record once, whole, each thread's in order."""
    path, files = _time_rotation(tmp_path, 100, compress)
    assert len(files) >= 3, f"only {len(files) - 1} rotations in {PERIOD} s"
    check_records(files, dict.fromkeys(tags(PROCESSES, THREADS), TIMED_PER_THREAD))


def _error(msg):
    return logging.makeLogRecord({"msg": msg, "levelno": logging.ERROR, "levelname": "ERROR"})


def test_two_timed_handlers_on_one_path_rotate_once_per_period(tmp_path):
    """Two handlers on one path stand for two processes: A is first to log
    after the rollover time and rotates; B, logging next, finds the path
    rotated (a new file), moves to it and must not rotate that new file
    too (its rollover time is A's: the name it would give it is the one A
    gave, and the standard doRollover deletes a file of that name -- or, on
    3.13, returns without moving the rollover time on).  Both handlers' next
    rollover is then in the future, and B's later batches go to the file it
    has, without reopening it."""
    path = tmp_path / "app.log"
    a = ConcurrentTimedRotatingFileHandler(path, when="S", backupCount=10, encoding="utf-8")
    b = ConcurrentTimedRotatingFileHandler(path, when="S", backupCount=10, encoding="utf-8")
    try:
        for h in (a, b):
            h.setFormatter(logging.Formatter("%(message)s"))
        a.handle(_error(line("p0t0", 0)))
        b.handle(_error(line("p1t0", 0)))
        time.sleep(max(0.0, max(a.rolloverAt, b.rolloverAt) - time.time() + 0.05))
        a.handle(_error(line("p0t0", 1)))
        b.handle(_error(line("p1t0", 1)))
        now = time.time()
        assert a.rolloverAt > now and b.rolloverAt > now, "a rollover time left in the past"
        raw = b.stream.raw
        for i in range(2, 5):
            b.handle(_error(line("p1t0", i)))
        assert b.stream.raw is raw, "the file was opened again for every batch"
    finally:
        a.close()
        b.close()
    files = all_files(path)
    assert [len(parse(d)) for _, d in files] == [2, 5], [(os.path.basename(n), d) for n, d in files]
    check_records(files, {"p0t0": 2, "p1t0": 5})


def test_two_rotating_handlers_on_one_path(tmp_path):
    """Two size-rotating handlers on one path (two processes), one record per
    batch, alternating: each notices the other's rotation and follows it;
    every record once, in order, every file within maxBytes."""
    path = tmp_path / "app.log"
    hs = [ConcurrentRotatingFileHandler(path, maxBytes=1000, backupCount=100, encoding="utf-8",
                                        line_buffering=True) for _ in range(2)]
    try:
        for h in hs:
            h.setFormatter(logging.Formatter("%(message)s"))
        for i in range(300):
            for p, h in enumerate(hs):
                h.handle(_error(line(f"p{p}t0", i, i % 30)))
    finally:
        for h in hs:
            h.close()
    files = all_files(path)
    assert len(files) > 20
    check_records(files, {"p0t0": 300, "p1t0": 300})
    assert max(len(d) for _, d in files) <= 1000


def test_processes_timed_rotation_keeps_backup_count(tmp_path):
    path, files = _time_rotation(tmp_path, 1)
    assert len(files) == 2, [os.path.basename(name) for name, _ in files]
    check_records(files, dict.fromkeys(tags(PROCESSES, THREADS), TIMED_PER_THREAD), kept=True)


# ------------------------------------------------------------------ one process: maxBytes and its slack

def _log_from_threads(log, threads, per_thread, pad, proc=0):
    def work(t):
        for i in range(per_thread):
            log.info(line(f"p{proc}t{t}", i, pad(t, i)))
    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def test_files_stay_within_max_bytes(tmp_path):
    """One process, 8 threads: every file within maxBytes (buffers of a
    quarter of it), every record once and in order."""
    path = tmp_path / "app.log"
    h = ConcurrentRotatingFileHandler(path, maxBytes=16384, backupCount=300, encoding="utf-8")
    try:
        assert h.stream.buffer_size == 4096
        _log_from_threads(logger_for(h, "within"), 8, 1500, lambda t, i: (7 * i + 13 * t) % 150)
    finally:
        h.close()
    files = all_files(path)
    assert 50 < len(files) < 300
    check_records(files, dict.fromkeys(tags(1, 8), 1500))
    big = [(os.path.basename(n), len(d)) for n, d in files if len(d) > 16384]
    assert not big, f"files over maxBytes: {big[:10]}"


def test_files_stay_below_max_bytes_as_with_stdlib(tmp_path):
    """RotatingFileHandler rolls over when a record would bring the file *to*
    maxBytes, and ConcurrentRotatingFileHandler says the same of a batch: no
    file reaches maxBytes.  64-byte records fill 4 KiB buffers exactly, so two
    of them make exactly maxBytes."""
    largest = {}
    for side, cls in (("stdlib", logging.handlers.RotatingFileHandler),
                      ("cbuffer", ConcurrentRotatingFileHandler)):
        (tmp_path / side).mkdir()
        path = tmp_path / side / "app.log"
        h = cls(path, maxBytes=8192, backupCount=1000, encoding="utf-8")
        try:
            log = logger_for(h, f"below-{side}")
            for i in range(1000):
                log.info(line("p0t0", i, 41))
        finally:
            h.close()
        files = all_files(path)
        check_records(files, {"p0t0": 1000})
        largest[side] = max(len(d) for _, d in files)
    assert largest["stdlib"] < 8192
    assert largest["cbuffer"] < 8192, f"a file of {largest['cbuffer']} bytes with maxBytes=8192"


def test_a_record_larger_than_max_bytes_gets_a_file_of_its_own(tmp_path):
    """Records over maxBytes (and over a buffer): each alone in its file; every
    other file within maxBytes."""
    path = tmp_path / "app.log"
    h = ConcurrentRotatingFileHandler(path, maxBytes=8192, backupCount=500, encoding="utf-8")
    try:
        _log_from_threads(logger_for(h, "large"), 4, 400,
                          lambda t, i: 12000 + t if i % 97 == 50 else (5 * i + t) % 80)
    finally:
        h.close()
    files = all_files(path)
    assert len(files) < 500
    check_records(files, dict.fromkeys(tags(1, 4), 400))
    large = [(n, d) for n, d in files if len(d) > 8192]
    assert len(large) >= 4 * 4
    for name, data in large:
        records = data.count(b"\n")
        assert records == 1, f"{name}: {len(data)} bytes, {records} records"


def test_max_bytes_under_a_buffer_one_buffer_per_file(tmp_path):
    """maxBytes under 4 KiB (the smallest buffer): a file over maxBytes holds
    one buffer's bytes, no more."""
    path = tmp_path / "app.log"
    h = ConcurrentRotatingFileHandler(path, maxBytes=1000, backupCount=1000, encoding="utf-8")
    try:
        assert h.stream.buffer_size == 4096
        _log_from_threads(logger_for(h, "under"), 4, 500, lambda t, i: (7 * i + t) % 60)
    finally:
        h.close()
    files = all_files(path)
    assert len(files) < 1000
    check_records(files, dict.fromkeys(tags(1, 4), 500))
    check_sizes(files, 1000, 4096)
    assert max(len(d) for _, d in files) <= 4096


def test_writers_do_not_wait_for_a_slow_rotation(tmp_path):
    """The rename is the flusher's business: with a rotator that takes 0.5 s
    and a ring with room for what is logged meanwhile, no emit waits for it."""
    path = tmp_path / "app.log"
    h = ConcurrentRotatingFileHandler(path, maxBytes=32768, backupCount=100, encoding="utf-8",
                                      buffer_count=16)
    rotations = []

    def slow_rotator(source, dest):
        rotations.append(dest)
        time.sleep(0.5)
        os.rename(source, dest)

    h.rotator = slow_rotator
    latencies = []
    try:
        log = logger_for(h, "slow-rotator")
        for i in range(2000):
            t0 = time.perf_counter()
            log.info(line("p0t0", i, 30))
            latencies.append(time.perf_counter() - t0)
            time.sleep(0.001)
    finally:
        h.close()
    assert len(rotations) >= 2
    check_records(all_files(path), {"p0t0": 2000})
    assert max(latencies) < 0.25, f"an emit took {max(latencies):.3f} s"


# ------------------------------------------------------------------ logrotate

SIGHUP_SCRIPT = PRELUDE + """
import signal
import cbuffer

path, how = sys.argv[1:3]
# Records reach the file every 50 ms, so each of the four files gets some
# within the 0.3 s between moves however slow the machine (lanes and a
# buffer can hold a loaded machine's 0.3 s of records).
if how == "handler":
    handler = ConcurrentFileHandler(path, encoding="utf-8", flush_interval=0.05)
    log = logger_for(handler, "sighup")
    writer = handler.stream
    emit = log.info
else:
    writer = cbuffer.open(path, "ab", flush_interval=0.05)
    emit = lambda text: writer.write(text.encode() + b"\\n")
signal.signal(signal.SIGHUP, lambda signum, frame: writer.reopen())
stop = threading.Event()
counts = [0] * 8


def work(t):
    i = 0
    while not stop.is_set():
        emit(line(f"p0t{t}", i, (7 * i + t) % 50))
        i += 1
        if i % 32 == 0:
            time.sleep(0.0005)
    counts[t] = i


workers = [threading.Thread(target=work, args=(t,)) for t in range(8)]
for w in workers:
    w.start()
print("ready", flush=True)
sys.stdin.readline()  # the test says stop (the SIGHUPs arrive while this waits)
stop.set()
for w in workers:
    w.join()
(handler if how == "handler" else writer).close()
print(json.dumps(counts), flush=True)
"""


@pytest.mark.parametrize("how", ["handler", "writer"])
def test_logrotate_move_then_sighup_reopen(tmp_path, how):
    """logrotate's create mode, three times while 8 threads write: move the
    file, send SIGHUP, whose handler calls reopen().  Every record is in one
    of the four files, once, each thread's in order; each file got records."""
    path = tmp_path / "app.log"
    proc = start(SIGHUP_SCRIPT, path, how, stdin=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"ready\n", proc.stderr.read().decode()
        for _ in range(3):
            time.sleep(0.3)
            for n in (2, 1):
                if os.path.exists(f"{path}.{n}"):
                    os.rename(f"{path}.{n}", f"{path}.{n + 1}")
            os.rename(path, f"{path}.1")
            os.kill(proc.pid, signal.SIGHUP)
        time.sleep(0.3)
        proc.stdin.write(b"stop\n")
        proc.stdin.flush()
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    (out, _), = finish([proc])
    counts = json.loads(out.decode().splitlines()[-1])
    assert min(counts) > 0
    files = all_files(path)
    assert [os.path.basename(n) for n, _ in files] == ["app.log.3", "app.log.2", "app.log.1", "app.log"]
    for name, data in files:
        assert data, f"{name} is empty: the writer did not move to it"
    check_records(files, {f"p0t{t}": n for t, n in enumerate(counts)})


def _log_until(log, threads, stop, counts, proc=0):
    def work(t):
        i = 0
        while not stop.is_set():
            log.info(line(f"p{proc}t{t}", i, (7 * i + t) % 50))
            i += 1
            if i % 16 == 0:
                time.sleep(0.001)
        counts[t] = i
    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    return workers


@pytest.mark.parametrize("kind", ["file", "watched"])
def test_copytruncate(tmp_path, kind):
    """logrotate's copytruncate while 4 threads write: the copy holds the
    records up to the copy (its last line may be torn, as copytruncate
    makes it), the truncated file goes on from its first byte with whole
    records (O_APPEND: no gap of NULs), and what is missing from the two is
    only what landed between the copy and the truncation: for each thread
    one run of consecutive records."""
    path = tmp_path / "app.log"
    h = make_handler(kind, path, flush_interval=0.05)
    stop, counts = threading.Event(), [0] * 4
    try:
        workers = _log_until(logger_for(h, f"copytruncate-{kind}"), 4, stop, counts)
        time.sleep(0.4)
        shutil.copyfile(path, f"{path}.1")
        os.truncate(path, 0)
        time.sleep(0.4)
        stop.set()
        for w in workers:
            w.join()
    finally:
        stop.set()
        h.close()
    data = read(path)
    nul = data.find(b"\0")
    assert nul < 0, f"NUL bytes at {nul} of the truncated file"
    after = parse(data, "the truncated file")
    before = parse(read(f"{path}.1"), "the copy", torn_tail=True)
    assert before and after
    lost = 0
    for t in range(4):
        tag = f"p0t{t}"
        first = [s for g, s in before if g == tag]
        then = [s for g, s in after if g == tag]
        assert first == list(range(len(first))), f"{tag}: the copy is not the thread's first records"
        assert then and then == list(range(then[0], counts[t])), (
            f"{tag}: the truncated file does not hold the thread's last records in order")
        assert then[0] >= len(first)
        lost += then[0] - len(first)
    assert lost < sum(counts) // 4, f"{lost} of {sum(counts)} records lost"


@pytest.mark.parametrize("how", ["moved", "deleted"])
def test_watched_file_moved_or_deleted_under_the_writer(tmp_path, how):
    """A watched file moved away or deleted while 4 threads write: the path is
    created again and the records go on there; when moved, every record is
    in one of the two files; when deleted, the new file holds each thread's
    last records, in order."""
    path = tmp_path / "app.log"
    h = ConcurrentWatchedFileHandler(path, encoding="utf-8", flush_interval=0.05)
    stop, counts = threading.Event(), [0] * 4
    try:
        workers = _log_until(logger_for(h, f"watched-{how}"), 4, stop, counts)
        time.sleep(0.3)
        if how == "moved":
            os.rename(path, f"{path}.1")
        else:
            os.unlink(path)
        time.sleep(0.4)
        stop.set()
        for w in workers:
            w.join()
        h.flush()
        assert os.path.exists(path), "the watched path was not created again"
        assert os.fstat(h.stream.fileno()).st_ino == os.stat(path).st_ino
    finally:
        stop.set()
        h.close()
    expected = {f"p0t{t}": n for t, n in enumerate(counts)}
    if how == "moved":
        files = [(f"{path}.1", read(f"{path}.1")), (str(path), read(path))]
        assert files[1][1], "nothing written to the new file"
        check_records(files, expected)
    else:
        seqs = check_records([(str(path), read(path))], expected, kept=True)
        assert all(seqs.get(tag) for tag in expected), "a thread's records never reached the new file"


def test_watched_file_deleted_while_quiet_is_created_at_the_next_batch(tmp_path):
    path = tmp_path / "app.log"
    h = ConcurrentWatchedFileHandler(path, encoding="utf-8")
    try:
        log = logger_for(h, "watched-quiet")
        log.error(line("p0t0", 0))
        os.unlink(path)
        log.error(line("p0t0", 1))  # ERROR: on the file when emit returns
        assert read(path) == (line("p0t0", 1) + "\n").encode()
        os.rename(path, f"{path}.1")
        log.info(line("p0t0", 2))
        h.flush()
        assert read(path) == (line("p0t0", 2) + "\n").encode()
    finally:
        h.close()


# ------------------------------------------------------------------ gzip

def _watch_gz(directory, stop, seen, bad):
    """Read every .gz that shows up in ``directory`` to its end, until told to stop."""
    while not stop.is_set():
        for name in os.listdir(directory):
            if not name.endswith(".gz"):
                continue
            try:
                with open(os.path.join(directory, name), "rb") as f:
                    data = f.read()
            except FileNotFoundError:  # renamed or deleted meanwhile: fine
                continue
            seen.add(name)
            try:
                parse(gzip.decompress(data), name)
            except (OSError, EOFError, zlib.error, AssertionError) as exc:
                bad.append(f"{name}: {exc!r}")
        time.sleep(0.002)


@pytest.mark.parametrize("backup_count", [400, 3])
def test_gzip_rotated_files_appear_complete(tmp_path, backup_count):
    """compress="gzip": every .gz is a whole gzip of whole records whenever it
    can be seen; after close() only <file> and <file>.N.gz are left (no
    half-made file), backupCount of them at most, and every record is in
    exactly one file when all are kept."""
    path = tmp_path / "app.log"
    h = ConcurrentRotatingFileHandler(path, maxBytes=8192, backupCount=backup_count, encoding="utf-8",
                                      compress="gzip")
    stop, seen, bad = threading.Event(), set(), []
    watcher = threading.Thread(target=_watch_gz, args=(tmp_path, stop, seen, bad))
    watcher.start()
    try:
        _log_from_threads(logger_for(h, f"gzip-{backup_count}"), 4, 1500,
                          lambda t, i: (7 * i + 13 * t) % 61)
    finally:
        h.close()
        stop.set()
        watcher.join()
    assert not bad, bad[:5]
    assert seen, "no .gz seen while the threads wrote"
    files = all_files(path, ".gz")
    expected = dict.fromkeys(tags(1, 4), 1500)
    if backup_count > 100:
        assert len(files) > 20
        check_records(files, expected)
    else:
        assert [os.path.basename(n) for n, _ in files] == [
            "app.log.3.gz", "app.log.2.gz", "app.log.1.gz", "app.log"]
        check_records(files, expected, kept=True)
    for name, data in files[:-1]:
        assert len(data) <= 8192, f"{name}: {len(data)} bytes uncompressed"


@pytest.mark.parametrize("kind", ["size", "timed"])
def test_gzip_waits_for_a_late_batch_of_another_writer(tmp_path, kind):
    """Another process's batch may land in the file just rotated (it checked
    the path before the rename).  The compressor must not take that file
    while the other writer still has it: the late record is kept, and the
    file is compressed once that writer lets go of it (its next batch, or
    its close)."""
    path = tmp_path / "app.log"
    if kind == "size":
        def make():
            return ConcurrentRotatingFileHandler(path, maxBytes=1 << 20, backupCount=5, encoding="utf-8",
                                                 compress="gzip")
    else:
        def make():
            return ConcurrentTimedRotatingFileHandler(path, when="S", interval=3600, backupCount=5,
                                                      encoding="utf-8", compress="gzip")
    a, b = make(), make()  # two fds on one path: as two processes
    try:
        log_a, log_b = logger_for(a, f"late-a-{kind}"), logger_for(b, f"late-b-{kind}")
        log_a.info(line("p0t0", 0))
        log_b.info(line("p1t0", 0))
        a.flush()
        b.flush()
        a.doRollover()  # b's fd now names the rotated file, as when b raced the rename
        assert cbuffer.rotation.compressor.wait(10)
        os.write(b.stream.fileno(), (line("p1t0", 1) + "\n").encode())  # b's batch in flight
        log_a.info(line("p0t0", 1))
    finally:
        a.close()
        b.close()
    assert cbuffer.rotation.compressor.wait(10)
    files = all_files(path, ".gz")
    assert all(n.endswith(".gz") for n, _ in files[:-1]), [os.path.basename(n) for n, _ in files]
    assert len(files) == 2, [os.path.basename(n) for n, _ in files]
    check_records(files, {"p0t0": 2, "p1t0": 2})


def test_gzip_timed_rotation(tmp_path):
    path = tmp_path / "app.log"
    h = ConcurrentTimedRotatingFileHandler(path, when="S", backupCount=2, encoding="utf-8",
                                           compress="gzip")
    try:
        log = logger_for(h, "gzip-timed")
        deadline = time.time() + 3.5
        i = 0
        while time.time() < deadline:
            log.info(line("p0t0", i, i % 40))
            i += 1
            time.sleep(0.002)
    finally:
        h.close()
    files = all_files(path, ".gz")
    assert len(files) == 3, [os.path.basename(n) for n, _ in files]
    assert all(n.endswith(".gz") for n, _ in files[:-1])
    check_records(files, {"p0t0": i}, kept=True)


# ------------------------------------------------------------------ configuration: only `class` differs

@pytest.fixture
def isolated_logging(monkeypatch):
    """dictConfig and fileConfig close every handler logging knows and
    reconfigure the root logger: give them an empty world."""
    root = logging.getLogger()
    monkeypatch.setattr(logging, "_handlerList", [])
    monkeypatch.setattr(logging, "_handlers", weakref.WeakValueDictionary())
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", root.level)
    yield
    for ref in logging._handlerList:
        h = ref()
        if h is not None:
            h.close()


# kind: (stdlib class in dictConfig, in fileConfig, cbuffer class, dictConfig keys, fileConfig args)
CONFIGS = {
    "FileHandler": (
        "logging.FileHandler", "FileHandler", "cbuffer.handlers.ConcurrentFileHandler",
        {"mode": "a"}, "({path!r}, 'a', 'utf-8')"),
    "RotatingFileHandler": (
        "logging.handlers.RotatingFileHandler", "handlers.RotatingFileHandler",
        "cbuffer.handlers.ConcurrentRotatingFileHandler",
        {"maxBytes": 16384, "backupCount": 50}, "({path!r}, 'a', 16384, 50, 'utf-8')"),
    "TimedRotatingFileHandler": (
        "logging.handlers.TimedRotatingFileHandler", "handlers.TimedRotatingFileHandler",
        "cbuffer.handlers.ConcurrentTimedRotatingFileHandler",
        {"when": "midnight", "backupCount": 7}, "({path!r}, 'midnight', 1, 7, 'utf-8')"),
    "WatchedFileHandler": (
        "logging.handlers.WatchedFileHandler", "handlers.WatchedFileHandler",
        "cbuffer.handlers.ConcurrentWatchedFileHandler", {"mode": "a"}, "({path!r}, 'a', 'utf-8')"),
}

INI = """
[loggers]
keys=root,app

[handlers]
keys=file

[formatters]
keys=plain

[logger_root]
level=WARNING
handlers=

[logger_app]
level=DEBUG
handlers=file
qualname=cbuffer.test.rotation.config
propagate=0

[handler_file]
class={cls}
level=INFO
formatter=plain
args={args}

[formatter_plain]
format=%(levelname)s %(message)s
"""


def _configure(how, cls, keys, args, path):
    if how == "dictConfig":
        logging.config.dictConfig({
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"plain": {"format": "%(levelname)s %(message)s"}},
            "handlers": {"file": {"class": cls, "formatter": "plain", "level": "INFO",
                                  "filename": str(path), "encoding": "utf-8", **keys}},
            "loggers": {"cbuffer.test.rotation.config": {
                "handlers": ["file"], "level": "DEBUG", "propagate": False}},
        })
    else:
        ini = path.parent / "logging.ini"
        ini.write_text(INI.format(cls=cls, args=args.format(path=str(path))))
        logging.config.fileConfig(ini, disable_existing_loggers=False)


ATTRIBUTES = ("mode", "encoding", "errors", "delay", "level", "terminator", "maxBytes", "backupCount",
              "when", "interval", "suffix", "utc", "atTime", "namer", "rotator")


@pytest.mark.parametrize("how", ["dictConfig", "fileConfig"])
@pytest.mark.parametrize("kind", list(CONFIGS))
def test_config_that_differs_only_in_class(isolated_logging, tmp_path, how, kind):
    dict_std, ini_std, ours, keys, args = CONFIGS[kind]
    seen = {}
    for side, cls in (("stdlib", dict_std if how == "dictConfig" else ini_std), ("cbuffer", ours)):
        (tmp_path / side).mkdir()
        path = tmp_path / side / "app.log"
        _configure(how, cls, keys, args, path)
        h, = logging.getLogger("cbuffer.test.rotation.config").handlers
        assert type(h).__name__ == ("Concurrent" if side == "cbuffer" else "") + kind
        assert isinstance(h, getattr(logging.handlers, kind, logging.FileHandler))
        attributes = {name: getattr(h, name, None) for name in ATTRIBUTES}
        attributes.update(file=os.path.relpath(h.baseFilename, tmp_path / side), format=h.formatter._fmt,
                          ext=getattr(getattr(h, "extMatch", None), "pattern", None))
        log = logging.getLogger("cbuffer.test.rotation.config")
        for i in range(1200):
            log.debug("filtered out by the handler's level")
            (log.warning if i % 10 == 0 else log.info)(line("p0t0", i, i % 50))
        h.close()
        files = all_files(path)
        for name, data in files:
            assert len(data) < keys.get("maxBytes", 1 << 30), name
        seen[side] = (attributes, b"".join(d for _, d in files))
        names = [os.path.basename(n) for n, _ in files]
        assert names[-1] == "app.log" and len(names) <= keys.get("backupCount", 0) + 1
        if kind == "RotatingFileHandler":
            assert len(names) > 3
    assert seen["cbuffer"][0] == seen["stdlib"][0]
    assert seen["cbuffer"][1] == seen["stdlib"][1]


# ------------------------------------------------------------------ flush_level, flush_interval

@pytest.mark.parametrize("kind", KINDS)
def test_error_record_is_on_the_file_when_emit_returns(tmp_path, kind):
    path = tmp_path / "app.log"
    h = make_handler(kind, path, flush_interval=3600, **({"when": "h"} if kind == "timed" else {}))
    try:
        assert h.flush_level == logging.ERROR
        log = logger_for(h, f"flush-level-{kind}")
        log.info(line("p0t0", 0))
        log.warning(line("p0t0", 1))
        assert read(path) == b"", "an INFO record was written at once: nothing to test"
        log.error(line("p0t0", 2))
        assert [s for _, s in parse(read(path))] == [0, 1, 2]
        log.info(line("p0t0", 3))
        log.critical(line("p0t0", 4))
        assert [s for _, s in parse(read(path))] == [0, 1, 2, 3, 4]
    finally:
        h.close()


@pytest.mark.parametrize("kind", KINDS)
def test_flush_level_none_and_debug(tmp_path, kind):
    path = tmp_path / "app.log"
    extra = {"when": "h"} if kind == "timed" else {}
    h = make_handler(kind, path, flush_interval=3600, flush_level=None, **extra)
    try:
        logger_for(h, f"flush-none-{kind}").critical(line("p0t0", 0))
        assert read(path) == b""
    finally:
        h.close()
    assert read(path) == (line("p0t0", 0) + "\n").encode()
    h = make_handler(kind, path, flush_interval=3600, flush_level=logging.DEBUG, **extra)
    try:
        logger_for(h, f"flush-debug-{kind}").debug(line("p0t0", 1))
        assert [s for _, s in parse(read(path))] == [0, 1]
    finally:
        h.close()


@pytest.mark.parametrize("kind", KINDS)
def test_info_record_reaches_the_file_within_the_default_flush_interval(tmp_path, kind):
    path = tmp_path / "app.log"
    h = make_handler(kind, path, **({"when": "h"} if kind == "timed" else {}))
    try:
        assert DEFAULT_FLUSH_INTERVAL == 1.0
        assert h.stream._core.flush_interval == DEFAULT_FLUSH_INTERVAL
        logger_for(h, f"flush-interval-{kind}").info(line("p0t0", 0))
        t0 = time.monotonic()
        while not read(path) and time.monotonic() - t0 < 10:
            time.sleep(0.01)
        elapsed = time.monotonic() - t0
        assert read(path) == (line("p0t0", 0) + "\n").encode()
        assert elapsed < DEFAULT_FLUSH_INTERVAL + 1.0, f"reached the file after {elapsed:.2f} s"
    finally:
        h.close()


@pytest.mark.parametrize("kind", KINDS)
def test_record_without_a_level_is_written_as_stdlib_writes_it(tmp_path, kind):
    """logging.makeLogRecord() without a level (CPython's own tests, records
    rebuilt from a dict) has levelno None: the standard handlers write it;
    so must these, flush_level or not."""
    path = tmp_path / "app.log"
    h = make_handler(kind, path, **({"when": "h"} if kind == "timed" else {}))
    failures = []
    h.handleError = failures.append
    try:
        h.setFormatter(logging.Formatter("%(message)s"))
        h.handle(logging.makeLogRecord({"msg": "no level"}))
    finally:
        h.close()
    assert failures == [], "handleError was called for a record the standard handler writes"
    assert read(path) == b"no level\n"


# ------------------------------------------------------------------ process life

LIFE_SCRIPT = """
import os, threading
import multiprocessing

threads_at_fork = []
# Registered before cbuffer is imported: before-hooks run in reverse order,
# so this runs after cbuffer's own and sees what really crosses the fork.
os.register_at_fork(before=lambda: threads_at_fork.append(
    sorted(t.name for t in threading.enumerate() if t is not threading.main_thread())))
""" + PRELUDE + """
path, kind, scenario = sys.argv[1:4]
handler = make_handler(kind, path)
log = logger_for(handler, "life")


def burst(proc, threads=2, n=300, pause=0.0):
    def work(t):
        for i in range(n):
            log.info(line(f"p{proc}t{t}", i, (7 * i + t) % 40))
            if i == n // 2:
                time.sleep(pause)
    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def task(k):
    for i in range(100):
        log.info(line(f"p{10 + k}t0", i, i % 40))
        if i == 50:
            time.sleep(0.1)
    return k


def near_a_second():
    # 0.15 s before a whole second: the next phase takes longer than that,
    # so a when="S" handler's rollover time comes in the middle of it.
    time.sleep((0.85 - time.time() % 1.0) % 1.0)


if __name__ == "__main__":
    burst(0)
    if scenario == "fork":
        near_a_second()
        pid = os.fork()
        if pid == 0:
            burst(1, pause=0.3)
            sys.exit(0)  # a normal exit of the child: atexit, logging.shutdown()
        _, status = os.waitpid(pid, 0)
        assert status == 0, status
        burst(2)
    elif scenario == "pool":
        near_a_second()
        pool = multiprocessing.get_context("fork").Pool(2)
        assert pool.map(task, range(8)) == list(range(8))
        pool.close()
        pool.join()
        burst(2)
    elif scenario == "shutdown":
        logging.shutdown()
        burst(3, threads=1, n=400)  # reopens the file, as FileHandler does (and rotates on)
    print(json.dumps(threads_at_fork), flush=True)
    # no close(): the process ends as most do
"""

LIFE_EXPECTED = {
    "exit": {"p0t0": 300, "p0t1": 300},
    "fork": {f"p{p}t{t}": 300 for p in range(3) for t in range(2)},
    "pool": dict({f"p0t{t}": 300 for t in range(2)}, **{f"p2t{t}": 300 for t in range(2)},
                 **{f"p{10 + k}t0": 100 for k in range(8)}),
    "shutdown": {"p0t0": 300, "p0t1": 300, "p3t0": 400},
}


@pytest.mark.parametrize("scenario", list(LIFE_EXPECTED))
@pytest.mark.parametrize("kind", KINDS)
def test_process_life(tmp_path, kind, scenario):
    """Each handler kind, made in the parent and never closed: the process
    exits normally; or forks a child that logs through the same handler and
    exits normally; or runs a fork pool whose workers log; or logs after
    logging.shutdown().  Every record once, in order, across all the files
    (the child and the pool workers log across a whole second, so the
    when="S" handler rotates while several processes share it); no cbuffer
    thread alive at any fork; nothing on stderr."""
    path = tmp_path / "app.log"
    out, err = run(LIFE_SCRIPT, path, kind, scenario)
    assert err == "", err
    for threads in json.loads(out.splitlines()[-1]):
        assert not [t for t in threads if "cbuffer" in t], f"threads alive at fork: {threads}"
    files = all_files(path)
    check_records(files, LIFE_EXPECTED[scenario])
    if kind == "rotating":
        assert len(files) >= 2
        check_sizes(files, 16384, 4096, processes=3 if scenario in ("fork", "pool") else 1)


GZIP_FORK_SCRIPT = """
import os, threading

threads_at_fork = []
os.register_at_fork(before=lambda: threads_at_fork.append(
    sorted(t.name for t in threading.enumerate() if t is not threading.main_thread())))
""" + PRELUDE + """
import cbuffer.rotation

path = sys.argv[1]
handler = ConcurrentRotatingFileHandler(path, maxBytes=4096, backupCount=10, encoding="utf-8",
                                        compress="gzip")
log = logger_for(handler, "gzip-fork")
for i in range(300):
    log.info(line("p0t0", i, 40))
handler.flush()
assert cbuffer.rotation.compressor.wait(10)
pid = os.fork()
if pid == 0:
    log.info(line("p1t0", 0))
    handler.close()
    os._exit(0)
os.waitpid(pid, 0)
handler.close()
print(json.dumps(threads_at_fork))
"""


def test_fork_after_gzip_rotation_has_no_cbuffer_thread_alive(tmp_path):
    """Once the background gzip is done, nothing of cbuffer's runs: a fork
    then crosses no thread (3.12+ would warn about one)."""
    out, err = run(GZIP_FORK_SCRIPT, tmp_path / "app.log", flags=["-W", "error::DeprecationWarning"])
    assert "DeprecationWarning" not in err, err
    threads, = json.loads(out.splitlines()[-1])
    assert threads == [], f"threads alive at fork: {threads}"
