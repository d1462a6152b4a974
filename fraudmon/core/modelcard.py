"""The model card: what travels with an ONNX graph (feature names, threshold, training summary, metrics, hashes),
typed once for the exporter that writes it and the worker that serves it. Also the graph's input and output names.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, model_validator

from fraudmon.core.errors import ModelError

ONNX_INPUT = "features"  # float32 [batch, n_features], raw features (scaling lives inside the graph)
ONNX_SCORE = "score"  # float32 [batch]: the anomaly score the threshold applies to
ONNX_FEATURE_ERRORS = "feature_errors"  # float32 [batch, n_features]: per-feature reconstruction error
ONNX_OUTPUTS = (ONNX_SCORE, ONNX_FEATURE_ERRORS)
ONNX_CONTRIBUTIONS = "score_contributions"  # float32 [batch, 2], with a supervised part only: the autoencoder's and
# the supervised part's contributions to the log score above a typical normal row's
DRIVERS = ("autoencoder", "supervised")  # what each column of ONNX_CONTRIBUTIONS measures, as a decision names it
SCORE_PERCENTILE_LEVELS = (
    *range(100),
    *(round(99 + i / 10, 1) for i in range(1, 10)),
    *(round(99.9 + i / 100, 2) for i in range(1, 10)),
    *(round(99.99 + i / 1000, 3) for i in range(1, 10)),
    100,
)
"""The levels of `score_percentiles`: 0, 1, ..., 99, 99.1, ..., 99.9, 99.91, ..., 99.99, 99.991, ..., 99.999, 100."""
WRITING = {"writing": True}
"""Validation context of a card being written: fields that old cards may lack are required in new ones."""


class ThresholdCard(BaseModel):
    """The decision threshold and how it was chosen."""

    model_config = ConfigDict(frozen=True, extra="allow")

    value: float = Field(allow_inf_nan=False)
    method: str = "unknown"


class FieldCard(BaseModel):
    """One field an explanation names: the model features that encode it, how its normal range reads, and the
    range seen in training."""

    model_config = ConfigDict(frozen=True, extra="allow")

    features: tuple[str, ...] = Field(min_length=1)
    kind: Literal["number", "hour", "weekday", "category"] = "number"
    normal: tuple[float, float] | tuple[str, ...] | None = None


class ExplanationCard(BaseModel):
    """What serving needs to explain a score in an analyst's terms: the fields and how `normal` was measured."""

    model_config = ConfigDict(frozen=True, extra="allow")

    normal: str = "training rows, 1st to 99th percentile"
    fields: dict[str, FieldCard]


class PartsCard(BaseModel):
    """Which parts the graph holds and how they make the one `score`: the autoencoder always, the supervised
    head when labels allowed one (`head_skipped` says why not otherwise)."""

    model_config = ConfigDict(frozen=True, extra="allow")

    autoencoder: dict[str, Any]
    head: dict[str, Any] | None = None
    head_skipped: str | None = None
    combination: str


class ScorePercentilesCard(BaseModel):
    """The scores of the normal validation rows at each level (in percent, linear interpolation; 100 is their
    maximum): a score's risk on 0-100 is the share of those rows scoring lower, interpolated between levels."""

    model_config = ConfigDict(frozen=True)

    levels: tuple[float, ...] = Field(min_length=2)
    scores: tuple[float, ...] = Field(min_length=2)

    @model_validator(mode="after")
    def _monotone(self) -> ScorePercentilesCard:
        levels, scores = self.levels, self.scores
        if len(levels) != len(scores):
            raise ValueError(f"{len(levels)} levels but {len(scores)} scores")
        if levels[0] != 0 or levels[-1] != 100 or any(a >= b for a, b in zip(levels, levels[1:], strict=False)):
            raise ValueError("levels must rise strictly from 0 to 100")
        if not all(map(math.isfinite, scores)) or any(a > b for a, b in zip(scores, scores[1:], strict=False)):
            raise ValueError("scores must be finite and never decrease")
        return self


class ModelCard(BaseModel):
    """Metadata of one exported model; unknown keys (training summary, metrics, parity, ...) are kept as they are.

    `score_percentiles` (`{"levels": [0, 1, ..., 99, 99.1, ..., 99.999, 100], "scores": [...]}`, levels
    `SCORE_PERCENTILE_LEVELS`) holds the normal validation rows' score at each level, so that a score maps to a
    risk of 0-100 (the share of those rows scoring lower). Cards written since it exists carry it (validate them
    with `context=WRITING`); older cards lack it and load with None.
    """

    model_config = ConfigDict(frozen=True, extra="allow")

    name: str
    version: str
    feature_names: tuple[str, ...] = Field(min_length=1)
    n_features: int
    threshold: ThresholdCard
    onnx_sha256: str
    expected_alert_rate: float = 0.0
    created_at: str | None = None
    parts: PartsCard | None = None
    explanation: ExplanationCard | None = None
    score_percentiles: ScorePercentilesCard | None = None

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> ModelCard:
        if self.score_percentiles is None and (info.context or {}).get("writing"):
            raise ValueError("a new card needs score_percentiles")
        if self.n_features != len(self.feature_names):
            raise ValueError(f"n_features is {self.n_features} but feature_names lists {len(self.feature_names)}")
        if not 0.0 <= self.expected_alert_rate <= 1.0 or math.isnan(self.expected_alert_rate):
            raise ValueError("expected_alert_rate must be within [0, 1]")
        if self.explanation is not None:
            explained = [name for field in self.explanation.fields.values() for name in field.features]
            if sorted(explained) != sorted(self.feature_names):
                raise ValueError("explanation.fields must cover each of feature_names exactly once")
        return self

    def get(self, key: str, default: Any = None) -> Any:
        """Any key of the card, typed or kept as written (`card.get("training", {})`)."""
        value = getattr(self, key, None)
        if value is None:
            value = (self.model_extra or {}).get(key, default)
        return value

    def __getitem__(self, key: str) -> Any:
        """Read access to the JSON document (`card["threshold"]["value"]`); the card itself stays frozen."""
        return self.model_dump(mode="json")[key]

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2) + "\n"


def read_card(path: Path) -> ModelCard:
    """Load and check a card; a `ModelError` says what is wrong and what to do."""
    if not path.is_file():
        raise ModelError(f"model card {path} does not exist: the card is the .onnx path with .json")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"model card {path} is not valid JSON ({exc}): restore it or retrain") from None
    if not isinstance(data, dict):
        raise ModelError(f"model card {path} must be a JSON object")
    try:
        return ModelCard.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"lacks {_where(e['loc'])}" if e["type"] == "missing" else f"{_where(e['loc'])}: {e['msg']}"
            for e in exc.errors())
        raise ModelError(f"model card {path} is not valid ({problems}): retrain or pick the matching card") from None


def _where(loc: tuple) -> str:
    return ".".join(str(part) for part in loc) or "card"
