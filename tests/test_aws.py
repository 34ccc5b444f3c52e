"""The one AWS boundary: client creation against a real moto server, and the error mapping table."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path
from typing import Any

import pytest
from aws_errors import CONNECTION_ERRORS, client_error, error_id
from botocore.exceptions import NoCredentialsError, ParamValidationError, SSLError
from servers import MotoServer

from qworker import _aws, transport
from qworker._aws import (
    ERROR_CODES,
    AwsTarget,
    ClientProfile,
    error_class,
    map_errors,
    open_client,
    sync_client,
    user_agent,
)
from qworker.exceptions import (
    AccessDenied,
    QueueDoesNotExist,
    QueueUnavailable,
    ServerError,
    Throttled,
    TransientTransportError,
    TransportError,
)


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# -- the mapping table ---------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "expected"), sorted(ERROR_CODES.items()))
def test_each_code_maps_to_its_class_and_keeps_the_code(
    code: str, expected: type[TransportError]
) -> None:
    error = client_error(code, operation="GetMetricData")

    with pytest.raises(TransportError) as info, map_errors("GetMetricData"):
        raise error

    assert type(info.value) is expected
    assert info.value.code == code
    assert info.value.__cause__ is error
    assert str(info.value) == f"GetMetricData: {code}: it broke"


@pytest.mark.parametrize(
    ("status", "expected"),
    [(500, ServerError), (503, ServerError), (429, Throttled), (400, TransportError)],
)
def test_an_unknown_code_maps_by_http_status(status: int, expected: type[TransportError]) -> None:
    assert error_class("SomethingNew", status) is expected

    with pytest.raises(TransportError) as info, map_errors("PutObject"):
        raise client_error("SomethingNew", status)

    assert type(info.value) is expected
    assert info.value.code == "SomethingNew"


def test_a_known_code_wins_over_the_status() -> None:
    assert error_class("Throttling", 400) is Throttled
    assert error_class("AccessDenied", 500) is AccessDenied


@pytest.mark.parametrize("error", CONNECTION_ERRORS, ids=error_id)
def test_connection_errors_are_transient(error: Exception) -> None:
    with pytest.raises(QueueUnavailable) as info, map_errors("GetMetricData"):
        raise error

    assert isinstance(info.value, TransientTransportError)
    assert info.value.code == ""
    assert info.value.__cause__ is error


def test_missing_credentials_are_access_denied_with_a_hint() -> None:
    with pytest.raises(AccessDenied, match="AWS_ACCESS_KEY_ID"), map_errors("ReceiveMessage"):
        raise NoCredentialsError


@pytest.mark.parametrize(
    "error",
    [
        SSLError(endpoint_url="https://sqs.eu-west-1.amazonaws.com", error=OSError("bad cert")),
        ParamValidationError(report="QueueUrl is missing"),
    ],
    ids=error_id,
)
def test_other_botocore_errors_are_lasting_transport_errors(error: Exception) -> None:
    with pytest.raises(TransportError) as info, map_errors("SendMessage"):
        raise error

    assert type(info.value) is TransportError
    assert not isinstance(info.value, TransientTransportError)


def test_non_botocore_errors_pass_through() -> None:
    with pytest.raises(KeyError), map_errors("ReceiveMessage"):
        raise KeyError("a bug, not the server")


def test_the_transport_uses_this_mapping() -> None:
    assert transport.map_errors is map_errors
    assert transport.ERROR_CODES is ERROR_CODES


# -- client configuration ------------------------------------------------------------------------


def test_the_profile_reaches_botocore_config() -> None:
    profile = ClientProfile(
        connect_timeout_s=2, read_timeout_s=7, retries=1, max_pool_connections=30
    )
    client = sync_client("sqs", AwsTarget("eu-west-1", "http://127.0.0.1:9", local=True), profile)

    config = client.meta.config
    assert (config.connect_timeout, config.read_timeout) == (2, 7)
    assert config.retries == {"mode": "standard", "total_max_attempts": 2}  # one retry
    assert config.max_pool_connections == 30
    assert config.user_agent_extra == user_agent()
    assert client.meta.region_name == "eu-west-1"
    assert client.meta.endpoint_url == "http://127.0.0.1:9"


def test_sqs_profiles_fit_the_long_poll_and_the_pollers() -> None:
    receive = _aws.sqs_profile(pollers=20, wait_time_s=20)
    control = _aws.sqs_profile(pollers=20, control=True)

    assert receive.read_timeout_s > 20  # a long poll must end before the read times out
    assert receive.max_pool_connections == control.max_pool_connections == 20 * 2 + 16
    assert not receive.fresh_connections
    assert control.fresh_connections
    assert control.read_timeout_s == _aws.CONTROL_READ_TIMEOUT_S < receive.read_timeout_s
    assert _aws.sqs_profile().max_pool_connections == 18  # one poller: the pool's floor and more


async def test_a_fresh_connection_profile_reaches_the_connector() -> None:
    target = AwsTarget("us-east-1", "http://127.0.0.1:9", local=True)

    async with open_client("sqs", target, ClientProfile(fresh_connections=True)) as fresh:
        assert fresh.meta.config.connector_args == {"force_close": True, "keepalive_timeout": None}
    async with open_client("sqs", target) as pooled:
        assert "force_close" not in pooled.meta.config.connector_args


def test_s3_is_path_style_on_a_custom_endpoint_only() -> None:
    local = sync_client("s3", AwsTarget("us-east-1", "http://127.0.0.1:9", local=True))
    aws = sync_client("s3", AwsTarget("us-east-1", local=True))

    assert local.meta.config.s3 == {"addressing_style": "path"}
    assert not (aws.meta.config.s3 or {}).get("addressing_style")


def test_user_agent_names_the_package_version() -> None:
    assert user_agent().startswith("qworker/")
    assert user_agent() != "qworker/"


def test_local_targets_take_dummy_credentials_and_others_the_default_chain() -> None:
    assert AwsTarget(local=True).credentials() == _aws.LOCAL_CREDENTIALS
    assert AwsTarget().credentials() == {}


# -- round trips on a real moto server -----------------------------------------------------------


def _record_user_agents(client: Any, seen: list[str]) -> None:
    def before_send(request: Any, **_: Any) -> None:
        agent = request.headers["User-Agent"]
        seen.append(agent.decode() if isinstance(agent, bytes) else agent)

    client.meta.events.register("before-send", before_send)


@pytest.mark.integration
@pytest.mark.moto
async def test_async_client_round_trip(moto_server: MotoServer) -> None:
    target = AwsTarget("us-east-1", moto_server.endpoint_url, local=True)
    name = f"aws-{uuid.uuid4().hex[:8]}"
    seen: list[str] = []

    async with open_client("sqs", target, ClientProfile(fresh_connections=True)) as sqs:
        _record_user_agents(sqs, seen)
        url = (await sqs.create_queue(QueueName=name))["QueueUrl"]
        await sqs.send_message(QueueUrl=url, MessageBody="hello")
        received = await sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1)
        with pytest.raises(QueueDoesNotExist) as info, map_errors("GetQueueUrl"):
            await sqs.get_queue_url(QueueName=f"{name}-missing")

    assert [m["Body"] for m in received["Messages"]] == ["hello"]
    assert "QueueDoesNotExist" in info.value.code or "NonExistentQueue" in info.value.code
    assert seen
    assert all(user_agent() in agent for agent in seen)


@pytest.mark.integration
@pytest.mark.moto
async def test_async_s3_client_is_path_style_on_a_custom_endpoint(moto_server: MotoServer) -> None:
    target = AwsTarget("us-east-1", moto_server.endpoint_url, local=True)
    bucket = f"aws-{uuid.uuid4().hex[:8]}"

    async with open_client("s3", target) as s3:
        await s3.create_bucket(Bucket=bucket)
        await s3.put_object(Bucket=bucket, Key="k", Body=b"payload")
        got = await s3.get_object(Bucket=bucket, Key="k")
        body = await got["Body"].read()

    assert body == b"payload"
    assert got["ResponseMetadata"]["HTTPHeaders"]  # answered by the server, not a cache


@pytest.mark.integration
@pytest.mark.moto
def test_sync_client_round_trip(moto_server: MotoServer) -> None:
    target = AwsTarget("us-east-1", moto_server.endpoint_url, local=True)
    name = f"aws-{uuid.uuid4().hex[:8]}"
    seen: list[str] = []
    sqs = sync_client("sqs", target)
    _record_user_agents(sqs, seen)

    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])

    assert attributes["Attributes"]["QueueArn"].endswith(f":{name}")
    assert seen
    assert all(user_agent() in agent for agent in seen)


async def test_an_unreachable_endpoint_is_queue_unavailable() -> None:
    target = AwsTarget("us-east-1", f"http://127.0.0.1:{closed_port()}", local=True)
    profile = ClientProfile(connect_timeout_s=2, read_timeout_s=2, retries=0)

    async with open_client("sqs", target, profile) as sqs:
        with pytest.raises(QueueUnavailable), map_errors("ListQueues"):
            await sqs.list_queues()


# -- the boundary holds --------------------------------------------------------------------------

CLIENT_MAKERS = ("create_client(", "boto3.", ".client(", "AioConfig(", "botocore.config")
BOTOCORE_ERRORS = ("ClientError", "BotoCoreError", "EndpointConnectionError")


def test_only_the_boundary_makes_clients_and_sees_botocore_errors() -> None:
    root = Path(_aws.__file__).parent
    outside = set()
    for path in sorted(root.rglob("*.py")):
        name = path.relative_to(root).as_posix()
        if name == "_aws.py":
            continue
        text = path.read_text(encoding="utf-8")
        if any(m in text for m in CLIENT_MAKERS) or any(e in text for e in BOTOCORE_ERRORS):
            outside.add(name)

    assert outside == set(), "make clients and map errors in qworker._aws"
