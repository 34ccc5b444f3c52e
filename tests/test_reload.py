"""`qworker run --reload`: a real reloader process, real children, real file changes.

Each test starts the reloader as a process of its own (it installs its signal handlers), in a
temporary directory, as a `ManagedProcess` (tests/worker_process.py), and follows its output and
its children's (one log) line by line: every wait is for a line (a worker's `queue_resolved` log,
a handler's print, the reloader's reports), never a sleep.
The worker test runs real `qworker run` children on the moto server: a change while a handler runs
drains that handler to its end before the new worker starts, and nothing is left on the queue.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import boto3
import pytest
from worker_process import WAIT_S, started

from qworker._process import ManagedProcess
from qworker.exceptions import ConfigError
from qworker.reload import CONTAINER_VARIABLES, check_allowed, child_command, run_reloader


def expect(process: ManagedProcess, text: str) -> int:
    """Wait for the next line of its output containing `text`; return that line's index."""
    process.wait_for_line(text, timeout_s=WAIT_S)
    return process.lines_read - 1


StartReloader = Callable[..., ManagedProcess]


@pytest.fixture
def start_reloader(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartReloader]:
    """Start a reloader (`python -c code`, stdout and stderr in one log outside the watched
    directory); every one started is stopped by PID when the test ends."""
    with contextlib.ExitStack() as stack:

        def start(cwd: Path, code: str, env: Mapping[str, str] | None = None) -> ManagedProcess:
            return stack.enter_context(
                started(
                    [sys.executable, "-c", textwrap.dedent(code)],
                    cwd=cwd,
                    log_dir=tmp_path_factory.mktemp("reloader"),
                    name="reloader",
                    env=env,
                )
            )

        yield start


def test_refused_in_a_container() -> None:
    for name in CONTAINER_VARIABLES:
        with pytest.raises(ConfigError) as caught:
            check_allowed({name: "http://169.254.170.2/v4/task"})
        text = str(caught.value)
        assert "\n" not in text
        assert text.startswith("invalid setting --reload:")
        assert name in text
    with pytest.raises(ConfigError, match="ECS_CONTAINER_METADATA_URI_V4"):
        run_reloader(
            "handlers.orders",
            {},
            grace_s=1,
            environ={"ECS_CONTAINER_METADATA_URI_V4": "http://169.254.170.2/v4/task"},
        )
    check_allowed({"HOME": "/root"})  # a developer's machine


def test_refused_without_watchfiles(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "watchfiles", None)  # import fails as if not installed
    with pytest.raises(ConfigError) as caught:
        check_allowed({})
    assert str(caught.value) == (
        "invalid setting --reload: it needs watchfiles: pip install 'qworker[reload]'"
    )


def test_the_child_gets_the_settings_given_as_flags() -> None:
    command = child_command(
        "handlers.orders",
        {
            "queue_name": "orders",
            "concurrency": "4",
            "release_failed": False,
            "x_ray": True,
            "region": None,
            "endpoint_url": "-http://odd",
            "middleware": ["mw:tenant", "mw:Idempotent"],
        },
    )
    assert command == [
        sys.executable, "-m", "qworker", "run", "handlers.orders",
        "--queue-name=orders", "--concurrency=4", "--no-release-failed", "--x-ray",
        "--endpoint-url=-http://odd", "--middleware=mw:tenant", "--middleware=mw:Idempotent",
    ]  # fmt: skip


CHILD: Final = """\
import signal, sys, threading
CRASH = {crash}
print("child ready v{version}", flush=True)
if CRASH:
    sys.exit(7)
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
{wait}
print("child drained v{version}", flush=True)
"""


def write_child(path: Path, *, version: int, crash: bool = False, stubborn: bool = False) -> None:
    wait = "threading.Event().wait()" if stubborn else "stop.wait()"
    path.write_text(CHILD.format(crash=crash, version=version, wait=wait))


def reloader_of(command: str, grace_s: float = 5, margin_s: float = 10) -> str:
    return f"""
        import sys
        from pathlib import Path
        from qworker.reload import Reloader
        reloader = Reloader({command}, watch=[Path.cwd()], grace_s={grace_s}, margin_s={margin_s})
        sys.exit(reloader.run())
    """


def test_a_crashed_child_starts_again_at_the_next_change(
    tmp_path: Path, start_reloader: StartReloader
) -> None:
    child = tmp_path / "child.py"
    write_child(child, version=1, crash=True)
    out = start_reloader(tmp_path, reloader_of("[sys.executable, 'child.py']"))
    expect(out, "watching")
    expect(out, "child ready v1")
    expect(out, "worker exited with code 7; waiting for a change")
    write_child(child, version=2)
    expect(out, "changed: child.py; restarting the worker")
    expect(out, "child ready v2")
    (tmp_path / "notes.txt").write_text("not python: no restart")
    out.send_signal(signal.SIGTERM)
    expect(out, "SIGTERM: stopping")
    expect(out, "child drained v2")
    assert out.wait_exit(WAIT_S) == 0
    assert sum("worker started" in line for line in out.lines()) == 2
    assert "stopped (worker exit code 0)" in out.lines()[-1]


def test_a_child_that_ignores_sigterm_is_killed_after_grace_and_margin(
    tmp_path: Path, start_reloader: StartReloader
) -> None:
    child = tmp_path / "child.py"
    write_child(child, version=1, stubborn=True)
    out = start_reloader(
        tmp_path, reloader_of("[sys.executable, 'child.py']", grace_s=0.2, margin_s=0.3)
    )
    expect(out, "child ready v1")
    write_child(child, version=2)
    expect(out, "draining the worker")
    expect(out, "did not exit in 0.5 s: SIGKILL")
    expect(out, "worker exited with code -9")
    expect(out, "child ready v2")
    out.send_signal(signal.SIGINT)
    expect(out, "SIGINT: stopping")
    expect(out, "child drained v2")  # the new child does stop on SIGTERM
    assert out.wait_exit(WAIT_S) == 0


HANDLERS: Final = """\
import asyncio, sys
from pathlib import Path

VERSION = {version}


async def handle(body: str) -> None:
    print(f"handling {{body}} v{{VERSION}}", file=sys.stderr, flush=True)
    if body == "slow":
        release = Path(__file__).with_name("release")
        while not release.exists():  # the test creates it while the worker drains
            await asyncio.sleep(0.05)
    print(f"handled {{body}} v{{VERSION}}", file=sys.stderr, flush=True)
"""


def test_a_change_drains_the_worker_then_starts_the_new_code(
    tmp_path: Path, start_reloader: StartReloader, moto_server: Any
) -> None:
    name = f"reload-{uuid.uuid4().hex[:8]}"
    sqs = boto3.client(
        "sqs",
        endpoint_url=moto_server.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",  # noqa: S106 (moto's dummy credentials)
    )
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    app = tmp_path / "reload_app.py"
    app.write_text(HANDLERS.format(version=1))
    given = {
        "queue_name": name,
        "endpoint_url": moto_server.endpoint_url,
        "region": "us-east-1",
        "wait_time_s": "1",
        "health_file": str(tmp_path / "health.json"),
        "shutdown_grace_s": "60",
    }
    out = start_reloader(
        tmp_path,
        f"""
        import sys
        from pathlib import Path
        from qworker.reload import run_reloader
        sys.exit(run_reloader("reload_app", {given!r}, grace_s=60, watch=[Path.cwd()]))
        """,
        env={
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "QWORKER_LOG_FORMAT": "json",
            **dict.fromkeys(CONTAINER_VARIABLES, ""),
        },
    )
    expect(out, "queue_resolved")
    sqs.send_message(QueueUrl=url, MessageBody="fast")
    expect(out, "handled fast v1")
    sqs.send_message(QueueUrl=url, MessageBody="slow")
    expect(out, "handling slow v1")

    app.write_text(HANDLERS.format(version=2))
    expect(out, "changed: reload_app.py; restarting the worker")
    expect(out, "draining the worker")
    (tmp_path / "release").write_text("")
    handled = expect(out, "handled slow v1")
    exited = expect(out, "worker exited with code 0")
    restarted = expect(out, "worker started")
    expect(out, "queue_resolved")
    assert handled < exited < restarted  # the old worker finished its message first

    sqs.send_message(QueueUrl=url, MessageBody="after")
    expect(out, "handled after v2")
    out.send_signal(signal.SIGTERM)
    expect(out, "stopped (worker exit code 0)")
    assert out.wait_exit(WAIT_S) == 0
    assert not any("handling slow v2" in line for line in out.lines())  # deleted, not redelivered
    counts = sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    assert counts == {
        "ApproximateNumberOfMessages": "0",
        "ApproximateNumberOfMessagesNotVisible": "0",
    }, json.dumps(out.lines()[-20:])
    sqs.delete_queue(QueueUrl=url)
