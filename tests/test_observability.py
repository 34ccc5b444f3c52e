"""The wiring, end to end, as a process on moto's server.

`qworker run` writes EMF to stdout, publishes the same numbers to CloudWatch, keeps a health file
that `qworker health` reads, links its spans to `qworker send`'s traceparent, and flushes its last
interval on SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiobotocore.session import get_session
from servers import MotoServer
from worker_process import WAIT_S, next_entry_async, qworker

from qworker.cli import main

ROOT = Path(__file__).resolve().parent.parent
ORDER = '{"order_id": "o-%d", "customer_id": "c-1", "amount_cents": 1250, "currency": "EUR"}'


async def sum_from_cloudwatch(endpoint_url: str, queue: str, metric: str) -> float:
    dims = [
        {"Name": "Service", "Value": "e2e"},
        {"Name": "DeploymentRole", "Value": "primary"},
        {"Name": "Queue", "Value": queue},
    ]
    start = datetime.now(UTC) - timedelta(minutes=10)
    async with get_session().create_client(
        "cloudwatch", endpoint_url=endpoint_url, region_name="us-east-1"
    ) as cloudwatch:
        response = await cloudwatch.get_metric_data(
            MetricDataQueries=[
                {
                    "Id": "m",
                    "MetricStat": {
                        "Metric": {
                            "Namespace": "QWorker",
                            "MetricName": metric,
                            "Dimensions": dims,
                        },
                        "Period": 60,
                        "Stat": "Sum",
                    },
                }
            ],
            StartTime=start,
            EndTime=start + timedelta(minutes=20),
        )
    return float(sum(response["MetricDataResults"][0]["Values"]))


@pytest.mark.integration
@pytest.mark.moto
@pytest.mark.usefixtures("aws_env")
async def test_worker_process_emits_metrics_health_and_flushes_on_sigterm(
    moto_server: MotoServer, tmp_path: Path
) -> None:
    queue = f"e2e-{uuid.uuid4().hex[:8]}"
    health_file = tmp_path / "health.json"
    env = {
        "QWORKER_ENDPOINT_URL": moto_server.endpoint_url,
        "QWORKER_QUEUE_NAME": queue,
        "QWORKER_SERVICE": "e2e",
        "QWORKER_HEALTH_FILE": str(health_file),
        "QWORKER_METRICS_INTERVAL_S": "60",  # only the final flush writes within this test
        "QWORKER_LOG_LEVEL": "DEBUG",
        "QWORKER_WAIT_TIME_S": "1",
        "QWORKER_OTEL_EXPORTER": "console",  # spans to stderr, stdout stays EMF only
        "QWORKER_EMF": "on",  # an endpoint is set: a local run writes EMF only when asked
    }
    async with get_session().create_client(
        "sqs", endpoint_url=moto_server.endpoint_url, region_name="us-east-1"
    ) as sqs:
        await sqs.create_queue(QueueName=queue)
    sent = await asyncio.to_thread(
        main,
        ["send", "--endpoint-url", moto_server.endpoint_url, "--queue-name", queue]
        + [ORDER % n for n in range(3)],
    )
    assert sent == 0

    with qworker(
        "run", "handlers.orders", cwd=ROOT, log_dir=tmp_path, name="worker", env=env,
        stdout_apart=True,
    ) as worker:  # fmt: skip
        succeeded = [await next_entry_async(worker, "message_succeeded") for _ in range(3)]
        assert {line["role"] for line in succeeded} == {"primary"}
        assert await asyncio.to_thread(main, ["health", "--health-file", str(health_file)]) == 0
        worker.send_signal(signal.SIGTERM)
        async with asyncio.timeout(WAIT_S):
            code = await worker.wait_exit_async()
    stderr = worker.log_since_start()
    stdout = (tmp_path / "worker.out").read_text()
    assert code == 0, stderr[-2000:]

    documents = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    assert documents, "no EMF document on stdout"
    assert all("_aws" in d for d in documents)  # nothing but EMF on stdout
    assert sum(d["Succeeded"] for d in documents if d["Queue"] == queue) == 3
    assert {d["DeploymentRole"] for d in documents} == {"primary"}
    assert await sum_from_cloudwatch(moto_server.endpoint_url, queue, "Succeeded") == 3

    spans = [json.loads(s) for s in _console_spans(stderr)]
    consumer_spans = [s for s in spans if s["kind"] == "SpanKind.CONSUMER"]
    assert len(consumer_spans) == 3
    assert all(s["name"] == f"process {queue}" for s in consumer_spans)
    assert all(len(s["links"]) == 1 for s in consumer_spans)  # linked to `qworker send`'s span

    report = json.loads(health_file.read_text())
    assert report["ready"] is False  # the last report: stopping
    assert time.time() - report["time_s"] < 60


def _console_spans(stderr: str) -> list[str]:
    """The JSON objects ConsoleSpanExporter printed (multi-line, among the JSON log lines)."""
    spans, current, depth = [], [], 0
    for line in stderr.splitlines():
        if depth == 0 and line == "{":
            current, depth = [line], 1
            continue
        if depth:
            current.append(line)
            depth += line.count("{") - line.count("}")
            if depth == 0:
                spans.append("\n".join(current))
    return spans
