"""Feature drift: the batch binning and the sliding window against a row-by-row reference; the clock features
left out."""

import math
from datetime import timedelta

import numpy as np

from stream_app.drift import BINS, FeatureDrift, decile_bins, is_clock_feature
from stream_app.features import vectorize
from stream_app.scoring import load_model
from tests.conftest import PROJECT_ROOT
from training.simulate import SimulationConfig, simulate


class _Card:
    """The two things `FeatureDrift` reads from a model card."""

    def __init__(self, deciles: dict[str, list[float]]) -> None:
        self.feature_names = (*deciles, "not_tracked")
        self._quantiles = {name: {"deciles": edges, "shares": [0.1] * BINS} for name, edges in deciles.items()}

    def get(self, key: str):
        return self._quantiles if key == "feature_quantiles" else None


def _reference_psi(rows: np.ndarray, deciles: np.ndarray) -> np.ndarray:
    """PSI per feature of `rows` against shares of 0.1, binned one value at a time with searchsorted."""
    psi = []
    for j, edges in enumerate(deciles):
        counts = np.zeros(BINS)
        for value in rows[:, j]:
            counts[np.searchsorted(edges, value, side="right")] += 1
        observed = np.maximum(counts / len(rows), 1e-4)
        psi.append(float(((observed - 0.1) * np.log(observed / 0.1)).sum()))
    return np.array(psi)


def test_decile_bins_count_the_deciles_at_or_below_each_value_as_searchsorted_does():
    rng = np.random.default_rng(3)
    deciles = np.sort(rng.normal(size=(4, BINS - 1)), axis=1)
    deciles[3] = [0.0] * 5 + [1.0] * 4  # repeated deciles: a feature with few values
    x = rng.normal(size=(500, 4))
    x[:20] = deciles[:, :1].T  # values equal to a decile go above it
    x[20:25, 1] = np.nan
    x[25:30, 2] = np.inf
    x[30:35, 0] = -np.inf
    expected = np.stack([np.searchsorted(deciles[j], x[:, j], side="right") for j in range(4)], axis=1)
    got = decile_bins(deciles, x.astype(np.float32).astype(np.float64))
    assert got.dtype == np.int8 and got.shape == x.shape
    assert np.array_equal(got, np.stack([np.searchsorted(deciles[j], x[:, j].astype(np.float32).astype(np.float64),
                                                         side="right") for j in range(4)], axis=1))
    assert np.array_equal(decile_bins(deciles, x), expected)


def test_the_window_keeps_the_last_events_across_batches_of_every_size():
    rng = np.random.default_rng(5)
    edges = {"a": list(np.linspace(-2, 2, BINS - 1)), "b": list(np.linspace(0, 8, BINS - 1))}
    drift = FeatureDrift(_Card(edges), window=100)
    assert drift.features == ["a", "b"]
    seen = []
    for size in (1, 2, 7, 40, 150, 3, 99):
        batch = np.column_stack([rng.normal(size=size), rng.exponential(3, size=size), rng.normal(size=size)])
        drift.observe(batch.astype(np.float32))
        seen.extend(batch.astype(np.float32))
        window = np.array(seen[-100:])
        if len(window) >= 10:
            psi = drift.psi()
            reference = _reference_psi(window[:, :2].astype(np.float64), np.array([edges["a"], edges["b"]]))
            assert all(math.isclose(psi[name], reference[j], abs_tol=1e-12) for j, name in enumerate("ab"))
    assert drift._counts.sum() == 100 * 2


def test_clock_features_are_left_out_and_a_healthy_window_of_minutes_does_not_drift():
    """The issue's case: 5,000 events over ten minutes of one day gave hour_sin, hour_cos, dow_sin and dow_cos a
    PSI of 5-8 against training that spans every hour and weekday. They are left out; the other features of the
    same healthy window stay under the alert's 0.25, and a real shift (amounts ten times larger) still shows."""
    model = load_model(PROJECT_ROOT / "models" / "default.onnx")
    clock = [name for name in model.feature_names if is_clock_feature(name)]
    assert clock == ["hour_sin", "hour_cos", "dow_sin", "dow_cos"]
    events, _ = simulate(SimulationConfig(n_events=5000, n_accounts=2000, duration=timedelta(minutes=10), seed=9))
    x = vectorize(events, model.feature_names)
    drift = FeatureDrift(model.card, window=5000)
    assert not set(drift.features) & set(clock) and len(drift.features) == len(model.feature_names) - len(clock)
    drift.observe(x)
    psi = drift.psi()
    assert set(psi) == set(drift.features) and max(psi.values()) < 0.25, psi
    quantiles = model.card.get("feature_quantiles")["hour_sin"]
    hour_bins = np.bincount(decile_bins(np.array([quantiles["deciles"]]), x[:, [model.feature_names.index(
        "hour_sin")]].astype(np.float64))[:, 0], minlength=BINS) / len(x)
    expected = np.maximum(quantiles["shares"], 1e-4)
    observed = np.maximum(hour_bins, 1e-4)
    assert ((observed - expected) * np.log(observed / expected)).sum() > 0.25, "the clock features would cry wolf"
    shifted = x.copy()
    shifted[:, model.feature_names.index("amount_log")] += np.log(10.0)
    drift.observe(shifted)
    assert drift.psi()["amount_log"] > 0.25
