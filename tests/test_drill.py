"""The local canary drill (`qworker drill`), its handler, its chart, and deploy/local.

The two drills at the end run everything for real: LocalStack (started by the drill, stopped by
PID), a primary and a canary `qworker run` subprocess, traffic, CloudWatch metrics and the judge.
A defective canary must be rolled back and a healthy one promoted, with every message accounted
for. They assert on decisions and accounting, never on timing. The judge is statistical: with the
drill policy a healthy canary fails, or a defective one passes, in roughly 0.5% of drills.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import random
import stat
import struct
import subprocess
import sys
import uuid
import zlib
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import boto3
import pytest
import yaml  # type: ignore[import-untyped]
from drill_reports import report_of

from qworker import chart, drill, localstack
from qworker.canary.judge import Decision, RoleCounts, judge
from qworker.cli import build_parser
from qworker.drill import handlers as drill_handler
from qworker.exceptions import ConfigError, Reject
from qworker.message import HOPS_ATTRIBUTE, RECEIVES_ATTRIBUTE, Message, MessageAttribute
from qworker.settings import ENV_PREFIX, DeploymentRole, QWorkerSettings, load_settings

ROOT: Final = Path(__file__).resolve().parent.parent
LOCAL: Final = ROOT / "deploy" / "local"
INIT_SCRIPT: Final = LOCAL / "init" / "ready.d" / "10-create-queues.sh"

SETTING_VARIABLES: Final = {f"{ENV_PREFIX}{name.upper()}" for name in QWorkerSettings.model_fields}


def _settings_from(env: Mapping[str, str]) -> QWorkerSettings:
    """The settings a worker with these `QWORKER_*` variables would run with."""
    given = {
        k.removeprefix(ENV_PREFIX).lower(): v for k, v in env.items() if k.startswith(ENV_PREFIX)
    }
    return load_settings(**given)


# -- the chart ------------------------------------------------------------------------------------


def _decode_png(data: bytes) -> tuple[int, int, bytes]:
    """Check a PNG's structure and CRCs; return (width, height, raw scanlines)."""
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    offset, chunks = 8, []
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind, body = data[offset + 4 : offset + 8], data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert zlib.crc32(kind + body) == crc
        chunks.append((kind, body))
        offset += 12 + length
    assert [k for k, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    width, height, depth, color_type = struct.unpack(">IIBB", chunks[0][1][:10])
    assert (depth, color_type) == (8, 2)
    return width, height, zlib.decompress(chunks[1][1])


def test_png_bytes_round_trip() -> None:
    pixels = bytes(range(2 * 3 * 3)) + bytes(18)
    width, height, raw = _decode_png(chart.png_bytes(3, 4, pixels))
    assert (width, height) == (3, 4)
    rows = [raw[i * 10 : (i + 1) * 10] for i in range(4)]
    assert all(row[0] == 0 for row in rows)  # filter "none"
    assert b"".join(row[1:] for row in rows) == pixels
    with pytest.raises(ValueError, match="bytes of RGB"):
        chart.png_bytes(3, 4, b"short")


def test_canvas_draws_lines_and_text() -> None:
    canvas = chart.Canvas(40, 20)
    canvas.line(0, 0, 39, 19, (255, 0, 0), thickness=3)
    canvas.text(2, 2, "ok 5%", (0, 0, 255), scale=1)
    colors = Counter(bytes(canvas.pixels[i : i + 3]) for i in range(0, len(canvas.pixels), 3))
    assert colors[bytes((255, 0, 0))] > 40
    assert colors[bytes((0, 0, 255))] > 10


def test_font_covers_the_drill_charts_text() -> None:
    texts = "canary drill: first-attempt failure rate (n=605) v2-defect fail: rollback ceiling 5%"
    assert set(texts.upper()) <= set(chart.FONT)


def test_nice_ticks_cover_the_range_with_round_steps() -> None:
    assert chart.nice_ticks(0, 55) == [0, 10, 20, 30, 40, 50, 60]
    assert chart.nice_ticks(0, 5.5)[-1] >= 5.5
    ticks = chart.nice_ticks(0.3, 0.31)
    assert ticks[0] <= 0.3
    assert ticks[-1] >= 0.31


def test_line_chart_is_a_png_of_the_asked_size() -> None:
    series = [
        chart.Series("canary", [(0, 1.0), (10, 4.0)], (200, 0, 0)),
        chart.Series("primary", [(0, 1.0), (10, 1.1)], (0, 0, 200)),
    ]
    data = chart.line_chart(
        series,
        title="t",
        x_label="x",
        y_label="y",
        lines=[chart.Line(10, "fail", (0, 0, 0)), chart.Line(5, "ceiling", (9, 9, 9), False)],
        width=320,
        height=200,
    )
    width, height, raw = _decode_png(data)
    assert (width, height) == (320, 200)
    assert len(raw) == height * (1 + width * 3)


# -- the handler and the traffic ------------------------------------------------------------------


def _event(kind: str, currency: str) -> drill_handler.DrillEvent:
    return drill_handler.DrillEvent(event_id="e-1", kind=kind, amount_cents=1200, currency=currency)


def test_the_defect_fails_every_yen_payment_and_nothing_else() -> None:
    bad = drill_handler.BEHAVIOURS[drill.DEFECT_VERSION]
    with pytest.raises(drill_handler.LedgerRejectedError, match="JPY"):
        drill_handler.process(_event("payment", "JPY"), bad, draw=0.99)
    drill_handler.process(_event("payment", "EUR"), bad, draw=0.99)
    drill_handler.process(_event("order", "JPY"), bad, draw=0.99)
    for version in (drill.GOOD_VERSION, drill.NEW_VERSION):
        drill_handler.process(_event("payment", "JPY"), drill_handler.BEHAVIOURS[version], 0.99)


def test_the_rejects_defect_rejects_every_gbp_payment_and_nothing_else() -> None:
    rejects = drill_handler.BEHAVIOURS[drill.REJECTS_VERSION]
    with pytest.raises(Reject, match="GBP"):
        drill_handler.process(_event("payment", "GBP"), rejects, draw=0.99)
    drill_handler.process(_event("payment", "EUR"), rejects, draw=0.99)
    drill_handler.process(_event("order", "GBP"), rejects, draw=0.99)
    drill_handler.process(_event("payment", "GBP"), drill_handler.BEHAVIOURS["v2"], draw=0.99)


def test_only_the_slow_version_is_slower() -> None:
    slowdowns = {v: b.slowdown for v, b in drill_handler.BEHAVIOURS.items()}
    assert slowdowns.pop(drill.SLOW_VERSION) >= 5
    assert set(slowdowns.values()) == {1.0}


def test_a_shared_outage_fails_its_share_of_every_version(tmp_path: Path) -> None:
    outage = tmp_path / "outage"
    assert drill_handler.outage_rate(str(outage)) == 0.0
    outage.write_text("0.3\n")
    assert drill_handler.outage_rate(str(outage)) == 0.3
    outage.write_text("garbage")
    assert drill_handler.outage_rate(str(outage)) == 1.0
    assert drill_handler.outage_rate(None) == 0.0
    for behaviour in drill_handler.BEHAVIOURS.values():
        with pytest.raises(drill_handler.DownstreamTimeoutError):
            drill_handler.process(_event("email", "EUR"), behaviour, draw=0.29, outage=0.3)
        if not behaviour.rejects_currency:
            drill_handler.process(_event("email", "EUR"), behaviour, draw=0.31, outage=0.3)


def test_every_version_fails_transiently_at_its_rate() -> None:
    for behaviour in drill_handler.BEHAVIOURS.values():
        with pytest.raises(drill_handler.DownstreamTimeoutError):
            drill_handler.process(_event("email", "EUR"), behaviour, draw=0.0)


def test_drill_bodies_validate_and_follow_the_mix() -> None:
    rng = random.Random(7)  # noqa: S311 (test traffic)
    events = [
        drill_handler.DrillEvent.model_validate_json(drill.drill_body(f"e-{i}", rng))
        for i in range(20_000)
    ]
    kinds: Counter[str] = Counter(e.kind for e in events)
    for kind, share in drill.MIX:
        assert abs(kinds[kind] / len(events) - share) < 0.02
    payments = [e for e in events if e.kind == "payment"]
    yen = sum(e.currency == "JPY" for e in payments) / len(payments)
    assert abs(yen - drill.JPY_SHARE) < 0.02
    assert all(e.currency != "JPY" for e in events if e.kind != "payment")


def test_the_handler_module_refuses_an_unknown_version() -> None:
    env = {**os.environ, "QWORKER_VERSION": "v9", "PYTHONPATH": str(ROOT)}
    for module in ("qworker.drill.handlers", "handlers.drill"):
        result = subprocess.run(
            [sys.executable, "-c", f"import {module}"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            cwd=ROOT,
        )
        assert result.returncode != 0
        assert "QWORKER_VERSION must be one of" in result.stderr


def test_the_checkouts_handler_name_is_the_packaged_handler() -> None:
    from handlers import drill as old_name  # noqa: PLC0415 (the name the README's drill section uses)

    assert drill.DrillConfig().handler_module == "qworker.drill.handlers"
    assert old_name.handle is drill_handler.handle
    assert old_name.BEHAVIOURS is drill_handler.BEHAVIOURS


# -- configuration, environment, audit and report -------------------------------------------------


def test_worker_environment_names_only_real_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("QWORKER_QUEUE_URL", "https://sqs.eu-west-1.amazonaws.com/1/prod")
    monkeypatch.setenv("AWS_PROFILE", "production")
    env = drill.worker_environment(
        drill.DrillConfig(),
        "http://127.0.0.1:1",
        "drill-q",
        DeploymentRole.CANARY,
        "v2",
        tmp_path / "h.json",
        tmp_path / "ledger.jsonl",
    )
    assert {k for k in env if k.startswith(ENV_PREFIX)} <= SETTING_VARIABLES
    assert "QWORKER_QUEUE_URL" not in env
    assert "AWS_PROFILE" not in env
    assert env["QWORKER_DEPLOYMENT_ROLE"] == "canary"
    assert env["QWORKER_POLLERS"] == str(drill.DrillConfig().canary.pollers)
    settings = _settings_from(env)
    assert settings.release_failed_effective  # a canary releases its failures at once
    assert settings.metrics_publish_cloudwatch


def test_config_rejects_contradictions() -> None:
    with pytest.raises(ConfigError, match="not both"):
        drill.DrillConfig(endpoint_url="http://127.0.0.1:1", embedded=True)
    with pytest.raises(ConfigError, match="--rate"):
        drill.DrillConfig(rate=0)
    assert drill.DrillConfig(embedded=True).send_rate == drill.RATE_EMBEDDED
    assert drill.DrillConfig(defect=True).expected is Decision.FAIL


def test_the_cli_names_the_defect() -> None:
    parse = build_parser().parse_args
    assert drill._config(parse(["drill"])).canary_version == drill.NEW_VERSION
    assert drill._config(parse(["drill", "--defect"])).canary_version == drill.DEFECT_VERSION
    for kind, version in (("rejects", drill.REJECTS_VERSION), ("slow", drill.SLOW_VERSION)):
        config = drill._config(parse(["drill", "--defect", kind]))
        assert config.canary_version == version
        assert config.expected is Decision.FAIL
    with pytest.raises(SystemExit):
        parse(["drill", "--defect", "typo"])
    assert drill.DrillConfig(defect=drill.Defect.SLOW).canary_version == drill.SLOW_VERSION
    assert drill.DrillConfig(defect=False).defect is None


def test_the_cli_registers_the_drill() -> None:
    args = build_parser().parse_args(["drill", "--defect", "--rate", "50", "--min-bake-s", "30"])
    config = drill._config(args)
    assert config.defect
    assert config.send_rate == 50
    assert config.policy.min_bake_s == 30
    assert config.policy.min_canary_messages == drill.DRILL_POLICY.min_canary_messages
    with pytest.raises(SystemExit):
        build_parser().parse_args(["drill", "--embedded", "--endpoint-url", "http://x"])


def _ledger(path: Path, rows: list[tuple[Any, ...]]) -> Path:
    """Rows of (event id, receive count, role, version, outcome[, hops[, prior receives]])."""
    with path.open("w") as f:
        for event_id, receive_count, role, version, outcome, *handed in rows:
            record = {
                "event_id": event_id,
                "message_id": f"m-{event_id}",
                "receive_count": receive_count,
                "role": role,
                "version": version,
                "outcome": outcome,
            }
            if handed:
                record["hops"] = handed[0]
                record["prior_receives"] = handed[1] if len(handed) > 1 else 0
            f.write(json.dumps(record) + "\n")
    return path


def test_account_finds_lost_duplicated_and_recovered_messages(tmp_path: Path) -> None:
    ledger = _ledger(
        tmp_path / "ledger.jsonl",
        [
            ("a", 1, "canary", "v2-defect", "failed"),
            ("a", 2, "primary", "v1", "succeeded"),
            ("b", 1, "primary", "v1", "succeeded"),
            ("b", 1, "primary", "v1", "succeeded"),  # at-least-once: a duplicate delivery
            ("c", 1, "primary", "v1", "failed"),
        ],
    )
    audit = drill.account(["a", "b", "c"], ledger, left_on_queue=0, dead_lettered=0)
    assert audit.lost == ("c",)
    assert audit.succeeded == 2
    assert audit.succeeded_twice == 1
    assert audit.canary_failed == 1
    assert audit.canary_failures_recovered_by == {"primary v1": 1}
    assert not audit.ok
    canary, primary = audit.tallies
    assert (canary.role, canary.first_attempts, canary.first_attempt_failed) == ("canary", 1, 1)
    assert (primary.attempts, primary.first_attempts, primary.succeeded) == (4, 3, 3)
    clean = drill.account(["a", "b"], ledger, left_on_queue=0, dead_lettered=0)
    assert clean.ok
    assert not dataclasses.replace(clean, dead_lettered=1).ok


def test_a_handed_back_copy_is_no_first_attempt(tmp_path: Path) -> None:
    # The canary rejects "a" on its first delivery and hands it back: the copy arrives with a
    # receive count of 1 and qworker.hops 1. "b" fails once on the primary, then the canary
    # hands back its second delivery: that copy carries qworker.receives 1 as well.
    ledger = _ledger(
        tmp_path / "ledger.jsonl",
        [
            ("a", 1, "canary", "v2-rejects", "rejected", 0, 0),
            ("a", 1, "primary", "v1", "succeeded", 1, 0),
            ("b", 1, "primary", "v1", "failed", 0, 0),
            ("b", 2, "canary", "v2-rejects", "rejected", 0, 0),
            ("b", 1, "primary", "v1", "succeeded", 1, 1),
            ("c", 1, "primary", "v1", "succeeded"),  # a ledger line without the hand-back fields
        ],
    )
    audit = drill.account(["a", "b", "c"], ledger, left_on_queue=0, dead_lettered=0)
    assert audit.ok
    canary, primary = audit.tallies
    assert (canary.attempts, canary.first_attempts, canary.first_attempt_failed) == (2, 1, 1)
    assert (primary.attempts, primary.first_attempts, primary.first_attempt_failed) == (4, 2, 1)
    assert primary.first_attempt_rate == 0.5
    assert audit.canary_failures_recovered_by == {"primary v1": 2}


async def test_the_ledger_records_what_makes_a_first_attempt(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.jsonl"
    monkeypatch.setattr(drill_handler, "_LEDGER", str(ledger))
    monkeypatch.setattr(random, "random", lambda: 0.5)  # no transient failure
    event = _event("order", "EUR")
    copy = Message(
        message_id="copy-1",
        receipt_handle="r",
        body=event.model_dump_json(),
        attributes={"ApproximateReceiveCount": "1"},
        message_attributes={
            HOPS_ATTRIBUTE: MessageAttribute("Number", "1"),
            RECEIVES_ATTRIBUTE: MessageAttribute("Number", "2"),
        },
    )
    original = Message(message_id="m-1", receipt_handle="r", body=event.model_dump_json())
    await drill_handler.handle(event, original)
    await drill_handler.handle(event, copy)
    first, handed = (json.loads(line) for line in ledger.read_text().splitlines())
    assert (first["receive_count"], first["hops"], first["prior_receives"]) == (1, 0, 0)
    assert (handed["receive_count"], handed["hops"], handed["prior_receives"]) == (1, 1, 2)
    assert drill.is_first_attempt(first)
    assert not drill.is_first_attempt(handed)


def test_report_shows_the_evidence_table_share_and_chart(tmp_path: Path) -> None:
    verdict = judge(
        RoleCounts(400, 24, 400, 5.0),
        RoleCounts(3600, 36, 3600, 5.0),
        40.0,
        policy=drill.DRILL_POLICY,
    )
    assert verdict.decision is Decision.FAIL
    report = report_of([verdict], tmp_path, canary_version="v2-defect", exit_codes={"canary": 0})
    text = drill.format_report(report)
    assert "canary   v2-defect" in text
    assert "(baseline)" in text
    assert f"{verdict.evidence.p_value:.2g}" in text
    assert "traffic share (first attempts): canary 10.0% (400 of 4000)" in text
    assert "decision: FAIL -> ROLLBACK (as expected)" in text
    assert report.ok
    json.dumps(report.to_json(), default=str)
    _decode_png(drill.render_chart(report))


# -- deploy/local ---------------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    loaded = yaml.safe_load((LOCAL / "compose.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_compose_parses_and_binds_loopback_only() -> None:
    services = _compose()["services"]
    localstack = services["localstack"]
    assert localstack["image"] == "localstack/localstack:4.13.1"
    assert all(str(port).startswith("127.0.0.1:") for port in localstack["ports"])
    for name in ("worker", "canary"):
        assert "ports" not in services[name]
        assert services[name]["depends_on"]["localstack"]["condition"] == "service_healthy"


def test_compose_workers_are_built_from_the_dockerfile_with_real_settings() -> None:
    services = _compose()["services"]
    roles = set()
    for name in ("worker", "canary"):
        service = services[name]
        build = service["build"]
        assert (LOCAL / build["context"] / build["dockerfile"]).resolve() == ROOT / "Dockerfile"
        env = service["environment"]
        assert env["QWORKER_ENDPOINT_URL"] == "http://localstack:4566"
        assert env["AWS_ACCESS_KEY_ID"] == env["AWS_SECRET_ACCESS_KEY"] == "test"
        assert {k for k in env if k.startswith(ENV_PREFIX)} <= SETTING_VARIABLES
        settings = _settings_from(env)
        roles.add(settings.deployment_role)
        module = service["command"][0]
        assert (ROOT / Path(*module.split("."))).with_suffix(".py").exists()
    assert roles == {DeploymentRole.PRIMARY, DeploymentRole.CANARY}
    assert services["canary"]["profiles"] == ["canary"]


def test_compose_mounts_the_init_hook_and_waits_for_it() -> None:
    localstack = _compose()["services"]["localstack"]
    mounts = [v.split(":") for v in localstack["volumes"]]
    assert ["./init/ready.d", "/etc/localstack/init/ready.d", "ro"] in mounts
    assert INIT_SCRIPT.read_text().startswith("#!/bin/bash\n")
    assert INIT_SCRIPT.stat().st_mode & stat.S_IXUSR
    assert "/_localstack/init/ready" in " ".join(localstack["healthcheck"]["test"])
    hook_env = {k for k in localstack["environment"] if k.startswith(ENV_PREFIX)}
    assert hook_env <= SETTING_VARIABLES
    assert all(name in INIT_SCRIPT.read_text() for name in hook_env)


@pytest.mark.integration
@pytest.mark.localstack
def test_the_init_hook_creates_the_queue_and_its_dead_letter_queue(
    localstack_server: Any, tmp_path: Path, aws_env: None
) -> None:
    # The LocalStack image has `awslocal`; here a shim aims LocalStack's own AWS CLI at the server.
    aws = localstack.venv_dir() / "bin" / "aws"
    assert aws.exists(), f"LocalStack's virtualenv has no AWS CLI at {aws}"
    shim = tmp_path / "awslocal"
    shim.write_text(
        f'#!/bin/sh\nexec "{aws}" --endpoint-url "{localstack_server.endpoint_url}" "$@"\n'
    )
    shim.chmod(0o755)
    queue = f"hook-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}",
        "QWORKER_QUEUE_NAME": queue,
        "QWORKER_MAX_RECEIVE_COUNT": "4",
    }
    result = subprocess.run(
        [str(INIT_SCRIPT)], env=env, capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert f"queue {queue} with dead-letter queue {queue}-dlq" in result.stdout
    sqs = boto3.client("sqs", endpoint_url=localstack_server.endpoint_url, region_name="us-east-1")
    try:
        url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        redrive = json.loads(attributes["RedrivePolicy"])
        assert redrive["deadLetterTargetArn"].endswith(f":{queue}-dlq")
        assert str(redrive["maxReceiveCount"]) == "4"
        assert attributes["VisibilityTimeout"] == "30"
        for name in (queue, f"{queue}-dlq"):
            sqs.delete_queue(QueueUrl=sqs.get_queue_url(QueueName=name)["QueueUrl"])
    finally:
        sqs.close()


# -- the drills -----------------------------------------------------------------------------------


async def _run(tmp_path: Path, *, defect: drill.Defect | bool | None) -> drill.DrillReport:
    config = drill.DrillConfig(defect=defect, out_dir=tmp_path / "drill", seed=1)
    report = await drill.run_drill(config)
    print(drill.format_report(report))  # noqa: T201 (the evidence, for `pytest -s`)
    return report


def _assert_accounted(report: drill.DrillReport) -> None:
    audit = report.accounting
    assert audit.sent > 0
    assert audit.lost == ()
    assert audit.succeeded == audit.sent  # every message succeeded ...
    assert audit.left_on_queue == 0  # ... and was deleted
    assert audit.dead_lettered == 0
    assert set(report.exit_codes.values()) == {0}
    assert report.chart.read_bytes().startswith(b"\x89PNG")
    saved = json.loads((report.run_dir / "report.json").read_text())
    assert saved["accounting"]["ok"] is True


@pytest.mark.integration
@pytest.mark.localstack
@pytest.mark.slow
async def test_a_defective_canary_is_rolled_back_and_nothing_is_lost(tmp_path: Path) -> None:
    report = await _run(tmp_path, defect=True)
    assert report.canary_version == drill.DEFECT_VERSION
    assert report.decision is Decision.FAIL
    assert report.action is drill.Action.ROLLBACK
    assert "rolled back: canary v1" in report.action_detail
    _assert_accounted(report)
    audit = report.accounting
    assert audit.canary_failed > 0
    # The canary released its failures at once; someone else then succeeded every one of them.
    assert sum(audit.canary_failures_recovered_by.values()) >= audit.canary_failed
    versions = {(t.role, t.version) for t in audit.tallies}
    assert ("canary", drill.GOOD_VERSION) in versions  # the rolled-back canary served traffic


@pytest.mark.integration
@pytest.mark.localstack
@pytest.mark.slow
async def test_a_canary_that_rejects_is_rolled_back_with_nothing_dead_lettered(
    tmp_path: Path,
) -> None:
    report = await _run(tmp_path, defect=drill.Defect.REJECTS)
    assert report.canary_version == drill.REJECTS_VERSION
    assert report.decision is Decision.FAIL
    assert report.action is drill.Action.ROLLBACK
    _assert_accounted(report)  # the canary's rejects were handed back: the DLQ stays empty
    audit = report.accounting
    assert audit.canary_failed > 0
    assert sum(audit.canary_failures_recovered_by.values()) >= audit.canary_failed
    (canary,) = (t for t in audit.tallies if t.version == drill.REJECTS_VERSION)
    assert canary.first_attempt_failed > 0  # its rejects count against it


@pytest.mark.integration
@pytest.mark.localstack
@pytest.mark.slow
async def test_a_slow_canary_is_rolled_back(tmp_path: Path) -> None:
    report = await _run(tmp_path, defect=drill.Defect.SLOW)
    assert report.canary_version == drill.SLOW_VERSION
    assert report.decision is Decision.FAIL
    assert report.action is drill.Action.ROLLBACK
    assert any("latency" in reason or "slow" in reason for reason in report.verdict.reasons)
    _assert_accounted(report)


@pytest.mark.integration
@pytest.mark.localstack
@pytest.mark.slow
async def test_a_healthy_canary_is_promoted(tmp_path: Path) -> None:
    report = await _run(tmp_path, defect=False)
    assert report.canary_version == drill.NEW_VERSION
    assert report.decision is Decision.PASS
    assert report.action is drill.Action.PROMOTE
    assert "promoted: primary v2" in report.action_detail
    _assert_accounted(report)
    share = report.traffic_share
    assert share is not None
    assert 0.02 < share < 0.3  # a small canary: about a tenth of the traffic
    versions = {(t.role, t.version) for t in report.accounting.tallies}
    assert ("primary", drill.NEW_VERSION) in versions  # the promoted primary served traffic


def test_drill_command_exit_code_follows_the_report(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    async def failing(config: drill.DrillConfig, say: Any = None) -> drill.DrillReport:
        raise drill.DrillError("no server")

    monkeypatch.setattr(drill, "run_drill", failing)
    args = build_parser().parse_args(["drill", "--out", str(tmp_path)])
    assert drill.drill_command(args, stdout=io.StringIO()) == 1
    assert isinstance(args, argparse.Namespace)
