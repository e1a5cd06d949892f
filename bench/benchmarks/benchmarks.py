"""asv benchmarks: every performance dimension of the problem statement, for
cbuffer and the baselines (io.BufferedWriter with its default buffer and with
cbuffer's, a Lock + bytearray buffer, unbuffered os.write; loguru and
structlog over a plain file; the standard logging handlers and
concurrent-log-handler).  The measuring code is shared with
``python -m cbuffer.bench`` (cbuffer.bench, cbuffer.bench_flush and
cbuffer.bench_logging)."""
import os
import statistics
import time

import cbuffer
from cbuffer import _testing, bench_flush, bench_text
from cbuffer.bench import Sink, allocation_case, disk_dir, make_writer, pin, run, sink_alone, tmpfs_dir
from cbuffer.bench_logging import PROCESS_THREADS, PROCESSES, missing, records_per_second

WRITERS = ["cbuffer", "io", "io-64k", "lock+bytearray", "os.write", "no-op"]


def sink_for(label):
    if label == "devnull":
        return Sink(label, os.devnull)
    if label == "tmpfs":
        return Sink(label, os.path.join(tmpfs_dir(), f"cbuffer-asv-{os.getpid()}"))
    if label == "disk":
        return Sink(label, os.path.join(disk_dir(), f"cbuffer-asv-{os.getpid()}"))
    if label == "fsync":
        return Sink(label, os.path.join(disk_dir(), f"cbuffer-asv-fsync-{os.getpid()}"))
    return Sink(label, pipe_pause=(4 << 20, 0.02))


class Throughput:
    """Writes per second at 1, 2, 4, 8 and 16 threads (append throughput);
    ``no-op`` is the loop alone, the interpreter's floor."""
    params = (WRITERS, [1, 2, 4, 8, 16], [64, 4096], ["devnull", "tmpfs", "disk"])
    param_names = ["writer", "threads", "record", "sink"]
    unit = "writes/s"
    timeout = 600

    def track_writes_per_second(self, writer, threads, size, sink_label):
        sink = sink_for(sink_label)
        fd = sink.open()
        try:
            return run(writer, fd, threads, size, duration=0.25)[0]
        finally:
            sink.close(fd)


class CpuPerRecord:
    """One thread writing 2M 64 B records to /dev/null: process CPU time per
    record, the flusher's included; free to use every CPU, and pinned to one
    (a container limited to one CPU), where its writes/s are tracked too."""
    params = (["cbuffer", "io", "no-op"], ["any", "pinned"])
    param_names = ["writer", "cpus"]
    timeout = 300

    def _run(self, writer, cpus):
        before = pin({min(os.sched_getaffinity(0))}) if cpus == "pinned" else None
        fd = os.open(os.devnull, os.O_WRONLY)
        try:
            c0 = time.process_time()
            rate, _ = run(writer, fd, 1, 64, writes=2_000_000)
            return rate, (time.process_time() - c0) / 2_000_000 * 1e9
        finally:
            os.close(fd)
            if before is not None:
                pin(before)

    def track_cpu_ns_per_record(self, writer, cpus):
        return self._run(writer, cpus)[1]

    track_cpu_ns_per_record.unit = "ns"

    def track_writes_per_second(self, writer, cpus):
        return self._run(writer, cpus)[0]

    track_writes_per_second.unit = "writes/s"


class Contention:
    """Throughput at N threads / throughput at 1 thread (1.0: no collapse)."""
    params = (["cbuffer", "io", "lock+bytearray"], [4, 8, 16], [64, 4096])
    param_names = ["writer", "threads", "record"]
    unit = "ratio"

    def track_n_over_1(self, writer, threads, size):
        rates = {}
        for n in (1, threads, 1, threads, 1, threads):
            fd = os.open(os.devnull, os.O_WRONLY)
            rates.setdefault(n, []).append(run(writer, fd, n, size, duration=0.2)[0])
            os.close(fd)
        return statistics.median(rates[threads]) / statistics.median(rates[1])


class WriteLatency:
    """Time per write from one thread, 4 B and 4 KiB, to /dev/null."""
    params = (WRITERS, [4, 4096])
    param_names = ["writer", "record"]

    def setup(self, writer, size):
        self.fd = os.open(os.devnull, os.O_WRONLY)
        self.writer = make_writer(writer, self.fd)
        self.write = self.writer.write
        self.payload = b"x" * size
        self.write(self.payload)  # start cbuffer's flusher outside the timing
        self.writer.flush()

    def teardown(self, writer, size):
        self.writer.close()
        os.close(self.fd)

    def time_write(self, writer, size):
        self.write(self.payload)


class SpikySinkLatency:
    """p99 write latency (us) and throughput with 4 threads into a sink with
    latency spikes: a disk file fsynced per flush, a pipe whose reader pauses."""
    params = (["cbuffer", "io", "lock+bytearray"], ["fsync", "pausing-pipe"])
    param_names = ["writer", "sink"]
    timeout = 600

    def _run(self, writer, sink_label):
        sink = sink_for(sink_label)
        fd = sink.open()
        try:
            writes = 20_000 if sink_label == "fsync" else 60_000
            return run(writer, fd, 4, 4096, writes, latencies=True, fsync=sink_label == "fsync")
        finally:
            sink.close(fd)

    def track_p99_us(self, writer, sink_label):
        lat = self._run(writer, sink_label)[1]
        return lat[int(0.99 * len(lat))] / 1e3

    track_p99_us.unit = "us"

    def track_share_of_sink_alone(self, writer, sink_label):
        rate = self._run(writer, sink_label)[0]
        sink = sink_for(sink_label)
        fd = sink.open()
        try:
            writes = 20_000 if sink_label == "fsync" else 60_000
            alone = sink_alone(fd, 4096, writes, sink_label == "fsync")
        finally:
            sink.close(fd)
        return rate / alone

    track_share_of_sink_alone.unit = "ratio"


class FlushLatency:
    """Milliseconds for flush() as a function of the bytes pending."""
    params = (["cbuffer", "io-64k"], [4096, 65536, 1 << 20, 8 << 20])
    param_names = ["writer", "pending"]
    unit = "ms"

    def track_flush_ms(self, writer, pending):
        path = os.path.join(tmpfs_dir(), f"cbuffer-asv-flush-{os.getpid()}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        if writer == "cbuffer":
            w = cbuffer.ConcurrentBufferedWriter(fd, buffer_size=16 << 20, buffer_count=2, closefd=False)
        else:
            import io

            w = io.BufferedWriter(io.FileIO(fd, "wb", closefd=False), buffer_size=16 << 20)
        chunk = b"x" * 4096
        times = []
        for _ in range(10):
            for _ in range(pending // 4096):
                w.write(chunk)
            t0 = time.perf_counter()
            w.flush()
            times.append((time.perf_counter() - t0) * 1e3)
        w.close()
        os.close(fd)
        os.unlink(path)
        return statistics.median(times)


class WriteFlushPerRecord:
    """Records/s with every 61 B record written and flushed, 1-16 threads,
    into a regular file in disk_dir() (the file's size is checked)."""
    params = (list(bench_flush.FLUSH_WRITERS), list(bench_flush.FLUSH_THREADS))
    param_names = ["writer", "threads"]
    unit = "records/s"

    def track_records_per_second(self, writer, threads):
        path = bench_flush.bench_path("asv-flush")
        return bench_flush.flush_run(writer, path, threads, 0.25)


class FlushAfterPending:
    """Microseconds for flush() after one thread wrote N bytes since the
    last flush, 64 KiB buffers for both (io: with its default 8 KiB too),
    into a regular file: median and p99 of many flushes."""
    params = (["cbuffer", "io-64k", "io"], list(bench_flush.PENDING))
    param_names = ["writer", "pending"]
    unit = "us"

    def _times(self, writer, pending):
        path = bench_flush.bench_path("asv-flush-latency")
        return bench_flush.flush_latency_run(writer, path, pending, bench_flush.latency_samples(pending))[0]

    def track_flush_median_us(self, writer, pending):
        lat = self._times(writer, pending)
        return lat[len(lat) // 2] / 1e3

    def track_flush_p99_us(self, writer, pending):
        lat = self._times(writer, pending)
        return lat[min(len(lat) - 1, int(0.99 * len(lat)))] / 1e3


class LoggerFlushPerRecord:
    """Records/s of loguru (stream sink) and structlog (BytesLoggerFactory),
    which flush after every record, over cbuffer and over a plain file."""
    params = (sorted(bench_flush.LOGGER_TARGETS), list(bench_flush.LOGGER_TARGETS["loguru"]),
              list(bench_flush.LOGGER_THREADS))
    param_names = ["library", "target", "threads"]
    unit = "records/s"

    def setup(self, lib, target, threads):
        why = bench_flush.logger_available(lib)
        if why:
            raise NotImplementedError(why)
        if target not in bench_flush.LOGGER_TARGETS[lib]:
            raise NotImplementedError(f"{lib} has no {target!r} case")

    def track_records_per_second(self, lib, target, threads):
        path = bench_flush.bench_path("asv-logger")
        try:
            return bench_flush.LOGGER_RUNS[lib](target, path, threads, 0.25)
        finally:
            if os.path.exists(path):
                os.unlink(path)


class Allocation:
    """Heap bytes allocated per write in steady state (tracemalloc)."""
    unit = "bytes"

    def track_bytes_per_write(self):
        (peak1, peak2), _ = allocation_case(200_000)
        return max(0, peak2 - peak1) / 200_000

    def track_syscalls_per_flushed_buffer(self):
        _, stats = allocation_case(200_000)
        return stats["syscalls"] / max(1, stats["flushes"])

    track_syscalls_per_flushed_buffer.unit = "syscalls"


class Utilization:
    """Useful bytes / buffer bytes dispatched."""
    params = [[64, 1000, 4096, 5000]]
    param_names = ["record"]
    unit = "ratio"

    def track_utilization(self, size):
        fd = os.open(os.devnull, os.O_WRONLY)
        w = cbuffer.ConcurrentBufferedWriter(fd, closefd=False)
        payload = b"x" * size
        for _ in range(20_000):
            w.write(payload)
        w.flush()
        u = w.stats()["utilization"]
        w.close()
        os.close(fd)
        return u


class NogilAppend:
    """C-level appends from 2 nogil threads, beside a bare atomic fetch_add
    loop on one shared counter (the floor for any shared-word append),
    interleaved, median of 5 pairs."""
    unit = "ratio"

    def _pairs(self, n=8_000_000):
        appends, adds = [], []
        for _ in range(5):
            fd = os.open(os.devnull, os.O_WRONLY)
            ring = cbuffer.BufferRing(4, cbuffer.DEFAULT_BUFFER_SIZE, fd)
            appends.append(n / _testing.hammer_ring_plain(ring, 2, n // 2, b"x" * 64))
            ring.close()
            os.close(fd)
            adds.append(n / _testing.bare_fetch_add(2, n // 2))
        return statistics.median(appends), statistics.median(adds)

    def track_appends_over_fetch_add(self):
        appends, adds = self._pairs()
        return appends / adds

    def track_appends_per_second(self):
        return self._pairs()[0]

    track_appends_per_second.unit = "appends/s"


class LaneWriteScaling:
    """C-level lane_write (a writer's write() on a free-threaded build): 2
    nogil threads over 1, median of 5 interleaved pairs."""
    unit = "ratio"

    def track_two_threads_over_one(self):
        ratios = []
        for _ in range(5):
            rates = []
            for threads in (1, 2):
                fd = os.open(os.devnull, os.O_WRONLY)
                w = cbuffer.ConcurrentBufferedWriter(fd, closefd=False, lanes=2)
                per = 4_000_000 // threads
                rates.append(per * threads / _testing.hammer_lanes_plain(w._core, threads, per, b"x" * 64))
                w.close()
                os.close(fd)
            ratios.append(rates[1] / rates[0])
        return statistics.median(ratios)


class SharedRingCopies:
    """The floor for 4 KiB records: bare C copies round one ring shared by 2
    threads, and round a ring each, over 1 thread's rate; median of 5
    interleaved runs.  Cache lines of a shared ring move between cores."""
    unit = "ratio"
    params = [["one ring", "a ring each"]]
    param_names = ["rings"]

    def track_two_threads_over_one(self, rings):
        ratios = []
        for _ in range(5):
            one = 250_000 / _testing.bare_copy(True, 1, 250_000, 4096)
            two = 250_000 / _testing.bare_copy(rings == "one ring", 2, 125_000, 4096)
            ratios.append(two / one)
        return statistics.median(ratios)


class PrintLines:
    """print() of 60-character lines from 8 threads into a file: lines per
    second through cbuffer.open(path, "w") beside io's
    TextIOWrapper(BufferedWriter) (which may tear lines)."""
    params = [list(bench_text.KINDS)]
    param_names = ["writer"]
    unit = "lines/s"
    timeout = 300

    def track_lines_per_second(self, kind):
        path = os.path.join(tmpfs_dir(), f"cbuffer-asv-print-{os.getpid()}")
        try:
            return bench_text.print_run(kind, path, 8, 0.5)[0]
        finally:
            if os.path.exists(path):
                os.unlink(path)


class BufferAppend:
    """Layer 1: ConcurrentBuffer.append from one thread, 4 B and 4 KiB."""
    params = [[4, 4096]]
    param_names = ["record"]

    def setup(self, size):
        self.buf = cbuffer.ConcurrentBuffer(1 << 30)
        self.append = self.buf.append
        self.payload = b"x" * size

    def time_append(self, size):
        if self.append(self.payload) > (1 << 30) - 8192:
            self.buf.flush()


class LoggingRecords:
    """Records per second through logger.info, from 1 and 4 threads, to a
    file rotating at 1 MB (ConcurrentRotatingFileHandler beside
    logging.handlers.RotatingFileHandler) and to a plain file
    (ConcurrentFileHandler beside logging.FileHandler), timed until the last
    record is on the file; every run is read back and fails if a record was
    lost, duplicated or torn."""
    params = (["cbuffer", "stdlib"], [1, 4], ["size", "file"])
    param_names = ["handler", "threads", "file"]
    unit = "records/s"
    timeout = 300

    def track_records_per_second(self, handler, threads, kind):
        return records_per_second(kind, handler, threads, duration=0.5)


class LoggingProcesses:
    """Records per second from 4 processes x 4 threads logging to one file
    rotating at 1 MB, each process with its own ConcurrentRotatingFileHandler
    on the shared path, or concurrent-log-handler's (skipped where it is not
    installed); verified as LoggingRecords."""
    params = [["cbuffer", "concurrent-log-handler"]]
    param_names = ["handler"]
    unit = "records/s"
    timeout = 300

    def setup(self, handler):
        if missing(handler, "processes"):
            raise NotImplementedError(f"{handler} is not installed")

    def track_records_per_second(self, handler):
        return records_per_second("processes", handler, PROCESS_THREADS, PROCESSES, duration=0.5)
