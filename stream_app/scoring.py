"""The serving adapter: an ONNX model (autoencoder, with or without a supervised head) and its model card,
checked against each other at load, and the explanation of a score in an analyst's terms.

onnxruntime and numpy only (no TensorFlow). `load_model` refuses anything that would score wrongly: a missing
or corrupt file, a card that does not belong to the graph, a graph whose width differs from the card.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import onnxruntime as ort

from fraudmon.core.errors import ModelError
from fraudmon.core.events import Event
from fraudmon.core.modelcard import (
    DRIVERS,
    ONNX_CONTRIBUTIONS,
    ONNX_INPUT,
    ONNX_OUTPUTS,
    FieldCard,
    ModelCard,
    read_card,
)
from stream_app.features import FIELD_KINDS, field_reader, fields_of

EXPLAINED = 3  # fields a decision names at most


class Prediction(NamedTuple):
    """What a detector says about a batch, in alibi-detect's terms."""

    is_outlier: np.ndarray  # bool [n]: score above the card's threshold
    instance_score: np.ndarray  # float32 [n]: the anomaly score
    feature_score: np.ndarray  # float32 [n, f]: per-feature error, the explanation of a score
    driver: np.ndarray | None = None  # int [n], index into DRIVERS: the part that adds most to each score; None
    # when the graph does not say (a supervised part exported before `score_contributions`)

    def drivers(self) -> list[str | None]:
        """Per row, the part that drove its score: `autoencoder` (unusual for normal traffic), `supervised` (looks
        like past fraud), or None when the graph does not say."""
        if self.driver is None:
            return [None] * len(self.instance_score)
        return [DRIVERS[i] for i in self.driver.tolist()]


class TopField(NamedTuple):
    """One field of an explanation: its feature with the largest error, and the error summed over its features."""

    field: str
    name: str
    error: float


class TopFields(NamedTuple):
    """The top fields of a batch of explanations, largest first: field indices (into `OnnxModel.fields`), each
    field's feature with the largest error (index into the card's feature names) and the field's summed error."""

    field: np.ndarray  # int [n, k]
    feature: np.ndarray  # int [n, k]
    error: np.ndarray  # float64 [n, k]


def _session_options() -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # small batches: threads cost more than they save
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options


@dataclass
class OnnxModel:
    """A loaded, checked model: `score` a float32 batch `[n, f]` into scores `[n]` and feature errors `[n, f]`."""

    session: ort.InferenceSession = field(repr=False)
    card: ModelCard = field(repr=False)
    path: Path

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def version(self) -> str:
        return self.card.version

    @property
    def feature_names(self) -> list[str]:
        return list(self.card.feature_names)

    @property
    def threshold(self) -> float:
        return self.card.threshold.value

    def _checked(self, x: np.ndarray) -> np.ndarray:
        """`x` as the graph's float32 `[n, f]` input, or a `ModelError` naming the shapes."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        width = self.card.n_features
        if x.ndim != 2 or x.shape[1] != width:
            raise ModelError(f"model {self.name} takes [n, {width}] features, got shape {list(x.shape)}")
        return x

    def score(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Anomaly scores `[n]` and per-feature squared errors `[n, f]` (float32)."""
        x = self._checked(x)
        if x.shape[0] == 0:
            return np.empty(0, np.float32), np.empty((0, x.shape[1]), np.float32)
        scores, errors = self.session.run(list(ONNX_OUTPUTS), {ONNX_INPUT: x})
        return scores, errors

    @cached_property
    def _outputs(self) -> list[str]:
        """The outputs `predict` asks for: the score, the feature errors and, with a supervised part, the parts'
        contributions."""
        has_parts = ONNX_CONTRIBUTIONS in {output.name for output in self.session.get_outputs()}
        return [*ONNX_OUTPUTS, ONNX_CONTRIBUTIONS] if has_parts else list(ONNX_OUTPUTS)

    def predict(self, x: np.ndarray) -> Prediction:
        """Scores, per-feature errors, the outlier verdict against the card's threshold and which part drove each
        score, for a batch (one onnxruntime call)."""
        x = self._checked(x)
        if x.shape[0] == 0:
            scores, errors = self.score(x)
            return Prediction(scores > self.threshold, scores, errors)
        outputs = self.session.run(self._outputs, {ONNX_INPUT: x})
        if len(outputs) > 2:
            driver = outputs[2].argmax(axis=1)
        else:  # the autoencoder drives every score of a graph without a supervised part
            alone = self.card.parts is None or self.card.parts.head is None
            driver = np.zeros(len(x), dtype=np.int64) if alone else None
        return Prediction(outputs[0] > self.threshold, outputs[0], outputs[1], driver)

    @cached_property
    def _risk_knots(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The card's normal validation scores at each level (percent), each score's first level only."""
        percentiles = self.card.score_percentiles
        if percentiles is None:
            return None
        scores, first = np.unique(np.asarray(percentiles.scores, dtype=np.float64), return_index=True)
        return scores, np.asarray(percentiles.levels, dtype=np.float64)[first]

    def risk_scores(self, scores: np.ndarray) -> np.ndarray | None:
        """The risk score 0-100 of each score: the share (percent) of the normal validation rows that scored lower,
        interpolated between the card's percentiles; None when the card has none (trained by an older version)."""
        knots = self._risk_knots
        if knots is None:
            return None
        return np.round(np.interp(scores, knots[0], knots[1], left=0.0, right=100.0), 3)

    @cached_property
    def fields(self) -> dict[str, FieldCard]:
        """The fields explanations name (from the card; derived from the feature names for an older card)."""
        if self.card.explanation is not None:
            return dict(self.card.explanation.fields)
        return {name: FieldCard(features=tuple(features), kind=FIELD_KINDS.get(name, "number"))
                for name, features in fields_of(self.card.feature_names).items()}

    @cached_property
    def _grouping(self) -> tuple[list[str], np.ndarray]:
        """Field names and the [features, fields] 0/1 matrix that sums errors per field."""
        names = list(self.fields)
        position = {name: i for i, name in enumerate(self.card.feature_names)}
        matrix = np.zeros((len(position), len(names)), dtype=np.float64)
        for j, name in enumerate(names):
            matrix[[position[f] for f in self.fields[name].features], j] = 1.0
        return names, matrix

    @cached_property
    def _by_width(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """The fields grouped by their number of features: (field indices [g], feature indices [g, width])."""
        _, matrix = self._grouping
        members = [np.flatnonzero(column) for column in matrix.T]
        return [(np.array([j for j, m in enumerate(members) if len(m) == width]),
                 np.array([m for m in members if len(m) == width]).reshape(-1, width))
                for width in sorted({len(m) for m in members})]

    @cached_property
    def _shown_parts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per field its name and its `normal` as a decision shows it (one shared list), and the feature names, as
        object arrays."""
        names = list(self.fields)
        normals = np.empty(len(names), dtype=object)
        for j, name in enumerate(names):
            normals[j] = shown_normal(self.fields[name])
        return np.array(names, dtype=object), normals, np.array(self.card.feature_names, dtype=object)

    def top_fields(self, errors: np.ndarray, k: int | None = None) -> TopFields:
        """The `k` fields (all when None) with the largest reconstruction error summed over their features, largest
        first, for a batch of errors `[n, f]`: what `explain` picks each score's explanation from, as arrays
        `[n, k]`."""
        rows = np.asarray(errors, dtype=np.float64)
        names, matrix = self._grouping
        n, k = rows.shape[0], len(names) if k is None else min(k, len(names))
        if k == 0 or n == 0:
            return TopFields(np.empty((n, 0), np.intp), np.empty((n, 0), np.intp), np.empty((n, 0)))
        summed = rows @ matrix
        at = np.arange(n)[:, None]  # row indices for picking per row (as np.take_along_axis, without its set-up)
        top = np.argpartition(-summed, k - 1, axis=1)[:, :k]
        top = top[at, np.argsort(-summed[at, top], axis=1, kind="stable")]
        largest = np.empty((n, len(names)), dtype=np.intp)  # per field: its feature with the largest error
        total = np.empty((n, len(names)))  # per field: the error summed as `row[members].sum()` sums it
        for fields, members in self._by_width:
            chosen = rows[:, members]  # [n, fields, width]
            largest[:, fields] = members[np.arange(len(fields)), chosen.argmax(axis=2)]
            total[:, fields] = _numpy_sum(chosen)
        return TopFields(top, largest[at, top], total[at, top])

    def top_features(self, errors: np.ndarray, k: int = 3) -> list[TopField] | list[list[TopField]]:
        """`top_fields` as named tuples: one list for one row of errors (`[f]`), one list per row for `[n, f]`."""
        errors = np.asarray(errors, dtype=np.float64)
        top = self.top_fields(errors.reshape(1, -1) if errors.ndim == 1 else errors, k)
        names, features = list(self.fields), self.card.feature_names
        result = [[TopField(names[j], features[f], e) for j, f, e in zip(*row, strict=True)]
                  for row in zip(top.field.tolist(), top.feature.tolist(), top.error.tolist(), strict=True)]
        return result[0] if errors.ndim == 1 else result

    def explain(self, events: Sequence[Event], top: TopFields, k: int = EXPLAINED) -> list[list[dict[str, Any]]]:
        """Each event's explanation (`top` row i ranks the fields of `events[i]`): the first `k` fields of its
        ranking whose value lies outside the normal range seen in training, or whose range the card lacks. A
        field within its range is never named, so a score that no single value explains has an empty list.

        Each item: `name` (the field's feature with the largest error), `field`, the event's `value` and the
        `normal` range as a person reads them (hours `18:14`, weekdays by name), `beyond` (how far outside the
        range, see `outside_normal`) and the summed `error` (6 significant digits)."""
        n, ranked = top.field.shape
        if ranked == 0 or k <= 0 or n == 0:
            return [[] for _ in range(n)]
        field_names, normals, feature_names = self._shown_parts
        read = field_reader(events)
        judged = {j: outside_normal(read(field_names[j]), self.fields[field_names[j]])
                  for j in np.unique(top.field).tolist()}
        outside = np.zeros((n, len(field_names)), dtype=bool)  # [event, field]
        for j, part in judged.items():
            outside[:, j] = part.outside
        named = outside[np.arange(n)[:, None], top.field]  # [event, rank]: the ranked field is outside its range
        named &= np.cumsum(named, axis=1) <= k  # the first k of them
        explained: list[list[dict[str, Any]]] = [[] for _ in range(n)]
        for row, rank in zip(*np.nonzero(named), strict=True):  # by event, then by rank
            j = int(top.field[row, rank])
            part = judged[j]
            explained[row].append({"name": feature_names[top.feature[row, rank]], "field": field_names[j],
                                   "value": part.shown(row), "normal": normals[j], "beyond": part.beyond(row),
                                   "error": float(f"{top.error[row, rank]:.6g}")})
        return explained


def _numpy_sum(x: np.ndarray) -> np.ndarray:
    """`x.sum(axis=-1)` added in the order numpy sums one contiguous row (`row.sum()`: pairwise, eight running
    sums per block of up to 128), so that a batch gives the same last bits as summing row by row."""
    width = x.shape[-1]
    if width > 128:
        half = width // 2 - width // 2 % 8
        return _numpy_sum(x[..., :half]) + _numpy_sum(x[..., half:])
    if width < 8:
        total = np.zeros(x.shape[:-1])
        for i in range(width):
            total += x[..., i]
        return total
    lanes = x[..., :8].copy()
    end = width - width % 8
    for i in range(8, end, 8):
        lanes += x[..., i:i + 8]
    total = ((lanes[..., 0] + lanes[..., 1]) + (lanes[..., 2] + lanes[..., 3])) + \
        ((lanes[..., 4] + lanes[..., 5]) + (lanes[..., 6] + lanes[..., 7]))
    for i in range(end, width):
        total += x[..., i]
    return 0.0 + total


WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_PERIODS = {"hour": 24, "weekday": 7}


class Judged(NamedTuple):
    """A field's values for a batch against its normal range (see `outside_normal`); `shown` and `beyond` read one
    row, as a decision shows it (only the rows named are read)."""

    values: np.ndarray | list  # the raw values: floats (NaN: missing), or names for a category
    outside: np.ndarray  # bool [n]
    distance: np.ndarray | None  # float [n]: signed distance to the range; None for categories and unknown ranges
    kind: str

    def shown(self, row: int) -> float | str | None:
        """The value as a person reads it: an hour as `18:14`, a weekday by name, a number to 4 decimals."""
        value = self.values[row]
        if self.kind not in _PERIODS or isinstance(value, str) or value is None or not math.isfinite(value):
            return _shown(value)
        return _clock(float(value)) if self.kind == "hour" else WEEKDAYS[int(value) % 7]

    def beyond(self, row: int) -> float | None:
        """How far outside the range (None when inside, for categories, missing values and unknown ranges)."""
        if self.distance is None or not self.outside[row] or not math.isfinite(self.distance[row]):
            return None
        return round(float(self.distance[row]), 4)


def outside_normal(values: np.ndarray | list, field: FieldCard) -> Judged:
    """Each value against the field's normal range. Outside: a number below `low` or above `high`, an hour or
    weekday out of its window, a category not among the usual ones, a missing value, or any value of a field
    whose range is unknown. The distance is signed, in the field's units: above the high end positive, below the
    low end negative; for hour and weekday the hours or days to the nearer end of the window."""
    normal, kind = field.normal, field.kind
    if normal is None:
        return Judged(values, np.ones(len(values), dtype=bool), None, kind)
    if kind == "category":
        usual = set(normal)
        return Judged(values, np.fromiter((value not in usual for value in values), bool, len(values)), None, kind)
    numbers = np.asarray(values, dtype=np.float64)
    missing = ~np.isfinite(numbers)
    if kind in _PERIODS:
        period, (start, end) = _PERIODS[kind], (int(normal[0]), int(normal[1]))
        unit = np.where(missing, start, np.floor(np.nan_to_num(numbers))).astype(np.int64) % period
        after, before = (unit - end) % period, (start - unit) % period
        outside = missing | ((unit - start) % period > (end - start) % period)
        if kind == "hour":  # hours: from the window's end (end + 1 o'clock) or to its start, exactly
            after = np.mod(numbers - (end + 1), period)
            before = np.mod(start - numbers, period)
        return Judged(numbers, outside, np.where(after <= before, after, -before), kind)
    low, high = float(normal[0]), float(normal[1])
    outside = missing | (numbers < low) | (numbers > high)
    return Judged(numbers, outside, np.where(numbers > high, numbers - high, numbers - low), kind)


def shown_normal(field: FieldCard) -> list[float | str] | None:
    """A field's normal range as a decision shows it: hours as clock times from the window's first hour to the
    end of its last (`[5, 0]` → `["05:00", "01:00"]`, `[0, 23]` → `["00:00", "24:00"]`), weekdays by name
    (`["Monday", "Friday"]`), numbers and categories as the card has them."""
    if field.normal is None:
        return None
    if field.kind == "hour":
        return [f"{int(field.normal[0]):02d}:00", f"{int(field.normal[1]) + 1:02d}:00"]
    if field.kind == "weekday":
        return [WEEKDAYS[int(field.normal[0])], WEEKDAYS[int(field.normal[1])]]
    return list(field.normal)


def _clock(hours: float) -> str:
    """An hour of the day (0 <= hours < 24) as a clock reads it: 18.2449 → `18:14`."""
    minutes = int(hours * 60)
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _shown(value: Any) -> float | str | None:
    """A field value for JSON: numbers rounded to 4 decimals, NaN (a missing value) as None, text as is."""
    if isinstance(value, str) or value is None:
        return value
    number = float(value)
    return round(number, 4) if math.isfinite(number) else None


def load_model(onnx_path: str | Path, card_path: str | Path | None = None) -> OnnxModel:
    """Load an ONNX model and its card (default: same path with `.json`), refusing any mismatch."""
    onnx_path = Path(onnx_path)
    card_path = Path(card_path) if card_path is not None else onnx_path.with_suffix(".json")
    if not onnx_path.is_file():
        raise ModelError(f"model file {onnx_path} does not exist: train one with `fraudmon train` or fix the path")
    card = read_card(card_path)
    data = onnx_path.read_bytes()
    try:
        session = ort.InferenceSession(data, sess_options=_session_options(), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelError(f"{onnx_path} is not a valid ONNX model ({str(exc)[:200]}): retrain or restore it") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != card.onnx_sha256:
        raise ModelError(f"model card {card_path} was written for another graph (sha256 {card.onnx_sha256[:12]}"
                         f"…, {onnx_path} has {digest[:12]}…): retrain or pick the matching card")
    inputs = session.get_inputs()
    outputs = [o.name for o in session.get_outputs()]
    if [i.name for i in inputs] != [ONNX_INPUT] or not set(ONNX_OUTPUTS) <= set(outputs):
        raise ModelError(f"{onnx_path} takes {[i.name for i in inputs]} and returns {outputs}; expected input "
                         f"{ONNX_INPUT!r} and outputs {', '.join(ONNX_OUTPUTS)}: export it with `fraudmon train`")
    width = inputs[0].shape[-1] if len(inputs[0].shape) == 2 else None
    n = card.n_features
    if width != n:
        raise ModelError(f"model card {card_path} lists {n} features but {onnx_path} takes {width}: "
                         f"retrain or pick the matching card")
    model = OnnxModel(session=session, card=card, path=onnx_path)
    try:
        scores, errors = model.score(np.zeros((2, n), dtype=np.float32))
    except Exception as exc:
        raise ModelError(f"{onnx_path} failed a probe run on zeros ({str(exc)[:200]}): retrain it") from None
    if scores.shape != (2,) or errors.shape != (2, n) or not (np.isfinite(scores).all() and np.isfinite(errors).all()):
        raise ModelError(f"{onnx_path} returned shapes {scores.shape}, {errors.shape} or non-finite values on a "
                         f"probe of zeros (expected (2,), (2, {n})): retrain it")
    return model
