"""The flush cases of ``python -m cbuffer.bench``.

* write + flush per record: 61 B records (60 + b"\\n"), each followed by
  ``flush()``, from 1-16 threads into a regular file; records/s.
* flush latency: the time of ``flush()`` alone after one thread wrote N bytes
  since the last flush, N = 64 B .. 1 MiB; median and p99.
* loguru (stream sink) and structlog (``BytesLoggerFactory``) over cbuffer
  against the same loggers over a plain file; records/s.  Both flush after
  every record, inside their own lock.

All files are on ``disk_dir()`` (a regular file system, as for the fsync
case).  Every case checks afterwards that the file holds exactly what was
written and raises ``DataLoss`` if not: a benchmark that loses records
would look fast.
"""
import collections
import io
import json
import logging
import os
import statistics
import threading
import time
from array import array

import cbuffer
from cbuffer.bench import disk_dir, make_writer, own_write, summary

RECORD = b"x" * 60 + b"\n"
FLUSH_THREADS = (1, 2, 8, 16)
FLUSH_WRITERS = ("cbuffer", "io")
PENDING = (64, 4096, 64 << 10, 1 << 20)
LATENCY_WRITERS = ("cbuffer", "io-64k", "io")
LOGGER_THREADS = (1, 8)
# What each logger writes into.  loguru (text): "cbuffer" is cbuffer.open(path, "a")
# (a ConcurrentTextWriter); "TextIOWrapper" and "adapter" (TextSink) wrap
# cbuffer.open(path, "ab").  structlog (bytes): "cbuffer" is cbuffer.open(path, "ab").
# "no-op" (NullSink) is the logger's own floor: no file at all.
LOGGER_TARGETS = {"loguru": ("plain file", "cbuffer", "TextIOWrapper", "adapter", "no-op"),
                  "structlog": ("plain file", "cbuffer", "no-op")}
VERDICT_NAMES = {"TextIOWrapper": "TextIOWrapper(cbuffer)", "adapter": "TextSink(cbuffer)"}
# A file that would grow past this between flush-latency samples is
# truncated (outside the timing), so a run does not push gigabytes to disk.
TRUNCATE_AT = 16 << 20
BATCH = 16  # records between clock reads in the time-boxed loops


class DataLoss(AssertionError):
    """The file does not hold what the benchmark wrote."""


def bench_path(tag):
    return os.path.join(disk_dir(), f"cbuffer-bench-{tag}-{os.getpid()}")


def own_write_flush(writer):
    """This thread's own bound ``write`` and ``flush`` (see ``own_write``)."""
    if isinstance(writer, cbuffer.ConcurrentBufferedWriter):
        return own_write(writer), writer.write.__self__.flush
    return writer.write, writer.flush


def timed_threads(threads, body):
    """Run ``body(tid)`` -> records in ``threads`` threads from one start
    line; returns (records per thread, records/s).  Each thread reads the
    clock itself after the start line and after its last record, so the
    rate spans the first start to the last finish whichever thread the
    interpreter runs first."""
    start = threading.Barrier(threads)
    done, begins, ends = [0] * threads, [0.0] * threads, [0.0] * threads
    errors = []

    def wrap(tid):
        try:
            start.wait()
            begins[tid] = time.perf_counter()
            done[tid] = body(tid)
            ends[tid] = time.perf_counter()
        except BaseException as exc:
            errors.append(exc)
            start.abort()

    pool = [threading.Thread(target=wrap, args=(t,)) for t in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if errors:
        raise errors[0]
    return done, sum(done) / (max(ends) - min(begins))


# ------------------------------------------------------------------ write + flush per record

def flush_run(name, path, threads, duration):
    """Each thread writes a 61 B record and flushes, for ``duration``
    seconds.  Returns records/s, after checking the file's size."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        writer = make_writer(name, fd)

        def body(tid):
            write, flush = own_write_flush(writer)
            record = bytes(bytearray(RECORD))  # this thread's own object
            clock, n = time.perf_counter, 0
            end = clock() + duration
            while clock() < end:
                for _ in range(BATCH):
                    write(record)
                    flush()
                n += BATCH
            return n

        try:
            done, rate = timed_threads(threads, body)
        finally:
            writer.close()
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
        os.unlink(path)
    if size != sum(done) * len(RECORD):
        raise DataLoss(f"{name}, {threads} threads: file has {size} B, "
                       f"{sum(done)} records of {len(RECORD)} B were written")
    return rate


def flush_cases(args, progress):
    """Write + flush per record at 1, 2, 8 and 16 threads, interleaved."""
    results = {}  # (threads, writer) -> [records/s per rep]
    path = bench_path("flush")
    for threads in FLUSH_THREADS:
        for rep in range(args.reps):
            k = rep % len(FLUSH_WRITERS)
            for name in FLUSH_WRITERS[k:] + FLUSH_WRITERS[:k]:
                results.setdefault((threads, name), []).append(
                    flush_run(name, path, threads, args.duration))
                progress.step(f"write+flush {threads}t {name}")
    return results


# ------------------------------------------------------------------ flush latency

def latency_samples(pending, quick=False):
    n = {64: 2000, 4096: 2000, 64 << 10: 400}.get(pending, 100)
    return max(20, n // 10) if quick else n


def flush_latency_run(name, path, pending, samples, warmup=20):
    """Write ``pending`` bytes (in records of up to 4 KiB) from one thread,
    then time ``flush()`` alone; ``samples`` times.  Returns the sorted
    times in ns of the flushes and of the whole rounds (writes + flush: a
    writer that sends bytes out while they are written leaves its flush()
    less to do, so the rounds are compared too).  After every flush the
    file must hold every byte written so far."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
    out, rounds = array("q"), array("q")
    try:
        writer = make_writer(name, fd)
        try:
            write, flush = own_write_flush(writer)
            size = min(pending, 4096)
            record = b"x" * (size - 1) + b"\n"
            per_sample = pending // size
            clock, fstat, expected = time.perf_counter_ns, os.fstat, 0
            for i in range(warmup + samples):
                tw = clock()
                for _ in range(per_sample):
                    write(record)
                t0 = clock()
                flush()
                t1 = clock()
                expected += pending
                have = fstat(fd).st_size
                if have != expected:
                    raise DataLoss(f"{name}: after flush() with {pending} B pending the file has "
                                   f"{have} B, {expected} B were written")
                if i >= warmup:
                    out.append(t1 - t0)
                    rounds.append(t1 - tw)
                if expected + pending > TRUNCATE_AT:
                    os.ftruncate(fd, 0)  # O_APPEND: the next write lands at 0
                    expected = 0
        finally:
            writer.close()
    finally:
        os.close(fd)
        os.unlink(path)
    return sorted(out), sorted(rounds)


def flush_latency_cases(args, progress):
    """Per rep: median and p99 of the flush times, and the median round
    (writes + flush), per pending size and writer."""
    results = {}  # (pending, writer) -> {"p50": [...], "p99": [...], "round": [...]} per rep
    path = bench_path("flush-latency")
    for pending in PENDING:
        samples = latency_samples(pending, args.quick)
        for rep in range(args.reps):
            k = rep % len(LATENCY_WRITERS)
            for name in LATENCY_WRITERS[k:] + LATENCY_WRITERS[:k]:
                lat, rounds = flush_latency_run(name, path, pending, samples)
                entry = results.setdefault((pending, name), {"p50": [], "p99": [], "round": []})
                entry["p50"].append(lat[len(lat) // 2])
                entry["p99"].append(lat[min(len(lat) - 1, int(0.99 * len(lat)))])
                entry["round"].append(rounds[len(rounds) // 2])
                progress.step(f"flush latency {pending}B {name}")
    return results


# ------------------------------------------------------------------ loggers

class TextSink:
    """The least a text-stream consumer (loguru's stream sink) needs over a
    ConcurrentBufferedWriter: ``write(str)`` encodes into it, ``flush`` is
    the writer's own compiled method.  io.TextIOWrapper does more per call:
    it asks the buffer's ``closed`` (a Python property here) on every write
    and every flush.  Unlike ConcurrentTextWriter it keeps no partial
    lines: a line written in pieces by two threads may tear (loguru writes
    each message whole, under its own lock)."""

    def __init__(self, writer, encoding="utf-8"):
        self._writer = writer
        self._write = writer.write
        self.flush = writer.flush
        self.encoding = encoding
        self.name = writer.name

    def write(self, s):
        self._write(s.encode(self.encoding))
        return len(s)

    def close(self):
        self._writer.close()


class NullSink:
    """A stream that drops everything at C speed: what the logger costs
    with a sink that costs nothing (and never releases the GIL)."""

    name = "no-op"

    def __init__(self):
        self.write = len
        self.flush = [].clear  # a builtin that takes no argument and does nothing

    def close(self):
        pass


def logger_available(lib):
    """None, or why ``lib`` cannot be benchmarked here."""
    try:
        __import__(lib)
    except ImportError as exc:
        return f"{lib} cannot be imported ({exc}); the 'bench' extra installs it"
    return None


def thread_lines(threads, width):
    """One distinct line per thread, ``width`` characters before the newline."""
    return [f"thread {t:02d} ".ljust(width, "x") for t in range(threads)]


def check_lines(path, lines, done, what):
    """The file holds exactly done[t] copies of lines[t] (+ newline), whole."""
    with open(path, "rb") as f:
        data = f.read()
    counts = collections.Counter(data.split(b"\n"))
    if data and not data.endswith(b"\n"):
        raise DataLoss(f"{what}: the file ends inside a line")
    counts[b""] -= 1
    want = collections.Counter({line.encode(): n for line, n in zip(lines, done)})
    if +counts != +want:
        raise DataLoss(f"{what}: {sum(counts.values())} lines on file, {sum(done)} logged; "
                       f"unexpected: {list((counts - want).items())[:3]}, "
                       f"missing: {list((want - counts).items())[:3]}")


def _open_text(target, path):
    if target == "no-op":
        return NullSink()
    if target == "plain file":
        return open(path, "a", encoding="utf-8")
    if target == "cbuffer":
        return cbuffer.open(path, "a", encoding="utf-8")
    writer = cbuffer.open(path, "ab")
    if target == "adapter":
        return TextSink(writer)
    return io.TextIOWrapper(writer, encoding="utf-8", write_through=True)


def loguru_run(target, path, threads, duration):
    from loguru import logger

    lines = thread_lines(threads, len(RECORD) - 1)
    stream = _open_text(target, path)
    logger.remove()
    # catch=False: a failing sink raises here instead of printing and going on
    sink_id = logger.add(stream, format="{message}", colorize=False, catch=False)

    def body(tid):
        info, line = logger.info, lines[tid]
        clock, n = time.perf_counter, 0
        end = clock() + duration
        while clock() < end:
            for _ in range(BATCH):
                info(line)
            n += BATCH
        return n

    try:
        done, rate = timed_threads(threads, body)
    finally:
        logger.remove(sink_id)
        stream.close()
    if target != "no-op":
        check_lines(path, lines, done, f"loguru over {target}, {threads} threads")
    return rate


def _json_bytes(obj, **kw):
    return json.dumps(obj, **kw).encode()


def structlog_run(target, path, threads, duration):
    import structlog

    # {"event": "..."} adds 13 characters around the event
    lines = thread_lines(threads, len(RECORD) - 1 - 13)
    if target == "no-op":
        f = NullSink()
    else:
        f = open(path, "ab") if target == "plain file" else cbuffer.open(path, "ab")
    structlog.configure(
        processors=[structlog.processors.JSONRenderer(serializer=_json_bytes)],
        logger_factory=structlog.BytesLoggerFactory(file=f),
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        cache_logger_on_first_use=True)

    def body(tid):
        info, line = structlog.get_logger().info, lines[tid]
        clock, n = time.perf_counter, 0
        end = clock() + duration
        while clock() < end:
            for _ in range(BATCH):
                info(line)
            n += BATCH
        return n

    try:
        done, rate = timed_threads(threads, body)
    finally:
        structlog.reset_defaults()
        f.close()
    if target != "no-op":
        check_lines(path, [json.dumps({"event": line}) for line in lines], done,
                    f"structlog over {target}, {threads} threads")
    return rate


LOGGER_RUNS = {"loguru": loguru_run, "structlog": structlog_run}


def logger_cases(args, progress):
    """loguru and structlog over cbuffer and over a plain file, interleaved.
    Returns ({(lib, threads, target): [records/s per rep]}, {lib: why skipped})."""
    results, skipped = {}, {}
    path = bench_path("logger")
    for lib, targets in LOGGER_TARGETS.items():
        why = logger_available(lib)
        if why:
            skipped[lib] = why
            print(f"skipped: {lib} cases: {why}", flush=True)
            continue
        for threads in LOGGER_THREADS:
            for rep in range(args.reps):
                k = rep % len(targets)
                for target in targets[k:] + targets[:k]:
                    try:
                        rate = LOGGER_RUNS[lib](target, path, threads, args.duration)
                    finally:
                        if os.path.exists(path):
                            os.unlink(path)
                    results.setdefault((lib, threads, target), []).append(rate)
                    progress.step(f"{lib} {threads}t {target}")
    return results, skipped


def case_counts(args):
    """Progress steps per case group."""
    return {"flush": len(FLUSH_THREADS) * args.reps * len(FLUSH_WRITERS),
            "flush-latency": len(PENDING) * args.reps * len(LATENCY_WRITERS),
            "loggers": sum(len(LOGGER_THREADS) * args.reps * len(t) for lib, t in LOGGER_TARGETS.items()
                           if not logger_available(lib))}


# ------------------------------------------------------------------ reporting

def _cell(values, scale, width=24):
    med, lo, hi = summary(values)
    return f"{med / scale:.2f} [{lo / scale:.2f}-{hi / scale:.2f}]".rjust(width)


def report_flush(results):
    lines = [f"write + flush per record, {len(RECORD)} B records, regular file in {disk_dir()}; "
             "thousand records/s, median [min-max]",
             f"{'threads':>7}  {'cbuffer':>24}  {'io':>24}  {'cb/io':>7}"]
    verdicts = []
    for threads in FLUSH_THREADS:
        cb, base = results[(threads, "cbuffer")], results[(threads, "io")]
        ratio = statistics.median(cb) / statistics.median(base)
        lines.append(f"{threads:>7}  {_cell(cb, 1e3)}  {_cell(base, 1e3)}  {ratio:6.2f}x")
        target = {1: 1.0, 8: 2.0}.get(threads)
        if target:
            verdicts.append((f"write+flush per record {threads}t: cbuffer / io.BufferedWriter records/s",
                             ratio, target, ratio >= target))
    lines.append("")
    return lines, verdicts


def report_flush_latency(results):
    lines = ["flush() latency after one thread wrote N bytes since the last flush (records of "
             "min(N, 4 KiB)); us,",
             "median over reps of each rep's median and p99 [min-max]; cbuffer and io-64k: 64 KiB "
             "buffers, io: 8 KiB;",
             "round: writes + flush, median",
             f"{'pending':>8}  {'writer':>8}  {'median us':>22}  {'p99 us':>22}  {'round us':>9}  "
             f"{'cb/io-64k p50':>13}  {'cb/io-64k p99':>13}  {'round':>6}"]
    verdicts = []
    for pending in PENDING:
        cb, base = results[(pending, "cbuffer")], results[(pending, "io-64k")]
        p50 = statistics.median(cb["p50"]) / statistics.median(base["p50"])
        p99 = statistics.median(cb["p99"]) / statistics.median(base["p99"])
        whole = statistics.median(cb["round"]) / statistics.median(base["round"])
        for name in LATENCY_WRITERS:
            e = results[(pending, name)]
            row = (f"{fmt_size(pending):>8}  {name:>8}  {_cell(e['p50'], 1e3, 22)}  "
                   f"{_cell(e['p99'], 1e3, 22)}  {statistics.median(e['round']) / 1e3:9.2f}")
            if name == "cbuffer":
                row += f"  {p50:12.2f}x  {p99:12.2f}x  {whole:5.2f}x"
            lines.append(row)
        if pending == 4096:
            verdicts.append(("flush latency, 4 KiB pending: cbuffer median / io.BufferedWriter's (64 KiB)",
                             p50, 1.2, p50 <= 1.2))
    lines.append("")
    return lines, verdicts


def fmt_size(n):
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB" if n >= 1024 else f"{n} B"


def report_loggers(cases):
    results, skipped = cases
    lines = ["loggers: one 61 B line per record, flushed by the logger after each; thousand records/s, "
             "median [min-max]",
             "  cbuffer: cbuffer.open(path, 'a') for loguru (a ConcurrentTextWriter), "
             "cbuffer.open(path, 'ab') for structlog",
             "  TextIOWrapper, adapter: io.TextIOWrapper(write_through=True) and TextSink over "
             "cbuffer.open(path, 'ab')",
             "  no-op: a sink that drops the lines (what the logger costs by itself)",
             f"{'library':>9}  {'threads':>7}  {'target':>15}  {'records/s':>24}  {'/ plain file':>12}"]
    verdicts = []
    for lib, targets in LOGGER_TARGETS.items():
        if lib in skipped:
            lines.append(f"{lib:>9}  skipped: {skipped[lib]}")
            for threads in LOGGER_THREADS:
                verdicts.append((f"{lib} {threads}t over cbuffer / over a plain file: {skipped[lib]}",
                                 None, 1.0 if threads == 1 else 1.5, None))
            continue
        for threads in LOGGER_THREADS:
            plain = statistics.median(results[(lib, threads, "plain file")])
            for target in targets:
                values = results[(lib, threads, target)]
                ratio = statistics.median(values) / plain
                lines.append(f"{lib:>9}  {threads:>7}  {target:>15}  {_cell(values, 1e3)}  {ratio:11.2f}x")
                if target not in ("plain file", "no-op"):
                    goal = 1.0 if threads == 1 else 1.5
                    verdicts.append((f"{lib} {threads}t: over {VERDICT_NAMES.get(target, target)} "
                                     "/ over a plain file records/s",
                                     ratio, goal, ratio >= goal))
    lines.append("")
    return lines, verdicts
