"""Loading training data into `Event`s (+ labels), merging analysts' verdicts, and splitting it.

Three inputs, read by `fraudmon.core.eventfiles`: the project's event files (JSON lines or CSV, labels from a
ground-truth CSV `transaction_id,label,scenario`), the public card-holder CSV (`Time,V1..V28,Amount,Class`) and
any numeric feature table with a label column (`--format table`). Malformed input raises `InputDataError` naming
the row and column, and so do empty files and columns without a single number; rows with NaN/infinite values are
counted per column and dropped (or refused). The split is by time, or seeded random for a table without a time
column.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fraudmon.core.errors import InputDataError
from fraudmon.core.eventfiles import (
    Format,
    NonFinite,
    TableSpec,
    open_event_file,
    read_ground_truth,
    read_verdicts,
)
from fraudmon.core.events import Event

MIN_VARIANCE = 1e-6


@dataclass
class StandardScaler:
    """Column scaling fitted on training rows (float64); constant columns get standard deviation 1, so they keep
    their raw deviations. The autoencoder's graph and the baselines scale with it."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> StandardScaler:
        x = np.asarray(x, dtype=np.float64)
        variance = x.var(axis=0)
        return cls(x.mean(axis=0), np.sqrt(np.where(variance < MIN_VARIANCE, 1.0, variance)))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64) - self.mean) / self.std


MONEY_SPAN = 30.0
"""A column is money-shaped when its 99th percentile of |x| is at least this many times its typical non-zero |x|
(the median): it spans orders of magnitude, which standard scaling squeezes into a few outliers. On the
card-holder table the raw Amount spans 45 and the PCA components V1..V28 at most 20."""


@dataclass
class LogColumns:
    """The autoencoder's input transform before scaling: each money-shaped column (`MONEY_SPAN`) becomes
    `sign(x) log(1 + |x| / s)`, `s` its typical non-zero |x| (non-negative columns stay non-negative, signed ones
    keep their sign); the other columns pass unchanged. Chosen per column from the training rows."""

    log: np.ndarray
    """bool [n_features]: which columns are log-transformed."""
    scale: np.ndarray
    """float64 [n_features]: `s` of each column (1 for the others)."""

    @classmethod
    def fit(cls, x: np.ndarray) -> LogColumns:
        magnitude = np.abs(np.asarray(x, dtype=np.float64))
        log, scale = np.zeros(magnitude.shape[1], bool), np.ones(magnitude.shape[1])
        for j, column in enumerate(magnitude.T):
            nonzero = column[column > 0]
            if nonzero.size and np.unique(column).size > 2:
                typical = float(np.median(nonzero))
                if np.quantile(column, 0.99) >= MONEY_SPAN * typical:
                    log[j], scale[j] = True, typical
        return cls(log, scale)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return np.where(self.log, np.sign(x) * np.log(1 + np.abs(x) / self.scale), x)


def split_point(n: int, fraction: float) -> int:
    """Where the last `fraction` of `n` ordered rows begins: the validation slice of a fit, the held-out part."""
    return n - int(round(n * fraction))

MIN_NORMAL_TRAIN_ROWS = 500
VERDICT_SCENARIO = "verdict"
"""The scenario of a fraud known from an analyst's verdict only."""


@dataclass
class Dataset:
    """Events in file order, with labels (1 = fraud) and fraud scenarios when known."""

    events: list[Event]
    labels: np.ndarray | None = None
    scenarios: list[str] | None = None
    source: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.events)

    @property
    def rows_read(self) -> int:
        """Data rows in the file, including the ones dropped for NaN/infinite values."""
        return len(self.events) + int(self.source.get("dropped_nonfinite", 0))

    @property
    def label_origin(self) -> str:
        """Where the labels come from, for messages: the `Class` column, a table's label column, the ground-truth
        file's `label`, and analysts' verdicts."""
        source = self.source
        if source.get("format") == "creditcard":
            origin = f"column Class of {source.get('path')}"
        elif source.get("format") == "table":
            origin = f"column {source['label_column']} of {source.get('path')}"
        else:
            origin = f"column label of {source['truth']}" if source.get("truth") else "the labels"
        if source.get("verdicts"):
            origin = f"{origin}, with the verdicts of {source['verdicts']['path']}"
        return origin

    @property
    def split_mode(self) -> str:
        """`time` (train on the past), or `random` for a table without a time column."""
        return "random" if self.source.get("format") == "table" and not self.source.get("time_column") else "time"

    @property
    def timestamps(self) -> np.ndarray:
        return np.fromiter((e.timestamp_ms for e in self.events), np.int64, len(self.events))


@dataclass
class Split:
    """Row indices into a `Dataset`: train (normal-only when labelled) < validation < test, by time (or in a
    seeded random order). `past` is every row of the training part, frauds included (the supervised head's)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    normal_only: bool
    past: np.ndarray
    mode: str = "time"
    fallback: str | None = None
    """Why the split is not the one asked for (a time split that left a part without frauds), or None."""

    def summary(self, dataset: Dataset) -> dict[str, Any]:
        ts = dataset.timestamps
        out: dict[str, Any] = {"normal_only": self.normal_only, "mode": self.mode}
        if self.fallback:
            out["fallback"] = self.fallback
        for part in ("train", "val", "test"):
            rows = getattr(self, part)
            out[part] = {
                "rows": int(rows.size),
                "frauds": None if dataset.labels is None else int(dataset.labels[rows].sum()),
                "from_ms": int(ts[rows].min()) if rows.size else None,
                "to_ms": int(ts[rows].max()) if rows.size else None,
            }
        return out


def sha256_file(path: str | Path) -> str:
    """The file's SHA-256 (hex): the model card records it, and `evaluate` recognises the training data by it."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_dataset(
    path: str | Path, truth: str | Path | None = None, fmt: Format = "auto", on_nonfinite: NonFinite = "drop",
    table: TableSpec | None = None, verdicts: str | Path | None = None,
) -> Dataset:
    """Read a data file (and its ground truth, and analysts' verdicts on top) into a `Dataset`; `source` records
    file, hash, drops, and for a table its label, time and feature columns and the skipped ones."""
    path = Path(path)
    source = open_event_file(path, fmt=fmt, on_nonfinite=on_nonfinite, table=table)
    kind = source.kind if source.kind in ("creditcard", "table") else "events"
    if kind != "events" and truth is not None:
        where = "`Class`" if kind == "creditcard" else f"column {table.label_column}"
        raise InputDataError(f"{path} carries its labels in {where}; drop --truth")
    tally = source.tally
    dataset = Dataset(list(source.events()), source.labels, None,
                      {"dropped_nonfinite": tally.dropped_rows, "dropped_detail": dict(tally.dropped)})
    if source.table is not None:
        data = source.table
        dataset.scenarios = [t.scenario if t.label else "" for t in data.ground_truth()]
        dataset.source.update(label_column=data.spec.label_column, fraud_value=data.spec.fraud_value,
                              time_column=data.spec.time_column, features=list(data.features), skipped=data.skipped)
    if truth is not None:
        _attach_truth(dataset, Path(truth))
    dataset.source.update(path=str(path), sha256=sha256_file(path), format=kind, rows=len(dataset),
                          truth=None if truth is None else str(truth))
    if verdicts is not None:
        merge_verdicts(dataset, Path(verdicts))
    return dataset


def merge_verdicts(dataset: Dataset, path: Path) -> None:
    """Analysts' verdicts override the labels of their transactions (the last verdict on one wins); without
    labels, the rows no verdict names count as normal. `source["verdicts"]` says what changed."""
    verdicts = read_verdicts(path)
    index = {event.transaction_id: i for i, event in enumerate(dataset.events)}
    known = [v for v in verdicts if v.transaction_id in index]
    if not known:
        raise InputDataError(f"none of the {len(verdicts)} verdicts in {path} names a transaction of "
                             f"{dataset.source['path']} (e.g. {verdicts[0].transaction_id}); pass the verdicts on "
                             "these events")
    n = len(dataset)
    labels = np.zeros(n, np.int8) if dataset.labels is None else dataset.labels.copy()
    scenarios = list(dataset.scenarios) if dataset.scenarios is not None else \
        [VERDICT_SCENARIO if label else "" for label in labels.tolist()]
    before = labels.copy()
    for verdict in known:
        i = index[verdict.transaction_id]
        labels[i] = verdict.label == "fraud"
        scenarios[i] = (scenarios[i] or VERDICT_SCENARIO) if labels[i] else ""
    dataset.labels, dataset.scenarios = labels, scenarios
    dataset.source["verdicts"] = {
        "path": str(path), "read": len(verdicts), "unknown_transactions": len(verdicts) - len(known),
        "fraud": sum(v.label == "fraud" for v in known), "legit": sum(v.label == "legit" for v in known),
        "labels_changed": int((labels != before).sum()),
    }


def _attach_truth(dataset: Dataset, path: Path) -> None:
    truth = {t.transaction_id: (t.label, t.scenario) for t in read_ground_truth(path)}
    unlabelled = [e.transaction_id for e in dataset.events if e.transaction_id not in truth]
    if unlabelled:
        raise InputDataError(
            f"{len(unlabelled)} events have no row in {path} (e.g. {unlabelled[0]}); pass the matching ground truth"
        )
    pairs = [truth[e.transaction_id] for e in dataset.events]
    dataset.labels = np.array([label for label, _ in pairs], dtype=np.int8)
    dataset.scenarios = [scenario if label else "" for label, scenario in pairs]


def split_dataset(
    dataset: Dataset,
    test_fraction: float = 0.3,
    val_fraction: float = 0.2,
    min_normal_train: int = MIN_NORMAL_TRAIN_ROWS,
    normal_only: bool | None = None,
    seed: int = 42,
) -> Split:
    """Past → train, its last `val_fraction` → validation, the last `test_fraction` → held-out test, in time
    order (or, for a table without a time column, in an order shuffled with `seed`).

    With labels, training keeps normal rows only (validation and test keep everything); `normal_only=False`
    keeps every training row anyway (to repeat a split made before the labels were known). When a time split
    leaves the validation or held-out part without a fraud while the data holds some, the split falls back to
    the seeded random order and `fallback` says why.
    """
    if not (0 < test_fraction < 1 and 0 < val_fraction < 1):
        raise InputDataError("test and validation fractions must be within (0, 1)")
    mode, fallback = dataset.split_mode, None
    order = np.random.default_rng(seed).permutation(len(dataset)) if mode == "random" else \
        np.argsort(dataset.timestamps, kind="stable")
    test, train, val = _cut(order, test_fraction, val_fraction)
    labels = dataset.labels
    if mode == "time" and labels is not None and labels.any():
        empty = [name for name, rows in (("validation", val), ("held-out", test)) if not labels[rows].any()]
        if empty:
            mode = "random"
            fallback = (f"the time split left the {' and '.join(empty)} part without frauds ("
                        f"{int(labels.sum())} frauds in all, {int(labels[train].sum())} of them in the training "
                        f"part): split at random with seed {seed} instead; the held-out figures are not on later "
                        "data")
            test, train, val = _cut(np.random.default_rng(seed).permutation(len(dataset)), test_fraction,
                                    val_fraction)
    period = train
    normal_only = dataset.labels is not None and normal_only is not False
    if normal_only:
        if not (dataset.labels == 0).any():
            raise InputDataError(_no_normal_rows(dataset))
        train = train[dataset.labels[train] == 0]
    if train.size < min_normal_train:
        kind = "normal " if normal_only else ""
        raise InputDataError(
            f"only {train.size} {kind}training rows after the {mode} split (need at least {min_normal_train}); "
            f"provide more data or a smaller --test-fraction/--val-fraction"
        )
    if val.size == 0 or test.size == 0:
        raise InputDataError(f"the {mode} split left no validation or test rows; provide more data")
    return Split(train=train, val=val, test=test, normal_only=normal_only, past=period, mode=mode,
                 fallback=fallback)


def _cut(order: np.ndarray, test_fraction: float, val_fraction: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Held-out test (the last `test_fraction` of `order`), then training and validation from the rest."""
    cut = split_point(len(order), test_fraction)
    past, test = order[:cut], order[cut:]
    cut = split_point(len(past), val_fraction)
    return test, past[:cut], past[cut:]


def _no_normal_rows(dataset: Dataset) -> str:
    n = len(dataset.labels)
    return (
        f"no normal rows to train the autoencoder on: all {n} rows are labelled fraud ({dataset.label_origin}: "
        f"value 1 in {n} rows, value 0 in none; 1 = fraud, 0 = normal). The autoencoder learns what normal "
        "traffic looks like: pass data that also holds normal rows, or check that the labels are not inverted"
    )
