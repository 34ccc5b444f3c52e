"""Local runs: no EMF flood on the terminal, a one-line summary per interval in text logs; in a
container (no endpoint) EMF goes to stdout as before.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import sys
from pathlib import Path

import pytest
from worker_process import WAIT_S, qworker, worker_env

from qworker import observability
from qworker.emf import MetricsAggregator
from qworker.outcome import Outcome, OutcomeRecord
from qworker.role import Identity
from qworker.settings import QWorkerSettings
from qworker.summary import emf_to_stdout, is_local, summary_line

IDENTITY = Identity(service="orders", version="v1")


def record(outcome: Outcome, duration_ms: float, queue: str = "orders") -> OutcomeRecord:
    return OutcomeRecord(
        outcome=outcome,
        queue=queue,
        handler="h",
        role="primary",
        version="v1",
        message_id="m",
        receive_count=1,
        duration_s=duration_ms / 1000,
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_the_summary_counts_every_queue_and_gives_the_median_time() -> None:
    clock = Clock()
    aggregator = MetricsAggregator(role="primary", wall_clock=clock)
    for ms in (5, 12, 40):
        aggregator.record(record(Outcome.SUCCEEDED, ms))
    aggregator.record(record(Outcome.FAILED, 3, queue="refunds"))
    aggregator.record(record(Outcome.RETRIED, 100))
    aggregator.record(record(Outcome.RETRIED, 200, queue="refunds"))
    clock.now += 10
    assert summary_line(aggregator.snapshot()) == (
        "last 10 s: 3 succeeded, 1 failed, 2 retried, 0 rejected; p50 12 ms"
    )
    clock.now += 10
    assert summary_line(aggregator.snapshot()) is None  # idle: no line


def test_released_messages_are_named_and_the_median_weighs_a_histogram() -> None:
    clock = Clock()
    aggregator = MetricsAggregator(role="primary", wall_clock=clock)
    for n in range(1000):  # over 100 samples: the interval keeps a histogram
        aggregator.record(record(Outcome.SUCCEEDED, 1.0 if n < 700 else 500.0))
    aggregator.record(record(Outcome.RELEASED, 0))
    clock.now += 5
    line = summary_line(aggregator.snapshot())
    assert line is not None
    assert line.startswith("last 5 s: 1000 succeeded, 0 failed, 0 retried, 0 rejected, 1 released")
    p50 = float(line.rsplit("p50 ", 1)[1].removesuffix(" ms"))
    assert p50 < 2  # 70% of the samples took 1 ms


@pytest.mark.parametrize(
    ("given", "endpoint", "emf", "expected"),
    [
        ({"queue_name": "orders"}, None, "auto", True),  # a container: EMF as always
        ({"queue_url": "https://sqs.eu-west-1.amazonaws.com/1/orders"}, None, "auto", True),
        ({}, "http://127.0.0.1:9324", "auto", False),  # the embedded server
        ({"queue_name": "orders", "endpoint_url": "http://127.0.0.1:4566"}, None, "auto", False),
        ({"queue_name": "orders", "endpoint_url": "http://127.0.0.1:4566"}, None, "on", True),
        ({"queue_name": "orders"}, None, "off", False),
    ],
)
def test_emf_goes_to_stdout_unless_local_or_told(
    given: dict[str, str], endpoint: str | None, emf: str, expected: bool
) -> None:
    settings = QWorkerSettings(**given, emf=emf)  # type: ignore[arg-type]
    assert emf_to_stdout(settings, endpoint) is expected
    assert is_local(settings, endpoint) is (endpoint is not None or "endpoint_url" in given)


def test_a_bad_emf_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="emf"):
        QWorkerSettings(emf="sometimes")


async def emit_one_interval(settings: QWorkerSettings, endpoint: str | None) -> None:
    async with observability.build(
        settings, IDENTITY, endpoint_url=endpoint, local=endpoint is not None, install_tracer=False
    ) as obs:
        for sink in obs.sinks:
            sink.record(record(Outcome.SUCCEEDED, 7))
            sink.record(record(Outcome.REJECTED, 2))
        await obs.emitter.emit()


def local_settings(tmp_path: Path, **given: object) -> QWorkerSettings:
    return QWorkerSettings(
        health_file=str(tmp_path / "health.json"),
        metrics_publish_cloudwatch=False,
        **given,  # type: ignore[arg-type]
    )


async def test_a_local_text_run_logs_a_summary_and_writes_no_emf(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    settings = local_settings(tmp_path, log_format="text")
    with caplog.at_level(logging.INFO, logger="qworker.summary"):
        await emit_one_interval(settings, "http://127.0.0.1:9324")
    assert capsys.readouterr().out == ""
    lines = [r.getMessage() for r in caplog.records if r.name == "qworker.summary"]
    assert len(lines) == 1
    assert ": 1 succeeded, 0 failed, 0 retried, 1 rejected; p50 " in lines[0]


async def test_a_local_run_writes_emf_when_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = local_settings(tmp_path, endpoint_url="http://127.0.0.1:4566", emf="on")
    await emit_one_interval(settings, None)
    documents = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sum(d["Succeeded"] for d in documents) == 1
    assert all("_aws" in d for d in documents)


async def test_a_container_writes_emf_and_no_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    settings = local_settings(tmp_path, queue_name="orders", log_format="text")
    with caplog.at_level(logging.INFO, logger="qworker.summary"):
        await emit_one_interval(settings, None)
    documents = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sum(d["Rejected"] for d in documents) == 1
    assert not [r for r in caplog.records if r.name == "qworker.summary"]


SUMMARY = re.compile(
    r"last \d+ s: (\d+) succeeded, (\d+) failed, (\d+) retried, (\d+) rejected; p50 [\d.]+ ms\b"
)
ORDER = '{"order_id": "o-%d", "customer_id": "c-1", "amount_cents": 1250, "currency": "EUR"}'


@pytest.mark.integration
@pytest.mark.moto
async def test_make_run_shows_a_summary_line_and_keeps_stdout_clear(tmp_path: Path) -> None:
    given = {
        "QWORKER_LOCAL_PORT": "0",
        "QWORKER_METRICS_INTERVAL_S": "1",
        "QWORKER_HEALTH_FILE": str(tmp_path / "health.json"),
    }
    with qworker(
        "run", "handlers.orders", "--log-format", "text",
        cwd=tmp_path, log_dir=tmp_path, name="worker", env=given, stdout_apart=True,
    ) as worker:  # fmt: skip
        await worker.wait_for_line_async("qworker send --queue-name", timeout_s=WAIT_S)
        sender = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "qworker", "send", ORDER % 1, ORDER % 2, "not json",
            cwd=tmp_path, env=worker_env(given), stdin=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        async with asyncio.timeout(WAIT_S):
            assert await sender.wait() == 0
        totals = [0, 0, 0, 0]  # succeeded, failed, retried, rejected
        while totals != [2, 0, 0, 1]:
            line = await worker.wait_for_line_async("last ", timeout_s=WAIT_S)
            found = SUMMARY.search(line)
            assert found is not None, line
            totals = [a + int(b) for a, b in zip(totals, found.groups(), strict=True)]
        worker.send_signal(signal.SIGTERM)
        async with asyncio.timeout(WAIT_S):
            code = await worker.wait_exit_async()
    assert code == 0, worker.log_since_start()
    assert (tmp_path / "worker.out").read_bytes() == b""  # no EMF on the terminal
