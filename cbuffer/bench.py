"""python -m cbuffer.bench: cbuffer beside what users would use instead.

Throughput runs are time-boxed (each thread writes for the same wall time,
then the writer is flushed), so slow and fast candidates cost the same.

Every case runs each candidate writer in one process, interleaved (rep 1 of
every candidate, then rep 2, ...), so a noisy machine disturbs them alike.
Throughputs are medians over the repetitions, with their min-max spread.
Each thread writes through its own bound ``write`` (on free-threaded builds a
shared callable's reference count alone would serialise the threads).

The flush cases (write + flush per record, flush latency, loguru and
structlog) live in ``cbuffer.bench_flush``, the text writer's in
``cbuffer.bench_text``, the logging handlers' (records/s through logger.info
beside the standard handlers, concurrent-log-handler and loguru, rotating
and not, from threads and processes) in ``cbuffer.bench_logging``;
``--cases`` picks case groups.
"""
import argparse
import io
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from array import array

import cbuffer
from cbuffer import bench_text

THREADS = (1, 2, 4, 8, 16)
CASES = ("throughput", "cpu", "spiky", "flush", "flush-latency", "loggers", "nogil", "alloc", "text",
         "logging")


# ------------------------------------------------------------------ writers

class LockedBuffer:
    """The hand-made alternative: a lock around a bytearray, written out
    (under the lock) when it passes buffer_size."""

    def __init__(self, fd, buffer_size=cbuffer.DEFAULT_BUFFER_SIZE, fsync=False):
        self.fd, self.size, self.fsync = fd, buffer_size, fsync
        self.buf = bytearray()
        self.lock = threading.Lock()

    def write(self, b):
        with self.lock:
            self.buf += b
            if len(self.buf) >= self.size:
                self._drain()
        return len(b)

    def _drain(self):
        with memoryview(self.buf) as view:
            done = 0
            while done < len(view):
                done += os.write(self.fd, view[done:])
        self.buf.clear()
        if self.fsync:
            os.fsync(self.fd)

    def flush(self):
        with self.lock:
            self._drain()

    def close(self):
        self.flush()


class Unbuffered:
    """One os.write per write."""

    def __init__(self, fd, fsync=False):
        self.fd, self.fsync = fd, fsync

    def write(self, b):
        n = os.write(self.fd, b)
        if self.fsync:
            os.fsync(self.fd)
        return n

    def flush(self):
        pass

    close = flush


class FsyncFileIO(io.FileIO):
    """A raw file that fsyncs every write: io.BufferedWriter with fsync per flush."""

    def write(self, b):
        n = super().write(b)
        os.fsync(self.fileno())
        return n


class NoOp:
    """The interpreter's floor: the same loop calling a builtin that does
    nothing with the record.  Its spread from 1 to N threads is what GIL
    hand-offs and the machine cost any writer, before it writes a byte."""

    def __init__(self):
        self.write = len

    def flush(self):
        pass

    close = flush


def make_writer(name, fd, fsync=False):
    if name == "no-op":
        return NoOp()
    if name == "cbuffer":
        return cbuffer.ConcurrentBufferedWriter(fd, closefd=False, fsync=fsync)
    if name == "cbuffer-32":  # a 2 MiB ring: room for a 20 ms stall at ~100 MB/s
        return cbuffer.ConcurrentBufferedWriter(fd, closefd=False, fsync=fsync, buffer_count=32)
    raw = (FsyncFileIO if fsync else io.FileIO)(fd, "wb", closefd=False)
    if name == "io":
        return io.BufferedWriter(raw)
    if name == "io-64k":
        return io.BufferedWriter(raw, buffer_size=cbuffer.DEFAULT_BUFFER_SIZE)
    if name == "lock+bytearray":
        return LockedBuffer(fd, fsync=fsync)
    if name == "os.write":
        return Unbuffered(fd, fsync=fsync)
    raise ValueError(f"unknown writer {name!r}")


# ------------------------------------------------------------------ one run

def own_write(writer):
    """A bound ``write`` of the calling thread's own.  ConcurrentBufferedWriter
    keeps one bound method of its compiled core as an instance attribute (the
    fast path under the GIL), shared by every thread that reads it; binding
    the core's method afresh gives this thread an object of its own."""
    if isinstance(writer, cbuffer.ConcurrentBufferedWriter):
        return writer.write.__self__.write
    return writer.write


def run(name, fd, threads, size, writes=None, duration=None, latencies=False, fsync=False, pace=None):
    """Write records of ``size`` bytes from ``threads`` threads -- ``writes``
    in all, or as many as fit in ``duration`` seconds -- then flush.  Returns
    (writes per second, sorted latencies in ns or None).  The clock runs
    from the start line until the flush has returned.  ``pace`` (writes per
    second per thread, with ``latencies``) spaces the writes out in bursts of
    16, so the offered load is what the sink can take on average."""
    writer = make_writer(name, fd, fsync)
    payload = b"x" * (size - 1) + b"\n"
    per_thread = writes // threads if writes else 0
    start = threading.Barrier(threads + 1)
    lat = [array("q", bytes(8 * per_thread)) if latencies else None for _ in range(threads)]
    done = [0] * threads

    def body(tid):
        write = own_write(writer)
        record = bytes(bytearray(payload))  # this thread's own object too
        start.wait()
        if latencies:
            out, clock = lat[tid], time.perf_counter_ns
            begin = time.perf_counter()
            for i in range(per_thread):
                if pace and i % 16 == 0:
                    delay = begin + i / pace - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                t0 = clock()
                write(record)
                out[i] = clock() - t0
            done[tid] = per_thread
        elif duration:
            clock, end, n = time.perf_counter, time.perf_counter() + duration, 0
            while clock() < end:
                for _ in range(256):
                    write(record)
                n += 256
            done[tid] = n
        else:
            for _ in range(per_thread):
                write(record)
            done[tid] = per_thread

    pool = [threading.Thread(target=body, args=(t,)) for t in range(threads)]
    for t in pool:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in pool:
        t.join()
    writer.flush()
    elapsed = time.perf_counter() - t0
    writer.close()
    merged = None
    if latencies:
        merged = sorted(x for a in lat for x in a)
    return sum(done) / elapsed, merged


def percentile(sorted_values, q):
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


# ------------------------------------------------------------------ sinks

class Sink:
    """Where the bytes go; ``open()`` gives a fresh fd per run."""

    def __init__(self, label, path=None, pipe_pause=None):
        self.label, self.path, self.pipe_pause = label, path, pipe_pause
        self.reader = None

    def open(self):
        if self.pipe_pause is None:
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC if self.path != os.devnull else os.O_WRONLY
            return os.open(self.path, flags, 0o644)
        # A reader that takes 1 MiB at a time and pauses after every 4 MiB:
        # fast on average, but a writer that waits for it stalls.
        every, pause = self.pipe_pause
        code = ("import os, sys, time\n"
                f"n = 0\nwhile True:\n    b = os.read(0, 1 << 20)\n    if not b: break\n"
                f"    n += len(b)\n    if n >= {every}:\n        n = 0\n        time.sleep({pause})\n")
        r, w = os.pipe()
        self.reader = subprocess.Popen([sys.executable, "-c", code], stdin=r)
        os.close(r)
        return w

    def close(self, fd):
        os.close(fd)
        if self.reader is not None:
            self.reader.wait()
            self.reader = None


def tmpfs_dir():
    return "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


def disk_dir():
    return os.environ.get("CBUFFER_BENCH_DISK", tempfile.gettempdir())


# ------------------------------------------------------------------ reporting

class Progress:
    def __init__(self, total, enabled=True):
        self.total, self.done, self.enabled, self.t0 = total, 0, enabled, time.monotonic()

    def step(self, label):
        self.done += 1
        if not self.enabled:
            return
        width = 30
        filled = width * self.done // self.total
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
                         f"{time.monotonic() - self.t0:5.0f}s {label[:40]:<40}")
        if self.done == self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def summary(values):
    return statistics.median(values), min(values), max(values)


def fmt_rate(v):
    return f"{v / 1e6:7.2f}M"


# ------------------------------------------------------------------ cases

def throughput_cases(args, progress):
    """64 B and 4 KiB records, 1..16 threads, /dev/null and tmpfs: writes/s."""
    results = {}  # (sink, size, threads, writer) -> [writes/s per rep]
    tmpfs = os.path.join(tmpfs_dir(), f"cbuffer-bench-{os.getpid()}")
    sinks = [Sink("/dev/null", os.devnull), Sink("tmpfs", tmpfs)]
    for sink in sinks:
        for size in (64, 4096):
            for threads in args.threads:
                for rep in range(args.reps):
                    order = args.writers[rep % len(args.writers):] + args.writers[:rep % len(args.writers)]
                    for name in order:
                        fd = sink.open()
                        try:
                            rate, _ = run(name, fd, threads, size, duration=args.duration)
                        finally:
                            sink.close(fd)
                        results.setdefault((sink.label, size, threads, name), []).append(rate)
                        progress.step(f"{sink.label} {size}B {threads}t {name}")
    if os.path.exists(tmpfs):
        os.unlink(tmpfs)
    return results


def spiky_cases(args, progress):
    """Sinks with latency spikes, 4 threads, 4 KiB records.  Throughput:
    writers as fast as they can, beside the sink alone.  Latency: writers
    paced to half of what the sink alone takes, so the sink keeps up on
    average and only its spikes can stall a write."""
    out = {}
    disk = os.path.join(disk_dir(), f"cbuffer-bench-fsync-{os.getpid()}")
    cases = [("fsync file", Sink("fsync file", disk), True, args.writes_fsync),
             ("pausing pipe", Sink("pausing pipe", pipe_pause=(4 << 20, 0.02)), False, args.writes_pipe)]
    size, threads = 4096, 4
    for label, sink, fsync, writes in cases:
        for _ in range(args.spiky_reps):
            for name in ("alone", "cbuffer", "io", "cbuffer paced", "cbuffer-32 paced", "io paced"):
                entry = out.setdefault((label, name), {"rate": [], "p50": [], "p99": [], "max": []})
                fd = sink.open()
                try:
                    if name == "alone":
                        rate, lat = sink_alone(fd, size, writes, fsync), None
                    elif name.endswith("paced"):
                        pace = 0.5 * statistics.median(out[(label, "alone")]["rate"]) / threads
                        rate, lat = run(name.split()[0], fd, threads, size, writes // 2,
                                        latencies=True, fsync=fsync, pace=pace)
                    else:
                        rate, lat = run(name, fd, threads, size, writes, latencies=True, fsync=fsync)
                finally:
                    sink.close(fd)
                entry["rate"].append(rate)
                if lat:
                    entry["p50"].append(percentile(lat, 0.50))
                    entry["p99"].append(percentile(lat, 0.99))
                    entry["max"].append(lat[-1])
                progress.step(f"{label} {name}")
    if os.path.exists(disk):
        os.unlink(disk)
    return out


def pin(cpus):
    """Bind every thread of this process (and those it starts) to ``cpus``,
    as ``taskset`` would; returns the previous set."""
    before = os.sched_getaffinity(0)
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:  # (a thread that just ended)
            pass
    return before


def cpu_case(args, progress):
    """One thread writing 64 B records to /dev/null: process CPU time per
    record (the flusher's included) and writes/s, free to use every CPU and
    pinned to one CPU (a container limited to one).  Returns
    {(pinned, writer): {"rate": [...], "cpu_ns": [...]}}."""
    out = {}
    writers = ["cbuffer", "io", "no-op"]
    can_pin = hasattr(os, "sched_setaffinity") and os.path.isdir("/proc/self/task")
    for pinned in ((False, True) if can_pin else (False,)):
        before = pin({min(os.sched_getaffinity(0))}) if pinned else None
        try:
            for rep in range(args.reps):
                for name in writers[rep % 3:] + writers[:rep % 3]:
                    fd = os.open(os.devnull, os.O_WRONLY)
                    try:
                        c0 = time.process_time()
                        rate, _ = run(name, fd, 1, 64, writes=args.writes_cpu)
                        spent = time.process_time() - c0
                    finally:
                        os.close(fd)
                    entry = out.setdefault((pinned, name), {"rate": [], "cpu_ns": []})
                    entry["rate"].append(rate)
                    entry["cpu_ns"].append(spent / args.writes_cpu * 1e9)
                    progress.step(f"cpu {'pinned ' if pinned else ''}{name}")
        finally:
            if before is not None:
                pin(before)
    return out


def report_cpu(cpu, lines, verdicts):
    lines.append("one thread, 64 B records to /dev/null: process CPU per record (flusher included) "
                 "and writes/s, median [min-max]")
    for pinned in (False, True):
        if (pinned, "cbuffer") not in cpu:
            continue
        for name in ("cbuffer", "io", "no-op"):
            e = cpu[(pinned, name)]
            m, lo, hi = summary(e["cpu_ns"])
            r, rlo, rhi = summary(e["rate"])
            lines.append(f"  {'pinned to 1 CPU' if pinned else 'any CPU':>15} {name:>8}: {m:6.1f} ns "
                         f"[{lo:.1f}-{hi:.1f}]  {fmt_rate(r)} [{fmt_rate(rlo).strip()}-"
                         f"{fmt_rate(rhi).strip()}]")
    lines.append("")
    ratio = (statistics.median(cpu[(False, "cbuffer")]["cpu_ns"])
             / statistics.median(cpu[(False, "io")]["cpu_ns"]))
    verdicts.append(("64B 1t: cbuffer CPU per record / io's", ratio, 1.0, ratio <= 1.0))
    if (True, "cbuffer") in cpu:
        ratio = (statistics.median(cpu[(True, "cbuffer")]["rate"])
                 / statistics.median(cpu[(True, "io")]["rate"]))
        verdicts.append(("64B 1t pinned to one CPU: cbuffer writes/s / io's", ratio, 1.0, ratio >= 1.0))


def sink_alone(fd, size, writes, fsync):
    """The same bytes in cbuffer-sized chunks straight to the sink."""
    chunk = b"x" * cbuffer.DEFAULT_BUFFER_SIZE
    total = size * writes
    t0 = time.perf_counter()
    left = total
    while left > 0:
        view = memoryview(chunk)[:min(left, len(chunk))]
        left -= len(view)
        while view:
            view = view[os.write(fd, view):]
        if fsync:
            os.fsync(fd)
    return writes / (time.perf_counter() - t0)


def nogil_case(args, progress):
    """C-level appends from 1 and 2 nogil threads: the sequenced ring path
    (ring_append, positions known), the lane path (lane_write: a writer's
    write() on a free-threaded build) and a bare atomic fetch_add on one
    shared counter, interleaved; and the floor for 4 KiB records, bare
    copies into one shared ring or a ring per thread.  Returns
    {(path, threads): [appends/s]}."""
    from cbuffer import _testing

    out = {}
    n = args.nogil_appends
    payload = b"x" * 64
    for _ in range(args.reps):
        for threads in (1, 2):
            per = n // threads
            fd = os.open(os.devnull, os.O_WRONLY)
            ring = cbuffer.BufferRing(4, cbuffer.DEFAULT_BUFFER_SIZE, fd)
            secs = _testing.hammer_ring_plain(ring, threads, per, payload)
            ring.close()
            w = cbuffer.ConcurrentBufferedWriter(fd, closefd=False, lanes=2)
            secs_lane = _testing.hammer_lanes_plain(w._core, threads, per, payload)
            w.close()
            os.close(fd)
            out.setdefault(("ring_append", threads), []).append(per * threads / secs)
            out.setdefault(("lane_write", threads), []).append(per * threads / secs_lane)
            out.setdefault(("fetch_add", threads), []).append(
                per * threads / _testing.bare_fetch_add(threads, per))
            copies = n // 16 // threads  # 4 KiB records: the same bytes as 64 B ones / 4
            out.setdefault(("copy-shared", threads), []).append(
                copies * threads / _testing.bare_copy(True, threads, copies, 4096))
        copies = n // 32
        out.setdefault(("copy-private", 2), []).append(
            copies * 2 / _testing.bare_copy(False, 2, copies, 4096))
        progress.step("nogil")
    return out


def allocation_case(writes=1_000_000):
    """Peak traced memory over 1x and 2x writes of a ready-made record: if
    writes allocated, the second would grow with the count."""
    fd = os.open(os.devnull, os.O_WRONLY)
    w = cbuffer.ConcurrentBufferedWriter(fd, closefd=False)
    payload = b"x" * 64
    write = w.write
    for _ in range(10_000):
        write(payload)
    peaks = []
    for count in (writes, 2 * writes):
        tracemalloc.start()
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(count):
            write(payload)
        peaks.append(tracemalloc.get_traced_memory()[1] - base)
        tracemalloc.stop()
    w.flush()
    stats = w.stats()
    w.close()
    os.close(fd)
    return peaks, stats


# ------------------------------------------------------------------ main

def machine():
    cpus = os.cpu_count()
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    return (f"{platform.python_implementation()} {platform.python_version()} "
            f"({'GIL' if gil else 'free-threaded'}), {platform.system()} {platform.release()}, "
            f"{cpus} CPUs {model}").strip()


def fmt_load(load):
    return "/".join(f"{x:.2f}" for x in load)


def report_throughput(args, tp, lines, verdicts):
    """The throughput tables (appended to ``lines``) and their verdicts."""
    others = [w for w in args.writers if w not in ("cbuffer", "no-op")]
    for sink in ("/dev/null", "tmpfs"):
        for size in (64, 4096):
            lines.append(f"{sink}, {size} B records")
            head = f"{'threads':>7}  " + "  ".join(f"{w:>26}" for w in args.writers)
            head += "".join(f"  {'cb/' + w:>18}" for w in others)
            lines.append(head)
            one = tp.get((sink, size, 1, "cbuffer"))
            for threads in args.threads:
                row = f"{threads:>7}  "
                cells = []
                for w in args.writers:
                    med, lo, hi = summary(tp[(sink, size, threads, w)])
                    cells.append(f"{fmt_rate(med)} [{fmt_rate(lo).strip()}-{fmt_rate(hi).strip()}]".rjust(26))
                row += "  ".join(cells)
                cb = statistics.median(tp[(sink, size, threads, "cbuffer")])
                for w in others:
                    row += f"  {cb / statistics.median(tp[(sink, size, threads, w)]):17.2f}x"
                lines.append(row)
                if one and threads > 1:
                    worst = min(tp[(sink, size, threads, "cbuffer")]) / statistics.median(one)
                    what = f"{sink} {size}B {threads}t: cbuffer worst run / 1-thread median"
                    noop_one = tp.get((sink, size, 1, "no-op"))
                    if noop_one:
                        floor = min(tp[(sink, size, threads, "no-op")]) / statistics.median(noop_one)
                        what += f" (no-op loop: {floor:.3g})"
                    verdicts.append((what, worst, 0.9, worst >= 0.9))
                if threads == 16 and "io" in args.writers:
                    ratio = cb / statistics.median(tp[(sink, size, 16, "io")])
                    verdicts.append((f"{sink} {size}B 16t: cbuffer / io.BufferedWriter", ratio, 3.0,
                                     ratio >= 3.0))
            lines.append("")
    if ("/dev/null", 64, 1, "io") in tp:
        ratio = statistics.median(tp[("/dev/null", 64, 1, "io")]) / statistics.median(
            tp[("/dev/null", 64, 1, "cbuffer")])
        verdicts.insert(0, ("/dev/null 64B 1t: cbuffer time per write / io's", ratio, 1.0, ratio <= 1.0))
    if not getattr(sys, "_is_gil_enabled", lambda: True)():
        # Free-threaded: threads really run at once, so cbuffer should scale.
        med = lambda size, t, w: statistics.median(tp[("/dev/null", size, t, w)])  # noqa: E731
        for size, target in ((64, 1.6), (4096, 1.3)):
            if ("/dev/null", size, 2, "cbuffer") in tp:
                ratio = med(size, 2, "cbuffer") / med(size, 1, "cbuffer")
                verdicts.append((f"free-threaded /dev/null {size}B: cbuffer 2 threads / 1 thread",
                                 ratio, target, ratio >= target))
        for t in (4, 16):
            if ("/dev/null", 64, t, "io") in tp:
                ratio = med(64, t, "cbuffer") / med(64, t, "io")
                verdicts.append((f"free-threaded /dev/null 64B {t}t: cbuffer / io.BufferedWriter",
                                 ratio, 50.0, ratio >= 50.0))


def report(args, results):
    """The tables and the targets' verdicts for the case groups that ran
    (``results``: group name -> what its case function returned)."""
    lines = [f"machine: {machine()}",
             f"cbuffer {cbuffer.__version__}, buffer_size {cbuffer.DEFAULT_BUFFER_SIZE}, "
             f"io.DEFAULT_BUFFER_SIZE {io.DEFAULT_BUFFER_SIZE}; {args.reps} interleaved reps, "
             f"median [min-max] writes/s",
             # other work on the machine changes ratios, not only rates: say how busy it was
             f"load average (1/5/15 min) at the start {fmt_load(args.load_start)}, "
             f"at the end {fmt_load(os.getloadavg())}", ""]
    verdicts = []
    if "throughput" in results:
        report_throughput(args, results["throughput"], lines, verdicts)
    spiky, nogil, alloc = (results.get(k) for k in ("spiky", "nogil", "alloc"))
    if spiky:
        lines.append("sinks with latency spikes, 4 threads, 4096 B records (medians; 'paced': writers")
        lines.append("offer half of what the sink alone takes, in bursts of 16 writes)")
        lines.append(f"{'sink':>13} {'writer':>14} {'writes/s':>10} {'p50 us':>9} {'p99 us':>9} "
                     f"{'max ms':>9}")
        for (label, name), e in spiky.items():
            rate = statistics.median(e["rate"])
            if e["p99"]:
                p50, p99, top = (statistics.median(e[k]) for k in ("p50", "p99", "max"))
                lines.append(f"{label:>13} {name:>14} {fmt_rate(rate):>10} {p50 / 1e3:9.1f} "
                             f"{p99 / 1e3:9.1f} {top / 1e6:9.1f}")
            else:
                lines.append(f"{label:>13} {'alone':>14} {fmt_rate(rate):>10}")
        for label in ("fsync file", "pausing pipe"):
            cb, alone = spiky[(label, "cbuffer")], spiky[(label, "alone")]
            cbp, iop = spiky[(label, "cbuffer paced")], spiky[(label, "io paced")]
            p99 = statistics.median(cbp["p99"]) / statistics.median(iop["p99"])
            verdicts.append((f"{label} 4t, paced: cbuffer p99 / io p99", p99, 0.1, p99 <= 0.1))
            p99 = statistics.median(spiky[(label, "cbuffer-32 paced")]["p99"]) / statistics.median(iop["p99"])
            verdicts.append((f"{label} 4t, paced: cbuffer (32 buffers) p99 / io p99", p99, 0.1, p99 <= 0.1))
            share = statistics.median(cb["rate"]) / statistics.median(alone["rate"])
            verdicts.append((f"{label} 4t: cbuffer throughput / sink alone", share, 0.95, share >= 0.95))
        lines.append("")
    if "cpu" in results:
        report_cpu(results["cpu"], lines, verdicts)
    if nogil:
        lines.append("nogil C-level appends of 64 B, appends/s median [min-max]")
        for path in ("ring_append", "lane_write", "fetch_add"):
            one, two = nogil[(path, 1)], nogil[(path, 2)]
            m1, l1, h1 = summary(one)
            m2, l2, h2 = summary(two)
            lines.append(f"  {path:>12}: 1 thread {fmt_rate(m1)} [{fmt_rate(l1).strip()}-"
                         f"{fmt_rate(h1).strip()}], 2 threads {fmt_rate(m2)} [{fmt_rate(l2).strip()}-"
                         f"{fmt_rate(h2).strip()}]: {m2 / m1:.2f}x")
        lines.append("4 KiB copies round a ring of 4 x 64 KiB (bare C, no writer): copies/s median [min-max]")
        m1, l1, h1 = summary(nogil[("copy-shared", 1)])
        for label, key in (("one ring", "copy-shared"), ("a ring each", "copy-private")):
            m2, l2, h2 = summary(nogil[(key, 2)])
            lines.append(f"  {label:>12}: 2 threads {fmt_rate(m2)} [{fmt_rate(l2).strip()}-"
                         f"{fmt_rate(h2).strip()}]: {m2 / m1:.2f}x 1 thread's "
                         f"{fmt_rate(m1).strip()} [{fmt_rate(l1).strip()}-{fmt_rate(h1).strip()}]")
        lane = statistics.median(nogil[("lane_write", 2)]) / statistics.median(nogil[("lane_write", 1)])
        verdicts.append(("nogil: lane_write 2 threads / 1 thread", lane, 1.5, lane >= 1.5))
        ratio = statistics.median(nogil[("ring_append", 2)]) / statistics.median(nogil[("fetch_add", 2)])
        verdicts.append(("nogil 2t: ring_append / bare fetch_add", ratio, 0.4, ratio >= 0.4))
    from cbuffer import bench_flush  # here: it imports this module

    for case, part in (("flush", bench_flush.report_flush),
                       ("flush-latency", bench_flush.report_flush_latency),
                       ("loggers", bench_flush.report_loggers)):
        if case in results:
            more, checks = part(results[case])
            lines += more
            verdicts += checks
    if "text" in results:
        more, checks = results["text"]
        lines += more + [""]
        verdicts += checks
    if "logging" in results:
        from cbuffer import bench_logging  # here: it imports this module

        more, checks = bench_logging.logging_report(results["logging"])
        lines += more + [""]
        verdicts += checks
    if alloc:
        (peak1, peak2), stats = alloc
        lines.append(f"allocation: peak traced memory over 1M writes {peak1} B, over 2M writes {peak2} B; "
                     f"syscalls {stats['syscalls']} for {stats['flushes']} flushed buffers, "
                     f"utilization {stats['utilization']:.4f}")
        verdicts.append(("allocation: bytes per write (2M-write peak / 2M)", peak2 / 2e6, 0.0,
                         peak2 <= peak1 + 1024))
        verdicts.append(("syscalls per flushed buffer", stats["syscalls"] / max(1, stats["flushes"]), 1.0,
                         stats["syscalls"] <= stats["flushes"]))
    lines.append("")
    lines.append("targets")
    for what, value, target, ok in verdicts:
        if ok is None:  # not measured here; ``what`` says why
            lines.append(f"  SKIP  {what} (target {target:g})")
        else:
            lines.append(f"  {'PASS' if ok else 'MISS'}  {what}: {value:.3g} (target {target:g})")
    return "\n".join(lines)


def plot(tp, args, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, size in zip(axes, (64, 4096)):
        for w in (w for w in args.writers if w != "no-op"):
            meds = [statistics.median(tp[("/dev/null", size, t, w)]) / 1e6 for t in args.threads]
            los = [m - min(tp[("/dev/null", size, t, w)]) / 1e6 for m, t in zip(meds, args.threads)]
            his = [max(tp[("/dev/null", size, t, w)]) / 1e6 - m for m, t in zip(meds, args.threads)]
            ax.errorbar(args.threads, meds, yerr=[los, his], marker="o", capsize=3, label=w)
        ax.set_xscale("log", base=2)
        ax.set_xticks(args.threads, [str(t) for t in args.threads])
        ax.set_xlabel("writer threads")
        ax.set_ylabel("million writes / s")
        ax.set_title(f"{size} B records to /dev/null")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(machine(), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def parse_cases(text):
    cases = list(CASES) if text == "all" else [c.strip() for c in text.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown case group(s) {', '.join(unknown)}; "
                                         f"choose from {', '.join(CASES)}")
    return cases


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m cbuffer.bench", description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=10, help="interleaved repetitions (default 10)")
    p.add_argument("--quick", action="store_true", help="a short smoke run")
    p.add_argument("--cases", type=parse_cases, default=list(CASES), metavar="GROUPS",
                   help=f"comma-separated case groups to run, default all: {','.join(CASES)}")
    p.add_argument("--plot", metavar="PNG", help="save throughput vs threads here (needs matplotlib)")
    p.add_argument("--writers", default="cbuffer,io,io-64k,lock+bytearray,no-op",
                   help="for the throughput cases, comma-separated: cbuffer, io, io-64k, lock+bytearray, "
                        "os.write, no-op (the interpreter's floor: the loop alone)")
    p.add_argument("--no-spiky", action="store_true", help="skip the fsync-file and pausing-pipe cases")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-text", action="store_true",
                   help="skip print-8t and pipe-json (the text writer: cbuffer.bench_text)")
    args = p.parse_args(argv)
    from cbuffer import bench_flush, bench_logging  # here: they import this module

    args.load_start = os.getloadavg()
    for flag, case in ((args.no_spiky, "spiky"), (args.no_text, "text")):
        if flag and case in args.cases:
            args.cases.remove(case)
    args.writers = args.writers.split(",")
    args.threads = THREADS
    scale = 10 if args.quick else 1
    if args.quick:
        args.reps = min(args.reps, 3)
    args.duration = 0.05 if args.quick else 0.25
    args.writes_fsync = 40_000 // scale
    args.writes_pipe = 100_000 // scale
    args.nogil_appends = 4_000_000 // scale
    args.writes_cpu = 2_000_000 // scale
    args.spiky_reps = max(3, args.reps // 2)
    steps = {"throughput": 2 * 2 * len(args.threads) * args.reps * len(args.writers),
             "spiky": 2 * 6 * args.spiky_reps, "nogil": args.reps, "cpu": 2 * 3 * args.reps,
             "text": bench_text.steps(args.reps, args.quick)}
    steps.update(bench_flush.case_counts(args))
    if "logging" in args.cases:
        steps["logging"] = bench_logging.count_runs(args.reps)
    progress = Progress(sum(steps.get(c, 0) for c in args.cases), not args.no_progress)
    results = {}
    for case in CASES:  # in this order whatever the order given
        if case not in args.cases:
            continue
        if case == "throughput":
            results[case] = throughput_cases(args, progress)
        elif case == "cpu":
            results[case] = cpu_case(args, progress)
        elif case == "spiky":
            results[case] = spiky_cases(args, progress)
        elif case == "flush":
            results[case] = bench_flush.flush_cases(args, progress)
        elif case == "flush-latency":
            results[case] = bench_flush.flush_latency_cases(args, progress)
        elif case == "loggers":
            results[case] = bench_flush.logger_cases(args, progress)
        elif case == "nogil":
            results[case] = nogil_case(args, progress)
        elif case == "alloc":
            results[case] = allocation_case(100_000 if args.quick else 1_000_000)
        elif case == "text":
            results[case] = bench_text.run(args.reps, args.quick, progress=progress.step)
        elif case == "logging":
            results[case] = bench_logging.logging_cases(args.reps, 0.1 if args.quick else 0.5,
                                                        progress=progress)
    print(report(args, results))
    if args.plot:
        if "throughput" in results:
            plot(results["throughput"], args, args.plot)
            print(f"plot saved to {args.plot}")
        else:
            print("no plot: the throughput cases did not run")
    if "logging" in results and bench_logging.failed(results["logging"]):
        sys.exit("FAIL: a logging run lost, duplicated or tore records")


if __name__ == "__main__":
    main()
