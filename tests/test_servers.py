"""The local SQS servers the suite starts: real, on loopback only, and restartable on one port."""

from __future__ import annotations

import http.client
import ipaddress
import shutil
import subprocess
import sys
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import EndpointConnectionError
from servers import LOCALSTACK_SCRIPT, MotoServer, SqsServer, listening_addresses, localstack_script

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.integration

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


@pytest.mark.usefixtures("aws_env")
async def test_server_answers_sqs(server: SqsServer) -> None:
    assert server.endpoint_url.startswith("http://127.0.0.1:")
    assert await round_trip(server.endpoint_url) == "hello"


def test_server_listens_on_loopback_only(server: SqsServer) -> None:
    port = int(server.endpoint_url.rsplit(":", 1)[1])
    addresses = listening_addresses(server.pid)
    assert port in addresses["127.0.0.1"]
    assert all(ipaddress.ip_address(address).is_loopback for address in addresses)


def test_ss_agrees_on_loopback_only(server: SqsServer) -> None:
    if shutil.which("ss") is None:
        pytest.skip("ss (iproute2) is not installed; /proc is checked by the test above")
    listing = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    local = [line.split()[3] for line in listing.splitlines() if f"pid={server.pid}," in line]
    assert local
    assert all(address.startswith("127.0.0.1:") for address in local), local


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


@pytest.mark.moto
@pytest.mark.usefixtures("aws_env")
async def test_moto_reset_deletes_queues(moto_server: MotoServer) -> None:
    async with get_session().create_client("sqs", endpoint_url=moto_server.endpoint_url) as sqs:
        await sqs.create_queue(QueueName="doomed")
        moto_server.reset()
        assert (await sqs.list_queues()).get("QueueUrls", []) == []


@pytest.mark.localstack
@pytest.mark.usefixtures("localstack_server")  # installs LocalStack, or fails loudly
def test_localstack_cli_starts_and_stops(tmp_path: Path) -> None:
    script = [sys.executable, str(LOCALSTACK_SCRIPT)]
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
    with pytest.raises(localstack_script.LocalStackError, match="listens on no TCP socket"):
        localstack_script.check_loopback_only(pid)
