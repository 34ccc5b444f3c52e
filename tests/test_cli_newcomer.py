"""The command line as a newcomer meets it: `--version`, and `qworker send` with nothing running."""

from __future__ import annotations

import importlib.metadata
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def qworker(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QWORKER_", "AWS_ENDPOINT"))}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "qworker", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_version_prints_the_installed_version(tmp_path: Path) -> None:
    done = qworker("--version", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"qworker {importlib.metadata.version('qworker')}\n"


def test_send_with_no_server_and_no_queue_says_start_one(tmp_path: Path) -> None:
    done = qworker("send", '{"order_id": "o-1"}', cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert "no local server is running; start one with `qworker run`" in lines[0]


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_send_ignores_the_state_a_dead_embedded_server_left(tmp_path: Path) -> None:
    state = tmp_path / ".qworker" / "embedded.json"
    state.parent.mkdir()
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    state.write_text(json.dumps({"endpoint_url": endpoint, "queues": ["orders"]}))
    done = qworker("send", '{"order_id": "o-1"}', cwd=tmp_path)
    assert done.returncode == 2
    expected = (
        "qworker: error: no local server is running; start one with `qworker run` "
        "(or name a queue with --queue-name / --queue-url)"
    )
    assert done.stderr.splitlines() == [expected]


def test_send_to_a_local_server_with_several_queues_asks_which(tmp_path: Path) -> None:
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        state = tmp_path / ".qworker" / "embedded.json"
        state.parent.mkdir()
        queues = ["orders", "refunds"]
        state.write_text(json.dumps({"endpoint_url": f"http://127.0.0.1:{port}", "queues": queues}))
        done = qworker("send", '{"order_id": "o-1"}', cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "qworker: error: which queue? the local server has orders, refunds: pass --queue-name"
    ]
