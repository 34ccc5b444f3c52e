"""`qworker queue create` as a user runs it, against moto's server over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.integration, pytest.mark.moto]


def qworker(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QWORKER_", "AWS_ENDPOINT"))}
    env |= {
        "PYTHONPATH": str(ROOT),
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    return subprocess.run(
        [sys.executable, "-m", "qworker", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def sqs(endpoint: str) -> object:
    return boto3.client(
        "sqs",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",  # noqa: S106 (moto's dummy credentials)
    )


def test_create_with_dead_letter_queue(tmp_path: Path, moto_server: object) -> None:
    endpoint = getattr(moto_server, "endpoint_url", "")
    name = "orders-cli-create"

    result = qworker(
        "queue", "create", name, "--dlq", "--max-receive-count", "4",
        "--visibility-timeout-s", "45", "--endpoint-url", endpoint, "--json", cwd=tmp_path,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    urls = json.loads(result.stdout)
    assert urls["queue_url"].endswith(f"/{name}")
    assert urls["dead_letter_queue_url"].endswith(f"/{name}-dlq")
    client = sqs(endpoint)
    attributes = client.get_queue_attributes(  # type: ignore[attr-defined]
        QueueUrl=urls["queue_url"], AttributeNames=["All"]
    )["Attributes"]
    dlq_arn = client.get_queue_attributes(  # type: ignore[attr-defined]
        QueueUrl=urls["dead_letter_queue_url"], AttributeNames=["QueueArn"]
    )["Attributes"]["QueueArn"]
    policy = json.loads(attributes["RedrivePolicy"])
    assert policy["deadLetterTargetArn"] == dlq_arn
    assert int(policy["maxReceiveCount"]) == 4
    assert attributes["VisibilityTimeout"] == "45"

    again = qworker(
        "queue", "create", name, "--dlq", "--max-receive-count", "4",
        "--visibility-timeout-s", "45", "--endpoint-url", endpoint, cwd=tmp_path,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[0] == urls["queue_url"]


def test_create_fifo_adds_the_suffix_to_both_queues(tmp_path: Path, moto_server: object) -> None:
    endpoint = getattr(moto_server, "endpoint_url", "")

    result = qworker(
        "queue", "create", "payments-cli", "--fifo", "--dlq", "--endpoint-url", endpoint,
        "--json", cwd=tmp_path,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    urls = json.loads(result.stdout)
    assert urls["queue_url"].endswith("/payments-cli.fifo")
    assert urls["dead_letter_queue_url"].endswith("/payments-cli-dlq.fifo")
    attributes = sqs(endpoint).get_queue_attributes(  # type: ignore[attr-defined]
        QueueUrl=urls["queue_url"], AttributeNames=["FifoQueue"]
    )["Attributes"]
    assert attributes["FifoQueue"] == "true"


def test_create_without_dlq_has_no_redrive_policy(tmp_path: Path, moto_server: object) -> None:
    endpoint = getattr(moto_server, "endpoint_url", "")

    result = qworker("queue", "create", "plain-cli", "--endpoint-url", endpoint, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    [url] = result.stdout.split()
    attributes = sqs(endpoint).get_queue_attributes(  # type: ignore[attr-defined]
        QueueUrl=url, AttributeNames=["All"]
    )["Attributes"]
    assert "RedrivePolicy" not in attributes


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["orders.fifo"], "--fifo"),
        (["orders", "--dlq", "--max-receive-count", "0"], "--max-receive-count"),
        (["orders", "--visibility-timeout-s", "50000"], "--visibility-timeout-s"),
        (["orders", "--endpoint-url", "not-a-url"], "QWORKER_ENDPOINT_URL"),
    ],
)
def test_bad_arguments_exit_2_naming_them(tmp_path: Path, args: list[str], named: str) -> None:
    result = qworker("queue", "create", *args, cwd=tmp_path)

    assert result.returncode == 2
    assert named in result.stderr
    assert "Traceback" not in result.stderr
