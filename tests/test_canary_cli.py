"""`qworker canary judge` against a real, unreachable endpoint: exit 4 and one line, no traceback.

The clients are the CLI's own (built through `qworker._aws`), so a read failure reaches the CLI as
qworker's `TransportError`. The read profile's retries are cut to none so the test does not sit
through a long bake's backoff; everything else is the command as a pipeline runs it.
"""

from __future__ import annotations

import socket

import pytest

from qworker._aws import ClientProfile
from qworker.canary import cli, reader


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture
def unreachable(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setattr(
        reader, "READ_PROFILE", ClientProfile(connect_timeout_s=2, read_timeout_s=2, retries=0)
    )
    return f"http://127.0.0.1:{closed_port()}"


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--since-minutes", "5", "--no-backlog"], "cannot read the metrics: GetMetricData"),
        (
            [
                "--since-minutes",
                "5",
                "--ecs-cluster",
                "prod",
                "--canary-ecs-service",
                "orders-canary",
                "--primary-ecs-service",
                "orders",
            ],
            "cannot read the expected share from ECS: DescribeServices",
        ),
    ],
    ids=["metrics", "ecs"],
)
def test_an_unreachable_endpoint_exits_4_with_one_line(
    unreachable: str, flags: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["canary", "judge", "--service", "orders", "--region", "us-east-1"]

    code = cli.main([*argv, "--endpoint-url", unreachable, *flags])

    captured = capsys.readouterr()
    assert code == cli.EXIT_ERROR == 4
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"qworker canary judge: {says}")
    assert unreachable in lines[0]
