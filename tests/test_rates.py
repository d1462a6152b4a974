"""One convention for precision and recall: None (shown `-`) over nothing, the plain ratio otherwise."""

from fraudmon.core.rates import precision, rate, recall, shown


def test_a_rate_over_nothing_is_none_and_shown_as_a_dash() -> None:
    assert precision(0, 0) is None and recall(0, 0) is None and rate(3, 0) is None
    assert shown(None) == "-"


def test_rates_are_plain_ratios() -> None:
    assert precision(1, 4) == 0.25 and recall(3, 4) == 0.75 and rate(0, 5) == 0.0
    assert shown(0.39412) == "0.394" and shown(1.0, 2) == "1.00"
