"""Bad configuration, table-driven: every case is a real `qworker run` subprocess that must exit 2
with ONE stderr line naming the setting (or the handler module and its line), and no traceback.

The first table needs no server: settings that fail validation, handler modules that cannot be
imported or bound, a health file that cannot be written. Each case sets its value once as a
`QWORKER_*` variable and, where it has a flag, once as the flag (the two paths differ: the
environment is parsed by pydantic-settings, the flag arrives as a string). The whole stderr must be
that one line.

The second table starts the worker against LocalStack: a queue or dead-letter queue that does not
exist, and an endpoint nobody answers on (the bounded start-up wait). Those workers log JSON lines
before they give up (`queue server not reachable ...; retrying`); the check there is that exactly
one line is not a log line, that it names the setting, and that no log line carries a traceback.
While the bounded wait lasts, `qworker health` does not say healthy.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pytest
from servers import free_port
from worker_process import qworker, worker_env

from qworker.local import create_queue_with_dlq, dead_letter_name
from qworker.settings import QWorkerSettings

EXIT_CONFIG: Final = 2
RUN_TIMEOUT_S: Final = 60.0
"""Bound on one `qworker run`: a case that hangs fails here instead of hanging the suite."""

MODULES: Final = {
    "good_handler": "async def handle(body: str) -> None:\n    pass\n",
    "syntax_error": "x = 1\n\ndef handle(body: str) -> None\n    pass\n",
    "raises_at_import": "import json\n\nlimit = 1 / 0\n",
    "exits_at_import": "import sys\n\nsys.exit(3)\n",
    "keyboard_at_import": "raise KeyboardInterrupt\n",
    "imports_missing": "import json\nimport not_installed_anywhere_xyz\n",
    "imports_raising": "import raises_at_import\n",
    "no_handler": "def helper() -> None:\n    pass\n",
    "unannotated": "def handle(body):\n    pass\n",
    "two_apps": "from qworker import QWorker\n\na = QWorker('a')\nb = QWorker('b')\n",
    "twice": (
        "from qworker import QWorker\n\napp = QWorker('x')\n\n"
        "@app.handler('q')\nasync def one(body: str) -> None: ...\n\n"
        "@app.handler('q')\nasync def two(body: str) -> None: ...\n"
    ),
    "extra_param": "async def handle(body: str, other: int) -> None:\n    pass\n",
    "bad_body_type": "async def handle(body: object()) -> None:\n    pass\n",
    "bad_queue": (
        "from qworker import QWorker\n\napp = QWorker('x')\n\n"
        "@app.handler('orders queue')\nasync def one(body: str) -> None: ...\n"
    ),
}


@dataclass(frozen=True)
class Case:
    """One bad configuration and what its single error line must say."""

    id: str
    names: tuple[str, ...]
    """Substrings the error line must contain (the setting, the module and its line, ...)."""
    env: Mapping[str, str] = field(default_factory=dict)
    flags: tuple[str, ...] = ()
    module: str = "good_handler"


def setting(name: str, value: str, *, env_name: str | None = None) -> list[Case]:
    """A bad `value` of setting `name`, once as a variable and once as the flag."""
    env_var = env_name or f"QWORKER_{name.upper()}"
    flag = f"--{name.replace('_', '-')}"
    named = ("invalid setting", env_var, flag)
    cases = [Case(f"{name}={value!r}-env", named, env={env_var: value})]
    info = QWorkerSettings.model_fields[name]
    if info.annotation not in {bool, bool | None}:  # a boolean flag takes no value
        cases.append(Case(f"{name}={value!r}-flag", named, flags=(flag, value)))
    return cases


SETTINGS_CASES: Final = [
    *setting("concurrency", "0"),
    *setting("concurrency", "many"),
    *setting("concurrency", "10001"),
    *setting("pollers", "-1"),  # 0 is valid: pollers follow the concurrency
    *setting("pollers", "65"),
    *setting("wait_time_s", "21"),
    *setting("wait_time_s", "-1"),
    *setting("visibility_timeout_s", "0"),
    *setting("visibility_timeout_s", "43201"),
    *setting("max_hold_s", "0"),
    *setting("max_hold_s", "nan"),
    *setting("handler_timeout_s", "0"),
    *setting("handler_timeout_s", "inf"),
    *setting("startup_timeout_s", "0"),
    *setting("startup_timeout_s", "inf"),
    *setting("shutdown_grace_s", "-1"),
    *setting("shutdown_grace_s", "116"),
    *setting("retry_base_s", "-1"),
    *setting("retry_base_s", "inf"),
    *setting("retry_base_s", "nan"),
    *setting("retry_max_s", "nan"),
    *setting("retry_max_s", "1"),  # below retry_base_s (2)
    *setting("release_failed", "maybe"),
    *setting("log_level", "LOUD"),
    *setting("log_format", "xml"),
    *setting("embedded", "perhaps"),
    *setting("local_port", "70000"),
    *setting("max_receive_count", "0"),
    *setting("deployment_role", "beta"),
    *setting("version", ""),
    *setting("service", ""),
    *setting("region", "us east 1", env_name="QWORKER_REGION"),
    *setting("region", "us_east_1!", env_name="QWORKER_REGION"),
    Case(
        "region-from-AWS_REGION",
        ("invalid setting", "AWS_REGION", "--region"),
        env={"AWS_REGION": "not a region"},
    ),
    *setting("endpoint_url", "not-a-url"),
    *setting("endpoint_url", "localhost:4566"),
    *setting("endpoint_url", "ftp://127.0.0.1:4566"),
    *setting("endpoint_url", "http://127.0.0.1:99999"),
    *setting("endpoint_url", "http://"),
    *setting("queue_url", "not-a-url"),
    *setting("queue_url", "http://127.0.0.1:4566"),
    *setting("queue_url", "sqs://queue/orders"),
    *setting("queue_name", "bad name!"),
    *setting("queue_name", "q" * 81),
    *setting("queue_name", "orders.fifo.bak"),
    *setting("metrics_namespace", "bad namespace!"),
    *setting("metrics_interval_s", "0"),
    *setting("metrics_interval_s", "61"),
    *setting("otel_exporter", "jaeger"),
    *setting("otel_sample_ratio", "2"),
    *setting("health_interval_s", "0"),
    *setting("health_stall_margin_s", "nan"),
    *setting("health_port", "-1"),
    *setting("canary_quarantine_failure_rate", "0"),
    *setting("canary_quarantine_min_messages", "0"),
    *setting("canary_quarantine_window_s", "-5"),
]

MODULE_CASES: Final = [
    Case("syntax error", ("syntax_error", "syntax_error.py", "line 3"), module="syntax_error"),
    Case(
        "raises at import",
        ("raises_at_import", "raises_at_import.py", "line 3", "ZeroDivisionError"),
        module="raises_at_import",
    ),
    Case(
        "sys.exit at import",
        ("exits_at_import", "exits_at_import.py", "line 3", "SystemExit"),
        module="exits_at_import",
    ),
    Case(
        "KeyboardInterrupt at import",
        ("keyboard_at_import", "line 1", "KeyboardInterrupt"),
        module="keyboard_at_import",
    ),
    Case(
        "imports a missing package",
        ("imports_missing", "imports_missing.py", "line 2", "not_installed_anywhere_xyz"),
        module="imports_missing",
    ),
    Case(
        "imports a module that raises",
        (
            "imports_raising.py, line 1; raised at ",
            "raises_at_import.py, line 3",
            "ZeroDivisionError",
        ),
        module="imports_raising",
    ),
    Case("module not found", ("no_such_module_xyz",), module="no_such_module_xyz"),
    Case("module in a non-package", ("'good_handler.sub'",), module="good_handler.sub"),
    Case("empty module name", ("'' is not a module name",), module=""),
    Case("relative module name", ("'.orders' is not a module name",), module=".orders"),
    Case("module path with a space", ("'my handlers' is not",), module="my handlers"),
    Case("module path with a trailing dot", ("'handlers.' is not",), module="handlers."),
    Case("module given as a file", ("'good_handler.py'",), module="good_handler.py"),
    Case("no handler", ("no_handler", "handle()"), module="no_handler"),
    Case("unannotated handler", ("unannotated.handle", "annotate"), module="unannotated"),
    Case("two apps", ("two_apps", "2 QWorker apps"), module="two_apps"),
    Case("queue registered twice", ("already has handler", "twice.one"), module="twice"),
    Case("unfillable parameter", ("extra_param.handle", "'other'"), module="extra_param"),
    Case("body type not validatable", ("bad_body_type",), module="bad_body_type"),
    Case("handler queue not a queue name", ("'orders queue'", "bad_queue.one"), module="bad_queue"),
]

HEALTH_CASES: Final = [
    Case(
        "health file in a missing /proc directory",
        ("QWORKER_HEALTH_FILE", "--health-file", "/proc/no-such-dir/health.json"),
        flags=("--health-file", "/proc/no-such-dir/health.json"),
    ),
    Case(
        "health file on a read-only file system",
        ("QWORKER_HEALTH_FILE", "--health-file", "/proc/health.json"),
        env={"QWORKER_HEALTH_FILE": "/proc/health.json"},
    ),
    Case(
        "health file is a directory",
        ("QWORKER_HEALTH_FILE", "--health-file", "is a directory"),
        flags=("--health-file", "{tmp}"),
    ),
    Case(
        "health file under a regular file",
        ("QWORKER_HEALTH_FILE", "--health-file", "not a directory"),
        flags=("--health-file", "{tmp}/good_handler.py/health.json"),
    ),
]

CREDENTIAL_CASES: Final = [
    Case(
        "AWS_PROFILE names no profile",
        ("AWS_PROFILE", "no-such-profile-xyz"),
        env={"AWS_PROFILE": "no-such-profile-xyz"},
    ),
]

OFFLINE_CASES: Final = SETTINGS_CASES + MODULE_CASES + HEALTH_CASES + CREDENTIAL_CASES


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A directory with the handler modules of the table (the worker's working directory)."""
    for name, source in MODULES.items():
        (tmp_path / f"{name}.py").write_text(source, encoding="utf-8")
    return tmp_path


def run_qworker(
    workdir: Path, case: Case, *base_flags: str, extra_env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = worker_env(
        {
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            **(extra_env or {}),
            **case.env,
        },
        scrub=("QWORKER_", "AWS_", "ECS_", "OTEL_"),
    )
    flags = [f.replace("{tmp}", str(workdir)) for f in (*base_flags, *case.flags)]
    return subprocess.run(
        [sys.executable, "-m", "qworker", "run", case.module, *flags],
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


def assert_one_line(
    proc: subprocess.CompletedProcess[str], case: Case, *, logs_allowed: bool = False
) -> str:
    """Exit 2, one non-log stderr line naming `case.names`, no traceback anywhere."""
    lines = proc.stderr.splitlines()
    human = [line for line in lines if not (logs_allowed and line.startswith("{"))]
    assert proc.returncode == EXIT_CONFIG, proc.stderr
    assert len(human) == 1, proc.stderr
    (line,) = human
    assert line.startswith("qworker: error: "), proc.stderr
    for name in case.names:
        assert name in line, (name, line)
    assert "Traceback" not in proc.stderr, proc.stderr
    logs = [json.loads(line) for line in lines if line.startswith("{")]
    assert not [entry for entry in logs if "exception" in entry], proc.stderr
    return line


def test_the_table_is_wide() -> None:
    """Far more cases than the 32 that first showed 7 failures, and every case is distinct."""
    assert len(OFFLINE_CASES) >= 100
    assert len({c.id for c in OFFLINE_CASES}) == len(OFFLINE_CASES)


@pytest.mark.parametrize("case", OFFLINE_CASES, ids=lambda c: c.id)
def test_bad_configuration_exits_2_with_one_line_naming_it(workdir: Path, case: Case) -> None:
    """No server is needed: each fails before any queue call (the endpoint is a closed port)."""
    base = {
        "QWORKER_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
        "QWORKER_QUEUE_NAME": "orders",
        "QWORKER_STARTUP_TIMEOUT_S": "1",
    }
    proc = run_qworker(workdir, case, extra_env=base)  # a case's own variable or flag wins

    assert_one_line(proc, case)


def test_health_port_in_use_is_refused(workdir: Path) -> None:
    """Another process holds the port: one line naming the setting, not an OSError traceback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        case = Case(
            "health port taken",
            ("QWORKER_HEALTH_PORT", "--health-port", f"127.0.0.1:{port}"),
            flags=("--health-port", port),
        )
        proc = run_qworker(workdir, case, "--queue-name", "orders", "--startup-timeout-s", "1")

    assert_one_line(proc, case)


def test_tls_to_a_plain_http_port_names_the_endpoint(workdir: Path) -> None:
    """An `https://` endpoint on a plain-HTTP server fails the TLS handshake: no retry mends it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        endpoint = f"https://127.0.0.1:{server.getsockname()[1]}"
        stop = threading.Event()

        def answer_in_plain_http() -> None:
            server.settimeout(0.2)
            while not stop.is_set():
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    continue
                with conn:
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

        thread = threading.Thread(target=answer_in_plain_http, daemon=True)
        thread.start()
        case = Case("tls to http", (endpoint, "QWORKER_ENDPOINT_URL"))
        try:
            proc = run_qworker(
                workdir,
                case,
                "--endpoint-url",
                endpoint,
                "--queue-name",
                "orders",
                "--startup-timeout-s",
                "20",
                "--health-file",
                str(workdir / "health.json"),
            )
        finally:
            stop.set()
            thread.join(timeout=5)

    assert_one_line(proc, case, logs_allowed=True)


def test_retry_base_inf_is_reported_under_its_own_name(workdir: Path) -> None:
    """Not under retry_max_s, whose check compares against it."""
    (case,) = [c for c in SETTINGS_CASES if c.id == "retry_base_s='inf'-env"]
    proc = run_qworker(workdir, case, "--queue-name", "orders")

    line = assert_one_line(proc, case)
    assert "RETRY_MAX" not in line


def test_a_good_configuration_is_not_refused(workdir: Path) -> None:
    """The table's base flags are fine on their own: the worker gets as far as the server."""
    port = free_port()
    proc = run_qworker(
        workdir,
        Case("good", (f"http://127.0.0.1:{port}",)),
        "--endpoint-url",
        f"http://127.0.0.1:{port}",
        "--queue-name",
        "orders",
        "--startup-timeout-s",
        "1",
        "--health-file",
        str(workdir / "health.json"),
    )

    # It got past every check into the start-up wait, which gave up on the closed port.
    line = assert_one_line(
        proc, Case("good", ("not reachable", f"127.0.0.1:{port}")), logs_allowed=True
    )
    assert "QWORKER_STARTUP_TIMEOUT_S" in line


# -- against LocalStack ---------------------------------------------------------------------------


def on_localstack(test: Any) -> Any:
    for mark in (pytest.mark.integration, pytest.mark.localstack, pytest.mark.slow):
        test = mark(test)
    return test


@pytest.fixture
async def queue_without_dlq(sqs_client: Any) -> str:
    """A queue whose redrive policy names a dead-letter queue that was deleted."""
    name = f"cfg-nodlq-{uuid.uuid4().hex[:8]}"
    await create_queue_with_dlq(sqs_client, name, max_receive_count=2, visibility_timeout_s=3)
    dlq_url = (await sqs_client.get_queue_url(QueueName=dead_letter_name(name)))["QueueUrl"]
    await sqs_client.delete_queue(QueueUrl=dlq_url)
    return name


@on_localstack
async def test_redrive_policy_naming_a_missing_dlq_fails_start_up(
    workdir: Path, localstack_server: Any, queue_without_dlq: str
) -> None:
    case = Case(
        "missing DLQ",
        ("dead-letter queue", repr(dead_letter_name(queue_without_dlq)), "does not exist"),
    )
    proc = run_qworker(
        workdir,
        case,
        "--endpoint-url",
        localstack_server.endpoint_url,
        "--queue-name",
        queue_without_dlq,
        "--health-file",
        str(workdir / "health.json"),
        extra_env={"AWS_DEFAULT_REGION": "us-east-1"},
    )

    line = assert_one_line(proc, case, logs_allowed=True)
    assert not line.startswith("qworker: error: queue "), line  # not blamed on the source queue


@on_localstack
@pytest.mark.parametrize(
    ("flag", "value", "names"),
    [
        (
            "--queue-name",
            "no-such-queue-{uuid}",
            ("'no-such-queue-", "does not exist", "QWORKER_QUEUE_NAME"),
        ),
        (
            "--queue-url",
            "{endpoint}/000000000000/no-such-queue-{uuid}",
            ("no-such-queue-", "does not exist", "QWORKER_QUEUE_URL"),
        ),
    ],
)
async def test_missing_queue_fails_start_up(
    workdir: Path, localstack_server: Any, flag: str, value: str, names: tuple[str, ...]
) -> None:
    given = value.format(uuid=uuid.uuid4().hex[:8], endpoint=localstack_server.endpoint_url)
    case = Case("missing queue", names)
    proc = run_qworker(
        workdir,
        case,
        "--endpoint-url",
        localstack_server.endpoint_url,
        flag,
        given,
        "--health-file",
        str(workdir / "health.json"),
        extra_env={"AWS_DEFAULT_REGION": "us-east-1"},
    )

    assert_one_line(proc, case, logs_allowed=True)


def read_health(workdir: Path, health_file: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qworker", "health", "--health-file", str(health_file)],
        cwd=workdir,
        env=worker_env(scrub=("QWORKER_",)),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


@pytest.mark.integration
@pytest.mark.slow
def test_unreachable_endpoint_gives_up_after_the_startup_timeout_naming_it(
    workdir: Path,
) -> None:
    """A mistyped port: nobody listens. The worker waits `--startup-timeout-s`, then exits 2 naming
    the endpoint (not: retry for ever while health says healthy). Past its start-up allowance
    (`--wait-time-s 0` + `--health-stall-margin-s 1`) and until it gives up, health says it has
    not reached its server; it never turns healthy again."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    health_file = workdir / "health.json"
    probes: list[subprocess.CompletedProcess[str]] = []
    with qworker(
        "run", "good_handler",
        "--endpoint-url", endpoint, "--queue-name", "orders",
        "--startup-timeout-s", "8", "--health-interval-s", "0.2",
        "--wait-time-s", "0", "--health-stall-margin-s", "1",
        "--health-file", str(health_file),
        cwd=workdir,
        log_dir=workdir,
        name="worker",
        env={"AWS_ACCESS_KEY_ID": "t", "AWS_SECRET_ACCESS_KEY": "t"},
        scrub=("QWORKER_", "AWS_"),
        stdout_apart=True,
    ) as worker:  # fmt: skip
        deadline = time.monotonic() + RUN_TIMEOUT_S
        # Probe health as a container health check would, while the worker is still waiting.
        while worker.is_running():
            assert time.monotonic() < deadline, f"still running:\n{worker.log_tail()}"
            if health_file.exists():
                probes.append(read_health(workdir, health_file))
            else:
                time.sleep(0.1)  # the worker is another process: its file is the only signal
        code = worker.stop(0)  # reaps it
    stderr = worker.log_since_start()
    result = subprocess.CompletedProcess(worker.argv, code, "", stderr)

    line = assert_one_line(
        result, Case("unreachable", (endpoint, "not reachable", "8 s")), logs_allowed=True
    )
    assert "QWORKER_ENDPOINT_URL" in line
    retries = [json.loads(x) for x in stderr.splitlines() if '"startup_retry"' in x]
    assert retries, stderr  # it did wait, retrying, before giving up
    codes = [p.returncode for p in probes]
    assert 1 in codes, codes  # unhealthy while still waiting
    first_unhealthy = codes.index(1)
    assert set(codes[first_unhealthy:]) == {1}, codes  # and never healthy again
    assert "not reached the queue server" in probes[-1].stdout + probes[-1].stderr
