"""python -m cbuffer.bench_logging: records per second through logger.info,
cbuffer's logging handlers beside the standard library's and the peers'.

Every candidate logs the same records (``logger.info(MESSAGE, i, name)``,
85 to 95 bytes formatted, through one logger with one handler and
``propagate=False``), with the same line layout.  Runs are time-boxed: each
thread logs for the same wall time; the clock runs from the start line until
the last record is on the file (the handler closed, the listener stopped,
the sink removed), so work a candidate defers is counted.  Then every file
the run left is read back: each line must parse, and each thread's records
must all be there, once each.  A run that lost, duplicated or tore a record
is reported as a failure, never as a rate.

Cases (each a set of candidates run interleaved, rep 1 of every candidate,
then rep 2, ...; medians with their min-max spread):

- ``file``: a plain file, 1 and 4 threads -- ConcurrentFileHandler,
  logging.FileHandler, QueueHandler + QueueListener (writing with a
  FileHandler), and two floors that write nothing: a handler that does
  nothing, and one that formats and encodes each record.
- ``size``: rotating at 1 MB, 1, 4 and 16 threads --
  ConcurrentRotatingFileHandler, logging.handlers.RotatingFileHandler,
  loguru with ``rotation=``, and the two floors.
- ``timed``: rotating every second, 1, 4 and 16 threads --
  ConcurrentTimedRotatingFileHandler,
  logging.handlers.TimedRotatingFileHandler, loguru with ``rotation=``.
- ``processes``: 4 processes x 4 threads on one file rotating at 1 MB, each
  process with its own handler on the shared path --
  ConcurrentRotatingFileHandler, concurrent-log-handler; loguru with
  ``enqueue=True`` (one sink in the parent, fed by the children); the two
  floors.

The floors bound what any handler could reach: the ratio of a floor to a peer
is the best ratio a handler that does no more than the floor could show.
``--breakdown`` prints what each step of the emit path costs, one thread.

Peers that are not installed (``pip install "cbuffer[bench]"``) are skipped
with a message.
"""
import argparse
import datetime
import importlib.util
import logging
import logging.handlers
import multiprocessing
import os
import queue
import re
import shutil
import statistics
import sys
import threading
import time
import traceback

from cbuffer.bench import Progress, machine, tmpfs_dir
from cbuffer.handlers import (
    ConcurrentFileHandler,
    ConcurrentRotatingFileHandler,
    ConcurrentTimedRotatingFileHandler,
)

FORMAT = "%(asctime)s %(levelname)s %(message)s"
MESSAGE = "record %d from %s: lorem ipsum dolor sit amet, consectetur"
LOGURU_FORMAT = "{time:YYYY-MM-DD HH:mm:ss,SSS} {level} {message}"
LOGURU_MESSAGE = "record {} from {}: lorem ipsum dolor sit amet, consectetur"
LINE = re.compile(rb"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO record (\d+) from ([\w-]+): "
                  rb"lorem ipsum dolor sit amet, consectetur\n", re.M)

MAX_BYTES = 1_000_000   # the rotating cases' maxBytes
ROLL_SECONDS = 1        # the timed case rotates every second
LOGGER_NAME = "cbuffer.bench.logging"
PROCESSES = 4
PROCESS_THREADS = 4
KINDS = ("file", "size", "timed", "processes")

TARGETS = [
    # (case, candidate, peer, minimum ratio of records/s)
    (("file", 1, 1), "cbuffer", "stdlib", 1.3),
    (("file", 1, 4), "cbuffer", "stdlib", 2.5),
    (("file", 1, 4), "cbuffer", "queue", 2.0),
    (("size", 1, 4), "cbuffer", "stdlib", 3.0),
    (("processes", PROCESSES, PROCESS_THREADS), "cbuffer", "concurrent-log-handler", 20.0),
]


def backups_for(duration):
    """Backups enough to keep every record of a run: 2 million records/s of
    100 bytes, for the run and its close, in files of MAX_BYTES."""
    return max(50, int(2e6 * 100 * (duration + 1.0) / MAX_BYTES) + 10)


# ------------------------------------------------------------------ candidates

class _NoOpHandler(logging.Handler):
    """The floor: logger.info up to the handler, which does nothing."""

    def handle(self, record):
        return True

    def emit(self, record):
        pass


class _FormatHandler(_NoOpHandler):
    """The floor of any handler that writes text: format and encode, no write."""

    def handle(self, record):
        (self.format(record) + "\n").encode("utf-8")
        return True


def _fresh_logger():
    logger = logging.getLogger(LOGGER_NAME)
    for h in list(logger.handlers):
        logger.removeHandler(h)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


class LoggingCandidate:
    """A logging.Handler on LOGGER_NAME; ``close()`` closes it (and with it
    whatever it deferred)."""

    needs = None          # a module the candidate imports: missing -> skipped
    verify = True         # False for the floors, which write nothing
    shared = False        # set up once in the parent of a multi-process run
    message = MESSAGE

    def __init__(self, label, make):
        self.label, self.make = label, make

    def open(self, path):
        self.logger = _fresh_logger()
        self.handler = self.make(path)
        self.handler.setFormatter(logging.Formatter(FORMAT))
        self.logger.addHandler(self.handler)

    def info(self):
        """A bound ``info`` of the calling thread's own."""
        return self.logger.info

    def close(self):
        try:
            self.handler.close()
        finally:
            self.logger.removeHandler(self.handler)


class Floor(LoggingCandidate):
    """A floor: its handler writes nothing, so there is nothing to verify."""

    verify = False


class QueueCandidate(LoggingCandidate):
    """QueueHandler + QueueListener; the listener's FileHandler writes."""

    def open(self, path):
        self.logger = _fresh_logger()
        self.file_handler = logging.FileHandler(path)
        self.file_handler.setFormatter(logging.Formatter(FORMAT))
        self.handler = logging.handlers.QueueHandler(queue.SimpleQueue())
        self.listener = logging.handlers.QueueListener(self.handler.queue, self.file_handler)
        self.listener.start()
        self.logger.addHandler(self.handler)

    def close(self):
        try:
            self.listener.stop()
            self.file_handler.close()
        finally:
            self.logger.removeHandler(self.handler)


class LoguruCandidate:
    """loguru's logger with one file sink: ``open()`` removes every other
    sink of the process's loguru logger; ``close()`` removes this one, which
    drains its queue (``enqueue``) and closes the file."""

    needs = "loguru"
    verify = True
    message = LOGURU_MESSAGE

    def __init__(self, label, rotation=None, enqueue=False):
        self.label, self.rotation, self.shared = label, rotation, enqueue

    def open(self, path):
        from loguru import logger

        self.logger = logger
        logger.remove()
        self.sink = logger.add(path, format=LOGURU_FORMAT, level="INFO", rotation=self.rotation,
                               enqueue=self.shared)

    def info(self):
        return self.logger.info

    def close(self):
        self.logger.remove(self.sink)


def _clh(path, backups):
    from concurrent_log_handler import ConcurrentRotatingFileHandler as CLH

    return CLH(path, maxBytes=MAX_BYTES, backupCount=backups)


def make_candidate(label, kind, duration):
    """The candidate ``label`` for the case ``kind``."""
    backups = backups_for(duration)
    if kind == "file":
        makers = {
            "cbuffer": lambda p: ConcurrentFileHandler(p),
            "stdlib": lambda p: logging.FileHandler(p),
        }
    elif kind in ("size", "processes"):
        makers = {
            "cbuffer": lambda p: ConcurrentRotatingFileHandler(p, maxBytes=MAX_BYTES, backupCount=backups),
            "stdlib": lambda p: logging.handlers.RotatingFileHandler(
                p, maxBytes=MAX_BYTES, backupCount=backups),
        }
    else:
        makers = {
            "cbuffer": lambda p: ConcurrentTimedRotatingFileHandler(p, when="S", interval=ROLL_SECONDS),
            "stdlib": lambda p: logging.handlers.TimedRotatingFileHandler(
                p, when="S", interval=ROLL_SECONDS),
        }
    if label in makers:
        return LoggingCandidate(label, makers[label])
    if label == "queue":
        return QueueCandidate(label, None)
    if label == "no-op":
        return Floor(label, lambda p: _NoOpHandler())
    if label == "format":
        return Floor(label, lambda p: _FormatHandler())
    if label == "concurrent-log-handler":
        cand = LoggingCandidate(label, lambda p: _clh(p, backups))
        cand.needs = "concurrent_log_handler"
        return cand
    if label == "loguru":
        rotation = {"file": None, "size": MAX_BYTES, "processes": MAX_BYTES,
                    "timed": datetime.timedelta(seconds=ROLL_SECONDS)}[kind]
        return LoguruCandidate(label, rotation, enqueue=kind == "processes")
    raise ValueError(f"unknown candidate {label!r}")


DISPLAY = {
    ("cbuffer", "file"): "ConcurrentFileHandler",
    ("cbuffer", "size"): "ConcurrentRotatingFileHandler",
    ("cbuffer", "processes"): "ConcurrentRotatingFileHandler",
    ("cbuffer", "timed"): "ConcurrentTimedRotatingFileHandler",
    ("stdlib", "file"): "logging.FileHandler",
    ("stdlib", "size"): "RotatingFileHandler",
    ("stdlib", "timed"): "TimedRotatingFileHandler",
    ("queue", "file"): "QueueHandler+QueueListener",
    ("loguru", "processes"): "loguru (enqueue=True)",
}


FLOORS = {"no-op": "floor: no-op handler", "format": "floor: format+encode"}


def display(label, kind):
    return FLOORS.get(label) or DISPLAY.get((label, kind), label)


def missing(label, kind="file"):
    """The module a candidate needs that is not installed, or None."""
    needs = make_candidate(label, kind, 1.0).needs
    if needs and importlib.util.find_spec(needs) is None:
        return needs.replace("_", "-")
    return None


# ------------------------------------------------------------------ cases

class Case:
    def __init__(self, kind, procs, threads, candidates):
        self.kind, self.procs, self.threads, self.candidates = kind, procs, threads, candidates

    @property
    def key(self):
        return (self.kind, self.procs, self.threads)

    def title(self):
        where = {"file": "plain file", "size": f"rotating at {MAX_BYTES // 1_000_000} MB",
                 "timed": f"rotating every {ROLL_SECONDS} s",
                 "processes": f"one file rotating at {MAX_BYTES // 1_000_000} MB"}[self.kind]
        who = (f"{self.procs} processes x {self.threads} threads" if self.procs > 1
               else f"{self.threads} thread{'s' * (self.threads > 1)}")
        return f"{where}, {who}"


def all_cases(kinds=KINDS):
    cases = []
    if "file" in kinds:
        cases += [Case("file", 1, t, ["cbuffer", "stdlib", "queue", "no-op", "format"]) for t in (1, 4)]
    if "size" in kinds:
        cases += [Case("size", 1, t, ["cbuffer", "stdlib", "loguru", "no-op", "format"]) for t in (1, 4, 16)]
    if "timed" in kinds:
        cases += [Case("timed", 1, t, ["cbuffer", "stdlib", "loguru"]) for t in (1, 4, 16)]
    if "processes" in kinds:
        cases.append(Case("processes", PROCESSES, PROCESS_THREADS,
                          ["cbuffer", "concurrent-log-handler", "loguru", "no-op", "format"]))
    return cases


# ------------------------------------------------------------------ one run

class Run:
    """What one run measured: records per second, CPU time per record (of
    every thread of every process taking part, in microseconds), records
    and files on disk, and what verification found wrong (empty: nothing)."""

    def __init__(self, rate, cpu_us, records, files, problems):
        self.rate, self.cpu_us, self.records, self.files, self.problems = (
            rate, cpu_us, records, files, problems)


def _log_for(info, message, name, barrier, duration, counts, slot):
    """Log ``message`` with 0, 1, 2, ... and ``name`` from the start line
    until ``duration`` has passed; counts[slot] = how many."""
    clock = time.perf_counter
    barrier.wait()
    end = clock() + duration
    n = 0
    while clock() < end:
        for i in range(n, n + 32):
            info(message, i, name)
        n += 32
    counts[slot] = n


def run_threads(cand, path, threads, duration):
    """One process, ``threads`` threads: (seconds, CPU seconds, {name:
    records logged})."""
    cand.open(path)
    try:
        barrier = threading.Barrier(threads + 1)
        counts = [0] * threads
        names = [f"t{t}" for t in range(threads)]
        pool = [threading.Thread(target=_log_for, args=(cand.info(), cand.message, names[t], barrier,
                                                        duration, counts, t))
                for t in range(threads)]
        for t in pool:
            t.start()
        barrier.wait()
        t0, c0 = time.perf_counter(), time.process_time()
        for t in pool:
            t.join()
    finally:
        cand.close()
    return time.perf_counter() - t0, time.process_time() - c0, dict(zip(names, counts))


def _child(cand, path, proc, threads, barrier, duration, results):
    try:
        if not cand.shared:
            cand.open(path)
        c0 = time.process_time()
        counts = [0] * threads
        names = [f"p{proc}-t{t}" for t in range(threads)]
        pool = [threading.Thread(target=_log_for, args=(cand.info(), cand.message, names[t], barrier,
                                                        duration, counts, t))
                for t in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        if not cand.shared:
            cand.close()
        results.put((proc, dict(zip(names, counts)), time.process_time() - c0))
    except BaseException:
        results.put((proc, None, traceback.format_exc()))


def run_processes(cand, path, procs, threads, duration):
    """``procs`` forked processes of ``threads`` threads each, every process
    with its own handler on ``path`` (a ``shared`` candidate is set up once,
    before the fork): (seconds, CPU seconds, {name: records logged}).  The clock stops
    when every process has closed its handler (and the shared one is
    closed)."""
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(procs * threads + 1)
    results = ctx.Queue()
    if cand.shared:
        cand.open(path)
    children = [ctx.Process(target=_child, args=(cand, path, p, threads, barrier, duration, results),
                            daemon=True) for p in range(procs)]
    expected, errors, cpu = {}, [], 0.0
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        for c in children:
            c.start()
        barrier.wait(timeout=120)
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in children:
            proc, counts, spent = results.get(timeout=120 + duration)
            if counts is None:
                errors.append(f"process {proc}: {spent}")
            else:
                expected.update(counts)
                cpu += spent
    finally:
        if cand.shared:
            cand.close()
        elapsed = time.perf_counter() - t0
        cpu += time.process_time() - c0
        for c in children:
            c.join(30)
            if c.is_alive():
                c.kill()
    if errors:
        raise RuntimeError("\n".join(errors))
    return elapsed, cpu, expected


def verify(directory, expected):
    """Read every log file in ``directory``: (records, files, problems).
    Each line must be one whole record, and the records of each name must be
    0 .. n-1 with n = expected[name], each exactly once."""
    found, files, lines, matched, unterminated = {}, 0, 0, 0, 0
    for entry in os.scandir(directory):
        if entry.name.endswith(".lock") or not entry.is_file():
            continue
        files += 1
        with open(entry.path, "rb") as f:
            data = f.read()
        lines += data.count(b"\n")
        if data and not data.endswith(b"\n"):
            unterminated += 1
        for number, name in LINE.findall(data):
            found.setdefault(name.decode(), []).append(int(number))
            matched += 1
    problems = []
    if matched != lines or unterminated:
        problems.append(f"{lines - matched + unterminated} torn or malformed lines")
    for name, n in expected.items():
        got = found.pop(name, [])
        distinct = set(got)
        lost = n - len({i for i in distinct if 0 <= i < n})
        dup = len(got) - len(distinct)
        if lost or dup or len(distinct) != n:
            problems.append(f"{name}: {n} logged, {lost} missing, {dup} duplicated")
    for name in found:
        problems.append(f"records from {name!r}, which did not log")
    return matched, files, problems


def run_one(case, label, duration, root):
    """One run of candidate ``label`` in ``case``, in a fresh directory
    under ``root`` that is removed afterwards."""
    cand = make_candidate(label, case.kind, duration)
    directory = os.path.join(root, f"{case.kind}-{label}")
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    path = os.path.join(directory, "bench.log")
    try:
        if case.procs > 1:
            elapsed, cpu, expected = run_processes(cand, path, case.procs, case.threads, duration)
        else:
            elapsed, cpu, expected = run_threads(cand, path, case.threads, duration)
        logged = sum(expected.values())
        cpu_us = cpu / max(1, logged) * 1e6
        if not cand.verify:
            return Run(logged / elapsed, cpu_us, logged, 0, [])
        records, files, problems = verify(directory, expected)
        return Run(logged / elapsed, cpu_us, records, files, problems)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def records_per_second(kind, label, threads=1, procs=1, duration=0.5, directory=None):
    """One verified run of candidate ``label`` in a case of ``kind`` (one of
    KINDS): records per second.  Raises RuntimeError if records were lost,
    duplicated or torn, LookupError if the candidate is not installed."""
    gone = missing(label, kind)
    if gone:
        raise LookupError(f"{label}: {gone} is not installed")
    root = os.path.join(directory or tmpfs_dir(), f"cbuffer-bench-logging-{os.getpid()}")
    os.makedirs(root, exist_ok=True)
    try:
        run = run_one(Case(kind, procs, threads, [label]), label, duration, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if run.problems:
        raise RuntimeError(f"{label} lost or tore records: " + "; ".join(run.problems[:5]))
    return run.rate


# ------------------------------------------------------------------ the bench

class Results:
    def __init__(self, duration, reps):
        self.duration, self.reps = duration, reps
        self.runs = {}       # (case key, label) -> [Run]
        self.skipped = {}    # label -> missing module
        self.cases = []


def count_runs(reps, kinds=KINDS):
    """How many runs ``logging_cases`` makes (for a progress bar)."""
    return reps * sum(len([c for c in case.candidates if not missing(c, case.kind)])
                      for case in all_cases(kinds))


def logging_cases(reps=10, duration=0.5, kinds=KINDS, directory=None, progress=None):
    """Run every case of ``kinds``, candidates interleaved, ``reps`` times."""
    results = Results(duration, reps)
    root = os.path.join(directory or tmpfs_dir(), f"cbuffer-bench-logging-{os.getpid()}")
    os.makedirs(root, exist_ok=True)
    try:
        for case in all_cases(kinds):
            labels = []
            for label in case.candidates:
                gone = missing(label, case.kind)
                if gone:
                    if label not in results.skipped:
                        print(f"skipped: {label} ({gone} is not installed; "
                              f"pip install 'cbuffer[bench]')", file=sys.stderr)
                    results.skipped[label] = gone
                else:
                    labels.append(label)
            results.cases.append((case, labels))
            for rep in range(reps):
                order = labels[rep % len(labels):] + labels[:rep % len(labels)]
                for label in order:
                    run = run_one(case, label, duration, root)
                    if run.problems:
                        print(f"\nFAIL {case.title()}, {display(label, case.kind)}: "
                              + "; ".join(run.problems[:5]), file=sys.stderr)
                    results.runs.setdefault((case.key, label), []).append(run)
                    if progress is not None:
                        progress.step(f"{case.kind} {case.procs}x{case.threads} {label}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return results


def _rates(runs):
    return [r.rate for r in runs if not r.problems]


def paired_ratios(results, key, label, peer):
    """The ratio of ``label``'s records/s to ``peer``'s within each rep
    (the two ran a few seconds apart, so load that comes and goes on the
    machine mostly cancels), over the reps where both verified."""
    a, b = results.runs.get((key, label), []), results.runs.get((key, peer), [])
    return [x.rate / y.rate for x, y in zip(a, b) if not x.problems and not y.problems]


def _fmt(v):
    return f"{v / 1e3:.0f}k" if v < 1e6 else f"{v / 1e6:.2f}M"


def logging_report(results):
    """(lines, verdicts): the tables, and (what, value, target, ok) for each
    target, as ``python -m cbuffer.bench`` prints them (ok None: the peer is
    not installed)."""
    lines = [f"logging: records/s through logger.info (85-95 B lines), median [min-max] of "
             f"{results.reps} interleaved reps, {results.duration:g} s of logging per run, timed "
             f"until the last record is on the file; ratios: median [min-max] of the ratio within "
             f"each rep; CPU: median CPU time per record of every thread of every process taking "
             f"part (what a quiet machine would turn into records/s, less the waits)"]
    for label, module in sorted(results.skipped.items()):
        lines.append(f"  skipped: {label} ({module} is not installed)")
    verdicts, ceiling_lines = [], []
    failures = 0
    for case, labels in results.cases:
        if not labels:
            continue
        lines.append("")
        lines.append(case.title())
        lines.append(f"  {'candidate':<36} {'records/s':>22}  {'cbuffer/it':>19}  {'CPU us':>6}  "
                     f"{'files':>5}  {'check':>5}")
        for label in labels:
            runs = results.runs[(case.key, label)]
            rates = _rates(runs)
            bad = len(runs) - len(rates)
            failures += bad if make_candidate(label, case.kind, 1.0).verify else 0
            if rates:
                med = statistics.median(rates)
                cell = f"{_fmt(med)} [{_fmt(min(rates))}-{_fmt(max(rates))}]"
                pairs = paired_ratios(results, case.key, "cbuffer", label) if label != "cbuffer" else []
                ratio = (f"{statistics.median(pairs):.2f}x [{min(pairs):.2f}-{max(pairs):.2f}]"
                         if pairs else "")
            else:
                cell, ratio = "-", ""
            cpu = [r.cpu_us for r in runs if not r.problems]
            cpu = f"{statistics.median(cpu):.2f}" if cpu else "-"
            verified = make_candidate(label, case.kind, 1.0).verify
            check = ("FAIL" if bad else "ok") if verified else "-"
            files = f"{statistics.median(r.files for r in runs):g}" if verified else "-"
            lines.append(f"  {display(label, case.kind):<36} {cell:>22}  {ratio:>19}  {cpu:>6}  "
                         f"{files:>5}  {check:>5}")
            for run in runs:
                for problem in run.problems[:3]:
                    lines.append(f"      lost or torn: {problem}")
    for key, label, peer, target in TARGETS:
        case = next((c for c, _ in results.cases if c.key == key), None)
        if case is None:
            continue
        what = f"{case.title()}: {display(label, key[0])} / {display(peer, key[0])}"
        if peer in results.skipped:
            verdicts.append((f"{what} ({results.skipped[peer]} is not installed)", 0.0, target, None))
            continue
        pairs = paired_ratios(results, key, label, peer)
        if pairs:
            ratio = statistics.median(pairs)
            verdicts.append((what, ratio, target, ratio >= target))
            ceilings = [f"{FLOORS[f]} {statistics.median(r):.2f}x"
                        for f in FLOORS if (r := paired_ratios(results, key, f, peer))]
            if ceilings:
                ceiling_lines.append(f"  {what} {target:g}x: {', '.join(ceilings)}")
    for case, labels in results.cases:
        if "cbuffer" in labels:
            runs = results.runs[(case.key, "cbuffer")]
            bad = sum(1 for r in runs if r.problems)
            if case.kind == "processes" or bad:
                verdicts.append((f"{case.title()}: {display('cbuffer', case.kind)} runs that lost, "
                                 f"duplicated or tore records", bad, 0, bad == 0))
    if ceiling_lines:
        lines.append("")
        lines.append("ceilings: what a handler that does nothing, or only formats and encodes, would reach")
        lines.extend(ceiling_lines)
    if failures:
        lines.append("")
        lines.append(f"FAIL: {failures} run(s) lost, duplicated or tore records (see above)")
    return lines, verdicts


class _SecondCachedFormatter(logging.Formatter):
    """logging.Formatter with the date part of asctime made once per second
    (the same text): what formatting would cost without a strftime per
    record."""

    _cached = (None, "")

    def formatTime(self, record, datefmt=None):
        if datefmt is not None:
            return logging.Formatter.formatTime(self, record, datefmt)
        second = int(record.created)
        cached = self._cached
        if cached[0] != second:
            cached = self._cached = (second, time.strftime(self.default_time_format,
                                                           self.converter(record.created)))
        return self.default_msec_format % (cached[1], record.msecs)


def breakdown(reps=7, records=20_000, directory=None):
    """Microseconds per record, one thread, for each step of the emit path
    (min and median over ``reps`` interleaved rounds): [(step, min, median)]."""
    import cbuffer

    root = os.path.join(directory or tmpfs_dir(), f"cbuffer-bench-breakdown-{os.getpid()}")
    os.makedirs(root, exist_ok=True)
    fmt = logging.Formatter(FORMAT)
    cached = _SecondCachedFormatter(FORMAT)
    logger = _fresh_logger()
    logger.addHandler(_NoOpHandler())
    record = logger.makeRecord(LOGGER_NAME, logging.INFO, __file__, 1, MESSAGE, (1, "t0"), None)
    line = fmt.format(record) + "\n"
    data = line.encode("utf-8")
    writer = cbuffer.open(os.path.join(root, "writer.log"), "wb")
    handlers = {
        "ConcurrentFileHandler": ConcurrentFileHandler(os.path.join(root, "cfh.log")),
        "logging.FileHandler": logging.FileHandler(os.path.join(root, "fh.log")),
        "ConcurrentRotatingFileHandler": ConcurrentRotatingFileHandler(
            os.path.join(root, "crfh.log"), maxBytes=MAX_BYTES, backupCount=1000),
        "RotatingFileHandler": logging.handlers.RotatingFileHandler(
            os.path.join(root, "rfh.log"), maxBytes=MAX_BYTES, backupCount=1000),
    }
    if not missing("concurrent-log-handler"):
        handlers["concurrent-log-handler"] = _clh(os.path.join(root, "clh.log"), 1000)
    for h in handlers.values():
        h.setFormatter(fmt)
    with_cache = ConcurrentFileHandler(os.path.join(root, "cfh-cached.log"))
    with_cache.setFormatter(cached)
    steps = [
        ("logger.info, no-op handler (the floor)", logger.info, (MESSAGE, 1, "t0")),
        ("  of which LogRecord()", logging.LogRecord,
         (LOGGER_NAME, logging.INFO, __file__, 1, MESSAGE, (1, "t0"), None)),
        ("Formatter.format", fmt.format, (record,)),
        ("  of which formatTime", fmt.formatTime, (record,)),
        ("  of which getMessage", record.getMessage, ()),
        ("Formatter.format, asctime cached per second", cached.format, (record,)),
        ("str.encode", line.encode, ("utf-8",)),
        ("ConcurrentBufferedWriter.write", writer.write, (data,)),
    ] + [(f"{name}.handle", h.handle, (record,)) for name, h in handlers.items()] + [
        ("ConcurrentFileHandler.handle, asctime cached", with_cache.handle, (record,)),
    ]
    times = {name: [] for name, _, _ in steps}
    try:
        for _ in range(reps):
            for name, step, args in steps:
                t0 = time.perf_counter()
                for _ in range(records):
                    step(*args)
                times[name].append((time.perf_counter() - t0) / records * 1e6)
    finally:
        writer.close()
        for h in (*handlers.values(), with_cache):
            h.close()
        logger.handlers.clear()
        shutil.rmtree(root, ignore_errors=True)
    return [(name, min(t), statistics.median(t)) for name, t in times.items()]


def failed(results):
    """True when any run of a candidate that writes lost or tore records."""
    return any(r.problems for runs in results.runs.values() for r in runs)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m cbuffer.bench_logging", description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=10, help="interleaved repetitions (default 10)")
    p.add_argument("--duration", type=float, default=0.5, help="seconds of logging per run (default 0.5)")
    p.add_argument("--quick", action="store_true", help="a short smoke run (3 reps of 0.1 s)")
    p.add_argument("--cases", default=",".join(KINDS), help=f"comma-separated, of: {', '.join(KINDS)}")
    p.add_argument("--dir", help="where the log files go (default: tmpfs)")
    p.add_argument("--breakdown", action="store_true",
                   help="only print the cost of each step of the emit path, one thread")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.breakdown:
        print(f"machine: {machine()}")
        print("microseconds per record, one thread: min, median of interleaved rounds")
        for name, low, med in breakdown(directory=args.dir):
            print(f"  {name:<46} {low:6.2f} {med:6.2f}")
        return
    kinds = args.cases.split(",")
    unknown = set(kinds) - set(KINDS)
    if unknown:
        p.error(f"unknown cases: {', '.join(sorted(unknown))}")
    if args.quick:
        args.reps, args.duration = min(args.reps, 3), min(args.duration, 0.1)
    load = os.getloadavg()
    progress = Progress(count_runs(args.reps, kinds), not args.no_progress)
    results = logging_cases(args.reps, args.duration, kinds, args.dir, progress)
    lines, verdicts = logging_report(results)
    print(f"machine: {machine()}")
    print("\n".join(lines))
    print(f"load average (1/5/15 min) at the start {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}, "
          "at the end {:.2f}/{:.2f}/{:.2f}".format(*os.getloadavg()))
    print("\ntargets")
    for what, value, target, ok in verdicts:
        if ok is None:
            print(f"  SKIP  {what} (target {target:g})")
        else:
            print(f"  {'PASS' if ok else 'MISS'}  {what}: {value:.3g} (target {target:g})")
    if failed(results):
        sys.exit(1)


if __name__ == "__main__":
    main()
