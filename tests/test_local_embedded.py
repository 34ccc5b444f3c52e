"""The embedded server answers what moto cannot do with an SQS error and one warning line, never a
traceback in the worker's terminal: a real `qworker run` on it, and `qworker dlq redrive` from
another process (moto lacks StartMessageMoveTask, so the redrive falls back to copying).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from worker_process import WAIT_S, next_entry, qworker, worker_env

pytestmark = [pytest.mark.integration, pytest.mark.moto]


def run(*args: str, cwd: Path, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `qworker <args>` (a command that exits by itself) to its end."""
    return subprocess.run(
        [sys.executable, "-m", "qworker", *args],
        cwd=cwd,
        env=worker_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def test_dlq_redrive_on_the_embedded_server_leaves_no_traceback(tmp_path: Path) -> None:
    with qworker(
        "run", "handlers.orders", "--local-port", "0", cwd=tmp_path, log_dir=tmp_path
    ) as worker:
        next_entry(worker, "consumer_started")
        send = run("send", "not json", cwd=tmp_path)
        assert send.returncode == 0, send.stderr
        next_entry(worker, "message_rejected")  # now in orders-dlq

        redrive = run("dlq", "redrive", "--queue-name", "orders", "--all", cwd=tmp_path,
                      timeout_s=120)  # fmt: skip
        out, said = redrive.stdout, redrive.stderr
        assert redrive.returncode == 0, said

        # The move task was asked for, refused in one line, and the message copied back.
        refused = worker.wait_for_line("does not support StartMessageMoveTask", timeout_s=WAIT_S)
        assert json.loads(refused)["level"] == "warning"
        assert "copied 1" in out + said or "moved 1" in out + said, out + said
        next_entry(worker, "message_rejected")  # the second time
        worker.send_signal(signal.SIGTERM)
        assert worker.wait_exit(WAIT_S) == 0
    everything = worker.log_since_start()
    assert "Traceback" not in everything
    assert "Error on request" not in everything
