"""Feature drift: how far the served traffic's features have moved from the data the model was trained on.

The model card lists each feature's training deciles and the share of training rows in each of the ten bins they
bound (`feature_quantiles`). Over a sliding window of recent events, the Population Stability Index per feature is
sum((observed - expected) * ln(observed / expected)) over the bins: below 0.1 is stable, 0.1-0.25 a moderate
shift, above 0.25 a large one (alert `FraudFeatureDrift`).

The clock features (hour of day and day of week: `hour_sin`, `hour_cos`, `dow_sin`, `dow_cos`, every feature of
a field of kind `hour` or `weekday`) are left out. A window of 5,000 events covers seconds to an hour of traffic,
so they hold one or two hours and one weekday against a training set that spans every hour and weekday: their
PSI is large (5-8) on any healthy stream. A fair comparison would hold the window against the training rows of
the same hours and weekday, which is the window's own distribution by construction and would say nothing.
Traffic whose mix moves with the clock still shows in the other features (amount, channel, ...), and a wrong
clock in the timestamps shows in `fraud_end_to_end_seconds` and in refused events.
"""

from __future__ import annotations

import numpy as np

from fraudmon.core.modelcard import ModelCard
from stream_app.features import FIELD_KINDS, field_of

BINS = 10
MAX_FEATURES = 64  # label cardinality of fraud_feature_psi is bounded by the model's first 64 features
EPSILON = 1e-4  # an empty bin counts as this share, so the logarithm stays finite
CLOCK_KINDS = ("hour", "weekday")


def is_clock_feature(name: str) -> bool:
    """Whether a feature encodes the event's time of day or day of week (left out of drift, see above)."""
    return FIELD_KINDS.get(field_of(name)) in CLOCK_KINDS


def decile_bins(deciles: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Each value's bin among its feature's deciles (`deciles [features, BINS - 1]`, `x [rows, features]`): the
    number of deciles at or below it, as `searchsorted(side="right")` counts (NaN in the last bin), `[rows,
    features]` int8. One comparison for a whole batch: a call per feature cost more than the rest for small ones."""
    values = np.asarray(x, dtype=np.float64).T[:, :, None]  # [features, rows, 1]
    bins = (deciles[:, None, :] <= values).sum(axis=2, dtype=np.int8)
    bins[np.isnan(values[:, :, 0])] = BINS - 1
    return bins.T


class FeatureDrift:
    """PSI per feature over the last `window` events, against the card's training deciles (clock features left
    out)."""

    def __init__(self, card: ModelCard, window: int) -> None:
        quantiles = card.get("feature_quantiles") or {}
        self.features = [name for name in card.feature_names
                         if name in quantiles and not is_clock_feature(name)][:MAX_FEATURES]
        self._columns = [card.feature_names.index(name) for name in self.features]
        self._deciles = np.asarray([quantiles[name]["deciles"] for name in self.features],
                                   dtype=np.float64).reshape(len(self.features), BINS - 1)
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
        bins = decile_bins(self._deciles, x[-len(self._bins):, self._columns])
        window, rows = len(self._bins), len(bins)
        slots = (self._next + np.arange(rows)) % window
        replaced = np.arange(rows) >= window - self._filled  # slots that still hold an older event
        if replaced.any():
            self._counts -= self._tally(self._bins[slots[replaced]])
        self._bins[slots] = bins
        self._counts += self._tally(bins)
        self._next = (self._next + rows) % window
        self._filled = min(window, self._filled + rows)

    def _tally(self, bins: np.ndarray) -> np.ndarray:
        """How many rows of `bins [rows, features]` fall in each (feature, bin): `[features, BINS]`."""
        cells = (bins + np.arange(len(self.features)) * BINS).ravel()
        return np.bincount(cells, minlength=len(self.features) * BINS).reshape(len(self.features), BINS)

    def psi(self) -> dict[str, float]:
        """PSI per feature over the window (empty until the window holds a tenth of its size)."""
        if self._filled < max(1, len(self._bins) // 10):
            return {}
        observed = np.maximum(self._counts / self._filled, EPSILON)
        values = ((observed - self._expected) * np.log(observed / self._expected)).sum(axis=1)
        return dict(zip(self.features, values.tolist(), strict=True))
