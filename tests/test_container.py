"""The container image: built by scripts/container.sh on a local Debian base, run with buildah.

`podman run` cannot work here (the sandbox forbids setrlimit), so the worker runs in a buildah
working container with chroot isolation, which shares the host's network: it reaches a moto server
on the host's 127.0.0.1. The script installs podman, buildah and debootstrap when they are missing
(as root) and caches the base image, so a cold run is ~1-2 minutes and a warm one seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from servers import MotoServer

from handlers.orders import Order
from qworker._process import ManagedProcess, ProcessError

pytestmark = [
    pytest.mark.container,
    pytest.mark.integration,
    pytest.mark.moto,
    pytest.mark.slow,
    # A cold run (apt-get, debootstrap, build) takes ~1.5 minutes here; room for a slow mirror.
    pytest.mark.timeout(600),
    pytest.mark.skipif(sys.platform != "linux", reason="podman/buildah with chroot need Linux"),
    pytest.mark.skipif(
        sys.platform == "linux" and os.geteuid() != 0 and shutil.which("buildah") is None,
        reason="needs buildah and podman, or root to install them",
    ),
]

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "container.sh"
IMAGE = "localhost/qworker:test"
BUILD_TIMEOUT_S = 540.0
DRAIN_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0
MESSAGES = 12
REGION = "us-east-1"


def _run(*args: str, timeout: float = 120.0) -> str:
    """Run a command, returning stdout; fail with its output when it fails."""
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def _tail(path: Path, lines: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Build the image (and, once per machine, the debootstrapped base) with the script."""
    log = tmp_path_factory.mktemp("container") / "build.log"
    start = time.monotonic()
    with log.open("w") as out:
        done = subprocess.run(
            ["bash", str(SCRIPT)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=BUILD_TIMEOUT_S,
            check=False,
            env={**os.environ, "QWORKER_IMAGE": IMAGE},
        )
    if done.returncode != 0:
        pytest.fail(f"scripts/container.sh exited {done.returncode}:\n{_tail(log)}")
    sys.stderr.write(f"\nimage built in {time.monotonic() - start:.0f}s\n")
    return IMAGE


@pytest.fixture(scope="module")
def endpoint(moto_server: MotoServer) -> str:
    """moto on the host's 127.0.0.1: tests/servers.py's server, a ManagedProcess stopped by PID."""
    return moto_server.endpoint_url


@pytest.fixture
def sqs(endpoint: str) -> Iterator[Any]:
    """A boto3 SQS client for the moto server."""
    client = boto3.client(
        "sqs",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="test",
        aws_secret_access_key="test",  # noqa: S106 (moto's dummy credentials)
    )
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def container(image: str) -> Iterator[str]:
    """A buildah working container of the image, removed afterwards."""
    name = f"qworker-test-{uuid.uuid4().hex[:12]}"
    _run("buildah", "from", "--name", name, image)
    try:
        yield name
    finally:
        subprocess.run(["buildah", "rm", name], capture_output=True, check=False, timeout=60)


def _inspect(image: str) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(_run("podman", "image", "inspect", image))[0]["Config"]
    return config


def test_image_runs_as_non_root_and_stops_on_sigterm(image: str, container: str) -> None:
    config = _inspect(image)
    user = str(config.get("User", ""))
    assert user, "the image must set USER"
    assert user.split(":", maxsplit=1)[0] not in {"0", "root"}
    assert config.get("StopSignal") == "SIGTERM"
    assert config.get("Entrypoint") == ["qworker", "run"]
    assert config.get("Cmd") == ["handlers.orders"]
    assert "PYTHONUNBUFFERED=1" in config.get("Env", [])
    # What the process really runs as, and that the project and its handlers are importable there.
    out = _run(
        "buildah",
        "run",
        "--isolation",
        "chroot",
        container,
        "--",
        "sh",
        "-c",
        'id -u; python3 -c "import qworker.cli, handlers.orders"; ls -A /app; '
        "ls -d /root/.cache /tmp/pip-* 2>/dev/null; true",
    )
    uid, *listing = out.split()
    assert uid != "0"
    assert listing == ["handlers"]  # no caches, and nothing but the handlers in /app


@dataclass(frozen=True)
class _Worker:
    process: ManagedProcess  # `buildah run`, in its own session; the worker runs under it

    def output(self) -> str:
        return self.process.log_since_start()

    def records(self) -> list[dict[str, Any]]:
        """The JSON log records (other lines, e.g. from buildah, are skipped)."""
        found: list[dict[str, Any]] = []
        for line in self.output().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    found.append(record)
        return found


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            # Fields after the command name (which may hold spaces): state, ppid, ...
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                found.append(int(entry.name))
    return found


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _worker_pid(root: int) -> int | None:
    """The qworker process under `buildah run` (buildah-chroot-runtime -> -exec -> python).

    Signalling `buildah run` itself kills its child instead of forwarding the signal.
    """
    pending = [root]
    while pending:
        pid = pending.pop()
        argv = _cmdline(pid)
        if argv and not Path(argv[0]).name.startswith("buildah") and "qworker" in " ".join(argv):
            return pid
        pending.extend(_children(pid))
    return None


@contextlib.contextmanager
def _run_worker(container: str, endpoint: str, queue: str, log: Path) -> Iterator[_Worker]:
    env = {
        "QWORKER_ENDPOINT_URL": endpoint,
        "QWORKER_QUEUE_NAME": queue,
        "QWORKER_DEPLOYMENT_ROLE": "primary",
        "QWORKER_VERSION": "container-test",
        "AWS_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
    }
    env_args = [arg for key, value in env.items() for arg in ("--env", f"{key}={value}")]
    command = ["buildah", "run", "--isolation", "chroot", *env_args, container]
    process = ManagedProcess(
        [*command, "--", "qworker", "run", "handlers.orders"], log_path=log, name="buildah run"
    )
    process.start()
    try:
        yield _Worker(process)
    finally:
        # Done already, or a failure: SIGTERM (`buildah run` then ends its child), then SIGKILL.
        process.stop(STOP_GRACE_S)


def _queue_depth(sqs: Any, url: str) -> tuple[int, int]:
    attributes = sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return (
        int(attributes["ApproximateNumberOfMessages"]),
        int(attributes["ApproximateNumberOfMessagesNotVisible"]),
    )


def _order(index: int) -> str:
    order = Order(
        order_id=f"o-{index}",
        customer_id=f"c-{index % 3}",
        amount_cents=1000 + index,
        currency="EUR",
    )
    return order.model_dump_json()


def test_worker_in_image_drains_queue_and_stops_on_sigterm(
    container: str, endpoint: str, sqs: Any, tmp_path: Path
) -> None:
    queue = f"orders-{uuid.uuid4().hex[:8]}"
    url = sqs.create_queue(QueueName=queue)["QueueUrl"]
    bodies = [_order(index) for index in range(MESSAGES)]
    for start in range(0, MESSAGES, 10):
        batch = enumerate(bodies[start : start + 10], start)
        entries = [{"Id": str(index), "MessageBody": body} for index, body in batch]
        assert not sqs.send_message_batch(QueueUrl=url, Entries=entries).get("Failed")
    assert _queue_depth(sqs, url) == (MESSAGES, 0)

    with _run_worker(container, endpoint, queue, tmp_path / "worker.log") as worker:
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while (depth := _queue_depth(sqs, url)) != (0, 0):
            if worker.process.exited():
                pytest.fail(f"worker exited {worker.process.stop(0)}:\n{worker.output()}")
            if time.monotonic() > deadline:
                pytest.fail(f"queue not drained in {DRAIN_TIMEOUT_S}s {depth}:\n{worker.output()}")
            time.sleep(0.5)

        pid = _worker_pid(worker.process.pid)
        assert pid is not None, f"no qworker process under buildah run:\n{worker.output()}"
        os.kill(pid, signal.SIGTERM)
        try:
            code = worker.process.wait_exit(STOP_TIMEOUT_S, poll_s=0.1)
        except ProcessError:
            pytest.fail(f"worker still running {STOP_TIMEOUT_S}s after SIGTERM:\n{worker.output()}")
        assert code == 0, worker.output()

    records = worker.records()
    booked = {r.get("order_id") for r in records if r.get("action") == "order_booked"}
    assert booked == {f"o-{index}" for index in range(MESSAGES)}, worker.output()
    actions = [record.get("action") for record in records]
    assert "signal" in actions, worker.output()
    assert "consumer_stopped" in actions, worker.output()
    assert actions.index("signal") < actions.index("consumer_stopped")
    errors = [r for r in records if r.get("level") in {"error", "critical"}]
    assert not errors, worker.output()
