"""The built wheel works outside the source checkout: the drill, the embedded worker, LocalStack.

The module builds the wheel, creates a fresh virtualenv in a temporary directory, installs the
wheel with its `local` extra and its dependencies from the package index (resolved by pip from
the wheel's own metadata: a dependency the package forgot to declare fails here), and runs the
installed `qworker` from a directory outside the checkout, with no PYTHONPATH. Nothing of the
checkout is importable there: `handlers/`, `scripts/` and the editable install stay behind.

Speed: pip installs with `--no-compile` (no .pyc files written: they are an optimisation, and
writing them for botocore alone doubled the install time) into a venv made `--without-pip`
(the suite's own pip installs into it with `--python`). Measured on a 2-core machine: wheel build
about 7 s, install 30-65 s (about 2 min with a cold disk cache), the drill about 2 min. LocalStack
itself is not reinstalled: the drill finds it in its cache virtualenv, installed by the suite's
`localstack_server` fixture or `make localstack`, and the module checks first that it is there.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Final

import pytest

from qworker import localstack
from qworker._process import ManagedProcess

ROOT: Final = Path(__file__).resolve().parent.parent
INSTALL_TIMEOUT_S: Final = 600

pytestmark = [
    pytest.mark.wheel,
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.timeout(900),  # the module's fixture (build and install) counts in the first test
]

# A user's handler module, written into the directory the worker runs in.
TINY_HANDLER: Final = """\
import os
from pathlib import Path

from pydantic import BaseModel


class Ping(BaseModel):
    text: str


async def handle(ping: Ping) -> None:
    with Path(os.environ["TINY_OUT"]).open("a") as out:
        out.write(ping.text + "\\n")
"""


@dataclasses.dataclass(frozen=True, slots=True)
class Installed:
    """The fresh virtualenv with the wheel in it, and a working directory outside the checkout."""

    venv: Path
    work: Path
    timings: dict[str, float]

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    def env(self, **extra: str) -> dict[str, str]:
        """Our environment without anything that points at the checkout or at AWS."""
        dropped = ("QWORKER_", "AWS_", "DRILL_")
        env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
        for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"):
            env.pop(name, None)
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        env.update(extra)
        return env

    def run(self, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            cwd=self.work,
            env=self.env(),
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout_s,
        )


def _timed(timings: dict[str, float], name: str, command: list[str]) -> None:
    began = time.monotonic()
    result = subprocess.run(
        command, capture_output=True, text=True, check=False, timeout=INSTALL_TIMEOUT_S
    )
    timings[name] = time.monotonic() - began
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("wheel")
    assert not root.resolve().is_relative_to(ROOT)
    dist, venv, work = root / "dist", root / "venv", root / "work"
    work.mkdir()
    timings: dict[str, float] = {}
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    _timed(timings, "build", [*pip, "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)])
    (wheel,) = dist.glob("qworker-*.whl")
    _timed(timings, "venv", [sys.executable, "-m", "venv", "--without-pip", str(venv)])
    install = [*pip, "--python", str(venv / "bin" / "python"), "install", "-q", "--no-compile"]
    _timed(timings, "install", [*install, f"{wheel}[local]"])
    print(f"wheel test set-up: {', '.join(f'{k} {v:.1f} s' for k, v in timings.items())}")  # noqa: T201
    return Installed(venv, work, timings)


def test_the_installed_package_is_not_the_checkout(installed: Installed) -> None:
    found = installed.run("python", "-c", "import qworker, sys; print(qworker.__file__)")
    assert found.returncode == 0, found.stderr
    assert Path(found.stdout.strip()).is_relative_to(installed.venv)
    checkout = installed.run("python", "-c", "import handlers")
    assert checkout.returncode != 0  # the checkout's example handlers are not in the wheel


def test_drill_and_launcher_help(installed: Installed) -> None:
    drill = installed.run("qworker", "drill", "--help")
    assert drill.returncode == 0, drill.stderr
    assert "qworker run qworker.drill.handlers" in drill.stdout
    assert "--defect" in drill.stdout
    launcher = installed.run("python", "-m", "qworker.localstack", "--help")
    assert launcher.returncode == 0, launcher.stderr
    assert "install" in launcher.stdout
    assert "start" in launcher.stdout


def test_the_embedded_worker_handles_a_message_and_stops_on_sigterm(
    installed: Installed, tmp_path: Path
) -> None:
    work = installed.work / "embedded"
    work.mkdir()
    (work / "tiny.py").write_text(TINY_HANDLER)
    handled = tmp_path / "handled.txt"
    worker = ManagedProcess(
        [
            str(installed.bin / "qworker"),
            "run",
            "tiny",
            "--local-port",
            "0",
            "--log-format",
            "json",
        ],
        log_path=tmp_path / "worker.log",
        stdout_path=tmp_path / "worker.out",
        env=installed.env(TINY_OUT=str(handled)),
        cwd=work,
        name="qworker run tiny",
    )
    worker.start()
    try:
        worker.wait_ready(
            lambda: '"action":"consumer_started"' in worker.log_since_start(),
            timeout_s=120,
            what="consuming",
        )
        text = f"ping-{uuid.uuid4().hex[:8]}"
        sent = subprocess.run(
            [str(installed.bin / "qworker"), "send", json.dumps({"text": text})],
            cwd=work,
            env=installed.env(),
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert sent.returncode == 0, sent.stderr
        worker.wait_ready(
            lambda: text in (handled.read_text() if handled.exists() else ""),
            timeout_s=120,
            what="done with the message",
        )
    finally:
        code = worker.stop(60)  # SIGTERM by PID, SIGKILL only after a minute
    assert code == 0, worker.log_tail()
    assert handled.read_text().splitlines() == [text]
    assert "Traceback" not in worker.log_since_start()


@pytest.mark.localstack
def test_a_short_drill_on_localstack_from_the_installed_package(
    installed: Installed, tmp_path: Path
) -> None:
    # LocalStack is installed once per machine (the suite's localstack_server fixture, or
    # `make localstack`); the drill must find it there, not reinstall it.
    localstack.install()
    assert localstack.installed()
    out = tmp_path / "drill"
    began = time.monotonic()
    drill = installed.run(
        "qworker",
        "drill",
        "--defect",
        "--min-bake-s",
        "10",
        "--max-bake-s",
        "20",  # a short bake: the judge fails the canary, or it ends inconclusive (a fail)
        "--rate",
        "30",
        "--after-s",
        "2",
        "--drain-timeout-s",
        "120",
        "--out",
        str(out),
        "--json",
        timeout_s=600,
    )
    took = time.monotonic() - began
    print(f"drill from the installed package: {took:.0f} s")  # noqa: T201
    assert drill.returncode == 0, f"{drill.stdout[-3000:]}\n{drill.stderr[-3000:]}"
    assert "installing" not in drill.stderr
    report = json.loads(drill.stdout)
    assert report["server"].startswith(f"LocalStack {localstack.VERSION} (pid ")
    assert report["decision"] == "fail"
    assert report["action"] == "rollback"
    assert report["ok"] is True  # as expected, nothing lost, every worker exited 0
    assert report["accounting"]["ok"] is True
    assert report["accounting"]["sent"] > 0
    assert "stopped LocalStack (pid" in drill.stderr
    assert (out / "ledger.jsonl").stat().st_size > 0
    assert (out / "localstack.log").exists()
