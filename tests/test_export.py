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
    """Train a 2-epoch autoencoder on random events with V features, export and publish it with a card.

    Returns (trained Keras model, feature matrix, onnx path, card).
    """
    from training.export import build_card, explanation_card, export_onnx, publish
    from training.model import AutoencoderConfig, train_autoencoder

    rng = np.random.default_rng(5)
    names = [*(f"V{i}" for i in range(1, n_features)), "amount_log"]
    events = [Event(f"t{i}", "a", float(rng.gamma(2, 30)), 1_700_000_000_000 + i * 1000,
                    features={n: float(v) for n, v in zip(names[:-1], rng.normal(0, 1, n_features - 1), strict=True)})
              for i in range(N_ROWS)]
    x = vectorize(events, names)
    trained = train_autoencoder(x[:1000], x[1000:1200], AutoencoderConfig(hidden=(8, 4), epochs=2, batch_size=64),
                                verbose=0)
    onnx_path = directory / "tiny.onnx"
    partial, sha, parity = export_onnx(trained.model, onnx_path, x)
    scores = trained.score(x[1000:1200])[0]
    card = build_card(name="tiny", onnx_sha256=sha, feature_names=names, x_train=x[:1000],
                      threshold={"value": float(np.quantile(scores, 0.99)), "method": "percentile", "parameter": 99},
                      val_normal_scores=scores, training={"rows": N_ROWS}, metrics={}, parity=parity,
                      created=datetime(2026, 11, 22, tzinfo=UTC),
                      explanation=explanation_card(events[:1000], names))
    publish(partial, onnx_path, card, onnx_path.with_suffix(".json"))
    return trained, x, onnx_path, card


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

    trained, x, onnx_path, card = exported
    assert card["parity"]["rows"] == N_ROWS and card["parity"]["max_abs_diff"] <= 1e-4
    assert check_parity(trained.model, onnx_path, x)["max_abs_diff"] <= 1e-4


def test_parity_catches_a_broken_graph_and_removes_it(exported, tmp_path):
    import onnx
    from onnx import numpy_helper

    from training.export import check_parity

    trained, x, onnx_path, _ = exported
    proto = onnx.load(onnx_path)
    weights = next(t for t in proto.graph.initializer if "encoder_0/MatMul" in t.name)
    weights.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weights) + np.float32(0.05), weights.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(proto, broken)
    with pytest.raises(ModelError, match=r"ONNX export differs from Keras on row \d+.*broken.onnx removed"):
        check_parity(trained.model, broken, x)
    assert not broken.exists()
    with pytest.raises(ModelError, match="at least 1000 rows"):
        check_parity(trained.model, onnx_path, x[:999])


def test_model_card_schema(exported):
    from training.export import library_versions

    _, _, onnx_path, card = exported
    on_disk = json.loads(onnx_path.with_suffix(".json").read_text())
    assert on_disk == card
    assert card["onnx_sha256"] == hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    assert re.fullmatch(rf"20261122-{card['onnx_sha256'][:6]}", card["version"])
    assert card["created_at"] == "2026-11-22T00:00:00Z"
    assert card["feature_names"] == ["V1", "V2", "V3", "V4", "amount_log"] and card["n_features"] == 5
    assert set(card["threshold"]) == {"value", "method", "parameter"}
    assert card["expected_alert_rate"] == pytest.approx(0.01, abs=0.006)
    assert list(card["score_quantiles"]) == ["p50", "p90", "p99", "p999"]
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
