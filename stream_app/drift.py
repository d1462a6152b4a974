"""Feature drift: how far the served traffic's features have moved from the data the model was trained on.

The model card lists each feature's training deciles and the share of training rows in each of the ten bins they
bound (`feature_quantiles`). Over a sliding window of recent events, the Population Stability Index per feature is
sum((observed - expected) * ln(observed / expected)) over the bins: below 0.1 is stable, 0.1-0.25 a moderate
shift, above 0.25 a large one (alert `FraudFeatureDrift`).
"""

from __future__ import annotations

import numpy as np

from fraudmon.core.modelcard import ModelCard

BINS = 10
MAX_FEATURES = 64  # label cardinality of fraud_feature_psi is bounded by the model's first 64 features
EPSILON = 1e-4  # an empty bin counts as this share, so the logarithm stays finite


class FeatureDrift:
    """PSI per feature over the last `window` events, against the card's training deciles."""

    def __init__(self, card: ModelCard, window: int) -> None:
        quantiles = card.get("feature_quantiles") or {}
        self.features = [name for name in card.feature_names if name in quantiles][:MAX_FEATURES]
        self._columns = [card.feature_names.index(name) for name in self.features]
        self._edges = [np.asarray(quantiles[name]["deciles"], dtype=np.float64) for name in self.features]
        self._expected = np.maximum(
            np.asarray([quantiles[name]["shares"] for name in self.features], dtype=np.float64).reshape(-1, BINS),
            EPSILON)
        self._bins = np.zeros((window, len(self.features)), dtype=np.int8)
        self._counts = np.zeros((len(self.features), BINS), dtype=np.int64)
        self._next = 0
        self._filled = 0

    def observe(self, x: np.ndarray) -> None:
        """Add a batch of feature rows `[n, n_features]` (as the model saw them) to the window."""
        if not self.features or len(x) == 0:
            return
        x = x[-len(self._bins):]
        bins = np.stack([np.searchsorted(edges, x[:, column], side="right")
                         for edges, column in zip(self._edges, self._columns, strict=True)], axis=1).astype(np.int8)
        window, rows = len(self._bins), len(bins)
        slots = (self._next + np.arange(rows)) % window
        features = np.broadcast_to(np.arange(len(self.features)), bins.shape)
        replaced = np.arange(rows) >= window - self._filled  # slots that still hold an older event
        if replaced.any():
            np.add.at(self._counts, (features[replaced], self._bins[slots[replaced]]), -1)
        self._bins[slots] = bins
        np.add.at(self._counts, (features, bins), 1)
        self._next = (self._next + rows) % window
        self._filled = min(window, self._filled + rows)

    def psi(self) -> dict[str, float]:
        """PSI per feature over the window (empty until the window holds a tenth of its size)."""
        if self._filled < max(1, len(self._bins) // 10):
            return {}
        observed = np.maximum(self._counts / self._filled, EPSILON)
        values = ((observed - self._expected) * np.log(observed / self._expected)).sum(axis=1)
        return dict(zip(self.features, values.tolist(), strict=True))
