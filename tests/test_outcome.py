"""The retry policy: exponential, capped, jittered backoff from a message's receive count."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from qworker.outcome import SQS_MAX_VISIBILITY_S, Outcome, OutcomeRecord, RetryPolicy


def seeded(seed: int) -> random.Random:
    return random.Random(seed)  # noqa: S311 (a reproducible test source, not crypto)


def test_delay_grows_exponentially_without_jitter() -> None:
    policy = RetryPolicy(base_s=2, factor=2, max_s=1000, jitter=0)

    assert [policy.delay_s(n) for n in range(1, 7)] == [2, 4, 8, 16, 32, 64]


def test_factor_sets_the_growth() -> None:
    policy = RetryPolicy(base_s=1, factor=3, max_s=1000, jitter=0)

    assert [policy.delay_s(n) for n in range(1, 5)] == [1, 3, 9, 27]


def test_factor_one_is_a_constant_delay() -> None:
    policy = RetryPolicy(base_s=5, factor=1, max_s=1000, jitter=0)

    assert {policy.delay_s(n) for n in range(1, 20)} == {5}


def test_delay_is_capped_at_max_s() -> None:
    policy = RetryPolicy(base_s=2, factor=2, max_s=30, jitter=0)

    assert [policy.delay_s(n) for n in range(1, 8)] == [2, 4, 8, 16, 30, 30, 30]


def test_delay_never_exceeds_the_sqs_visibility_limit() -> None:
    policy = RetryPolicy(base_s=1000, factor=10, max_s=10**9, jitter=0)

    assert policy.delay_s(5) == SQS_MAX_VISIBILITY_S


def test_huge_receive_count_does_not_overflow() -> None:
    policy = RetryPolicy(base_s=2, factor=10, max_s=300, jitter=0)

    assert policy.delay_s(10**6) == 300


@pytest.mark.parametrize("receive_count", [0, -3])
def test_receive_count_below_one_counts_as_a_first_attempt(receive_count: int) -> None:
    policy = RetryPolicy(base_s=2, jitter=0)

    assert policy.delay_s(receive_count) == 2


@pytest.mark.parametrize("jitter", [0.25, 0.5, 1.0])
def test_jitter_stays_within_its_bounds(jitter: float) -> None:
    policy = RetryPolicy(base_s=2, factor=2, max_s=60, jitter=jitter, _rng=seeded(7))

    for receive_count in range(1, 10):
        ceiling = min(2 * 2 ** (receive_count - 1), 60)
        for _ in range(200):
            delay = policy.delay_s(receive_count)
            assert ceiling * (1 - jitter) <= delay <= ceiling


def test_jitter_spreads_delays() -> None:
    policy = RetryPolicy(base_s=100, max_s=100, jitter=0.5, _rng=seeded(1))

    delays = {policy.delay_s(1) for _ in range(50)}

    assert len(delays) > 40
    assert min(delays) < 60
    assert max(delays) > 90


def test_seeded_policies_agree() -> None:
    one = RetryPolicy(_rng=seeded(42))
    two = RetryPolicy(_rng=seeded(42))

    assert [one.delay_s(n) for n in range(1, 10)] == [two.delay_s(n) for n in range(1, 10)]
    assert one == two  # the random source is not part of the policy's value
    assert "_rng" not in repr(one)


def test_zero_policy_retries_at_once() -> None:
    policy = RetryPolicy(base_s=0, max_s=0)

    assert {policy.delay_s(n) for n in range(1, 5)} == {0}


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: RetryPolicy(base_s=-1), "must not be negative"),
        (lambda: RetryPolicy(max_s=-0.5), "must not be negative"),
        (lambda: RetryPolicy(factor=0.5), "factor must be at least 1"),
        (lambda: RetryPolicy(jitter=-0.1), "jitter must be between 0 and 1"),
        (lambda: RetryPolicy(jitter=1.5), "jitter must be between 0 and 1"),
    ],
)
def test_invalid_policies_raise(make: Callable[[], RetryPolicy], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_outcome_record_first_attempt() -> None:
    def record(receive_count: int) -> OutcomeRecord:
        return OutcomeRecord(Outcome.FAILED, "q", "h", "canary", "v1", "m-1", receive_count)

    assert record(1).first_attempt
    assert not record(2).first_attempt
    assert Outcome("succeeded") is Outcome.SUCCEEDED
    assert [o.value for o in Outcome] == [
        "succeeded",
        "failed",
        "retried",
        "rejected",
        "released",
    ]
