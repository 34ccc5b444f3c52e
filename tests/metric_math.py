"""A small CloudWatch metric-math evaluator, to check the alarms in deploy/alarms.yaml offline.

It implements exactly what those alarms use: numbers, query ids, `+ - * /`, unary minus, the
comparisons `== != < <= > >=`, `AND`/`&&`, `OR`/`||`, parentheses, `IF(condition, a, b)`,
`FILL(series, value)` and `DIFF(series)`. Anything else raises `MetricMathError`, so an alarm
that starts using a new function fails its test until the evaluator learns it.

Missing values follow the CloudWatch documentation ("Using metric math", sections on arithmetic,
comparison operators and IF):

- Between two time series, a timestamp present in only one of them counts as 0 in the other.
- Between a time series and a scalar, a missing point stays missing.
- A division by zero drops the point.
- `IF(c, a, b)`: where `c` is missing, missing; where true, `a` (0 if `a` is a series missing
  there); where false, `b` (missing if `b` is a series missing there).
- `DIFF(ts)` is each value minus the preceding value of the series ("Metric math functions"); the
  first point has no preceding value and is missing, a missing point stays missing, and the point
  after a gap is compared with the last value before it.
- `FILL(ts, v)` gives every period of the queried range a value, which is why a FILL'ed alarm
  never has missing data and why its newest, not yet reported period reads as the fill value.

A time series is a tuple with one entry per period of the evaluated range, `None` where there is no
datapoint. `evaluate_alarm` applies threshold, comparison and "M out of N" to the last periods.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Final, Literal

__all__ = [
    "FUNCTIONS",
    "AlarmState",
    "MetricMathError",
    "Series",
    "Value",
    "breaching",
    "evaluate",
    "evaluate_alarm",
    "functions_used",
]

Series = tuple[float | None, ...]
Value = float | Series
AlarmState = Literal["OK", "ALARM"]

FUNCTIONS: Final = frozenset({"IF", "FILL", "DIFF"})

_TOKEN: Final = re.compile(
    r"\s*(?:(?P<number>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>==|!=|<=|>=|&&|\|\||[-+*/(),<>]))"
)

_ARITHMETIC: Final[dict[str, Callable[[float, float], float]]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
}
_COMPARISON: Final[dict[str, Callable[[float, float], bool]]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_LOGICAL: Final[dict[str, Callable[[bool, bool], bool]]] = {
    "AND": lambda a, b: a and b,
    "OR": lambda a, b: a or b,
}
_SPELLINGS: Final = {"&&": "AND", "||": "OR"}

_COMPARISON_TO_OPERATOR: Final[dict[str, Callable[[float, float], bool]]] = {
    "GreaterThanThreshold": operator.gt,
    "GreaterThanOrEqualToThreshold": operator.ge,
    "LessThanThreshold": operator.lt,
    "LessThanOrEqualToThreshold": operator.le,
}


class MetricMathError(ValueError):
    """The expression uses syntax or a function this evaluator does not implement."""


def _tokenize(expression: str) -> list[str]:
    tokens: list[str] = []
    position = 0
    text = expression.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise MetricMathError(f"cannot read {text[position:]!r} in {expression!r}")
        tokens.append(match.group(match.lastgroup or "op"))
        position = match.end()
    return tokens


def _binary(left: Value, right: Value, apply: Callable[[float, float], float | None]) -> Value:
    """Apply `apply` point by point with CloudWatch's rules for missing values."""
    if isinstance(left, float) and isinstance(right, float):
        return _or_nan(apply(left, right))
    if isinstance(left, tuple) and isinstance(right, tuple):
        # Series with series: union of timestamps, a missing side counts as 0.
        return tuple(
            None if a is None and b is None else apply(a or 0.0, b or 0.0)
            for a, b in zip(left, right, strict=True)
        )
    if isinstance(left, tuple):
        assert isinstance(right, float)
        return tuple(None if a is None else apply(a, right) for a in left)
    assert isinstance(right, tuple)
    return tuple(None if b is None else apply(left, b) for b in right)


def _or_nan(value: float | None) -> float:
    # A scalar division by zero has no point to drop; the alarms never divide scalars.
    return math.nan if value is None else value


def _divide(a: float, b: float) -> float | None:
    return None if b == 0 else a / b


def _truth(value: float) -> bool:
    return value != 0


def _comparison_points(
    compare: Callable[[float, float], bool],
) -> Callable[[float, float], float | None]:
    def apply(a: float, b: float) -> float | None:
        return float(compare(a, b))

    return apply


def _logical_points(
    combine: Callable[[bool, bool], bool],
) -> Callable[[float, float], float | None]:
    def apply(a: float, b: float) -> float | None:
        return float(combine(_truth(a), _truth(b)))

    return apply


class _Parser:
    """Recursive descent, loosest first: OR, AND, comparison, + -, * /, unary minus, atoms."""

    def __init__(self, expression: str, env: Mapping[str, Series], periods: int) -> None:
        self.expression = expression
        self.tokens = _tokenize(expression)
        self.position = 0
        self.env = env
        self.periods = periods

    def parse(self) -> Value:
        value = self._or()
        if self.position != len(self.tokens):
            raise MetricMathError(f"unexpected {self._peek()!r} in {self.expression!r}")
        return value

    def _peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def _take(self, expected: str | None = None) -> str:
        token = self._peek()
        if token is None or (expected is not None and token != expected):
            raise MetricMathError(f"expected {expected or 'more'} in {self.expression!r}")
        self.position += 1
        return token

    def _logical(self, name: str, operand: Callable[[], Value]) -> Value:
        left = operand()
        while _SPELLINGS.get(self._peek() or "", self._peek()) == name:
            self._take()
            right = operand()
            left = _binary(left, right, _logical_points(_LOGICAL[name]))
        return left

    def _or(self) -> Value:
        return self._logical("OR", self._and)

    def _and(self) -> Value:
        return self._logical("AND", self._comparison)

    def _comparison(self) -> Value:
        left = self._additive()
        while (symbol := self._peek()) in _COMPARISON:
            self._take()
            left = _binary(left, self._additive(), _comparison_points(_COMPARISON[symbol]))
        return left

    def _additive(self) -> Value:
        left = self._multiplicative()
        while (symbol := self._peek()) in {"+", "-"}:
            self._take()
            left = _binary(left, self._multiplicative(), _ARITHMETIC[symbol])
        return left

    def _multiplicative(self) -> Value:
        left = self._unary()
        while (symbol := self._peek()) in {"*", "/"}:
            self._take()
            apply = _divide if symbol == "/" else _ARITHMETIC["*"]
            left = _binary(left, self._unary(), apply)
        return left

    def _unary(self) -> Value:
        if self._peek() == "-":
            self._take()
            return _binary(-1.0, self._unary(), operator.mul)
        return self._atom()

    def _atom(self) -> Value:
        symbol = self._take()
        if symbol == "(":
            value = self._or()
            self._take(")")
            return value
        if symbol[0].isdigit() or symbol[0] == ".":
            return float(symbol)
        if self._peek() == "(":
            return self._call(symbol)
        if symbol not in self.env:
            raise MetricMathError(f"unknown id {symbol!r} in {self.expression!r}")
        series = self.env[symbol]
        if len(series) != self.periods:
            raise MetricMathError(f"{symbol!r} has {len(series)} periods, not {self.periods}")
        return series

    def _arguments(self) -> list[Value]:
        self._take("(")
        arguments = [self._or()]
        while self._peek() == ",":
            self._take()
            arguments.append(self._or())
        self._take(")")
        return arguments

    def _call(self, name: str) -> Value:
        if name not in FUNCTIONS:
            raise MetricMathError(f"function {name} is not implemented here ({self.expression!r})")
        arguments = self._arguments()
        if name == "FILL":
            return _fill(arguments, self.expression)
        if name == "DIFF":
            return _diff(arguments, self.expression)
        return _if(arguments, self.expression)


def _diff(arguments: Sequence[Value], expression: str) -> Series:
    if len(arguments) != 1 or not isinstance(arguments[0], tuple):
        raise MetricMathError(f"DIFF takes one series: {expression!r}")
    result: list[float | None] = []
    previous: float | None = None
    for value in arguments[0]:
        result.append(None if value is None or previous is None else value - previous)
        if value is not None:
            previous = value
    return tuple(result)


def _fill(arguments: Sequence[Value], expression: str) -> Series:
    if len(arguments) != 2:
        raise MetricMathError(f"FILL takes a series and a value: {expression!r}")
    series, filler = arguments
    if not isinstance(series, tuple) or not isinstance(filler, float):
        raise MetricMathError(f"only FILL(series, number) is implemented: {expression!r}")
    return tuple(filler if value is None else value for value in series)


def _if(arguments: Sequence[Value], expression: str) -> Series:
    if len(arguments) != 3:
        raise MetricMathError(f"IF takes three arguments here: {expression!r}")
    condition, then, otherwise = arguments
    if not isinstance(condition, tuple):
        raise MetricMathError(f"IF with a scalar condition is not implemented: {expression!r}")

    def pick(index: int, truth: bool) -> float | None:
        if truth:
            if isinstance(then, float):
                return then
            return 0.0 if then[index] is None else then[index]
        return otherwise if isinstance(otherwise, float) else otherwise[index]

    return tuple(
        None if value is None else pick(index, _truth(value))
        for index, value in enumerate(condition)
    )


def evaluate(expression: str, env: Mapping[str, Series], periods: int) -> Value:
    """Evaluate a metric-math expression over `periods` periods.

    Args:
        expression: The expression, as written in an alarm's `Expression`.
        env: The series of every query id the expression may name.
        periods: The number of periods in the queried range (the length of every series).

    Returns:
        The resulting time series (or a scalar, which an alarm would reject).

    Raises:
        MetricMathError: On syntax or functions this evaluator does not implement.
    """
    return _Parser(expression, env, periods).parse()


def functions_used(expression: str) -> set[str]:
    """Return the names called as functions in `expression` (`IF`, `FILL`, ...)."""
    tokens = _tokenize(expression)
    return {
        token
        for token, following in zip(tokens, [*tokens[1:], None], strict=True)
        if following == "(" and token[0].isalpha() and token not in _LOGICAL
    }


def breaching(value: float | None, threshold: float, comparison: str, treat_missing: str) -> bool:
    """Whether one datapoint breaches, with missing data treated as the alarm says.

    Raises:
        MetricMathError: For TreatMissingData modes this module does not model.
    """
    if value is None:
        if treat_missing == "breaching":
            return True
        if treat_missing == "notBreaching":
            return False
        raise MetricMathError(f"TreatMissingData {treat_missing!r} is not modelled here")
    return _COMPARISON_TO_OPERATOR[comparison](value, threshold)


def evaluate_alarm(
    series: Series,
    *,
    threshold: float,
    comparison: str,
    evaluation_periods: int,
    datapoints_to_alarm: int,
    treat_missing: str,
) -> AlarmState:
    """Return the alarm state after the last period of `series`.

    ALARM when at least `datapoints_to_alarm` of the last `evaluation_periods` datapoints breach
    ("M out of N"), OK otherwise. Missing datapoints count as the TreatMissingData mode says.

    Raises:
        MetricMathError: If the series is shorter than the evaluation window.
    """
    if len(series) < evaluation_periods:
        raise MetricMathError("not enough periods for the evaluation window")
    window = series[-evaluation_periods:]
    breaches = sum(breaching(value, threshold, comparison, treat_missing) for value in window)
    return "ALARM" if breaches >= datapoints_to_alarm else "OK"
