"""python -m cbuffer: a short demonstration.

Several threads write numbered lines into one file through cbuffer, then the
file is read back and every line checked.
"""
import argparse
import os
import sys
import tempfile
import threading
import time

import cbuffer


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m cbuffer", description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--lines", type=int, default=100_000, help="lines per thread")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "demo.log")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        ring = cbuffer.BufferRing(4, 64 * 1024, fd)

        def writer(tid):
            append = ring.append
            for i in range(args.lines):
                append(b"thread %02d line %08d\n" % (tid, i))

        threads = [threading.Thread(target=writer, args=(t,)) for t in range(args.threads)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        ring.close()
        elapsed = time.perf_counter() - t0
        os.close(fd)

        with open(path, "rb") as f:
            lines = f.read().splitlines()
        seen = {}
        for line in lines:
            _, tid, _, num = line.split()
            tid, num = int(tid), int(num)
            if num != seen.get(tid, -1) + 1:
                print(f"thread {tid}: line {num} out of order", file=sys.stderr)
                return 1
            seen[tid] = num
        total = args.threads * args.lines
        stats = ring.stats()
        print(f"cbuffer {cbuffer.__version__}: {args.threads} threads wrote {total:,} lines "
              f"({stats['bytes_written']:,} bytes) into one file in {elapsed:.3f} s "
              f"({total / elapsed / 1e6:.2f} M lines/s)")
        print(f"  {stats['flushes']} buffers handed to the file in {stats['syscalls']} write calls, "
              f"{stats['ring_full_waits']} waits for a free buffer, "
              f"{stats['reservation_retries']} reservation retries")
        ok = len(lines) == total and all(seen.get(t) == args.lines - 1 for t in range(args.threads))
        print("  read back: every line present, each thread's lines in order" if ok
              else "  read back: LINES MISSING")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
