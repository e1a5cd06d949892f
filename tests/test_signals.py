"""Signals against every call that can wait, each case in its own process.

The sink is a pipe whose reader has stopped reading: the pipe is filled
before the writer exists, so the writer's first hand-over blocks and every
call that needs the sink waits.  A SIGALRM (signal.setitimer) or SIGINT then
arrives while the call waits.  The child measures, prints a JSON summary and
saves what the reader finally received; the parent judges.  A hang is a
subprocess timeout here, never a stuck test run.

Every write is a self-identifying record (cbuffer._testing.make_record):
thread id 0 for the main program, 1 for the signal handler.  The check is on
the bytes the reader received: every write that returned exactly once and
whole, none that was refused, each thread's in order.
"""
import json
import os
import subprocess
import sys

import pytest

import cbuffer
from records import parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(cbuffer.__file__)))
TIMEOUT = 10
PROMPT = 1.0  # seconds from signal to the caller: what io.BufferedWriter manages

CHILD = r"""
import fcntl, io, json, os, signal, sys, threading, time
import cbuffer
from cbuffer._testing import make_record

out, call, action, kind = sys.argv[1:5]
ALARM = 0.2    # the signal arrives this long after the call began
RESUME = 0.6   # a handler that waits: the reader resumes this long after it ran
SAFETY = 3.0   # the reader resumes by then whatever happens: a stuck call ends late, not never

r, wfd = os.pipe()
try:
    fcntl.fcntl(wfd, getattr(fcntl, "F_SETPIPE_SZ", 1031), 4096)
except OSError:
    pass
# Fill the pipe while nobody reads it: from now on the sink is stalled.
os.set_blocking(wfd, False)
filler = 0
try:
    while True:
        filler += os.write(wfd, b"\0" * 4096)
except BlockingIOError:
    pass
os.set_blocking(wfd, True)

received = bytearray()
resume = threading.Event()


def reader():
    resume.wait()
    while True:
        chunk = os.read(r, 1 << 16)
        if not chunk:
            return
        received.extend(chunk)


reading = threading.Thread(target=reader, daemon=True)
reading.start()
safety = threading.Timer(SAFETY, resume.set)
safety.daemon = True
safety.start()

if kind == "io":
    w = io.BufferedWriter(io.FileIO(wfd, "wb"), 4096)
else:
    w = cbuffer.ConcurrentBufferedWriter(wfd, buffer_size=4096, buffer_count=2)

returned, refused = [], []
seqs = [0, 0]
state = {"in_call": False, "handler_at": None, "handler_in_call": None, "handler": None}


def put(tid, size):
    seq = seqs[tid]
    seqs[tid] += 1
    try:
        w.write(make_record(tid, seq, size, 0))
    except BaseException as exc:
        refused.append([tid, seq, type(exc).__name__])
        raise
    returned.append([tid, seq])


class Alarm(Exception):
    pass


def handler(signum, frame):
    state["handler_at"] = time.monotonic()
    state["handler_in_call"] = state["in_call"]
    if action == "raise":
        raise Alarm()
    later = threading.Timer(RESUME, resume.set)
    later.daemon = True
    later.start()
    try:
        if action == "write-small":
            put(1, 100)
        elif action == "write-large":
            put(1, 20000)
        elif action == "close":
            w.close()
        state["handler"] = "returned"
    except ValueError as exc:  # a write while close() runs may be refused, never half-done
        state["handler"] = type(exc).__name__


if action == "sigint":
    kill = threading.Timer(ALARM, os.kill, (os.getpid(), signal.SIGINT))
    kill.daemon = True
else:
    signal.signal(signal.SIGALRM, handler)

# Data accepted before the call that waits.
if call in ("flush", "close"):
    put(0, 1000)

outcome = "returned"
t0 = time.monotonic()
if action == "sigint":
    kill.start()
else:
    signal.setitimer(signal.ITIMER_REAL, ALARM)
t_due = t0 + ALARM
state["in_call"] = True
try:
    if call == "small":
        # the ring fills within a few dozen writes; stop once the handler ran
        while state["handler_at"] is None:
            put(0, 100)
    elif call == "large":
        put(0, 20000)
    elif call == "flush":
        w.flush()
    elif call == "close":
        w.close()
except BaseException as exc:
    outcome = type(exc).__name__
state["in_call"] = False
t_end = time.monotonic()
if action == "sigint" and state["handler_at"] is None:
    state["handler_in_call"] = True  # the default handler raised inside the call, or nothing ran

resume.set()
final_close = "returned"
try:
    w.close()
except BaseException as exc:
    final_close = type(exc).__name__
try:
    os.fstat(wfd)
    os.close(wfd)  # the reader needs EOF even if close() left the fd open
    fd_left_open = True
except OSError:
    fd_left_open = False
reading.join(5)
with open(out, "wb") as f:
    f.write(received)
print(json.dumps({
    "filler": filler, "outcome": outcome, "elapsed": t_end - t_due,
    "handler_in_call": state["handler_in_call"], "handler": state["handler"],
    "returned": returned, "refused": refused, "final_close": final_close,
    "fd_left_open": fd_left_open,
}))
"""

RAW_CHILD = r"""
import io, json, os, signal, sys, threading, time
import cbuffer
from cbuffer._testing import make_record

out, where, action = sys.argv[1:4]


class SlowRaw(io.RawIOBase):
    # The main thread is inside this raw's write() (auto_flush=False: flush()
    # dispatches in the caller) or flush() (auto_flush=True) when the signal comes.
    def __init__(self, f):
        self.f = f
        self.inside = False
        self.slow = True

    def writable(self):
        return True

    def write(self, b):
        if where == "write" and self.slow:
            self.slow = False
            self.inside = True
            time.sleep(0.5)
            self.inside = False
        return self.f.write(b)

    def flush(self):
        if where == "flush" and self.slow:
            self.slow = False
            self.inside = True
            time.sleep(0.5)
            self.inside = False
        self.f.flush()

    def close(self):
        try:
            super().close()  # flushes first, as io does
        finally:
            self.f.close()


raw = SlowRaw(open(out, "wb", buffering=0))
w = cbuffer.ConcurrentBufferedWriter(raw, buffer_size=4096, buffer_count=4,
                                     auto_flush=(where == "flush"))
returned, refused = [], []
seqs = [0, 0]
state = {"handler": None, "handler_in_raw": None}


def put(tid, size):
    seq = seqs[tid]
    seqs[tid] += 1
    try:
        w.write(make_record(tid, seq, size, 0))
    except BaseException as exc:
        refused.append([tid, seq, type(exc).__name__])
        raise
    returned.append([tid, seq])


def handler(signum, frame):
    state["handler_in_raw"] = raw.inside
    try:
        if action == "write-small":
            put(1, 100)
        elif action == "write-large":
            put(1, 20000)
        elif action == "close":
            w.close()
        state["handler"] = "returned"
    except BlockingIOError as exc:
        # auto_flush=False may refuse a write it cannot hold, with nothing taken
        state["handler"] = "BlockingIOError/%d" % exc.characters_written
    except BaseException as exc:
        state["handler"] = type(exc).__name__


signal.signal(signal.SIGALRM, handler)
for _ in range(3):
    put(0, 1000)
signal.setitimer(signal.ITIMER_REAL, 0.1)
outcome = "returned"
t0 = time.monotonic()
try:
    w.flush()
except BaseException as exc:
    outcome = type(exc).__name__
elapsed = time.monotonic() - t0
final_close = "returned"
try:
    w.close()
except BaseException as exc:
    final_close = type(exc).__name__
if not raw.closed:
    raw.close()
print(json.dumps({"outcome": outcome, "elapsed": elapsed, "returned": returned,
                  "refused": refused, "final_close": final_close, **state}))
"""


def run(script, *args):
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("PYTHONWARNINGS", None)
    try:
        proc = subprocess.run([sys.executable, "-c", script, *map(str, args)], env=env,
                              capture_output=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the process hung (killed after {TIMEOUT} s): {exc.stderr!r}")
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


def check_stream(data, res, may_land=()):
    """What the reader got: the pipe's filler, then exactly the writes that
    returned (each once, whole, each thread's in order), plus at most the
    interrupted writes in ``may_land`` (whole or not at all)."""
    filler = res.get("filler", 0)
    assert data[:filler] == b"\0" * filler
    if res.get("final_close") == "returned":
        assert res.get("fd_left_open") is not True, "close() returned but left the pipe open"
    records = parse(data[filler:])
    got = [(r.tid, r.seq) for r in records]
    assert len(got) == len(set(got)), f"a write landed twice: {got}"
    returned = {tuple(x) for x in res["returned"]}
    missing = returned - set(got)
    assert not missing, f"writes that returned never reached the sink: {sorted(missing)}"
    extra = set(got) - returned - set(may_land)
    assert not extra, f"writes that were refused reached the sink: {sorted(extra)}"
    for tid in (0, 1):
        seqs = [s for t, s in got if t == tid]
        assert seqs == sorted(seqs), f"thread {tid}'s writes out of order: {seqs}"


CALLS = ["small", "large", "flush", "close"]


# ------------------------------------------------------------------ (a) a handler that raises

@pytest.mark.parametrize("call", CALLS)
def test_raising_handler_reaches_caller_promptly(tmp_path, call):
    """The exception a SIGALRM handler raises reaches the waiting caller
    within a second; afterwards what was accepted reaches the pipe and what
    was refused does not."""
    out = tmp_path / "received"
    res = run(CHILD, out, call, "raise", "cbuffer")
    assert res["handler_in_call"] is True, "the signal did not arrive while the call waited"
    assert res["outcome"] == "Alarm", f"the call ended with {res['outcome']}, not the handler's exception"
    assert res["elapsed"] < PROMPT, f"the exception took {res['elapsed']:.2f} s to reach the caller"
    interrupted = [(t, s) for t, s, name in res["refused"] if name == "Alarm"]
    # a small write waits before it takes anything; a large one may already
    # be queued when interrupted, and then lands whole
    check_stream(out.read_bytes(), res, may_land=interrupted if call == "large" else ())
    assert res["final_close"] == "returned"


# ------------------------------------------------------------------ (b, c) handlers that write or close

@pytest.mark.parametrize("action", ["write-small", "write-large", "close"])
@pytest.mark.parametrize("call", CALLS)
def test_handler_writes_or_closes_without_deadlock_or_loss(tmp_path, call, action):
    out = tmp_path / "received"
    res = run(CHILD, out, call, action, "cbuffer")
    assert res["handler_in_call"] is True, "the signal did not arrive while the call waited"
    assert res["handler"] in ("returned", "ValueError"), f"the handler's {action} failed: {res}"
    # the reader resumes 0.6 s after the handler; 3 s is the safety net
    assert res["elapsed"] < 2.0, f"the call finished only after {res['elapsed']:.2f} s: deadlock"
    if action == "close":
        # the call raced the close: it lands whole or raises ValueError
        assert res["outcome"] in ("returned", "ValueError"), res
    else:
        assert res["outcome"] == "returned", res
    check_stream(out.read_bytes(), res)


# ------------------------------------------------------------------ a handler inside raw.write()/raw.flush()

@pytest.mark.parametrize("action", ["write-small", "write-large", "close"])
@pytest.mark.parametrize("where", ["write", "flush"])
def test_handler_while_main_thread_is_inside_raw(tmp_path, where, action):
    """The main thread is inside the Python raw's write() (auto_flush=False,
    its flush() dispatches) or flush() when the handler writes to, or closes,
    the same writer."""
    out = tmp_path / "received"
    res = run(RAW_CHILD, out, where, action)
    assert res["handler_in_raw"] is True, "the signal did not arrive inside the raw"
    allowed = ["returned"]
    if where == "write" and action == "write-large":
        allowed.append("BlockingIOError/0")  # auto_flush=False cannot hold a large write
    assert res["handler"] in allowed, f"the handler's {action} raised {res['handler']}"
    assert res["outcome"] in (("returned", "ValueError") if action == "close" else ("returned",)), res
    assert res["final_close"] == "returned", res
    check_stream(out.read_bytes(), res)


# ------------------------------------------------------------------ Ctrl-C

@pytest.mark.parametrize("call", ["flush", "close"])
def test_sigint_reaches_caller_promptly(tmp_path, call):
    """os.kill(getpid(), SIGINT) while flush() or close() waits for a stalled
    pipe: KeyboardInterrupt within a second, not swallowed, nothing lost."""
    out = tmp_path / "received"
    res = run(CHILD, out, call, "sigint", "cbuffer")
    assert res["outcome"] == "KeyboardInterrupt", f"{call}() ended with {res['outcome']}"
    assert res["elapsed"] < PROMPT, f"KeyboardInterrupt took {res['elapsed']:.2f} s"
    check_stream(out.read_bytes(), res)


def test_sigint_reaches_bufferedwriter_flush_promptly(tmp_path):
    """The same harness with io.BufferedWriter: the standard cbuffer is held to."""
    out = tmp_path / "received"
    res = run(CHILD, out, "flush", "sigint", "io")
    assert res["outcome"] == "KeyboardInterrupt"
    assert res["elapsed"] < PROMPT
