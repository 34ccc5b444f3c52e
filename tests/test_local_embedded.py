"""The embedded server answers what moto cannot do with an SQS error and one warning line, never a
traceback in the worker's terminal: a real `qworker run` on it, and `qworker dlq redrive` from
another process (moto lacks StartMessageMoveTask, so the redrive falls back to copying).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.integration, pytest.mark.moto]


def qworker(*args: str, cwd: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QWORKER_", "AWS_ENDPOINT"))}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.Popen(
        [sys.executable, "-m", "qworker", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


class Stderr:
    """Every line a process writes to stderr, collected on a thread; wait for one by its text."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(proc.stderr,), daemon=True)
        self._thread.start()

    def _read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()

    def wait_for(self, text: str, *, count: int = 1, timeout_s: float = 60) -> list[str]:
        def found() -> list[str]:
            return [line for line in self.lines if text in line]

        with self._changed:
            if not self._changed.wait_for(lambda: len(found()) >= count, timeout=timeout_s):
                raise AssertionError(f"no {count} x {text!r} in:\n{''.join(self.lines)}")
            return found()

    def close(self) -> str:
        self._thread.join(timeout=30)
        return "".join(self.lines)


def test_dlq_redrive_on_the_embedded_server_leaves_no_traceback(tmp_path: Path) -> None:
    worker = qworker("run", "handlers.orders", "--local-port", "0", cwd=tmp_path)
    err = Stderr(worker)
    try:
        err.wait_for('"action":"consumer_started"')
        send = qworker("send", "not json", cwd=tmp_path)
        _, sent = send.communicate(timeout=60)
        assert send.returncode == 0, sent
        err.wait_for('"action":"message_rejected"')  # now in orders-dlq

        redrive = qworker("dlq", "redrive", "--queue-name", "orders", "--all", cwd=tmp_path)
        out, said = redrive.communicate(timeout=120)
        assert redrive.returncode == 0, said

        # The move task was asked for, refused in one line, and the message copied back.
        refused = err.wait_for("does not support StartMessageMoveTask")
        assert json.loads(refused[0])["level"] == "warning"
        assert "copied 1" in out + said or "moved 1" in out + said, out + said
        err.wait_for('"action":"message_rejected"', count=2)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
    finally:
        worker.kill()
        worker.wait()
        everything = err.close()
        for stream in (worker.stdout, worker.stderr):
            if stream is not None:
                stream.close()
    assert "Traceback" not in everything
    assert "Error on request" not in everything
