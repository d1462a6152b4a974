"""Feature drift: the batch binning and the sliding window against a row-by-row reference."""

import math

import numpy as np

from stream_app.drift import BINS, FeatureDrift, decile_bins


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
