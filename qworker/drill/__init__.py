"""`qworker drill`: a canary drill on a local queue, from first message to rollback, in one command.

The drill plays the pipeline's canary stage on one machine, with real processes and real metrics:

1. a server: LocalStack started by `qworker.localstack` on 127.0.0.1 from its own virtualenv in
   `~/.cache/qworker` (installed there on first use; stopped by PID at the end), a running server
   given by `--endpoint-url`, or moto in-process (`--embedded`);
2. one queue and its dead-letter queue (redrive policy, `maxReceiveCount` 5);
3. two `qworker run qworker.drill.handlers` subprocesses on that queue: the PRIMARY on the good
   version `v1` with many pollers, and the CANARY on `v2` (or a defective version with `--defect
   KIND`: `bug` fails yen payments, `rejects` rejects GBP payments, `slow` is six times slower)
   with one poller and a few slots, so it receives about a tenth of the traffic;
4. a producer sending a steady mix of orders, payments and e-mails;
5. the canary judge (`qworker.canary.judge.run_bake`, the pipeline's code) reading the two roles'
   first-attempt counts from the server's CloudWatch, where both workers publish every 2 s,
   under `DRILL_POLICY` (sized so a drill decides in about a minute);
6. the decision's action, as a rolling deploy (the new worker is up before the old one stops):
   FAIL rolls back (the canary is restarted on `v1`), PASS promotes (the primary is restarted on
   the canary's version);
7. a drain and an audit: every message sent must have succeeded and been deleted, none may be in
   the dead-letter queue (a failing canary releases its failures at once, so the primary retries
   them, and hands a rejected first attempt back instead of dead-lettering it), and every worker
   must exit 0.

It prints the evidence (a table per role with the p-value, decision and reasons), the measured
traffic share, the audit, and writes a PNG chart of both roles' failure rates over the bake; the
logs, the attempt ledger and `report.json` go to the run directory.
"""

# `config` holds the settings and versions, `servers` the server the drill runs on, `handlers` the
# workers' handler (imported only by the workers), `workers` the worker subprocesses, `traffic`
# the producer, `judging` the bake, `audit` the ledger accounting, `report` the evidence,
# report.json and chart, `run` the drill end to end, and `cli` the command.

from __future__ import annotations

from qworker.drill.audit import Accounting, WorkerTally, account, is_first_attempt
from qworker.drill.cli import _config as _config
from qworker.drill.cli import drill_command, register
from qworker.drill.config import (
    DEFECT_VERSION,
    DRILL_POLICY,
    GOOD_VERSION,
    NEW_VERSION,
    RATE_EMBEDDED,
    REJECTS_VERSION,
    SLOW_VERSION,
    Action,
    Capacity,
    Defect,
    DrillConfig,
    DrillError,
)
from qworker.drill.report import DrillReport, format_report, render_chart
from qworker.drill.run import run_drill
from qworker.drill.traffic import JPY_SHARE, MIX, drill_body
from qworker.drill.workers import worker_environment

__all__ = [
    "DEFECT_VERSION",
    "DRILL_POLICY",
    "GOOD_VERSION",
    "JPY_SHARE",
    "MIX",
    "NEW_VERSION",
    "RATE_EMBEDDED",
    "REJECTS_VERSION",
    "SLOW_VERSION",
    "Accounting",
    "Action",
    "Capacity",
    "Defect",
    "DrillConfig",
    "DrillError",
    "DrillReport",
    "WorkerTally",
    "account",
    "drill_body",
    "drill_command",
    "format_report",
    "is_first_attempt",
    "register",
    "render_chart",
    "run_drill",
    "worker_environment",
]
