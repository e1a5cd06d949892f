"""Stress: layer 3 under everything at once, every byte checked afterwards.

16 threads write self-identifying records (cbuffer._testing.make_record) of
0 or 28 to 3 x buffer_size bytes, so both the copy path and the large direct
path are hit; 12 of them use append() and keep the position it returned, 4
use write().  Meanwhile other threads race flush(), tell(), stats() and
clear_error() against a sink that fails now and then.  At a quarter, half and
three quarters of the run the main thread forks: each child writes records of
its own to its own output and exits.  At the end the faults stop and the main
thread closes the writer while the 16 writers are still writing.

Two sinks:

* ``pyraw``: a Python raw whose write() sometimes raises OSError(ENOSPC)
  (nothing taken) or takes only part of what it is offered (now and then
  nothing), over a file that starts with a prefix (positions start at
  raw.tell()).
* ``fd``: a non-blocking pipe (short writes, EAGAIN), drained by a thread of
  the same process into a file, swapped for /dev/full (ENOSPC) behind the
  writer's back now and then; flush_interval seals buffers as well.

What is checked (CONTRACT.md): each thread's accepted records are in the sink
exactly once, whole, in that thread's order, each where append() said; a write
that raised (the sticky OSError, or ValueError once close() began) wrote
nothing and the writer retries the same record after an OSError; each sticky
error raised is a fresh exception with errno ENOSPC; tell() never goes
backwards nor behind an append that already returned; after flush() returns,
every append that returned before it is in the sink; stats() counters never
go backwards and agree with the sink at the end; close() with the faults gone
raises nothing and every thread's last write raised ValueError("write to
closed file"); each fork child's output holds exactly its own records, none
of the parent's.  Every problem is collected and reported together.

The scenario runs in a subprocess (this file run as a script) so that a hang
is a timeout with every thread's stack and fork() never runs in pytest's own
process.  ``python -m pytest -m stress`` runs CBUFFER_STRESS_APPENDS appends
(default 10**7, split over the two sinks); the default suite runs the same
scenario with 2*10**5 (``test_stress_short``).  A failure names its seed;
CBUFFER_STRESS_SEED=<seed> repeats the same sizes and faults (not the same
thread interleaving).
"""
import errno
import faulthandler
import fcntl
import json
import os
import random
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
import traceback
import warnings
import zlib
from array import array

import pytest

THREADS = 16
APPEND_THREADS = 12          # 0..11 append(), 12..15 write()
CHILD_TID = 1000             # fork child k writes as thread CHILD_TID + k
FORKS = 3                    # at 1/4, 1/2 and 3/4 of the run
PREFIX = b"prefix, not a record\n" * 37
SINKS = {
    # name: (buffer_size, buffer_count, flush_interval)
    "pyraw": (4096, 16, None),
    "fd": (8192, 2, 0.005),
}
SHORT_APPENDS = 2 * 10 ** 5
APPENDS = int(os.environ.get("CBUFFER_STRESS_APPENDS", 10 ** 7))
STALL = 30.0                 # no append completing for this long is a hang


def run_timeout(appends_per_sink):
    return 60.0 + appends_per_sink * 150e-6


# ------------------------------------------------------------------ pytest side

def run_stress(tmp_path, sink, appends):
    """Run the scenario in a subprocess and fail with everything it found."""
    import cbuffer
    root = os.path.dirname(os.path.dirname(os.path.abspath(cbuffer.__file__)))
    env = dict(os.environ, PYTHONPATH=root)
    env.pop("PYTHONWARNINGS", None)
    timeout = run_timeout(appends)
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), sink, str(appends),
                             str(tmp_path), str(timeout)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout + 30)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)  # faulthandler dumps every thread's stack
        try:
            out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(f"[{sink}] the stress run hung past {timeout + 30:.0f}s\n"
                    f"stdout:\n{out.decode(errors='replace')[-5000:]}\n"
                    f"stderr:\n{err.decode(errors='replace')[-20000:]}")
    result = None
    for line in out.decode(errors="replace").splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
    stderr = err.decode(errors="replace")
    if result is None:
        pytest.fail(f"[{sink}] the stress run ended (exit {proc.returncode}) without a result\n"
                    f"stderr:\n{stderr[-20000:]}")
    findings = result.pop("findings")
    if findings:
        lines = [f"[{sink}] {sum(f['count'] for f in findings.values())} contract violations "
                 f"({json.dumps(result)}):"]
        for kind, f in sorted(findings.items()):
            lines.append(f"  {kind}: {f['count']}")
            lines.extend(f"      {e}" for e in f["examples"])
        if stderr.strip():
            lines.append(f"stderr:\n{stderr[-20000:]}")
        pytest.fail("\n".join(lines), pytrace=False)
    assert proc.returncode == 0, stderr[-20000:]


@pytest.mark.parametrize("sink", list(SINKS))
def test_stress_short(tmp_path, sink):
    run_stress(tmp_path, sink, SHORT_APPENDS // len(SINKS))


@pytest.mark.stress
@pytest.mark.timeout(run_timeout(APPENDS // len(SINKS)) + 120)
@pytest.mark.parametrize("sink", list(SINKS))
def test_stress(tmp_path, sink):
    # The run guards itself (timeout, then every stack of the scenario); the
    # ini's faulthandler_timeout would only dump this idle process's stack.
    faulthandler.cancel_dump_traceback_later()
    run_stress(tmp_path, sink, APPENDS // len(SINKS))


# ------------------------------------------------------------------ the scenario (subprocess)

class Findings:
    """Contract violations by kind: a count and the first few examples."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {}
        self.examples = {}

    def add(self, kind, msg):
        with self.lock:
            n = self.counts.get(kind, 0)
            self.counts[kind] = n + 1
            if n < 6:
                self.examples.setdefault(kind, []).append(msg)

    def as_dict(self):
        return {k: {"count": c, "examples": self.examples.get(k, [])}
                for k, c in self.counts.items()}


def record_size(rng, buffer_size):
    r = rng.random()
    if r < 0.02:
        return 0
    if r < 0.90:
        return rng.randint(28, 256)
    if r < 0.97:
        return rng.randint(257, buffer_size)
    return rng.randint(buffer_size + 1, 3 * buffer_size)  # the direct path


class PyRawSink:
    """A write()-only raw over a file: sometimes raises OSError(ENOSPC)
    before taking anything, sometimes takes a prefix (possibly nothing)."""

    def __init__(self, path, seed):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.write(self.fd, PREFIX)
        self.start = len(PREFIX)
        self.received = 0
        self.faults = True
        self.lock = threading.Lock()  # the fault decision and its raise, against stop_faults()
        self.rng = random.Random(seed)
        self.injected = {"enospc": 0, "short": 0}

    def seekable(self):
        return True

    def tell(self):
        return self.start + self.received

    def write(self, b):
        n = len(b)
        with self.lock:
            if self.faults:
                r = self.rng.random()
                if r < 0.01:
                    self.injected["enospc"] += 1
                    raise OSError(errno.ENOSPC, "injected: no space left on device")
                if r < 0.11 and n > 1:
                    self.injected["short"] += 1
                    n = 0 if r < 0.015 else self.rng.randint(1, n - 1)
        done = os.write(self.fd, b[:n]) if n else 0
        self.received += done
        return done

    def close(self):
        os.close(self.fd)

    # -- driver interface
    def make_writer(self, cbw, size, count, interval):
        return cbw(self, size, buffer_count=count, flush_interval=interval)

    def have(self):
        return self.start + self.received

    def stop_faults(self):
        with self.lock:
            self.faults = False

    def in_child(self, path):
        self.lock = threading.Lock()  # a parent thread may have held it at fork()
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        self.start = self.received = 0
        self.faults = False

    def finish(self):
        pass


class FdSink:
    """A non-blocking pipe (short writes, EAGAIN) drained into a file by a
    process of its own (a thread would wait for the GIL and throttle it); a
    thread points the writer's fd at /dev/full now and then (dup2 keeps the
    pipe's description, so nothing is lost or reordered by it)."""

    def __init__(self, path, seed):
        import multiprocessing
        r, w = os.pipe()
        # bytes the drainer took out of the pipe, counted before it takes them
        self.taken = multiprocessing.Value("q", 0)
        self.drainer = os.fork()  # before any thread of this process exists
        if self.drainer == 0:
            code = 1
            try:
                os.close(w)
                self._drain(r, path)
                code = 0
            finally:
                os._exit(code)
        os.set_blocking(w, False)
        self.rfd, self.real = r, w
        self.devfull = os.open("/dev/full", os.O_WRONLY)
        # far above what open() hands out, so no other file takes its number
        self.fd = fcntl.fcntl(w, fcntl.F_DUPFD_CLOEXEC, 900)
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.injected = {"enospc_windows": 0}
        self.injector = threading.Thread(target=self._inject, daemon=True)
        self.injector.start()

    def _drain(self, rfd, path):
        buf = array("i", [0])
        with open(path, "wb") as out:
            while True:
                select.select([rfd], [], [])
                fcntl.ioctl(rfd, termios.FIONREAD, buf)
                if buf[0] == 0:
                    return  # readable and empty: every write end is closed
                with self.taken.get_lock():
                    self.taken.value += buf[0]
                left = buf[0]
                while left:  # the only reader: exactly what FIONREAD said is there
                    chunk = os.read(rfd, left)
                    out.write(chunk)
                    left -= len(chunk)

    def _inject(self):
        while not self.stop.wait(self.rng.uniform(0.002, 0.012)):
            os.dup2(self.devfull, self.fd, inheritable=False)
            self.injected["enospc_windows"] += 1
            time.sleep(self.rng.uniform(0.0002, 0.002))
            os.dup2(self.real, self.fd, inheritable=False)

    # -- driver interface
    def make_writer(self, cbw, size, count, interval):
        return cbw(self.fd, size, buffer_count=count, flush_interval=interval)

    def have(self):
        # In the pipe, then taken: a byte moving between the two reads is
        # counted twice at worst, never missed.
        buf = array("i", [0])
        fcntl.ioctl(self.rfd, termios.FIONREAD, buf)
        with self.taken.get_lock():
            return self.taken.value + buf[0]

    def stop_faults(self):
        self.stop.set()
        self.injector.join()
        os.dup2(self.real, self.fd, inheritable=False)

    def in_child(self, path):
        out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(out, self.fd, inheritable=False)
        os.close(out)

    def finish(self):
        # The writer closed self.fd: EOF once our other write end is closed
        # (and the fork children, which held copies, have exited).
        os.close(self.real)
        os.close(self.devfull)
        end = time.monotonic() + 60
        while time.monotonic() < end:
            pid, status = os.waitpid(self.drainer, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status) == 0
            time.sleep(0.01)
        os.kill(self.drainer, signal.SIGKILL)
        return False


def tb_depth(exc):
    n, tb = 0, exc.__traceback__
    while tb is not None:
        n, tb = n + 1, tb.tb_next
    return n


def scenario(sink_name, appends, outdir, timeout):
    from cbuffer import ConcurrentBufferedWriter as CBW
    from cbuffer._testing import make_record

    faulthandler.enable(all_threads=True)  # SIGABRT from a timeout dumps every stack
    # A short switch interval hands the GIL round more often: more interleavings.
    sys.setswitchinterval(0.0005)
    t_start = time.monotonic()
    seed = int(os.environ.get("CBUFFER_STRESS_SEED", random.randrange(1 << 30)))
    size, count, interval = SINKS[sink_name]
    findings = Findings()
    parent_path = os.path.join(outdir, f"{sink_name}.out")
    child_path = os.path.join(outdir, f"{sink_name}.child")
    sink = (PyRawSink if sink_name == "pyraw" else FdSink)(parent_path, seed)
    w = sink.make_writer(CBW, size, count, interval)
    base = w.tell()
    expected_base = len(PREFIX) if sink_name == "pyraw" else 0
    if base != expected_base:
        findings.add("start_position", f"tell() is {base} at the start, the sink is at {expected_base}")

    told_pos = [array("q") for _ in range(THREADS)]
    told_len = [array("I") for _ in range(THREADS)]
    refused = [None] * THREADS       # the seq of the write that raised ValueError
    counts = [0] * THREADS
    sticky_seen = [0] * THREADS
    last_end = [0] * THREADS         # end of each append thread's last returned append
    state = {"closing": False}
    start = threading.Barrier(THREADS + 7 + 1)
    stop = threading.Event()
    done_writers = []

    def guard(name, fn, *args):
        def body():
            try:
                fn(*args)
            except BaseException:
                findings.add("thread_crashed", f"{name}: {traceback.format_exc()}")
                try:
                    start.abort()
                except threading.BrokenBarrierError:
                    pass
        return threading.Thread(target=body, name=name, daemon=True)

    def sticky(kind, exc, last):
        if not isinstance(exc, OSError) or exc.errno != errno.ENOSPC:
            findings.add("unexpected_error", f"{kind}: {exc!r}")
        if exc is last:
            findings.add("sticky_not_fresh", f"{kind}: the same exception object raised again: {exc!r}")
        if tb_depth(exc) > 40:
            findings.add("sticky_traceback_grows",
                         f"{kind}: a raise of the sticky error carries {tb_depth(exc)} traceback entries")

    def writer(tid):
        rng = random.Random(seed * 1000 + tid)
        use_append = tid < APPEND_THREADS
        pos_out, len_out = told_pos[tid], told_len[tid]
        append, write = w.append, w.write
        last_exc = None
        start.wait(60)
        seq = 0
        while True:
            n = record_size(rng, size)
            rec = make_record(tid, seq, n, 0) if n else b""
            if tid == THREADS - 1:
                rec = memoryview(bytearray(rec))  # any contiguous bytes-like object
            while True:
                try:
                    if use_append:
                        pos = append(rec)
                    else:
                        got = write(rec)
                        if got != n:
                            findings.add("write_return", f"write() of {n} bytes returned {got}")
                        pos = -1
                    break
                except ValueError as exc:
                    if not state["closing"] or str(exc) != "write to closed file":
                        findings.add("write_refused", f"thread {tid} seq {seq}: {exc!r} "
                                     f"(close() begun: {state['closing']})")
                    refused[tid] = seq
                    done_writers.append(tid)
                    return
                except OSError as exc:
                    # the sticky error: this write wrote nothing; try it again
                    sticky(f"thread {tid} write", exc, last_exc)
                    last_exc = exc
                    sticky_seen[tid] += 1
                    time.sleep(0.0002)
                except Exception as exc:
                    # no such exception is in the contract; taken as "nothing
                    # written" (a duplicate shows if it was) and the run goes on
                    findings.add("write_unexpected_exception", f"thread {tid} seq {seq} ({n} B): {exc!r}")
                    time.sleep(0.0002)
            pos_out.append(pos)
            len_out.append(n)
            if use_append:
                last_end[tid] = pos + n
            counts[tid] = seq = seq + 1

    def flusher(k):
        rng = random.Random(seed * 7 + k)
        last_exc = None
        start.wait(60)
        while not stop.is_set():
            snap = max(last_end)
            try:
                w.flush()
            except ValueError:
                if not state["closing"]:
                    findings.add("flush_refused", traceback.format_exc(limit=2))
                return
            except OSError as exc:
                sticky("flush", exc, last_exc)
                last_exc = exc
            except Exception as exc:
                findings.add("flush_unexpected_exception", repr(exc))
            else:
                have = sink.have()
                if have < snap:
                    findings.add("flush_guarantee", f"flush() returned with the sink at {have}, "
                                 f"an append that returned before it ends at {snap}")
            time.sleep(rng.random() * 0.002)

    def teller(k):
        prev = -1
        start.wait(60)
        while not stop.is_set():
            snap = max(last_end)
            try:
                t = w.tell()
            except ValueError:
                if not state["closing"]:
                    findings.add("tell_refused", traceback.format_exc(limit=2))
                return
            if t < prev:
                findings.add("tell_backwards", f"tell() returned {t} after {prev}")
            if t < snap:
                findings.add("tell_behind", f"tell() returned {t}, an append that returned "
                             f"before the call ends at {snap}")
            prev = max(prev, t)
            if k:
                time.sleep(0.0001)

    monotonic_keys = ("bytes_written", "flushes", "syscalls", "ring_full_waits", "reservation_retries",
                      "file_switches", "dropped", "dropped_bytes")

    def stats_racer():
        prev = None
        start.wait(60)
        while not stop.is_set():
            try:
                s = w.stats()
            except ValueError:
                if not state["closing"]:
                    findings.add("stats_refused", traceback.format_exc(limit=2))
                return
            try:
                t = w.tell()
            except ValueError:
                t = None
            if set(s) != set(monotonic_keys) | {"writes", "utilization"}:
                findings.add("stats_keys", f"stats() keys: {sorted(s)}")
            if not 0.0 <= s["utilization"] <= 1.0:
                findings.add("stats_utilization", f"utilization {s['utilization']}")
            if prev is not None:
                for key in monotonic_keys:
                    if s[key] < prev[key]:
                        findings.add("stats_backwards", f"{key} went from {prev[key]} to {s[key]}")
            if t is not None and s["bytes_written"] > t - base:
                findings.add("stats_bytes_written", f"bytes_written {s['bytes_written']} before "
                             f"tell() {t} (stream started at {base})")
            prev = s
            time.sleep(0.001)

    def clearer(k):
        rng = random.Random(seed * 11 + k)
        start.wait(60)
        while not stop.is_set():
            try:
                w.clear_error()
            except ValueError:
                if not state["closing"]:
                    findings.add("clear_error_refused", traceback.format_exc(limit=2))
            time.sleep(rng.random() * 0.002)

    writers = [guard(f"writer-{t}", writer, t) for t in range(THREADS)]
    racers = [guard("flusher-0", flusher, 0), guard("flusher-1", flusher, 1),
              guard("teller-0", teller, 0), guard("teller-1", teller, 1),
              guard("stats", stats_racer), guard("clearer-0", clearer, 0),
              guard("clearer-1", clearer, 1)]
    for t in writers + racers:
        t.start()
    start.wait(60)

    def result(**extra):
        out = {"sink": sink_name, "seed": seed, "appends": sum(counts),
               "sticky_errors_seen_by_writers": sum(sticky_seen),
               "injected": sink.injected, "seconds": round(time.monotonic() - t_start, 1)}
        out.update(extra)
        out["findings"] = findings.as_dict()
        return out

    def give_up(why):
        findings.add("hang", why)
        sys.stderr.write(f"--- {why}; every thread's stack:\n")
        sys.stderr.flush()
        faulthandler.dump_traceback(all_threads=True)
        print("RESULT " + json.dumps(result()), flush=True)
        os._exit(1)

    # -- run: fork now and then, close at the end
    children = []                    # (pid, deadline)
    child_m = max(200, min(20000, appends // 50))
    deadline = t_start + timeout
    progress, progress_at = 0, time.monotonic()
    while True:
        now = time.monotonic()
        total = sum(counts)
        if total != progress:
            progress, progress_at = total, now
        elif now - progress_at > STALL:
            give_up(f"no write completed for {STALL:.0f}s at {total} appends")
        if now > deadline:
            give_up(f"only {total} of {appends} appends in {timeout:.0f}s")
        k = len(children)
        if k < FORKS and total >= appends * (k + 1) // (FORKS + 1):
            pid = fork_child(w, sink, f"{child_path}.{k}", CHILD_TID + k, child_m, size, seed)
            children.append((pid, now + 60))
        if total >= appends:
            break
        time.sleep(0.002)

    # -- the faults stop; the error left over is cleared; close() races the writers
    sink.stop_faults()
    for _ in range(10):
        w.clear_error()
        try:
            w.flush()
            break
        except OSError:
            continue
        except Exception as exc:
            findings.add("flush_unexpected_exception", repr(exc))
    else:
        findings.add("sticky_after_faults", "flush() kept raising after the faults stopped")
    state["closing"] = True
    try:
        w.close()
    except BaseException:
        findings.add("close_raised", traceback.format_exc())
    if not w.closed:
        findings.add("close", "closed is False after close()")
    try:
        w.close()
    except BaseException:
        findings.add("close_twice", traceback.format_exc())
    end = time.monotonic() + 60
    for t in writers:
        t.join(max(0.0, end - time.monotonic()))
    if any(t.is_alive() for t in writers):
        give_up(f"writers still in write() 60s after close(): "
                f"{[t.name for t in writers if t.is_alive()]}")
    stop.set()
    for t in racers:
        t.join(max(1.0, end - time.monotonic()))
    if any(t.is_alive() for t in racers):
        give_up(f"racers stuck after close(): {[t.name for t in racers if t.is_alive()]}")
    for tid in range(THREADS):
        if refused[tid] is None and tid not in done_writers:
            findings.add("writer_end", f"thread {tid} ended without ValueError from close()")

    # -- the fork children
    children_ok = []
    for k, (child, child_deadline) in enumerate(children):
        while True:
            pid, status = os.waitpid(child, os.WNOHANG)
            if pid:
                code = os.waitstatus_to_exitcode(status)
                if code == 0:
                    children_ok.append(k)
                else:
                    findings.add("fork_child", f"fork child {k} exited with {code} (its stderr below)")
                break
            if time.monotonic() > child_deadline:
                os.kill(child, signal.SIGABRT)  # its faulthandler dumps its stacks
                time.sleep(5)
                os.kill(child, signal.SIGKILL)
                os.waitpid(child, 0)
                findings.add("hang", f"fork child {k} did not finish within 60s (its stacks below)")
                break
            time.sleep(0.01)
    if len(children) < FORKS:
        findings.add("fork", f"forked {len(children)} times, not {FORKS} ({sum(counts)} appends)")

    if sink.finish() is False:
        give_up("the pipe's drainer did not finish: no EOF, so a write end was left open")

    # -- stats against the sink
    try:
        s = w.stats()
    except ValueError:
        s = None  # the contract does not say whether a closed writer still counts
    sink_bytes = sink.have() - base
    nonempty = sum(1 for lens in told_len for n in lens if n)
    accepted = sum(len(lens) for lens in told_len)
    if s and s["bytes_written"] != sink_bytes:
        findings.add("stats_final", f"bytes_written {s['bytes_written']}, the sink took {sink_bytes}")
    if s and not nonempty <= s["writes"] <= accepted:
        findings.add("stats_final", f"writes {s['writes']}, {nonempty} non-empty writes accepted "
                     f"({accepted} with the empty ones)")

    # -- every byte
    verify_parent(parent_path, sink_name, base, told_pos, told_len, refused, size, findings)
    for k in children_ok:
        verify_child(f"{child_path}.{k}", CHILD_TID + k, size, findings)
    # gigabytes at full size; the findings say what was wrong with them
    for path in [parent_path] + [f"{child_path}.{k}{ext}" for k in range(FORKS) for ext in ("", ".json")]:
        if os.path.exists(path):
            os.unlink(path)
    return result(stats=s, forks=len(children), child_appends=child_m * len(children_ok))


def fork_child(w, sink, path, tid, m, size, seed):
    from cbuffer._testing import make_record
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        pid = os.fork()
    if pid:
        return pid
    code = 70
    try:
        sink.in_child(path)
        base = w.tell()
        rng = random.Random(seed * 13 + tid)
        told = []
        for seq in range(m):
            n = record_size(rng, size)
            told.append((n, w.append(make_record(tid, seq, n, 0) if n else b"")))
        w.close()
        with open(path + ".json", "w") as f:
            json.dump({"base": base, "told": told}, f)
        code = 0
    except BaseException:
        # not through sys.stderr: its lock may have been held by a parent thread
        os.write(2, ("fork child: " + traceback.format_exc()).encode())
    finally:
        os._exit(code)


HEADER = struct.Struct("<IIIIQ")
CHUNK = 1 << 24


def records_in(path, skip, base, max_len, bad):
    """(tid, seq, length, at) of each whole record of the file after ``skip``
    bytes, ``at`` its stream position (the file's byte ``skip`` is ``base``).
    Bytes that are not a whole record go to ``bad(at, nbytes, why)`` and the
    scan picks up at the next valid record."""
    from cbuffer._testing import MIN_RECORD, RECORD_MAGIC
    magic = struct.pack("<I", RECORD_MAGIC)
    crc_at = struct.Struct("<I").unpack_from

    def valid(buf, i):
        if len(buf) - i < HEADER.size + 4:
            return "truncated"
        m, _, _, length, _ = HEADER.unpack_from(buf, i)
        if m != RECORD_MAGIC:
            return "bad magic"
        if not MIN_RECORD <= length <= max_len:
            return f"bad length {length}"
        if length > len(buf) - i:
            return "truncated"
        if zlib.crc32(memoryview(buf)[i:i + length - 4]) != crc_at(buf, i + length - 4)[0]:
            return "crc mismatch"
        return None

    with open(path, "rb") as f:
        f.seek(skip)
        buf, i, at0, eof = b"", 0, base, False
        while True:
            if not eof and len(buf) - i < max_len + HEADER.size + 4:
                chunk = f.read(CHUNK)
                eof = not chunk
                buf, at0, i = buf[i:] + chunk, at0 + i, 0
            if i >= len(buf):
                return
            why = valid(buf, i)
            if why is None:
                _, tid, seq, length, _ = HEADER.unpack_from(buf, i)
                yield tid, seq, length, at0 + i
                i += length
                continue
            if why == "truncated" and not eof:
                continue  # more bytes needed first
            j = i
            while True:
                j = buf.find(magic, j + 1)
                if j < 0 or valid(buf, j) in (None, "truncated"):
                    break
            if j < 0:
                j = len(buf) if eof else max(i + 1, len(buf) - 3)
            bad(at0 + i, j - i, why)
            i = j


def verify_parent(path, sink_name, base, told_pos, told_len, refused, size, findings):
    skip = 0
    if sink_name == "pyraw":
        with open(path, "rb") as f:
            if f.read(len(PREFIX)) != PREFIX:
                findings.add("prefix", "the bytes before the writer's start were changed")
        skip = len(PREFIX)
    landed = [array("q", [-1]) * len(p) for p in told_pos]
    high = [-1] * THREADS
    records = 0

    def bad(at, n, why):
        findings.add("corrupt", f"{n} bytes at stream position {at} are not a whole record ({why})")

    for tid, seq, length, at in records_in(path, skip, base, 3 * size, bad):
        records += 1
        if CHILD_TID <= tid < CHILD_TID + FORKS:
            findings.add("child_in_parent", f"fork child {tid - CHILD_TID}'s record {seq} is in the "
                         f"parent's output")
            continue
        if not 0 <= tid < THREADS:
            findings.add("corrupt", f"a record of unknown thread {tid} at {at}")
            continue
        if seq >= len(told_pos[tid]):
            if seq == refused[tid]:
                findings.add("refused_landed", f"thread {tid} seq {seq}: write raised ValueError "
                             f"but its record landed at {at}")
            else:
                findings.add("never_accepted", f"thread {tid} seq {seq} landed at {at}, its write "
                             f"never returned")
            continue
        if landed[tid][seq] >= 0:
            said = f"; append() said {told_pos[tid][seq]}" if tid < APPEND_THREADS else ""
            findings.add("duplicated", f"thread {tid} seq {seq} ({length} B) landed twice: at "
                         f"{landed[tid][seq]} and at {at}{said}")
            continue
        landed[tid][seq] = at
        if length != told_len[tid][seq]:
            findings.add("corrupt", f"thread {tid} seq {seq} is {length} B, {told_len[tid][seq]} "
                         f"were written")
        if seq < high[tid]:
            findings.add("out_of_order", f"thread {tid} seq {seq} landed at {at}, after its seq "
                         f"{high[tid]}")
        high[tid] = max(high[tid], seq)
        if tid < APPEND_THREADS and told_pos[tid][seq] != at:
            findings.add("wrong_position", f"thread {tid} seq {seq} ({length} B): append() said "
                         f"{told_pos[tid][seq]}, landed at {at}")
    for tid in range(THREADS):
        for seq, n in enumerate(told_len[tid]):
            if n and landed[tid][seq] < 0:
                where = f" at {told_pos[tid][seq]}" if tid < APPEND_THREADS else ""
                findings.add("lost", f"thread {tid} seq {seq} ({n} B, accepted{where}) is not in the sink")
        if tid < APPEND_THREADS:
            pos, lens = told_pos[tid], told_len[tid]
            for seq in range(1, len(pos)):
                if pos[seq] < pos[seq - 1] + lens[seq - 1]:
                    kind = "zero_byte_position" if not (lens[seq] and lens[seq - 1]) else "append_order"
                    findings.add(kind, f"thread {tid}: seq {seq - 1} ({lens[seq - 1]} B) at "
                                 f"{pos[seq - 1]}, then seq {seq} ({lens[seq]} B) at {pos[seq]}")
    return records


def verify_child(path, child_tid, size, findings):
    try:
        with open(path + ".json") as f:
            info = json.load(f)
    except OSError as exc:
        findings.add("fork_child", f"no record of what the child wrote: {exc}")
        return
    base, told = info["base"], info["told"]
    want = [seq for seq, (n, _) in enumerate(told) if n]
    got = []

    k = child_tid - CHILD_TID

    def bad(at, n, why):
        findings.add("child_corrupt", f"fork child {k}: {n} bytes at {at} are not a whole record ({why})")

    for tid, seq, length, at in records_in(path, 0, base, 3 * size, bad):
        if tid != child_tid:
            findings.add("parent_in_child", f"the parent's record (thread {tid}, seq {seq}) is in "
                         f"fork child {k}'s output")
            continue
        got.append(seq)
        if seq < len(told) and (told[seq][0] != length or told[seq][1] != at):
            findings.add("child_position", f"fork child {k} seq {seq} ({length} B) landed at {at} "
                         f"(its stream from its first tell(), {base}); append() said {told[seq][1]}")
    if got != want:
        lost = sorted(set(want) - set(got))
        dup = len(got) - len(set(got))
        findings.add("child_records", f"fork child {k}: {len(got)} records of {len(want)}, lost "
                     f"{lost[:10]}, {dup} duplicated, in order: {got == sorted(got)}")


def main():
    sink_name, appends, outdir, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
    res = scenario(sink_name, appends, outdir, timeout)
    print("RESULT " + json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
