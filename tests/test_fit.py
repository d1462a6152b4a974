"""Whether a model fits the traffic it scores (`stream_app.fit`): the issue's cases, the bounds, and the CLI."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from typer.testing import CliRunner

from fraudmon.cli import app
from fraudmon.core.eventfiles import read_events_file
from stream_app.features import vectorize
from stream_app.fit import MIN_EVENTS, MIN_SCORED, events_problem, scores_problem
from stream_app.scoring import load_model
from tests.conftest import CREDITCARD, PROJECT_ROOT, needs_creditcard
from training.simulate import SimulationConfig, simulate

pytestmark = needs_creditcard


@pytest.fixture(scope="module")
def served():
    return load_model(PROJECT_ROOT / "models" / "default.onnx")


@pytest.fixture(scope="module")
def cardholder_events():
    return read_events_file(CREDITCARD)[0][:2000]


@pytest.fixture(scope="module")
def simulated_events():
    return simulate(SimulationConfig(n_events=2000, n_accounts=300, fraud_rate=0.05, seed=21))[0]


def test_the_simulator_model_does_not_fit_card_holder_events(served, cardholder_events):
    """The issue's replay: the served model flagged 9,528 of 9,528 rows at precision 0.004, with no warning."""
    problem = events_problem(served, cardholder_events[:500])
    assert problem is not None and problem.startswith(f"model default ({served.version}) does not fit")
    assert "channel in 500 of 500" in problem and "missing" in problem and "account_age_days in 500 of 500" in problem
    assert "28 features it does not read (V1, V2, V3, V4, ...)" in problem
    scores, _ = served.score(vectorize(cardholder_events, served.feature_names))
    flagged = scores_problem(served, scores)
    assert flagged is not None and f"flags {int((scores > served.threshold).sum())} of 2000 events" in flagged


def test_the_simulator_model_fits_simulated_traffic_with_five_percent_fraud(served, simulated_events):
    assert events_problem(served, simulated_events) is None
    scores, _ = served.score(vectorize(simulated_events, served.feature_names))
    assert 0.02 < (scores > served.threshold).mean() < 0.2, "a fraud-heavy sample flags well over the card's rate"
    assert scores_problem(served, scores) is None


def test_too_few_events_are_not_judged_but_missing_features_always_are(served, cardholder_events, tmp_path):
    assert events_problem(served, cardholder_events[:MIN_EVENTS - 1]) is None
    assert events_problem(served, cardholder_events[:MIN_EVENTS]) is not None
    from tests.test_export import tiny_model

    _, _, onnx_path, _ = tiny_model(tmp_path)  # reads features.V1..V4, which simulated events lack
    events = simulate(SimulationConfig(n_events=50, n_accounts=40, seed=3))[0][:3]
    problem = events_problem(load_model(onnx_path), events)
    assert problem is not None and "needs 4 precomputed features" in problem


def test_the_alert_rate_bound(served):
    """Twenty times the card's rate and at least a fifth of the events, on at least 200 scores."""
    assert 20 * served.card.expected_alert_rate < 0.2, "the default card's bound is the fifth"
    over, under = served.threshold * 2, served.threshold / 2

    def scores(flags: int, n: int) -> np.ndarray:
        return np.array([over] * flags + [under] * (n - flags) + [np.nan] * 7)

    assert scores_problem(served, scores(MIN_SCORED - 1, MIN_SCORED - 1)) is None, "too few to judge"
    assert scores_problem(served, scores(40, 200)) is None
    problem = scores_problem(served, scores(41, 200))
    assert problem is not None and "flags 41 of 200 events (alert rate 0.2050, its card expects 0.0049)" in problem


def test_event_supplied_names_are_escaped(served, cardholder_events):
    events = [dataclasses.replace(e, features={"\u202eevil\nline": 1.0, **e.features}) for e in cardholder_events[:300]]
    problem = events_problem(served, events)
    assert "\u202e" not in problem and "\n" not in problem and "'\\u202eevil\\nline'" in problem


def test_replay_fails_loudly_when_the_model_does_not_fit(tmp_path):
    """`fraudmon replay` of the card-holder sample with the simulator's model: the backtest is printed, then why it
    is void, exit 1."""
    from fraudmon.core.eventfiles import write_events

    events = read_events_file(CREDITCARD)[0][:600]
    write_events(tmp_path / "cc.jsonl", events)
    result = CliRunner().invoke(app, ["replay", str(tmp_path / "cc.jsonl")])
    assert result.exit_code == 1, result.output
    assert "decisions 600" in result.output and "Traceback" not in result.output
    assert "error: model default" in result.output and "does not fit these events" in result.output
    assert "flags 600 of 600 events" in result.output


def test_evaluate_says_the_model_does_not_fit_and_exits_1(tmp_path) -> None:
    """The simulator's model on the card-holder CSV: the report is written, then the reason, exit 1."""
    result = CliRunner().invoke(app, ["evaluate", "--data", str(CREDITCARD), "--report-dir", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert "does not fit these events" in result.output and "(the figures above are void)" in result.output
    assert "does not fit" in (tmp_path / "report.md").read_text()
