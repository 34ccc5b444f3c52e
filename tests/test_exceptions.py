"""The exception tree: the drawing in the module docstring is the real hierarchy."""

from __future__ import annotations

import builtins
import math
import re

import pytest

from qworker import exceptions
from qworker.exceptions import QWorkerError, Reject, Retry

# One node of the drawing: tree guides, then `Name` and optionally `(Builtin)`.
NODE = re.compile(
    r"^(?P<guides>(?:[│ ]   )*)(?P<branch>[├└]── )?(?P<name>[A-Z]\w+)(?: \((?P<mixin>\w+)\))?"
)


def drawn_tree() -> dict[str, tuple[str | None, str | None]]:
    """Parse the docstring's drawing into `{name: (parent, builtin mixin)}`."""
    doc = exceptions.__doc__ or ""
    drawing = doc.split("```")[1]
    nodes: dict[str, tuple[str | None, str | None]] = {}
    stack: list[str] = []
    for line in drawing.splitlines():
        match = NODE.match(line)
        if match is None:
            continue  # a blank line or the continuation of a comment
        depth = len(match["guides"]) // 4 + (1 if match["branch"] else 0)
        del stack[depth:]
        parent = stack[-1] if stack else None
        assert match["name"] not in nodes, f"{match['name']} is drawn twice"
        nodes[match["name"]] = (parent, match["mixin"])
        stack.append(match["name"])
    return nodes


def test_the_drawing_names_every_exported_class() -> None:
    assert set(drawn_tree()) == set(exceptions.__all__)


@pytest.mark.parametrize("name", sorted(exceptions.__all__))
def test_the_drawing_matches_the_class_hierarchy(name: str) -> None:
    parent, mixin = drawn_tree()[name]
    cls = getattr(exceptions, name)

    if parent is None:
        assert cls is QWorkerError
        assert cls.__bases__ == (Exception,)
        return
    expected = [getattr(exceptions, parent)]
    if mixin is not None:
        expected.append(getattr(builtins, mixin))
    assert list(cls.__bases__) == expected
    assert issubclass(cls, QWorkerError)


def test_subclassing_matches_the_drawn_ancestry() -> None:
    tree = drawn_tree()
    for name in exceptions.__all__:
        cls = getattr(exceptions, name)
        drawn_above = _drawn_ancestors(tree, name)
        for other in set(exceptions.__all__) - {name}:
            ancestor = getattr(exceptions, other)
            assert issubclass(cls, ancestor) == (other in drawn_above), (name, other)


def _drawn_ancestors(tree: dict[str, tuple[str | None, str | None]], name: str) -> set[str]:
    found: set[str] = set()
    parent = tree[name][0]
    while parent is not None:
        found.add(parent)
        parent = tree[parent][0]
    return found


@pytest.mark.parametrize("name", sorted(set(exceptions.__all__) - {"Retry", "Reject"}))
def test_docstring_is_the_default_message(name: str) -> None:
    cls = getattr(exceptions, name)

    assert str(cls()) == (cls.__doc__ or "").strip()
    assert str(cls("given")) == "given"


def test_retry_carries_its_delay_and_reason() -> None:
    assert str(Retry()) == "retry in 0 s"
    assert Retry().delay_s == 0.0
    retry = Retry(2.5)
    assert (retry.delay_s, retry.reason, str(retry)) == (2.5, None, "retry in 2.5 s")
    retry = Retry(60, reason="rate limited")
    assert (retry.delay_s, retry.reason, str(retry)) == (60, "rate limited", "rate limited")


def test_retry_negative_delay_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        Retry(-1)


@pytest.mark.parametrize("delay", [math.nan, math.inf, -math.inf, -0.001, 10**400])
def test_retry_delay_must_be_finite_and_not_negative(delay: float) -> None:
    with pytest.raises(ValueError, match="must be finite"):
        Retry(delay)


@pytest.mark.parametrize("delay", ["5", None, True, [1], b"1"])
def test_retry_delay_must_be_a_number(delay: object) -> None:
    with pytest.raises(TypeError, match="number of seconds"):
        Retry(delay)  # type: ignore[arg-type]


def test_retry_reason_must_be_a_string() -> None:
    with pytest.raises(TypeError, match="reason must be a string"):
        Retry(1, reason=42)  # type: ignore[arg-type]


@pytest.mark.parametrize("reason", ["", "  ", "\n"])
def test_reject_reason_must_not_be_blank(reason: str) -> None:
    with pytest.raises(ValueError, match="must not be blank"):
        Reject(reason)


@pytest.mark.parametrize("reason", [None, 42, b"bytes"])
def test_reject_reason_must_be_a_string(reason: object) -> None:
    with pytest.raises(TypeError, match="must be a string"):
        Reject(reason)  # type: ignore[arg-type]


def test_reject_carries_its_reason() -> None:
    assert Reject().reason == "rejected by handler"
    assert str(Reject()) == "rejected by handler"
    assert str(Reject("bad currency")) == "bad currency"
    assert Reject("bad currency").reason == "bad currency"


def test_builtin_mixins_let_callers_catch_familiar_types() -> None:
    with pytest.raises(ValueError, match="invalid"):
        raise exceptions.ConfigError
    with pytest.raises(LookupError):
        raise exceptions.QueueDoesNotExist
    with pytest.raises(PermissionError):
        raise exceptions.AccessDenied
    with pytest.raises(exceptions.TransientTransportError):
        raise exceptions.Throttled
