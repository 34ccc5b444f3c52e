"""`qworker health` (the ECS health check) loads only the standard library and the probe's own
modules: no AWS SDK, no OpenTelemetry, no settings model. Checked in a fresh interpreter, which runs
the probe the way the container does (`qworker.cli.main`), against a real health file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qworker import cli
from qworker.health_file import (
    HealthReport,
    health_file_setting,
    read_report,
    write_report,
)

ROOT = Path(__file__).resolve().parent.parent
HEAVY = (
    "boto3",
    "botocore",
    "aiobotocore",
    "aiohttp",
    "opentelemetry",
    "pydantic",
    "pydantic_settings",
)

# Runs the command in a fresh interpreter, then prints the exit code and what it imported.
PROBE = """
import json, sys
from qworker.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def probe(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, list[str]]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("QWORKER_")}
    clean["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    *answer, last = done.stdout.splitlines()
    found = json.loads(last)
    return found["code"], "\n".join(answer), found["modules"]


def heavy(modules: list[str]) -> list[str]:
    return [m for m in modules if m.split(".")[0] in HEAVY]


@pytest.fixture
def healthy_file(tmp_path: Path) -> Path:
    path = tmp_path / "worker.json"
    write_report(path, HealthReport(time.time(), live=True, ready=True))
    return path


def test_the_probe_imports_none_of_the_heavy_modules(healthy_file: Path) -> None:
    code, answer, modules = probe("health", "--health-file", str(healthy_file))

    assert (code, answer) == (0, "healthy")
    assert heavy(modules) == []
    assert "qworker.health_file" in modules
    assert "qworker.settings" not in modules


def test_the_probe_reads_qworker_health_file_without_the_settings_model(tmp_path: Path) -> None:
    path = tmp_path / "sick.json"
    write_report(path, HealthReport(time.time(), live=False, ready=True, problems=("stalled",)))

    code, answer, modules = probe("health", env={"QWORKER_HEALTH_FILE": str(path)})

    assert (code, answer) == (1, "unhealthy: stalled")
    assert heavy(modules) == []


def test_the_probe_finds_the_default_files_under_tmpdir(tmp_path: Path) -> None:
    # Where a worker started with TMPDIR writes its file by default; this test process runs.
    directory = tmp_path / "qworker-health"
    write_report(directory / f"primary-{os.getpid()}.json", HealthReport(time.time(), True, True))

    code, answer, modules = probe("health", env={"TMPDIR": str(tmp_path)})

    assert (code, answer) == (0, "healthy")
    assert heavy(modules) == []


def test_run_help_loads_its_command_and_no_other(tmp_path: Path) -> None:
    # `run --help` exits through argparse: the launcher reports nothing, so look for the flags.
    clean = {k: v for k, v in os.environ.items() if not k.startswith("QWORKER_")}
    clean["PYTHONPATH"] = str(ROOT)
    code = "import sys\nfrom qworker.cli import main\ntry:\n    main(['run', '--help'])\n"
    code += "finally:\n    print(sorted(m for m in sys.modules if m.startswith('qworker.')))"
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert "--concurrency" in done.stdout
    loaded = done.stdout.splitlines()[-1]
    for other in ("qworker.dlq", "qworker.drill", "qworker.canary", "qworker.queue_cli"):
        assert f"'{other}" not in loaded


def test_every_command_is_listed_as_the_full_parser_lists_it() -> None:
    assert cli.build_parser([]).format_help() == cli.build_parser().format_help()
    assert [c.name for c in cli.COMMANDS] == [
        "run",
        "send",
        "canary",
        "health",
        "dlq",
        "queue",
        "drill",
    ]


@pytest.mark.parametrize("command", [c.name for c in cli.COMMANDS])
def test_a_chosen_command_gets_its_full_parser(command: str) -> None:
    lazy = cli.build_parser([command])
    full = cli.build_parser()

    def help_of(parser: object) -> str:
        sub = next(a for a in parser._actions if a.dest == "command")  # type: ignore[attr-defined]
        return str(sub.choices[command].format_help())

    assert help_of(lazy) == help_of(full)


def test_health_file_setting_flag_then_variable_then_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QWORKER_HEALTH_FILE", raising=False)
    assert health_file_setting(None) is None
    monkeypatch.setenv("QWORKER_HEALTH_FILE", "")
    assert health_file_setting(None) is None
    monkeypatch.setenv("QWORKER_HEALTH_FILE", "/x/env.json")
    assert health_file_setting(None) == "/x/env.json"
    assert health_file_setting("/x/flag.json") == "/x/flag.json"


@pytest.mark.parametrize("tmpdir", ["set", "unset", "not a directory"])
def test_default_dir_without_tempfile_is_where_tempfile_puts_it(
    tmp_path: Path, tmpdir: str
) -> None:
    # The probe finds the directory without importing tempfile; a worker asks tempfile.
    env = {k: v for k, v in os.environ.items() if k not in {"TMPDIR", "TEMP", "TMP"}}
    env["PYTHONPATH"] = str(ROOT)
    if tmpdir == "set":
        env["TMPDIR"] = str(tmp_path)
    elif tmpdir == "not a directory":
        env["TMPDIR"] = str(tmp_path / "missing")
    code = (
        "import sys\nfrom qworker.health_file import default_health_dir\n"
        "fast = default_health_dir()\nimport tempfile\n"
        "print(fast, default_health_dir(), tempfile.gettempdir(), sep='\\n')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    fast, asked, temp = done.stdout.splitlines()

    assert fast == asked == str(Path(temp) / "qworker-health")
    if tmpdir == "set":
        assert temp == str(tmp_path)


def test_report_round_trips_and_is_read_only(tmp_path: Path) -> None:
    report = HealthReport(12.5, True, False, False, ("starting",), 15.0, {"q": {"received": 1.0}})
    write_report(tmp_path / "r.json", report)

    assert read_report(tmp_path / "r.json") == report
    assert report != HealthReport(12.5, True, True)
    with pytest.raises(AttributeError):
        report.live = False
