"""Structured logs: one JSON object per line, stamped with the worker's identity."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from qworker.logs import JsonFormatter, RateLimit, configure_logging
from qworker.role import Identity

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
NOISY = ("botocore", "aiobotocore", "werkzeug", "moto", "urllib3")
CANARY = Identity(service="orders", role="canary", version="v42", task_id="task-1")


@pytest.fixture
def logger() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger writing JSON lines to a buffer, cut off from the root logger."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(CANARY))
    log = logging.getLogger("qworker.tests.logs")
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    yield log, stream
    log.removeHandler(handler)
    log.propagate = True
    log.setLevel(logging.NOTSET)


@contextlib.contextmanager
def root_restored() -> Iterator[None]:
    """Put the root logger and the quietened libraries back as they were.

    A context manager inside the test, not a fixture: pytest swaps its own capture handlers on the
    root logger between setup, call and teardown, and only the call's should come back.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    noisy = {name: logging.getLogger(name).level for name in NOISY}
    try:
        yield
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
        for name, noisy_level in noisy.items():
            logging.getLogger(name).setLevel(noisy_level)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_record_is_one_json_object_with_stable_keys(
    logger: tuple[logging.Logger, io.StringIO],
) -> None:
    log, stream = logger

    log.info(
        "message %s",
        "acked",
        extra={"action": "message_acked", "queue": "orders", "message_id": "m-1", "outcome": None},
    )

    [entry] = lines(stream)
    assert TS.match(str(entry.pop("ts")))
    assert entry == {
        "level": "info",
        "logger": "qworker.tests.logs",
        "msg": "message acked",
        "service": "orders",
        "role": "canary",
        "version": "v42",
        "task_id": "task-1",
        "action": "message_acked",
        "queue": "orders",
        "message_id": "m-1",
    }


def test_each_record_is_exactly_one_line(logger: tuple[logging.Logger, io.StringIO]) -> None:
    log, stream = logger

    log.warning("first\nsecond")
    log.error("third")

    output = stream.getvalue().splitlines()
    assert len(output) == 2
    assert [entry["msg"] for entry in lines(stream)] == ["first\nsecond", "third"]
    assert [entry["level"] for entry in lines(stream)] == ["warning", "error"]


def test_exception_and_unserialisable_values(logger: tuple[logging.Logger, io.StringIO]) -> None:
    log, stream = logger

    def fail() -> None:
        raise RuntimeError("boom")

    try:
        fail()
    except RuntimeError:
        log.exception("handler failed", extra={"error": RuntimeError("boom")})

    [entry] = lines(stream)
    assert entry["error"] == "boom"
    exception = str(entry["exception"])
    assert exception.startswith("Traceback")
    assert "RuntimeError: boom" in exception


def test_identity_without_task_id_has_no_task_id_key() -> None:
    formatter = JsonFormatter(Identity(service="s", role="primary", version="dev"))
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hi", (), None)

    entry = json.loads(formatter.format(record))

    assert "task_id" not in entry
    assert (entry["service"], entry["role"], entry["version"]) == ("s", "primary", "dev")


def test_private_and_reserved_attributes_are_left_out() -> None:
    formatter = JsonFormatter(CANARY)
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hi", (), None)
    record._private = "hidden"
    record.custom = 3

    entry = json.loads(formatter.format(record))

    assert entry["custom"] == 3
    assert "_private" not in entry
    assert not {"args", "pathname", "lineno", "msecs", "levelno"} & set(entry)


def test_configure_logging_json() -> None:
    stream = io.StringIO()

    with root_restored():
        configure_logging(CANARY, level="DEBUG", fmt="json", stream=stream)
        logging.getLogger("qworker.tests").debug("hello", extra={"action": "test"})
        botocore_level = logging.getLogger("botocore").level

    [entry] = lines(stream)
    assert (entry["msg"], entry["action"], entry["role"]) == ("hello", "test", "canary")
    assert botocore_level == logging.WARNING


def test_configure_logging_text() -> None:
    stream = io.StringIO()

    with root_restored():
        configure_logging(CANARY, level="WARNING", fmt="text", stream=stream)
        logging.getLogger("qworker.tests").info("dropped")
        logging.getLogger("qworker.tests").warning("kept %d", 1)

    [line] = stream.getvalue().splitlines()
    assert re.match(r"^\d\d:\d\d:\d\d\.\d{3} WARNING \[canary\] qworker\.tests: kept 1$", line)


def test_text_logs_show_every_field_and_the_traceback() -> None:
    stream = io.StringIO()

    with root_restored():
        configure_logging(CANARY, level="INFO", fmt="text", stream=stream)
        try:
            raise ValueError("bad total")  # noqa: TRY301 (a real traceback to format)
        except ValueError:
            logging.getLogger("qworker.tests").exception(
                "message failed",
                extra={
                    "message_id": "m-1",
                    "reason": "total must be positive",
                    "attempt": 2,
                    "tenant": {"id": 7},
                    "empty": "",
                    "skipped": None,
                },
            )

    first, *rest = stream.getvalue().splitlines()
    assert first.endswith(
        'qworker.tests: message failed  message_id=m-1 reason="total must be positive" '
        'attempt=2 tenant="{\\"id\\": 7}" empty=""'
    )
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "ValueError: bad total"


def test_configure_logging_replaces_root_handlers_and_quietens_libraries() -> None:
    first, second = io.StringIO(), io.StringIO()

    with root_restored():
        configure_logging(CANARY, level="ERROR", stream=first)
        configure_logging(CANARY, level="ERROR", stream=second)
        logging.getLogger("qworker.tests").error("once")
        root_handlers = list(logging.getLogger().handlers)
        levels = {name: logging.getLogger(name).level for name in NOISY}

    assert first.getvalue() == ""
    assert len(lines(second)) == 1
    assert len(root_handlers) == 1
    assert set(levels.values()) == {logging.ERROR}


def test_rate_limit_allows_a_burst_then_one_per_interval_per_key() -> None:
    now = [0.0]
    limit = RateLimit(burst=2, every_s=10.0, clock=lambda: now[0])

    first = [limit.take("a") for _ in range(4)]
    other = limit.take("b")
    now[0] = 10.0
    later = [limit.take("a"), limit.take("a")]

    assert first == [(True, 0), (True, 0), (False, 1), (False, 2)]
    assert other == (True, 0)
    assert later == [(True, 2), (False, 1)]
    with pytest.raises(ValueError, match="burst"):
        RateLimit(burst=0)
