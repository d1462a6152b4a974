"""Conversion to ONNX (tf2onnx, opset 17), the Keras-vs-onnxruntime parity check, and the model card.

`FraudDetector.to_onnx` writes a checked graph next to its final name; `publish` renames it into place and
writes the card last, so a watching worker never pairs a new graph with an old card for longer than a moment.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import tensorflow as tf
import tf2onnx

from fraudmon.core.errors import ModelError
from fraudmon.core.events import Event
from fraudmon.core.modelcard import (
    ONNX_FEATURE_ERRORS,
    ONNX_INPUT,
    ONNX_OUTPUTS,
    ONNX_SCORE,
    SCORE_PERCENTILE_LEVELS,
    WRITING,
    ModelCard,
)
from stream_app.drift import decile_bins
from stream_app.features import NORMAL_COVERAGE, normal_ranges
from training.trees import TREES_INPUT, TREES_LOGIT

OPSET = 17
SCORE_CONTRIBUTIONS = "score_contributions"
"""The graph's third output when it holds a supervised part: float32 [batch, 2], the autoencoder's and the
supervised part's contributions to the log score above a typical normal row's (`Combination.contributions`)."""
PASSED_FEATURES = "features_to_autoencoder"
PARITY_MIN_ROWS = 1000
PARITY_ATOL = 1e-4
PARITY_RTOL = 1e-3
"""float32 cannot resolve 1e-4 on scores above ~100, and the hybrid score is exp(a sum of ~60 float32 products),
so the rounding of that sum (its order differs between Keras and onnxruntime) becomes a relative error of the
score: up to 2.8e-4 seen on the card-holder data's extreme rows (log scores near 46, where one float32 step of
the sum is ~4e-6 and the head's inputs reach the hundreds). 0.1% is allowed: far below what changes a decision,
far above rounding, and a conversion bug (a wrong op) is off by orders of magnitude."""


def convert(model: tf.keras.Model, n_features: int) -> onnx.ModelProto:
    """Convert the serving model: input `features` `[batch, n]` (and `trees_logit` `[batch, 1]` when the trees
    are a second input), outputs `score` `[batch]`, `feature_errors` `[batch, n]` and, with a supervised part,
    `score_contributions` `[batch, 2]`, renamed if tf2onnx named them otherwise."""
    names = [ONNX_INPUT, TREES_LOGIT][:len(model.inputs)]
    spec = tuple(tf.TensorSpec((None, width), tf.float32, name=name)
                 for name, width in zip(names, (n_features, 1), strict=False))
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=OPSET)
    graph = proto.graph
    if [i.name for i in graph.input] != names:
        raise ModelError(f"tf2onnx produced inputs {[i.name for i in graph.input]}, expected {names}")
    wanted = [*ONNX_OUTPUTS, SCORE_CONTRIBUTIONS][:len(graph.output)]
    renames = {out.name: want for out, want in zip(graph.output, wanted, strict=True) if out.name != want}
    for node in graph.node:
        node.output[:] = [renames.get(name, name) for name in node.output]
        node.input[:] = [renames.get(name, name) for name in node.input]
    for value in [*graph.input, *graph.output]:
        value.name = renames.get(value.name, value.name)
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"
    onnx.checker.check_model(proto)
    return proto


def merge_trees(serving: onnx.ModelProto, trees: onnx.ModelProto) -> onnx.ModelProto:
    """One graph from the serving graph that takes the trees' logit as its second input and the trees' graph
    (`training.trees.trees_to_onnx`), joined with `onnx.compose.merge_models`: `features` feeds both, the trees'
    logit feeds the combination; the inputs and outputs are the serving graph's without `trees_logit`."""
    trees = onnx.ModelProto.FromString(trees.SerializeToString())
    trees.graph.node.append(onnx.helper.make_node("Identity", [TREES_INPUT], [PASSED_FEATURES]))
    width = serving.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    trees.graph.output.append(onnx.helper.make_tensor_value_info(PASSED_FEATURES, onnx.TensorProto.FLOAT,
                                                                 ["batch", width]))
    trees = onnx.compose.add_prefix(trees, "trees/")
    opsets = {o.domain: o.version for model in (trees, serving) for o in model.opset_import}
    for model in (trees, serving):
        del model.opset_import[:]
        model.opset_import.extend(onnx.helper.make_opsetid(domain, version) for domain, version in opsets.items())
        model.ir_version = max(trees.ir_version, serving.ir_version)
    merged = onnx.compose.merge_models(trees, serving, io_map=[(f"trees/{PASSED_FEATURES}", ONNX_INPUT),
                                                                (f"trees/{TREES_LOGIT}", TREES_LOGIT)])
    graph = merged.graph
    for node in graph.node:
        node.input[:] = [ONNX_INPUT if name == f"trees/{TREES_INPUT}" else name for name in node.input]
    graph.input[0].name = ONNX_INPUT
    onnx.checker.check_model(merged)
    return merged


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_parity(
    python_score: Callable[[np.ndarray], list[np.ndarray]], onnx_path: Path, x: np.ndarray,
    atol: float = PARITY_ATOL, rtol: float = PARITY_RTOL,
) -> dict[str, float | int]:
    """Compare the Python models' outputs (`python_score(x)`: scores, feature errors and, with a supervised part,
    the contributions) with onnxruntime's on `x` (>= 1,000 rows): scores and contributions within `atol` +
    `rtol` * |value|; on failure delete `onnx_path` and raise."""
    if len(x) < PARITY_MIN_ROWS:
        raise ModelError(f"parity check needs at least {PARITY_MIN_ROWS} rows, got {len(x)}")
    x = np.asarray(x, dtype=np.float32)
    expected = python_score(x)
    names = [*ONNX_OUTPUTS, SCORE_CONTRIBUTIONS][:len(expected)]
    try:
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        got = session.run(names, {ONNX_INPUT: x})
    except Exception as exc:
        onnx_path.unlink(missing_ok=True)
        raise ModelError(f"exported graph {onnx_path} does not run in onnxruntime: {exc}") from exc
    (onnx_scores, onnx_errors, *onnx_parts), (keras_scores, keras_errors, *keras_parts) = got, expected
    diff = np.abs(onnx_scores.astype(np.float64) - keras_scores)
    allowed = atol + rtol * np.abs(keras_scores.astype(np.float64))
    worst = int(np.argmax(diff - allowed)) if diff.size else 0
    parts_diff = [np.abs(o.astype(np.float64) - k) for o, k in zip(onnx_parts, keras_parts, strict=True)]
    parts_off = any((d > atol + rtol * np.abs(k)).any() for d, k in zip(parts_diff, keras_parts, strict=True))
    if not np.isfinite(onnx_scores).all() or (diff > allowed).any() or onnx_errors.shape != keras_errors.shape \
            or parts_off:
        onnx_path.unlink(missing_ok=True)
        raise ModelError(
            f"ONNX export differs from the Python models on row {worst}: score {float(onnx_scores[worst]):.6g} vs "
            f"{float(keras_scores[worst]):.6g} (max abs diff {float(diff.max()):.3g}, allowed {atol:g} + "
            f"{rtol:g}*|score|{'; the contributions differ' if parts_off else ''}); {onnx_path} removed"
        )
    relative = diff / np.maximum(np.abs(keras_scores.astype(np.float64)), np.finfo(np.float32).tiny)
    result = {"rows": int(len(x)), "max_abs_diff": float(diff.max()), "max_rel_diff": float(relative.max()),
              "max_feature_error_diff": float(np.abs(onnx_errors - keras_errors).max())}
    if parts_diff:
        result["max_contribution_diff"] = float(parts_diff[0].max())
    return result


def publish(partial_onnx: Path, onnx_path: Path, card: dict[str, Any], card_path: Path) -> None:
    """Check the card against `ModelCard`, rename the checked graph into place, then write the card (atomically,
    last)."""
    document = ModelCard.model_validate(card, context=WRITING).to_json()
    os.replace(partial_onnx, onnx_path)
    partial = card_path.with_name(card_path.name + ".partial")
    partial.write_text(document)
    os.replace(partial, card_path)


def feature_deciles(x: np.ndarray, feature_names: list[str]) -> dict[str, dict[str, list[float]]]:
    """Each feature's training deciles (10%..90%) and the share of training rows in each of the ten bins they
    bound (not 10% each for a feature with few values): what the worker's drift estimate (PSI) compares with."""
    x = np.asarray(x, dtype=np.float64)
    deciles = np.quantile(x, np.arange(1, 10) / 10, axis=0)
    bins = decile_bins(deciles.T, x)
    result = {}
    for j, name in enumerate(feature_names):
        shares = np.bincount(bins[:, j], minlength=10) / max(1, len(x))
        result[name] = {"deciles": [float(v) for v in deciles[:, j]], "shares": [float(v) for v in shares]}
    return result


def explanation_card(train_events: list[Event], feature_names: list[str]) -> dict[str, Any]:
    """The card's `explanation`: per field its features, kind and normal range over the training rows."""
    fields = normal_ranges(train_events, feature_names)
    low, high = NORMAL_COVERAGE
    return {"normal": f"training rows, {low:g}st to {high:g}th percentile (hour and weekday: the shortest window, "
                      f"categories: those of at least {low:g}% of the rows)", "fields": fields}


def library_versions() -> dict[str, str]:
    return {"tensorflow": tf.__version__, "tf2onnx": tf2onnx.__version__, "onnx": onnx.__version__,
            "onnxruntime": ort.__version__, "numpy": np.__version__}


def model_version(onnx_sha256: str, when: datetime) -> str:
    return f"{when:%Y%m%d}-{onnx_sha256[:6]}"


def score_percentiles(normal_scores: np.ndarray) -> dict[str, list[float]]:
    """The card's `score_percentiles`: the normal validation scores at `SCORE_PERCENTILE_LEVELS`."""
    levels = [float(level) for level in SCORE_PERCENTILE_LEVELS]
    return {"levels": levels, "scores": [float(v) for v in np.percentile(normal_scores, levels)]}


def build_card(
    *,
    name: str,
    onnx_sha256: str,
    feature_names: list[str],
    threshold: dict[str, Any],
    expected_alert_rate: float,
    normal_scores: np.ndarray,
    x_train: np.ndarray,
    training: dict[str, Any],
    metrics: dict[str, Any],
    parity: dict[str, Any],
    created: datetime | None = None,
    parts: dict[str, Any] | None = None,
    explanation: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The model card (docs/contracts.md "The model card"). `normal_scores` are the normal validation rows'
    scores (`FraudDetector.normal_scores_`): `score_quantiles`, `score_stats` (which lets evaluation rebuild the
    threshold table) and `score_percentiles` come from them; `expected_alert_rate` is their share above the
    threshold (`FraudDetector.expected_alert_rate_`), whatever the method that chose it."""
    created = created or datetime.now(UTC)
    scores = np.asarray(normal_scores, dtype=np.float64)
    n = len(feature_names)
    return {
        "name": name,
        "version": model_version(onnx_sha256, created),
        "created_at": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "feature_names": list(feature_names),
        "n_features": n,
        "threshold": threshold,
        "expected_alert_rate": float(expected_alert_rate),
        "score_quantiles": {f"p{q:g}".replace(".", ""): float(np.quantile(scores, q / 100))
                            for q in (50, 90, 99, 99.9)},
        "score_stats": {"mean": float(scores.mean()), "std": float(scores.std()), "rows": int(scores.size)},
        "score_percentiles": score_percentiles(scores),
        "feature_quantiles": feature_deciles(x_train, feature_names),
        "parts": parts,
        "explanation": explanation,
        "training": training,
        "metrics": metrics,
        "parity": parity,
        "versions": library_versions(),
        "onnx_sha256": onnx_sha256,
        "inputs": [{"name": ONNX_INPUT, "dtype": "float32", "shape": ["batch", n]}],
        "outputs": [{"name": ONNX_SCORE, "dtype": "float32", "shape": ["batch"]},
                    {"name": ONNX_FEATURE_ERRORS, "dtype": "float32", "shape": ["batch", n]},
                    *([{"name": SCORE_CONTRIBUTIONS, "dtype": "float32", "shape": ["batch", 2],
                        "columns": ["autoencoder", "supervised"]}] if (parts or {}).get("head") else [])],
    }
