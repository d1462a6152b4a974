"""Loading training data into `Event`s (+ labels) and splitting it by time.

Two inputs, read by `fraudmon.core.eventfiles`: the project's event files (JSON lines or CSV, labels from a
ground-truth CSV `transaction_id,label,scenario`) and the public card-holder CSV (`Time,V1..V28,Amount,Class`).
Malformed input raises `InputDataError` naming the row and column, and so do empty files and columns without a
single number; rows with NaN/infinite values are counted per column and dropped (or refused).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fraudmon.core.errors import InputDataError
from fraudmon.core.eventfiles import Format, NonFinite, open_event_file, read_ground_truth
from fraudmon.core.events import Event

MIN_NORMAL_TRAIN_ROWS = 500


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
        """Where the labels come from, for messages: the `Class` column or the ground-truth file's `label`."""
        if self.source.get("format") == "creditcard":
            return f"column Class of {self.source.get('path')}"
        return f"column label of {self.source['truth']}" if self.source.get("truth") else "the labels"

    @property
    def timestamps(self) -> np.ndarray:
        return np.fromiter((e.timestamp_ms for e in self.events), np.int64, len(self.events))


@dataclass
class Split:
    """Row indices into a `Dataset`: train (normal-only when labelled) < validation < test, by time."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    normal_only: bool

    def summary(self, dataset: Dataset) -> dict[str, Any]:
        ts = dataset.timestamps
        out: dict[str, Any] = {"normal_only": self.normal_only}
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
    path: str | Path, truth: str | Path | None = None, fmt: Format = "auto", on_nonfinite: NonFinite = "drop"
) -> Dataset:
    """Read a data file (and its ground truth) into a `Dataset`; `source` records file, hash and drops."""
    path = Path(path)
    source = open_event_file(path, fmt=fmt, on_nonfinite=on_nonfinite)
    kind = "creditcard" if source.kind == "creditcard" else "events"
    if kind == "creditcard" and truth is not None:
        raise InputDataError("the card-holder CSV carries its labels in `Class`; drop --truth")
    tally = source.tally
    dataset = Dataset(list(source.events()), source.labels, None,
                      {"dropped_nonfinite": tally.dropped_rows, "dropped_detail": dict(tally.dropped)})
    if truth is not None:
        _attach_truth(dataset, Path(truth))
    dataset.source.update(path=str(path), sha256=sha256_file(path), format=kind, rows=len(dataset),
                          truth=None if truth is None else str(truth))
    return dataset


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


def time_split(
    dataset: Dataset,
    test_fraction: float = 0.3,
    val_fraction: float = 0.2,
    min_normal_train: int = MIN_NORMAL_TRAIN_ROWS,
    normal_only: bool | None = None,
) -> Split:
    """Past → train, its last `val_fraction` → validation, the last `test_fraction` by time → held-out test.

    With labels, training keeps normal rows only (validation and test keep everything); `normal_only=False`
    keeps every training row anyway (to repeat a split made before the labels were known).
    """
    if not (0 < test_fraction < 1 and 0 < val_fraction < 1):
        raise InputDataError("test and validation fractions must be within (0, 1)")
    order = np.argsort(dataset.timestamps, kind="stable")
    n_test = int(round(len(order) * test_fraction))
    past, test = order[: len(order) - n_test], order[len(order) - n_test :]
    n_val = int(round(len(past) * val_fraction))
    train, val = past[: len(past) - n_val], past[len(past) - n_val :]
    normal_only = dataset.labels is not None and normal_only is not False
    if normal_only:
        if not (dataset.labels == 0).any():
            raise InputDataError(_no_normal_rows(dataset))
        train = train[dataset.labels[train] == 0]
    if train.size < min_normal_train:
        kind = "normal " if normal_only else ""
        raise InputDataError(
            f"only {train.size} {kind}training rows after the time split (need at least {min_normal_train}); "
            f"provide more data or a smaller --test-fraction/--val-fraction"
        )
    if val.size == 0 or test.size == 0:
        raise InputDataError("the time split left no validation or test rows; provide more data")
    return Split(train=train, val=val, test=test, normal_only=normal_only)


def _no_normal_rows(dataset: Dataset) -> str:
    n = len(dataset.labels)
    return (
        f"no normal rows to train the autoencoder on: all {n} rows are labelled fraud ({dataset.label_origin}: "
        f"value 1 in {n} rows, value 0 in none; 1 = fraud, 0 = normal). The autoencoder learns what normal "
        "traffic looks like: pass data that also holds normal rows, or check that the labels are not inverted"
    )
