"""Threshold methods on distributions whose answer is known exactly."""

import math
import re

import numpy as np
import pytest

from training import threshold as thr

UNIFORM = np.arange(1, 1001, dtype=np.float64)  # 1, 2, ..., 1000


def test_mean_std_is_mean_plus_k_population_std():
    expected_std = math.sqrt((1000**2 - 1) / 12)  # population std of 1..n
    assert thr.mean_std(UNIFORM, 3) == pytest.approx(500.5 + 3 * expected_std, abs=1e-9)
    assert thr.mean_std(UNIFORM, 1) == pytest.approx(500.5 + expected_std, abs=1e-9)
    assert thr.mean_std(np.full(50, 2.5), 3) == 2.5


def test_mean_std_on_a_large_standard_normal_is_about_k():
    scores = np.random.default_rng(0).standard_normal(1_000_000)
    assert thr.mean_std(scores, 3) == pytest.approx(3.0, abs=0.01)


def test_percentile_interpolates_linearly():
    # position 0.99 * 999 = 989.01 between the values 990 and 991
    assert thr.percentile(UNIFORM, 99) == pytest.approx(990.01, abs=1e-9)
    assert thr.percentile(UNIFORM, 50) == pytest.approx(500.5, abs=1e-9)
    assert thr.percentile(UNIFORM, 100) == 1000.0


def test_alert_rate_flags_exactly_the_target_share():
    value = thr.alert_rate(UNIFORM, 0.01)
    assert value == 990.0
    assert (UNIFORM > value).sum() == 10
    assert thr.alert_rate(UNIFORM, 0.0) == 1000.0
    assert thr.alert_rate(UNIFORM, 0.0015) == 999.0  # floor(1.5) = 1 row may be flagged


def test_alert_rate_never_exceeds_the_target_with_ties():
    scores = np.array([1.0] * 90 + [5.0] * 10)
    value = thr.alert_rate(scores, 0.05)
    assert (scores > value).mean() <= 0.05
    assert value == 5.0


def test_max_f1_picks_the_best_observed_threshold():
    normal = np.arange(1, 11, dtype=np.float64)  # 1..10
    fraud = np.array([8.0, 11.0, 12.0])
    scores = np.concatenate([normal, fraud])
    labels = np.concatenate([np.zeros(10), np.ones(3)])
    # t=10 flags {11, 12}: tp 2, fp 0, fn 1 -> F1 0.8, better than t=7 (6/9) or t=8 (4/7)
    assert thr.max_f1(scores, labels) == 10.0
    # recall-heavy F-beta prefers catching the 8 too: t=7 flags 8, 9, 10, 8, 11, 12
    assert thr.max_f1(scores, labels, beta=3.0) == 7.0


def test_choose_threshold_reports_method_and_parameter():
    chosen = thr.choose_threshold("alert_rate", UNIFORM)
    assert chosen == thr.Threshold(value=990.0, method="alert_rate", parameter=0.01)
    assert chosen.to_dict() == {"value": 990.0, "method": "alert_rate", "parameter": 0.01}
    assert thr.choose_threshold("percentile", UNIFORM, 50).value == pytest.approx(500.5)
    labels = (UNIFORM > 990).astype(int)
    assert thr.choose_threshold("max_f1", UNIFORM, None, UNIFORM, labels).value == 990.0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: thr.choose_threshold("median", UNIFORM), "unknown threshold method"),
        (lambda: thr.choose_threshold("max_f1", UNIFORM), "labelled validation rows"),
        (lambda: thr.max_f1(UNIFORM, np.zeros(1000)), "at least one fraud"),
        (lambda: thr.mean_std(np.array([]), 3), "no normal scores"),
        (lambda: thr.mean_std(np.array([1.0, np.nan]), 3), "NaN"),
        (lambda: thr.percentile(UNIFORM, 101), "within [0, 100]"),
        (lambda: thr.alert_rate(UNIFORM, 1.0), "within [0, 1)"),
    ],
)
def test_invalid_requests_say_what_is_wrong(call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call()
