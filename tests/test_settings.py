"""Settings: QWORKER_* variables, precedence, derived switches, and the CLI's bad-value report."""

from __future__ import annotations

import argparse
import os

import pytest

from qworker.cli import build_parser, main
from qworker.exceptions import ConfigError
from qworker.settings import ENV_PREFIX, DeploymentRole, QWorkerSettings, load_settings

# A module that does not exist: if a bad setting were accepted, `qworker run` would stop at the
# import with a different message instead of starting a worker.
NO_MODULE = "qworker_tests_no_such_handler_module"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start every test from an environment without any setting."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX) or name in {
            "AWS_REGION",
            "AWS_DEFAULT_REGION",
            "ECS_CONTAINER_METADATA_URI_V4",
        }:
            monkeypatch.delenv(name)


def test_defaults() -> None:
    settings = load_settings()

    assert settings.region == "us-east-1"
    assert settings.deployment_role is DeploymentRole.PRIMARY
    assert settings.concurrency == 16
    assert settings.queue_url is None
    assert settings.log_format == "json"


def test_env_vars_with_the_prefix_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QWORKER_CONCURRENCY", "40")
    monkeypatch.setenv("QWORKER_QUEUE_URL", "http://sqs.local/000000000000/orders")
    monkeypatch.setenv("QWORKER_DEPLOYMENT_ROLE", "canary")
    monkeypatch.setenv("QWORKER_SHUTDOWN_GRACE_S", "12.5")
    monkeypatch.setenv("QWORKER_RELEASE_FAILED", "false")
    monkeypatch.setenv("CONCURRENCY", "1")  # no prefix: ignored

    settings = load_settings()

    assert settings.concurrency == 40
    assert settings.queue_url == "http://sqs.local/000000000000/orders"
    assert settings.deployment_role is DeploymentRole.CANARY
    assert settings.shutdown_grace_s == 12.5
    assert settings.release_failed is False


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"AWS_DEFAULT_REGION": "eu-central-1"}, "eu-central-1"),
        ({"AWS_REGION": "eu-west-1"}, "eu-west-1"),
        ({"AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "eu-central-1"}, "eu-west-1"),
        ({"QWORKER_REGION": "ap-south-1", "AWS_REGION": "eu-west-1"}, "ap-south-1"),
    ],
)
def test_region_comes_from_aws_variables(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    assert load_settings().region == expected


def test_explicit_values_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QWORKER_CONCURRENCY", "40")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("QWORKER_SERVICE", "from-env")

    settings = load_settings(concurrency=3, region="ap-south-1", service=None)

    assert settings.concurrency == 3
    assert settings.region == "ap-south-1"
    assert settings.service == "from-env"  # None means "not given"


def test_ecs_metadata_uri_is_read_without_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECS_CONTAINER_METADATA_URI_V4", "http://169.254.170.2/v4/abc")

    assert load_settings().ecs_container_metadata_uri_v4 == "http://169.254.170.2/v4/abc"


def test_settings_are_frozen() -> None:
    settings = load_settings()

    with pytest.raises(ValueError, match="frozen"):
        settings.concurrency = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({}, True),
        ({"queue_url": "http://q/000000000000/q"}, False),
        ({"endpoint_url": "http://localhost:4566"}, False),
        ({"queue_url": "http://q/000000000000/q", "embedded": True}, True),
        ({"embedded": False}, False),
        # A queue named by name only is a real queue: the Dockerfile runs the image with just
        # QWORKER_QUEUE_NAME and AWS_REGION.
        ({"queue_name": "orders"}, False),
    ],
)
def test_use_embedded(given: dict[str, object], expected: bool) -> None:
    assert load_settings(**given).use_embedded is expected


@pytest.mark.parametrize(
    ("role", "release_failed", "expected"),
    [
        ("primary", None, False),
        ("canary", None, True),
        ("canary", False, False),
        ("primary", True, True),
    ],
)
def test_release_failed_effective(role: str, release_failed: bool | None, expected: bool) -> None:
    settings = load_settings(deployment_role=role, release_failed=release_failed)

    assert settings.release_failed_effective is expected


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ({"concurrency": 0}, "QWORKER_CONCURRENCY (--concurrency)"),
        ({"wait_time_s": 21}, "QWORKER_WAIT_TIME_S (--wait-time-s)"),
        ({"log_format": "xml"}, "QWORKER_LOG_FORMAT (--log-format)"),
        ({"region": ""}, "QWORKER_REGION / AWS_REGION / AWS_DEFAULT_REGION (--region)"),
        ({"retry_base_s": 10, "retry_max_s": 5}, "QWORKER_RETRY_MAX_S (--retry-max-s)"),
    ],
)
def test_bad_values_raise_config_error_naming_the_setting(
    given: dict[str, object], named: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(**given)

    text = str(info.value)
    assert named in text
    assert "\n" not in text


# -- the CLI -------------------------------------------------------------------------------------


def test_cli_bad_flag_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", NO_MODULE, "--concurrency", "0"])

    err = capsys.readouterr().err
    assert code == 2
    [line] = err.strip().splitlines()
    assert "QWORKER_CONCURRENCY" in line
    assert "--concurrency" in line
    assert line.startswith("qworker: error: invalid setting")


def test_cli_bad_env_var_exits_2_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("QWORKER_DEPLOYMENT_ROLE", "blue")

    code = main(["run", NO_MODULE])

    err = capsys.readouterr().err
    assert code == 2
    [line] = err.strip().splitlines()
    assert "QWORKER_DEPLOYMENT_ROLE" in line
    assert "--deployment-role" in line
    assert "'primary' or 'canary'" in line


def test_cli_missing_module_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", NO_MODULE, "--queue-url", "http://127.0.0.1:9/000000000000/q"])

    assert code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert NO_MODULE in line


def _run_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    [subparsers] = [
        a
        for a in parser._actions  # the subcommands are only reachable through argparse internals
        if isinstance(a, argparse._SubParsersAction)
    ]
    run = subparsers.choices["run"]
    assert isinstance(run, argparse.ArgumentParser)
    return run


def test_every_setting_is_a_flag_of_run() -> None:
    run = _run_parser()
    flags = {option for action in run._actions for option in action.option_strings}

    for name in QWorkerSettings.model_fields:
        assert f"--{name.replace('_', '-')}" in flags, name
    dests = {action.dest for action in run._actions}
    assert set(QWorkerSettings.model_fields) <= dests


def test_every_setting_is_in_run_help() -> None:
    text = _run_parser().format_help()

    for name in QWorkerSettings.model_fields:
        assert f"--{name.replace('_', '-')}" in text, name


def test_flags_parse_into_settings_values() -> None:
    args = build_parser().parse_args(
        ["run", "m", "--concurrency", "7", "--release-failed", "--no-embedded"]
    )

    assert args.concurrency == "7"
    assert args.release_failed is True
    assert args.embedded is False
    assert args.queue_url is None  # not given: the environment or the default decides
