"""`ManagedProcess` following its log: `wait_for_line`, its async twin, `lines`, `send_signal` and
`wait_exit`, on a tiny `python -c` child that prints lines when told to (by files it waits for).
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

from qworker._process import ManagedProcess, ProcessError

# Prints `one`, `two`, `one again`; waits for the file `go`; prints `three`, then `tail` without a
# line end; waits for SIGTERM (or, given "exit", exits 4 at once), and says so.
_CHILD = """
import os, signal, sys, time
from pathlib import Path
go = Path(sys.argv[1])
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
print("one\\ntwo\\none again", flush=True)
while not go.exists():
    time.sleep(0.01)
print("three", flush=True)
sys.stderr.write("tail")
sys.stderr.flush()
if sys.argv[2] == "exit":
    sys.exit(4)
while not stop:
    time.sleep(0.01)
print("got SIGTERM", flush=True)
sys.exit(3)
"""


def child(tmp_path: Path, mode: str = "wait") -> ManagedProcess:
    process = ManagedProcess(
        [sys.executable, "-c", _CHILD, str(tmp_path / "go"), mode],
        log_path=tmp_path / "child.log",
        name="child",
    )
    process.start()
    return process


def test_successive_waits_find_successive_lines_of_this_run_only(tmp_path: Path) -> None:
    (tmp_path / "child.log").write_text("one from an earlier run\n")
    process = child(tmp_path)
    try:
        assert process.wait_for_line("one", timeout_s=60) == "one"
        assert process.lines_read == 1
        assert process.wait_for_line(lambda line: line.startswith("one"), timeout_s=60) == (
            "one again"
        )
        assert process.lines_read == 3
        with pytest.raises(ProcessError, match=r"child wrote no line with 'three' in 0\.1 s"):
            process.wait_for_line("three", timeout_s=0.1)
        assert process.is_running()  # a timeout leaves it running
        (tmp_path / "go").touch()
        assert process.wait_for_line("three", timeout_s=60) == "three"
        assert process.lines() == ["one", "two", "one again", "three"]  # "tail" is not ended yet
        process.send_signal(signal.SIGTERM)
        assert process.wait_for_line("SIGTERM", timeout_s=60) == "tailgot SIGTERM"
        assert process.wait_exit(60) == 3
        assert process.returncode == 3
    finally:
        process.stop()


def test_a_process_that_exits_without_the_line_fails_with_its_log(tmp_path: Path) -> None:
    (tmp_path / "go").touch()
    process = child(tmp_path, "exit")
    with pytest.raises(ProcessError, match=r"no line with 'never' before it exited with 4:\n"):
        process.wait_for_line("never", timeout_s=60)
    assert process.returncode == 4  # reaped
    assert process.lines()[-1] == "tail"


def test_the_last_unended_line_counts_once_it_has_exited(tmp_path: Path) -> None:
    (tmp_path / "go").touch()
    process = child(tmp_path, "exit")
    assert process.wait_for_line("tail", timeout_s=60) == "tail"
    assert process.wait_exit(60) == 4


def test_wait_exit_leaves_a_running_process_running(tmp_path: Path) -> None:
    (tmp_path / "go").touch()
    process = child(tmp_path)
    try:
        with pytest.raises(ProcessError, match=r"child still running after 0\.1 s"):
            process.wait_exit(0.1)
        assert process.is_running()
    finally:
        assert process.stop() == 3  # its SIGTERM handler ran
    process.send_signal(signal.SIGTERM)  # reaped: nothing is sent to a pid no longer ours


def test_a_process_never_started_has_nothing_to_signal(tmp_path: Path) -> None:
    with pytest.raises(ProcessError, match="child was never started"):
        ManagedProcess(["true"], log_path=tmp_path / "x.log", name="child").send_signal(
            signal.SIGTERM
        )


async def test_async_waits_follow_the_same_cursor(tmp_path: Path) -> None:
    process = child(tmp_path)
    try:
        assert await process.wait_for_line_async("one", timeout_s=60, poll_s=0.01) == "one"
        assert process.wait_for_line("one", timeout_s=60) == "one again"
        (tmp_path / "go").touch()
        assert await process.wait_for_line_async("three", timeout_s=60) == "three"
        with pytest.raises(ProcessError, match=r"in 0\.1 s"):
            await process.wait_for_line_async("never", timeout_s=0.1)
    finally:
        process.stop()
