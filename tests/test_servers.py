"""The local SQS servers the suite starts: real, on loopback only, and restartable on one port."""

from __future__ import annotations

import asyncio
import http.client
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Final

import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import EndpointConnectionError
from servers import MotoServer, SqsServer, listening_addresses

from qworker._loopback import check_loopback_only
from qworker._process import ManagedProcess, ProcessError, alive

LOCALSTACK_SCRIPT: Final = Path(__file__).resolve().parent.parent / "scripts" / "localstack.py"

SERVERS = [
    pytest.param("moto_server", marks=pytest.mark.moto, id="moto"),
    pytest.param("localstack_server", marks=pytest.mark.localstack, id="localstack"),
]
# One attempt: a refused connection should fail at once, not after botocore's retries.
NO_RETRIES = AioConfig(retries={"total_max_attempts": 1}, connect_timeout=2, read_timeout=10)


@pytest.fixture(params=SERVERS)
def server(request: pytest.FixtureRequest) -> SqsServer:
    found: SqsServer = request.getfixturevalue(request.param)
    return found


async def round_trip(endpoint_url: str, *, config: AioConfig | None = None) -> str:
    """Create a queue, send, receive, delete; return the body received."""
    async with get_session().create_client("sqs", endpoint_url=endpoint_url, config=config) as sqs:
        queue_url = (await sqs.create_queue(QueueName=f"servers-{uuid.uuid4().hex}"))["QueueUrl"]
        assert queue_url.startswith(endpoint_url)  # queue URLs follow the request's host and port
        await sqs.send_message(QueueUrl=queue_url, MessageBody="hello")
        received: dict[str, Any] = await sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
        )
        [message] = received["Messages"]
        await sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
        after = await sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=0)
        assert after.get("Messages", []) == []
        await sqs.delete_queue(QueueUrl=queue_url)
        body: str = message["Body"]
        return body


@pytest.mark.integration
@pytest.mark.usefixtures("aws_env")
async def test_server_answers_sqs(server: SqsServer) -> None:
    assert server.endpoint_url.startswith("http://127.0.0.1:")
    assert await round_trip(server.endpoint_url) == "hello"


@pytest.mark.integration
def test_server_listens_on_loopback_only(server: SqsServer) -> None:
    port = int(server.endpoint_url.rsplit(":", 1)[1])
    addresses = listening_addresses(server.pid)
    assert port in addresses["127.0.0.1"]
    assert all(ipaddress.ip_address(address).is_loopback for address in addresses)


@pytest.mark.integration
def test_ss_agrees_on_loopback_only(server: SqsServer) -> None:
    if shutil.which("ss") is None:
        pytest.skip("ss (iproute2) is not installed; /proc is checked by the test above")
    listing = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    local = [line.split()[3] for line in listing.splitlines() if f"pid={server.pid}," in line]
    assert local
    assert all(address.startswith("127.0.0.1:") for address in local), local


@pytest.mark.integration
def test_server_sends_one_server_header(server: SqsServer) -> None:
    # aiohttp (aiobotocore's HTTP client) rejects a duplicate Server header in debug mode.
    connection = http.client.HTTPConnection(server.endpoint_url.removeprefix("http://"), timeout=10)
    try:
        connection.request("POST", "/", body="Action=ListQueues")
        response = connection.getresponse()
        response.read()
    finally:
        connection.close()
    assert len(response.headers.get_all("Server") or []) <= 1


@pytest.mark.integration
@pytest.mark.usefixtures("aws_env")
async def test_kill_then_restart_keeps_the_endpoint(server: SqsServer) -> None:
    endpoint_url, pid = server.endpoint_url, server.pid
    server.kill()
    try:
        with pytest.raises(EndpointConnectionError):
            await round_trip(endpoint_url, config=NO_RETRIES)
    finally:
        server.restart()
    assert server.endpoint_url == endpoint_url
    assert server.pid != pid
    assert await round_trip(endpoint_url) == "hello"


@pytest.mark.integration
@pytest.mark.moto
@pytest.mark.usefixtures("aws_env")
async def test_moto_reset_deletes_queues(moto_server: MotoServer) -> None:
    async with get_session().create_client("sqs", endpoint_url=moto_server.endpoint_url) as sqs:
        await sqs.create_queue(QueueName="doomed")
        moto_server.reset()
        assert (await sqs.list_queues()).get("QueueUrls", []) == []


@pytest.mark.integration
@pytest.mark.localstack
@pytest.mark.usefixtures("localstack_server")  # installs LocalStack, or fails loudly
def test_localstack_cli_starts_and_stops(tmp_path: Path) -> None:
    # -S: no site-packages. The wrapper and the launcher need nothing but the standard library.
    script = [sys.executable, "-S", str(LOCALSTACK_SCRIPT)]
    started = subprocess.run(
        [*script, "start", "--fast", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    endpoint_url = started.stdout.strip()
    pid = int((tmp_path / "localstack.pid").read_text())
    try:
        assert endpoint_url.startswith("http://127.0.0.1:")
        assert listening_addresses(pid).keys() == {"127.0.0.1"}
    finally:
        subprocess.run(
            [*script, "stop", "--pidfile", str(tmp_path / "localstack.pid")],
            capture_output=True,
            check=True,
        )
    assert listening_addresses(pid) == {}
    assert not (tmp_path / "localstack.pid").exists()
    assert "LocalStack" in (tmp_path / "localstack.log").read_text()
    with pytest.raises(ProcessError, match="listens on no TCP socket"):
        check_loopback_only(pid)


def test_the_installed_launcher_is_the_scripts_command(tmp_path: Path) -> None:
    # From any directory: `python -m qworker.localstack` is what scripts/localstack.py runs.
    for command in (
        [sys.executable, "-m", "qworker.localstack"],
        [sys.executable, "-S", str(LOCALSTACK_SCRIPT)],
    ):
        shown = subprocess.run(
            [*command, "stop", "--pidfile", str(tmp_path / "none.pid")],
            capture_output=True,
            text=True,
            check=True,
            cwd=tmp_path,
        )
        assert "nothing to stop" in shown.stderr


# -- the process helper ---------------------------------------------------------------------------

# A child that says it is ready, ignores SIGTERM when asked to, and starts a grandchild.
_CHILD: Final = """\
import os, signal, subprocess, sys, time
if sys.argv[1] == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print(grandchild.pid, flush=True)
print("to the log", file=sys.stderr, flush=True)
open(sys.argv[2], "w").close()
while True:
    time.sleep(1)
"""


def _child(tmp_path: Path, mode: str) -> tuple[ManagedProcess, Path]:
    ready = tmp_path / "ready"
    process = ManagedProcess(
        [sys.executable, "-c", _CHILD, mode, str(ready)],
        log_path=tmp_path / "child.log",
        stdout_path=tmp_path / "child.out",
        name="child",
    )
    process.start()
    return process, ready


def test_a_process_is_ready_then_stopped_by_sigterm_with_its_children(tmp_path: Path) -> None:
    process, ready = _child(tmp_path, "polite")
    process.wait_ready(ready.exists, timeout_s=30)
    assert process.is_running()
    grandchild = int((tmp_path / "child.out").read_text().split()[0])
    assert alive(grandchild)
    assert process.stop(30) == 3  # its own SIGTERM handler ran
    assert not alive(grandchild)  # the group's stragglers are killed
    assert not process.is_running()
    assert "to the log" in process.log_tail()
    assert process.stop() == 3  # a second stop leaves the (reaped) pid alone


def test_a_process_that_ignores_sigterm_is_killed_after_the_wait(tmp_path: Path) -> None:
    process, ready = _child(tmp_path, "stubborn")
    process.wait_ready(ready.exists, timeout_s=30)
    assert process.stop(0.5) == -signal.SIGKILL


def test_a_process_that_exits_before_ready_fails_with_its_log(tmp_path: Path) -> None:
    process = ManagedProcess(
        [sys.executable, "-c", "import sys; sys.exit('cannot start: no config')"],
        log_path=tmp_path / "bad.log",
        name="bad",
    )
    process.start()
    with pytest.raises(ProcessError, match=r"bad exited with 1:\n.*cannot start: no config"):
        process.wait_ready(lambda: False, timeout_s=60)
    assert process.returncode == 1


def test_a_process_not_ready_in_time_says_so(tmp_path: Path) -> None:
    process, _ = _child(tmp_path, "polite")
    try:
        with pytest.raises(ProcessError, match=r"child not listening after 0\.2 s"):
            process.wait_ready(lambda: False, timeout_s=0.2, what="listening")
    finally:
        process.stop(30)


async def test_async_readiness_and_exit(tmp_path: Path) -> None:
    process, ready = _child(tmp_path, "polite")
    await process.wait_ready_async(ready.exists, timeout_s=30, poll_s=0.01)
    exited = asyncio.ensure_future(process.wait_exit_async(poll_s=0.01))
    os.kill(process.pid, signal.SIGTERM)  # by PID, from outside
    assert await asyncio.wait_for(exited, 30) == 3
