"""The serving adapter: an ONNX autoencoder and its model card, checked against each other at load.

onnxruntime and numpy only (no TensorFlow). `load_model` refuses anything that would score wrongly: a missing
or corrupt file, a card that does not belong to the graph, a graph whose width differs from the card.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnxruntime as ort

from fraudmon.core.errors import ModelError
from fraudmon.core.modelcard import ONNX_INPUT, ONNX_OUTPUTS, ModelCard, read_card


class Prediction(NamedTuple):
    """What a detector says about a batch, in alibi-detect's terms."""

    is_outlier: np.ndarray  # bool [n]: score above the card's threshold
    instance_score: np.ndarray  # float32 [n]: the anomaly score
    feature_score: np.ndarray  # float32 [n, f]: per-feature error, the explanation of a score

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

    def score(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Anomaly scores `[n]` and per-feature squared errors `[n, f]` (float32)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        width = self.card.n_features
        if x.ndim != 2 or x.shape[1] != width:
            raise ModelError(f"model {self.name} takes [n, {width}] features, got shape {list(x.shape)}")
        if x.shape[0] == 0:
            return np.empty(0, np.float32), np.empty((0, width), np.float32)
        scores, errors = self.session.run(list(ONNX_OUTPUTS), {ONNX_INPUT: x})
        return scores, errors

    def predict(self, x: np.ndarray) -> Prediction:
        """Scores, per-feature errors and the outlier verdict against the card's threshold, for a batch."""
        scores, errors = self.score(x)
        return Prediction(scores > self.threshold, scores, errors)

    def top_features(self, errors: np.ndarray, k: int = 3) -> list[tuple[str, float]] | list[list[tuple[str, float]]]:
        """The `k` features with the largest reconstruction error, largest first: the explanation of a score.
        `errors` is one row (`[f]`, gives one list) or a batch (`[n, f]`, gives one list per row)."""
        errors = np.asarray(errors, dtype=np.float64)
        rows = errors.reshape(1, -1) if errors.ndim == 1 else errors
        k = min(k, rows.shape[1])
        if k == 0 or rows.shape[0] == 0:
            result: list[list[tuple[str, float]]] = [[] for _ in range(rows.shape[0])]
        else:
            top = np.argpartition(-rows, k - 1, axis=1)[:, :k]
            top_errors = np.take_along_axis(rows, top, axis=1)
            order = np.argsort(-top_errors, axis=1, kind="stable")
            top, top_errors = np.take_along_axis(top, order, axis=1), np.take_along_axis(top_errors, order, axis=1)
            names = self.card.feature_names
            result = [[(names[i], e) for i, e in zip(idx, errs, strict=True)]
                      for idx, errs in zip(top.tolist(), top_errors.tolist(), strict=True)]
        return result[0] if errors.ndim == 1 else result


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
