"""Loading training data into `Event`s (+ labels) and splitting it by time.

Two inputs: the project's event files (JSON lines or CSV, labels from a ground-truth CSV
`transaction_id,label,scenario`) and the public card-holder CSV (`Time,V1..V28,Amount,Class`). Malformed input
raises `InputDataError` naming the row and column, and so do empty files and columns without a single number;
other NaN/infinite values are counted per column and their rows dropped (or refused).
"""

from __future__ import annotations

import csv
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from fraudmon.core.errors import InputDataError
from fraudmon.core.events import FILE_LIMITS, Event, InvalidEvent, event_from_dict
from fraudmon.tools.produce import (
    CREDITCARD_COLUMNS,
    DEFAULT_BASE_TIME,
    creditcard_event,
    is_json_lines,
    read_event_rows,
)
from training.simulate import read_ground_truth

EVENT_REQUIRED = ("transaction_id", "account_id", "amount", "timestamp")
MIN_NORMAL_TRAIN_ROWS = 500

Format = Literal["auto", "events", "creditcard"]
OnNonFinite = Literal["drop", "raise"]


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
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def detect_format(path: Path) -> Literal["events", "creditcard"]:
    """`creditcard` when a CSV header has `Time`, `Amount` and `V1`; `events` otherwise."""
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        return "events"
    with path.open(newline="") as handle:
        header = next(csv.reader(handle), [])
    return "creditcard" if {"Time", "Amount", "V1"} <= set(header) else "events"


def load_dataset(
    path: str | Path, truth: str | Path | None = None, fmt: Format = "auto", on_nonfinite: OnNonFinite = "drop"
) -> Dataset:
    """Read a data file (and its ground truth) into a `Dataset`; `source` records file, hash and drops."""
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"data file {path} does not exist")
    if _is_blank(path):
        raise InputDataError(
            f"{path} is empty ({path.stat().st_size} bytes, no header and no rows); pass events as JSON lines or a "
            f"CSV with the columns {','.join(EVENT_REQUIRED)}, or the card-holder CSV (Time,V1..V28,Amount,Class)"
        )
    kind = detect_format(path) if fmt == "auto" else fmt
    if kind == "creditcard":
        if truth is not None:
            raise InputDataError("the card-holder CSV carries its labels in `Class`; drop --truth")
        dataset = _load_creditcard(path, on_nonfinite)
    elif kind == "events":
        dataset = _load_events(path, on_nonfinite)
    else:
        raise InputDataError(f"unknown data format {fmt!r}: use auto, events or creditcard")
    if dataset.rows_read == 0:
        raise InputDataError(f"{path} has a header but no data rows; add the rows below the header")
    if not dataset.events:
        raise InputDataError(f"all {dataset.rows_read} rows of {path} hold NaN or infinite values "
                             f"({_counts(dataset.source['dropped_detail'])}); fix the file")
    if truth is not None:
        _attach_truth(dataset, Path(truth))
    dataset.source.update(path=str(path), sha256=sha256_file(path), format=kind, rows=len(dataset),
                          truth=None if truth is None else str(truth))
    return dataset


def _is_blank(path: Path) -> bool:
    """Zero bytes or only whitespace (read until the first other byte, so a big file costs one block)."""
    with path.open("rb") as handle:
        return not any(block.strip() for block in iter(lambda: handle.read(1 << 16), b""))


def _counts(detail: dict[str, int]) -> str:
    return ", ".join(f"{name}: {n}" for name, n in detail.items())


def _check_nonfinite(
    path: Path, rows_read: int, bad_rows: int, detail: dict[str, int], first: str, on_nonfinite: OnNonFinite
) -> None:
    """Refuse columns without a single number (dropping would leave no row), and any NaN/inf row if asked to.

    `detail` counts the NaN/inf/empty cells per column, `first` says where the first such row is.
    """
    empty = [name for name, n in detail.items() if n == rows_read]
    if empty:
        others = {name: n for name, n in detail.items() if name not in empty}
        raise InputDataError(
            f"{path}: {'column' if len(empty) == 1 else 'columns'} "
            f"{', '.join(f'{name} ({detail[name]} NaN/empty)' for name in empty)} "
            f"{'holds' if len(empty) == 1 else 'hold'} no number in any of the {rows_read} rows, so dropping the "
            f"NaN rows would leave nothing to train on"
            + (f" (other columns with NaN/inf cells: {_counts(others)})" if others else "")
            + "; fill the column with numbers, or remove it if it is an optional features.<name> column"
        )
    if bad_rows and on_nonfinite == "raise":
        raise InputDataError(f"{path}: {bad_rows} rows hold NaN or infinite values ({_counts(detail)}), the first "
                             f"at {first}; fix or drop them")


def _load_creditcard(path: Path, on_nonfinite: OnNonFinite) -> Dataset:
    try:
        frame = pd.read_csv(path, low_memory=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise InputDataError(f"{path} is not a readable CSV: {exc}") from None
    missing = [c for c in CREDITCARD_COLUMNS if c not in frame.columns]
    if missing:
        raise InputDataError(f"{path} lacks the card-holder columns {', '.join(missing)}")
    columns = [*CREDITCARD_COLUMNS, *(["Class"] if "Class" in frame.columns else [])]
    values = np.empty((len(frame), len(columns)), dtype=np.float64)
    for j, name in enumerate(columns):
        values[:, j] = _numeric_column(path, frame[name], name)
    bad_cells = ~np.isfinite(values)
    bad_rows = bad_cells.any(axis=1)
    detail = _detail(bad_cells, columns)
    first = f"line {int(np.argmax(bad_rows)) + 2}" if bad_rows.any() else ""
    _check_nonfinite(path, len(frame), int(bad_rows.sum()), detail, first, on_nonfinite)
    keep = np.flatnonzero(~bad_rows)
    labels = None
    if "Class" in columns:
        labels = values[keep, -1]
        wrong = np.flatnonzero((labels != 0) & (labels != 1))
        if wrong.size:
            row = int(keep[wrong[0]])
            raise InputDataError(f"{path} line {row + 2}, column Class: {labels[wrong[0]]:g} is not 0 or 1")
        labels = labels.astype(np.int8)
    amounts = values[:, len(CREDITCARD_COLUMNS) - 1]
    base_ms = int(DEFAULT_BASE_TIME.timestamp() * 1000)
    events = [creditcard_event(i, values[i, : len(CREDITCARD_COLUMNS)], base_ms) for i in keep.tolist()]
    negative = np.flatnonzero(amounts[keep] < 0)
    if negative.size:
        raise InputDataError(f"{path} line {int(keep[negative[0]]) + 2}, column Amount: must be >= 0")
    return Dataset(events, labels, None, {"dropped_nonfinite": int(bad_rows.sum()), "dropped_detail": detail})


def _detail(bad_cells: np.ndarray, columns: list[str]) -> dict[str, int]:
    return {columns[j]: int(n) for j, n in enumerate(bad_cells.sum(axis=0)) if n}


def _numeric_column(path: Path, column: pd.Series, name: str) -> np.ndarray:
    """Floats of a column; empty cells become NaN, anything else non-numeric is an error naming the row."""
    converted = pd.to_numeric(column, errors="coerce")
    wrong = converted.isna() & column.notna() & (column.astype(str).str.strip().str.lower() != "nan")
    if wrong.any():
        row = int(np.flatnonzero(wrong.to_numpy())[0])
        raise InputDataError(f"{path} line {row + 2}, column {name}: {str(column.iloc[row])[:40]!r} is not a number")
    return converted.to_numpy(dtype=np.float64)


def _is_nonfinite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def _load_events(path: Path, on_nonfinite: OnNonFinite) -> Dataset:
    if not is_json_lines(path):
        with path.open(newline="", encoding="utf-8-sig") as handle:
            header = next(csv.reader(handle), [])
        missing = [c for c in EVENT_REQUIRED if c not in header]
        if missing:
            raise InputDataError(f"{path} lacks the event columns {', '.join(missing)} (has: {', '.join(header)})")
    events: list[Event] = []
    dropped: dict[str, int] = {}
    rows = 0
    first = ""
    for where, row in read_event_rows(path):
        rows += 1
        bad = [k for k, v in row.items() if k != "features" and _is_nonfinite(v)]
        features = row.get("features")
        if isinstance(features, dict):
            bad += [f"features.{k}" for k, v in features.items() if _is_nonfinite(v)]
        if bad:
            first = first or where.removeprefix(f"{path} ")
            for name in bad:
                dropped[name] = dropped.get(name, 0) + 1
            continue
        try:
            events.append(event_from_dict(row, FILE_LIMITS))
        except InvalidEvent as exc:
            raise InputDataError(f"{where}: {exc}") from None
    _check_nonfinite(path, rows, rows - len(events), dropped, first, on_nonfinite)
    return Dataset(events, source={"dropped_nonfinite": rows - len(events), "dropped_detail": dropped})


def _attach_truth(dataset: Dataset, path: Path) -> None:
    if path.is_file() and _is_blank(path):
        raise InputDataError(f"ground-truth file {path} is empty; it needs the header transaction_id,label,scenario "
                             "and one row per event (label 1 = fraud, 0 = normal)")
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
