"""The command line end to end: the README's main job (a worker on the embedded server, fed by
`qworker send` from another process), and start-up errors that name the setting to fix.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from worker_process import ROOT, WAIT_S, next_entry, qworker, worker_env

from qworker.outcome import Outcome

pytestmark = [pytest.mark.integration, pytest.mark.moto]

OUTCOMES = tuple(f"message_{outcome.value}" for outcome in Outcome)


def send(*args: str, cwd: Path) -> str:
    """Run `qworker send <args>` to its end; return its stderr."""
    result = subprocess.run(
        [sys.executable, "-m", "qworker", "send", *args],
        cwd=cwd,
        env=worker_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stderr


def test_run_on_the_embedded_server_fed_by_send(tmp_path: Path) -> None:
    with qworker(
        "run", "handlers.orders", "--local-port", "0", "--log-level", "DEBUG",
        cwd=tmp_path, log_dir=tmp_path,
    ) as worker:  # fmt: skip
        next_entry(worker, "consumer_started")
        state = json.loads((tmp_path / ".qworker" / "embedded.json").read_text())
        assert state["endpoint_url"].startswith("http://127.0.0.1:")
        assert state["queues"] == ["orders"]
        good = {"order_id": "o-1", "customer_id": "c-1", "amount_cents": 1250, "currency": "EUR"}
        assert "sent 2 message(s)" in send(json.dumps(good), "not json", cwd=tmp_path)
        booked = next_entry(worker, "order_booked")
        assert (booked["order_id"], booked["role"]) == ("o-1", "primary")
        rejected = next_entry(worker, "message_rejected")
        assert rejected["error"].startswith("invalid body")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait_exit(WAIT_S) == 0
    assert not (tmp_path / ".qworker" / "embedded.json").exists()


def test_the_readme_example_file_shows_every_outcome(tmp_path: Path) -> None:
    # README: `make run`, then `qworker send --file handlers/orders.jsonl` from another terminal.
    with qworker(
        "run", "handlers.orders", "--local-port", "0", "--log-level", "DEBUG",
        cwd=tmp_path, log_dir=tmp_path,
    ) as worker:  # fmt: skip
        next_entry(worker, "consumer_started")
        sent = send("--file", str(ROOT / "handlers" / "orders.jsonl"), cwd=tmp_path)
        assert "sent 5 message(s)" in sent
        outcomes: dict[str, str] = {}
        while len(outcomes) < 5:
            entry = next_entry(worker, *OUTCOMES)
            outcomes[entry["message_id"]] = entry["outcome"]
        assert sorted(outcomes.values()) == [
            "rejected",
            "rejected",
            "retried",
            "succeeded",
            "succeeded",
        ]
        worker.send_signal(signal.SIGTERM)
        assert worker.wait_exit(WAIT_S) == 0


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
