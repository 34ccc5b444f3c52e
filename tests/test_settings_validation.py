"""Settings validation in-process: URLs, region and queue names, inf/nan under their own name.

tests/test_config_errors.py runs the same mistakes through real `qworker run` processes; these
fast checks pin the messages' wording and the values that must still be accepted.
"""

from __future__ import annotations

import pytest

from qworker.exceptions import ConfigError
from qworker.settings import QWorkerSettings, load_settings


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:4566",
        "https://sqs.us-east-1.amazonaws.com",
        "http://127.0.0.1:9324/",
        "http://sqs.eu-west-1.localhost.localstack.cloud:4566",
    ],
)
def test_endpoint_urls_that_work_are_accepted(url: str) -> None:
    assert load_settings(endpoint_url=url).endpoint_url == url


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("not-a-url", "is not an http(s) URL"),
        ("localhost:4566", "is not an http(s) URL"),
        ("ftp://127.0.0.1:4566", "is not an http(s) URL"),
        ("http://", "is not an http(s) URL"),
        ("http://127.0.0.1:99999", "has an invalid port"),
        ("http://127.0.0.1:port", "has an invalid port"),
    ],
)
def test_an_endpoint_that_is_not_a_url_names_the_setting(url: str, why: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(endpoint_url=url)

    text = str(caught.value)
    assert text.startswith("invalid setting QWORKER_ENDPOINT_URL (--endpoint-url): ")
    assert why in text
    assert "Value error" not in text
    assert "\n" not in text


@pytest.mark.parametrize(
    "url",
    [
        "https://sqs.us-east-1.amazonaws.com/123456789012/orders",
        "http://localhost:4566/000000000000/orders.fifo",
        "http://127.0.0.1:4566/queue/us-east-1/000000000000/orders",
    ],
)
def test_queue_urls_that_work_are_accepted(url: str) -> None:
    assert load_settings(queue_url=url).queue_url == url


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("not-a-url", "is not an http(s) URL"),
        ("http://127.0.0.1:4566", "names no queue"),
        ("http://127.0.0.1:4566/", "names no queue"),
        ("sqs://queue/orders", "is not an http(s) URL"),
    ],
)
def test_a_queue_url_that_is_not_one_names_the_setting(url: str, why: str) -> None:
    with pytest.raises(ConfigError, match=r"^invalid setting QWORKER_QUEUE_URL") as caught:
        load_settings(queue_url=url)

    assert why in str(caught.value)


@pytest.mark.parametrize("name", ["orders", "a-b_c", "orders.fifo", "q" * 80, "q" * 75 + ".fifo"])
def test_queue_names_sqs_allows_are_accepted(name: str) -> None:
    assert load_settings(queue_name=name).queue_name == name


@pytest.mark.parametrize("name", ["bad name", "q" * 81, "q" * 76 + ".fifo", ".fifo", "a.b", "ü"])
def test_a_queue_name_sqs_refuses_names_the_setting(name: str) -> None:
    with pytest.raises(ConfigError, match=r"^invalid setting QWORKER_QUEUE_NAME .*is not a queue"):
        load_settings(queue_name=name)


@pytest.mark.parametrize("region", ["us-east-1", "eu-central-2", "local", "us-gov-west-1"])
def test_regions_of_the_right_shape_are_accepted(region: str) -> None:
    assert load_settings(region=region).region == region


@pytest.mark.parametrize("region", ["us east 1", "us_east_1", "-us-east-1", "us-east-1-", "é"])
def test_a_malformed_region_names_every_variable_that_sets_it(region: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(region=region)

    text = str(caught.value)
    assert text.startswith(
        "invalid setting QWORKER_REGION / AWS_REGION / AWS_DEFAULT_REGION (--region): "
    )
    assert "is not a region name" in text


def test_a_malformed_region_from_the_environment_names_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("QWORKER_REGION", raising=False)
    monkeypatch.setenv("AWS_REGION", "not a region")

    with pytest.raises(ConfigError, match=r"^invalid setting QWORKER_REGION / AWS_REGION"):
        load_settings()


FLOAT_FIELDS = sorted(
    name
    for name, info in QWorkerSettings.model_fields.items()
    if info.annotation in {float, float | None}
)


@pytest.mark.parametrize("name", FLOAT_FIELDS)
@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_inf_and_nan_are_refused_under_the_settings_own_name(name: str, value: str) -> None:
    flag = f"--{name.replace('_', '-')}"

    with pytest.raises(ConfigError) as caught:
        load_settings(**{name: value})

    assert f"({flag})" in str(caught.value)


def test_every_float_setting_is_covered() -> None:
    assert "retry_base_s" in FLOAT_FIELDS
    assert "startup_timeout_s" in FLOAT_FIELDS
    assert len(FLOAT_FIELDS) >= 10


@pytest.mark.parametrize("value", ["0", "-1", "3601"])
def test_startup_timeout_must_be_positive_and_bounded(value: str) -> None:
    with pytest.raises(ConfigError, match=r"QWORKER_STARTUP_TIMEOUT_S \(--startup-timeout-s\)"):
        load_settings(startup_timeout_s=value)


def test_startup_timeout_defaults_well_under_the_health_checks_start_period() -> None:
    assert load_settings().startup_timeout_s == 30.0
