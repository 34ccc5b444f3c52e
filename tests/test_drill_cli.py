"""`qworker drill`'s command: an AWS failure (qworker's `TransportError`) is one line and exit 1."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from qworker import drill
from qworker.cli import build_parser
from qworker.exceptions import QueueUnavailable


def test_a_transport_error_exits_1_with_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def unreachable(config: drill.DrillConfig, say: Any = None) -> drill.DrillReport:
        raise QueueUnavailable("GetQueueUrl: Could not connect to the endpoint URL")

    monkeypatch.setattr(drill, "run_drill", unreachable)
    args = build_parser().parse_args(["drill", "--out", str(tmp_path)])
    out = io.StringIO()

    assert drill.drill_command(args, stdout=out) == 1

    assert out.getvalue() == ""
    assert capsys.readouterr().err.splitlines() == [
        "qworker drill: error: GetQueueUrl: Could not connect to the endpoint URL"
    ]
