"""The command line end to end: the README's main job (a worker on the embedded server, fed by
`qworker send` from another process), and start-up errors that name the setting to fix.
"""

from __future__ import annotations

import json
import os
import queue
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


class Lines:
    """Reads a process's stderr on a thread, so the test can wait for a line with a timeout."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        self._lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc.stderr,), daemon=True)
        self._thread.start()

    def _read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self._lines.put(line)

    def close(self, proc: subprocess.Popen[str]) -> None:
        self._thread.join(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()

    def wait_for(self, text: str, timeout_s: float = 60) -> str:
        while True:
            line = self._lines.get(timeout=timeout_s)
            self.seen.append(line)
            if text in line:
                return line


def test_run_on_the_embedded_server_fed_by_send(tmp_path: Path) -> None:
    worker = qworker(
        "run", "handlers.orders", "--local-port", "0", "--log-level", "DEBUG", cwd=tmp_path
    )
    lines = Lines(worker)
    try:
        lines.wait_for('"action":"consumer_started"')
        state = json.loads((tmp_path / ".qworker" / "embedded.json").read_text())
        assert state["endpoint_url"].startswith("http://127.0.0.1:")
        assert state["queues"] == ["orders"]
        good = {"order_id": "o-1", "customer_id": "c-1", "amount_cents": 1250, "currency": "EUR"}
        send = qworker("send", json.dumps(good), "not json", cwd=tmp_path)
        _, err = send.communicate(timeout=60)
        assert send.returncode == 0, err
        assert "sent 2 message(s)" in err
        booked = json.loads(lines.wait_for('"action":"order_booked"'))
        assert (booked["order_id"], booked["role"]) == ("o-1", "primary")
        rejected = json.loads(lines.wait_for('"action":"message_rejected"'))
        assert rejected["error"].startswith("invalid body")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
    finally:
        worker.kill()
        worker.wait()
        lines.close(worker)
    assert not (tmp_path / ".qworker" / "embedded.json").exists()


def test_the_readme_example_file_shows_every_outcome(tmp_path: Path) -> None:
    # README: `make run`, then `qworker send --file handlers/orders.jsonl` from another terminal.
    worker = qworker(
        "run", "handlers.orders", "--local-port", "0", "--log-level", "DEBUG", cwd=tmp_path
    )
    lines = Lines(worker)
    try:
        lines.wait_for('"action":"consumer_started"')
        send = qworker("send", "--file", str(ROOT / "handlers" / "orders.jsonl"), cwd=tmp_path)
        _, err = send.communicate(timeout=60)
        assert send.returncode == 0, err
        assert "sent 5 message(s)" in err
        outcomes: dict[str, str] = {}
        while len(outcomes) < 5:
            entry = json.loads(lines.wait_for('"action":"message_'))
            outcomes[entry["message_id"]] = entry["outcome"]
        assert sorted(outcomes.values()) == [
            "rejected",
            "rejected",
            "retried",
            "succeeded",
            "succeeded",
        ]
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
    finally:
        worker.kill()
        worker.wait()
        lines.close(worker)


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--concurrency", "0"], {}, "QWORKER_CONCURRENCY (--concurrency)"),
        ([], {"QWORKER_DEPLOYMENT_ROLE": "blue"}, "QWORKER_DEPLOYMENT_ROLE (--deployment-role)"),
        (["--shutdown-grace-s", "lots"], {}, "QWORKER_SHUTDOWN_GRACE_S (--shutdown-grace-s)"),
    ],
)
def test_bad_setting_exits_2_with_one_line_naming_it(
    tmp_path: Path, args: list[str], env: dict[str, str], named: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "qworker", "run", "handlers.orders", *args],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("qworker: error: invalid setting ")
    assert named in lines[0]


def test_missing_handler_module_exits_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "qworker", "run", "handlers.nope"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "cannot import handler module 'handlers.nope'" in result.stderr


def test_queue_that_does_not_exist_exits_2(tmp_path: Path, moto_server: object) -> None:
    endpoint = getattr(moto_server, "endpoint_url", "")
    result = subprocess.run(
        [sys.executable, "-m", "qworker", "run", "handlers.orders",
         "--endpoint-url", endpoint, "--queue-name", "no-such-queue"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "AWS_ACCESS_KEY_ID": "test",
             "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "no-such-queue" in last
    assert "QWORKER_QUEUE_NAME" in last
