"""python -m cbuffer.bench_text: print() from many threads, and lines on a pipe shared by processes.

* ``print-8t``: 8 threads print() 60-character lines into a tmpfs file for the same wall time, through
  ``cbuffer.open(path, "w")`` and through ``io.TextIOWrapper(io.BufferedWriter(io.FileIO(path, "w")))``;
  ``print(line)`` (two ``write()`` calls per line) and ``print(tag, seq, body)`` (six).  Interleaved
  repetitions, lines per second (the clock stops when the flush has returned), medians with their
  min-max spread.  Every file is read back: a line that is not exactly what one print() call wrote is
  *torn*, a line printed but not found is *lost*; both are counted for both writers.  ``no-op`` is the
  same loop printing into an object whose ``write`` is the builtin ``len``: the most print() itself can
  do on this interpreter, whatever the writer.
* ``pipe-json``: 4 processes x 4 threads print JSON lines of 10 to 4000 bytes into one pipe (their
  stdout) read by a checker process that parses every line; ``sys.stdout`` is
  ``io.TextIOWrapper(io.BufferedWriter(...))`` in one run and ``cbuffer.open(1, "w", closefd=False)`` in
  the other.  Lines that do not parse are torn.

``python -m cbuffer.bench`` runs both at its end; this module runs them alone.
"""
import argparse
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import cbuffer

LINE_CHARS = 60  # with its newline
TARGET = 3.0  # print-8t: cbuffer lines/s >= 3x io's


def tmpfs_dir():
    return "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


# ------------------------------------------------------------------ print-8t

class NoOp:
    """print()'s floor: a write that does nothing (a builtin, no Python frame)."""

    write = staticmethod(len)

    def flush(self):
        pass

    close = flush


def open_text(kind, path):
    if kind == "cbuffer":
        return cbuffer.open(path, "w", encoding="utf-8")
    if kind == "io":
        return io.TextIOWrapper(io.BufferedWriter(io.FileIO(path, "w")), encoding="utf-8")
    if kind == "no-op":
        return NoOp()
    raise ValueError(f"unknown text writer {kind!r}")


def body_of(tid):
    """Each thread's payload is its own letter, so a line mixing threads shows."""
    return chr(ord("a") + tid) * (LINE_CHARS - 1 - len("T0 00000000 "))


def print_run(kind, path, threads, duration, nargs=1):
    """``threads`` threads print() for ``duration`` seconds, one argument per line (``nargs=1``) or three;
    returns (lines per second, lines printed per thread)."""
    out = open_text(kind, path)
    start = threading.Barrier(threads + 1)
    counts = [0] * threads

    def work(tid):
        tag, body, write_line = f"T{tid}", body_of(tid), print
        start.wait()
        clock, end, n = time.perf_counter, time.perf_counter() + duration, 0
        while clock() < end:
            if nargs == 1:
                for _ in range(64):
                    write_line(f"{tag} {n:08d} {body}", file=out)
                    n += 1
            else:
                for _ in range(64):
                    write_line(tag, f"{n:08d}", body, file=out)
                    n += 1
        counts[tid] = n

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for t in pool:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in pool:
        t.join()
    out.flush()
    elapsed = time.perf_counter() - t0
    out.close()
    return sum(counts) / elapsed, counts


LINE = re.compile(rb"T(\d) (\d{8}) ([a-z]+)")


def check_file(path, counts):
    """(torn, lost): lines that are not exactly one print()'s, lines printed but not found whole."""
    torn = 0
    seen = [set() for _ in counts]
    with open(path, "rb") as f:
        for raw in f:
            m = LINE.fullmatch(raw.rstrip(b"\n")) if raw.endswith(b"\n") else None
            if m is None or int(m[1]) >= len(counts) or m[3] != body_of(int(m[1])).encode():
                torn += 1
                continue
            seen[int(m[1])].add(int(m[2]))
    lost = sum(max(0, n - len(s)) for n, s in zip(counts, seen))
    return torn, lost


KINDS = ("cbuffer", "io", "no-op")


def print_case(reps=10, threads=8, duration=0.5, directory=None, progress=None, nargs=(1, 3)):
    """{(nargs, kind): {"rate": [...], "torn": [...], "lost": [...]}} over ``reps`` interleaved
    repetitions (the order of the writers rotates from one repetition to the next)."""
    directory = directory or tmpfs_dir()
    path = os.path.join(directory, f"cbuffer-bench-text-{os.getpid()}.txt")
    out = {(n, k): {"rate": [], "torn": [], "lost": []} for n in nargs for k in KINDS}
    try:
        for rep in range(reps):
            for n in nargs:
                order = KINDS[rep % len(KINDS):] + KINDS[:rep % len(KINDS)]
                for kind in order:
                    rate, counts = print_run(kind, path, threads, duration, n)
                    entry = out[(n, kind)]
                    entry["rate"].append(rate)
                    if kind != "no-op":
                        torn, lost = check_file(path, counts)
                        entry["torn"].append(torn)
                        entry["lost"].append(lost)
                    if progress:
                        progress(f"print-{threads}t {n} arg {kind}")
    finally:
        if os.path.exists(path):
            os.unlink(path)
    return out


# ------------------------------------------------------------------ pipe-json

JSON_WRITER = """
    import io, json, random, sys, threading
    import cbuffer
    proc, kind, lines = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    if kind == "io":
        sys.stdout = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False)), encoding="utf-8")
    else:
        sys.stdout = cbuffer.open(1, "w", closefd=False, encoding="utf-8")
    def work(tid):
        rng = random.Random(proc * 100 + tid)
        for seq in range(lines):
            size = rng.randint(10, 4000)
            pad = "x" * max(0, size - len(json.dumps([proc, tid, seq, ""])) - 1)
            print(json.dumps([proc, tid, seq, pad]))
    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sys.stdout.flush()
"""

JSON_CHECKER = """
    import json, sys
    bad = lines = 0
    for raw in sys.stdin.buffer:
        lines += 1
        try:
            json.loads(raw)
        except ValueError:
            bad += 1
    print(json.dumps({"lines": lines, "bad": bad}))
"""


def pipe_json_run(kind, lines, processes=4, timeout=120):
    """One run: {"lines": lines the checker read, "bad": lines that did not parse}."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(cbuffer.__file__))), env.get("PYTHONPATH", "")])
    r, w = os.pipe()
    checker = subprocess.Popen([sys.executable, "-c", textwrap.dedent(JSON_CHECKER)], stdin=r,
                               stdout=subprocess.PIPE, env=env)
    os.close(r)
    code = textwrap.dedent(JSON_WRITER)
    writers = [subprocess.Popen([sys.executable, "-c", code, str(p), kind, str(lines)], stdout=w, env=env)
               for p in range(processes)]
    os.close(w)
    try:
        for p in writers:
            p.wait(timeout)
        out, _ = checker.communicate(timeout=timeout)
    finally:
        for p in (*writers, checker):
            if p.poll() is None:
                p.kill()
                p.wait()
    return json.loads(out)


def pipe_json_case(reps=3, lines=2000, progress=None):
    out = {"io": [], "cbuffer": []}
    for _ in range(reps):
        for kind in out:
            out[kind].append(pipe_json_run(kind, lines))
            if progress:
                progress(f"pipe-json {kind}")
    return out


# ------------------------------------------------------------------ report

def fmt(values, scale=1e3, unit="k"):
    med = statistics.median(values)
    return f"{med / scale:.1f}{unit} [{min(values) / scale:.1f}-{max(values) / scale:.1f}]"


def report(prints, pipes, threads=8):
    """(lines of text, verdicts as (what, value, target, ok))."""
    lines, verdicts = [], []
    names = {"cbuffer": 'cbuffer.open(path, "w")', "io": "io.TextIOWrapper(io.BufferedWriter(FileIO))",
             "no-op": "no-op (write = len: print()'s floor)"}
    for nargs in sorted({n for n, _ in prints or {}}):
        reps = len(prints[(nargs, "cbuffer")]["rate"])
        call = "print(line)" if nargs == 1 else "print(tag, seq, body)"
        lines.append(f"print-{threads}t: {call}, {LINE_CHARS}-character lines, {threads} threads, "
                     f"tmpfs file, {reps} interleaved reps")
        lines.append(f"{'writer':>44}  {'lines/s median [min-max]':>28}  {'torn':>6}  {'lost':>6}")
        for kind in KINDS:
            e = prints[(nargs, kind)]
            torn = str(sum(e["torn"])) if e["torn"] else "-"
            lost = str(sum(e["lost"])) if e["lost"] else "-"
            lines.append(f"{names[kind]:>44}  {fmt(e['rate']):>28}  {torn:>6}  {lost:>6}")
        med = {k: statistics.median(prints[(nargs, k)]["rate"]) for k in KINDS}
        ratio = med["cbuffer"] / med["io"]
        lines.append(f"  cbuffer / io {ratio:.2f}x (print()'s floor / io {med['no-op'] / med['io']:.2f}x); "
                     f"torn lines per run: cbuffer {prints[(nargs, 'cbuffer')]['torn']}, "
                     f"io {prints[(nargs, 'io')]['torn']}")
        lines.append("")
        verdicts.append((f"print-{threads}t {call}: cbuffer lines/s / io.TextIOWrapper's", ratio, TARGET,
                         ratio >= TARGET))
        bad = sum(prints[(nargs, "cbuffer")]["torn"]) + sum(prints[(nargs, "cbuffer")]["lost"])
        verdicts.append((f"print-{threads}t {call}: cbuffer torn or lost lines (all runs)", bad, 0, bad == 0))
    if pipes:
        lines.append("pipe-json: 4 processes x 4 threads print JSON lines of 10-4000 bytes into one pipe; a "
                     "checker parses every line (lines read/lines that did not parse, per run)")
        labels = {"io": "sys.stdout = io.TextIOWrapper(io.BufferedWriter(...))",
                  "cbuffer": 'sys.stdout = cbuffer.open(1, "w", closefd=False)'}
        for kind in ("io", "cbuffer"):
            runs = ", ".join(f"{r['lines']}/{r['bad']}" for r in pipes[kind])
            lines.append(f"{labels[kind]:>56}  {runs}")
        lines.append("")
        bad = sum(r["bad"] for r in pipes["cbuffer"])
        verdicts.append(("pipe-json 4p x 4t: lines torn with cbuffer (all runs)", bad, 0, bad == 0))
    return lines, verdicts


def run(reps=10, quick=False, progress=None, directory=None):
    """Both cases; returns (report lines, verdicts).  ``quick``: a smoke run."""
    prints = print_case(reps=min(reps, 3) if quick else max(reps, 10), duration=0.1 if quick else 0.5,
                        directory=directory, progress=progress)
    pipes = pipe_json_case(reps=1 if quick else 3, lines=300 if quick else 2000, progress=progress)
    return report(prints, pipes)


def steps(reps, quick):
    """How many progress steps run() takes."""
    return 2 * len(KINDS) * (min(reps, 3) if quick else max(reps, 10)) + 2 * (1 if quick else 3)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m cbuffer.bench_text", description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=10, help="interleaved repetitions of print-8t (>= 10)")
    p.add_argument("--quick", action="store_true", help="a short smoke run")
    p.add_argument("--dir", help="where print-8t's file goes (default: tmpfs)")
    args = p.parse_args(argv)
    lines, verdicts = run(args.reps, args.quick, directory=args.dir)
    print("\n".join(lines))
    print("targets")
    for what, value, target, ok in verdicts:
        print(f"  {'PASS' if ok else 'MISS'}  {what}: {value:.3g} (target {target:g})")


if __name__ == "__main__":
    main()
