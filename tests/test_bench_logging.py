"""The logging benchmark's own checks: verification catches lost, duplicated
and torn records, and short runs of every installed candidate verify."""
import os
import sys
import warnings

import pytest

from cbuffer import bench_logging as bl

LINE = "2024-01-02 03:04:05,678 INFO record {} from {}: lorem ipsum dolor sit amet, consectetur\n"


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def test_verify_accepts_every_record_once_across_files(tmp_path):
    write(tmp_path / "bench.log", "".join(LINE.format(i, "t0") for i in range(5, 10)))
    write(tmp_path / "bench.log.1", "".join(LINE.format(i, "t0") for i in range(5)))
    write(tmp_path / "bench.log.lock", "not a log")
    assert bl.verify(tmp_path, {"t0": 10}) == (10, 2, [])


@pytest.mark.parametrize("text, problem", [
    ("".join(LINE.format(i, "t0") for i in (0, 1, 3)), "t0: 4 logged, 1 missing, 0 duplicated"),
    ("".join(LINE.format(i, "t0") for i in (0, 1, 2, 3, 3)), "t0: 4 logged, 0 missing, 1 duplicated"),
    ("".join(LINE.format(i, "t0") for i in range(4)) + LINE.format(0, "t9"), "'t9', which did not log"),
    ("".join(LINE.format(i, "t0") for i in range(4))[:-1], "1 torn or malformed lines"),
    (LINE.format(0, "t0")[:30] + "".join(LINE.format(i, "t0") for i in range(4)),
     "1 torn or malformed lines"),
])
def test_verify_reports_what_is_wrong(tmp_path, text, problem):
    write(tmp_path / "bench.log", text)
    problems = bl.verify(tmp_path, {"t0": 4})[2]
    assert any(problem in p for p in problems), problems


def installed(label, kind):
    return pytest.param(label, kind, marks=pytest.mark.skipif(
        bl.missing(label, kind) is not None, reason=f"{label} is not installed"))


@pytest.mark.parametrize("label, kind", [
    installed(label, kind) for kind in ("file", "size", "timed")
    for label in ("cbuffer", "stdlib", "loguru") + (("queue",) if kind == "file" else ())])
def test_threads_run_verifies(tmp_path, label, kind):
    case = bl.Case(kind, 1, 4, [label])
    run = bl.run_one(case, label, 0.05, str(tmp_path))
    assert run.problems == []
    assert run.records > 0 and run.rate > 0
    assert not os.listdir(tmp_path)  # the run's files are gone


@pytest.mark.parametrize("label", ["cbuffer", "concurrent-log-handler"])
def test_processes_run_verifies(tmp_path, label):
    if bl.missing(label, "processes"):
        pytest.skip(f"{label} is not installed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with the test's own threads (3.12+)
        run = bl.run_one(bl.Case("processes", 2, 2, [label]), label, 0.1, str(tmp_path))
    assert run.problems == []
    assert run.records > 0


def test_small_bench_reports_every_target(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        results = bl.logging_cases(reps=1, duration=0.02, directory=str(tmp_path))
    lines, verdicts = bl.logging_report(results)
    assert not bl.failed(results)
    assert len(verdicts) == len(bl.TARGETS) + 1
    for what, _, _, ok in verdicts:
        if ok is None:
            assert "not installed" in what


def test_missing_peers_are_skipped_with_a_message(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "concurrent_log_handler", None)  # find_spec: not installed
    monkeypatch.setitem(sys.modules, "loguru", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        results = bl.logging_cases(reps=1, duration=0.02, kinds=("processes",), directory=str(tmp_path))
    assert "skipped: concurrent-log-handler" in capsys.readouterr().err
    assert [label for label in results.skipped] == ["concurrent-log-handler", "loguru"]
    lines, verdicts = bl.logging_report(results)
    assert [ok for _, _, _, ok in verdicts] == [None, True]  # the peer's target; nothing lost
    assert "concurrent-log-handler is not installed" in verdicts[0][0]
