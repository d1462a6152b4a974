"""ONNX export: graph names and shapes, the parity check (and that it catches a broken graph), the card."""

import hashlib
import json
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from fraudmon.core.errors import ModelError
from fraudmon.core.events import Event
from stream_app.features import vectorize

N_ROWS = 1500


def tiny_model(directory: Path, n_features: int = 5):
    """Fit a 2-epoch detector on random events with V features, export and publish it with a card.

    Returns (the detector, feature matrix, onnx path, card).
    """
    from training.detector import FraudDetector
    from training.export import build_card, explanation_card, publish
    from training.model import AutoencoderConfig

    rng = np.random.default_rng(5)
    names = [*(f"V{i}" for i in range(1, n_features)), "amount_log"]
    events = [Event(f"t{i}", "a", float(rng.gamma(2, 30)), 1_700_000_000_000 + i * 1000,
                    features={n: float(v) for n, v in zip(names[:-1], rng.normal(0, 1, n_features - 1), strict=True)})
              for i in range(N_ROWS)]
    x = vectorize(events, names)
    detector = FraudDetector(AutoencoderConfig(hidden=(8, 4), epochs=2, batch_size=64), val_fraction=1 / 6,
                             threshold_method="percentile", threshold_param=99).fit(x[:1200])
    onnx_path = directory / "tiny.onnx"
    exported = detector.to_onnx(onnx_path.with_name("tiny.onnx.partial"), x)
    card = build_card(name="tiny", onnx_sha256=exported.sha256, feature_names=names, x_train=x[:1000],
                      threshold=detector.threshold_.to_dict(), expected_alert_rate=detector.expected_alert_rate_,
                      normal_scores=detector.normal_scores_, training={"rows": N_ROWS}, metrics={},
                      parity=exported.parity, created=datetime(2026, 11, 22, tzinfo=UTC),
                      explanation=explanation_card(events[:1000], names))
    publish(exported.path, onnx_path, card, onnx_path.with_suffix(".json"))
    return detector, x, onnx_path, card


def initializer_of(graph, op_type: str, index: int = 0):
    """The constant input of the `index`-th node of type `op_type` in graph order (found by its role, not by the
    name the converter gave it)."""
    constants = {t.name: t for t in graph.initializer}
    node = [n for n in graph.node if n.op_type == op_type][index]
    (name,) = [i for i in node.input if i in constants]
    return constants[name]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("export"))


def test_graph_has_the_contract_names_shapes_and_opset(exported):
    import onnx

    _, x, onnx_path, _ = exported
    proto = onnx.load(onnx_path)
    onnx.checker.check_model(proto)
    assert {o.domain: o.version for o in proto.opset_import}[""] == 17

    def shape(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    assert [(i.name, shape(i)) for i in proto.graph.input] == [("features", ["batch", 5])]
    assert [(o.name, shape(o)) for o in proto.graph.output] == [("score", ["batch"]),
                                                               ("feature_errors", ["batch", 5])]
    assert not Path(str(onnx_path) + ".partial").exists()


def test_parity_holds_on_every_export(exported):
    from training.export import check_parity

    detector, x, onnx_path, card = exported
    assert card["parity"]["rows"] == N_ROWS and card["parity"]["max_abs_diff"] <= 1e-4
    assert check_parity(detector.score, onnx_path, x)["max_abs_diff"] <= 1e-4


def test_parity_catches_a_broken_graph_and_removes_it(exported, tmp_path):
    import onnx
    from onnx import numpy_helper

    from training.export import check_parity

    detector, x, onnx_path, _ = exported
    proto = onnx.load(onnx_path)
    weights = initializer_of(proto.graph, "MatMul")  # the first encoder layer's weights
    assert list(weights.dims) == [5, 8]
    weights.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weights) + np.float32(0.05), weights.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(proto, broken)
    with pytest.raises(ModelError, match=r"ONNX export differs from the Python models on row \d+.*broken.onnx removed"):
        check_parity(detector.score, broken, x)
    assert not broken.exists()
    with pytest.raises(ModelError, match="at least 1000 rows"):
        check_parity(detector.score, onnx_path, x[:999])


def test_model_card_schema(exported):
    from fraudmon.core.modelcard import SCORE_PERCENTILE_LEVELS
    from training.export import library_versions

    detector, _, onnx_path, card = exported
    on_disk = json.loads(onnx_path.with_suffix(".json").read_text())
    assert on_disk == card
    assert card["onnx_sha256"] == hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    assert re.fullmatch(rf"20261122-{card['onnx_sha256'][:6]}", card["version"])
    assert card["created_at"] == "2026-11-22T00:00:00Z"
    assert card["feature_names"] == ["V1", "V2", "V3", "V4", "amount_log"] and card["n_features"] == 5
    assert set(card["threshold"]) == {"value", "method", "parameter"}
    assert card["expected_alert_rate"] == pytest.approx(0.01, abs=0.006)
    assert list(card["score_quantiles"]) == ["p50", "p90", "p99", "p999"]
    percentiles = card["score_percentiles"]
    assert percentiles["levels"] == list(SCORE_PERCENTILE_LEVELS) and len(percentiles["levels"]) == 128
    assert percentiles["levels"][99:102] == [99, 99.1, 99.2] and percentiles["levels"][-2:] == [99.999, 100]
    assert percentiles["scores"] == sorted(percentiles["scores"])
    assert percentiles["scores"][50] == pytest.approx(card["score_quantiles"]["p50"], rel=1e-9)
    assert percentiles["scores"][-1] == pytest.approx(detector.normal_scores_.max(), rel=1e-6)
    assert card["score_quantiles"]["p50"] <= card["score_quantiles"]["p99"] <= card["score_quantiles"]["p999"]
    assert set(library_versions()) >= {"tensorflow", "tf2onnx", "onnx", "onnxruntime"}
    assert card["versions"] == library_versions()
    assert card["inputs"] == [{"name": "features", "dtype": "float32", "shape": ["batch", 5]}]
    assert [o["name"] for o in card["outputs"]] == ["score", "feature_errors"]


def test_publishing_replaces_the_graph_before_the_card(exported, tmp_path):
    from training.export import publish

    _, _, onnx_path, card = exported
    partial = tmp_path / "m.onnx.partial"
    shutil.copy(onnx_path, partial)
    publish(partial, tmp_path / "m.onnx", card, tmp_path / "m.json")
    assert not partial.exists() and (tmp_path / "m.onnx").exists()
    assert json.loads((tmp_path / "m.json").read_text())["onnx_sha256"] == card["onnx_sha256"]


def test_score_percentiles_are_required_in_new_cards_and_optional_in_old_ones(exported, tmp_path):
    from fraudmon.core.modelcard import ModelCard, read_card
    from training.export import publish

    _, _, onnx_path, card = exported
    old = {k: v for k, v in card.items() if k != "score_percentiles"}
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert read_card(tmp_path / "old.json").score_percentiles is None
    shutil.copy(onnx_path, tmp_path / "m.onnx.partial")
    with pytest.raises(ValueError, match="a new card needs score_percentiles"):
        publish(tmp_path / "m.onnx.partial", tmp_path / "m.onnx", old, tmp_path / "m.json")
    assert not (tmp_path / "m.json").exists()
    falling = {**card, "score_percentiles": {"levels": [0, 50, 100], "scores": [1.0, 0.5, 2.0]}}
    with pytest.raises(ValueError, match="never decrease"):
        ModelCard.model_validate(falling)
