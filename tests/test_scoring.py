"""The serving adapter: a valid load, each refusal with its message, and scores equal to the trainer's."""

import hashlib
import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fraudmon.core.errors import ModelError
from fraudmon.core.modelcard import ModelCard
from stream_app.scoring import OnnxModel, load_model
from tests.conftest import PROJECT_ROOT
from tests.test_export import tiny_model


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("scoring"))


@pytest.fixture
def copy(published, tmp_path):
    """A private copy of the published model and card: (onnx path, card path, card)."""
    _, _, onnx_path, card = published
    shutil.copy(onnx_path, tmp_path / "m.onnx")
    shutil.copy(onnx_path.with_suffix(".json"), tmp_path / "m.json")
    return tmp_path / "m.onnx", tmp_path / "m.json", dict(card)


def write_card(path, card, onnx_path=None):
    if onnx_path is not None:
        card = {**card, "onnx_sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest()}
    path.write_text(json.dumps(card))


def test_valid_model_loads_with_its_card(copy):
    onnx_path, _, card = copy
    model = load_model(onnx_path)
    assert isinstance(model, OnnxModel)
    assert (model.name, model.version) == ("tiny", card["version"])
    assert model.feature_names == ["V1", "V2", "V3", "V4", "amount_log"]
    assert model.threshold == card["threshold"]["value"]
    assert model.card == ModelCard.model_validate(card)
    options = model.session.get_session_options()
    assert options.intra_op_num_threads == 1


def test_scores_equal_the_trainers_keras_output(published):
    trained, x, onnx_path, _ = published
    scores, errors = load_model(onnx_path).score(x)
    keras_scores, keras_errors = trained.score(x)
    assert scores.dtype == np.float32 and scores.shape == (len(x),) and errors.shape == x.shape
    np.testing.assert_allclose(scores, keras_scores, atol=1e-4, rtol=0)
    np.testing.assert_allclose(errors, keras_errors, atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(scores, errors.mean(axis=1), rtol=1e-5)


def test_score_checks_the_width_and_accepts_empty_batches(copy):
    model = load_model(copy[0])
    with pytest.raises(ModelError, match=r"takes \[n, 5\] features, got shape \[3, 4\]"):
        model.score(np.zeros((3, 4), np.float32))
    scores, errors = model.score(np.zeros((0, 5), np.float32))
    assert scores.shape == (0,) and errors.shape == (0, 5)


def test_top_features_are_the_largest_field_errors_first(copy):
    """Precomputed features are their own fields; amount_log explains the field amount."""
    model = load_model(copy[0])
    top = model.top_features(np.array([0.1, 3.0, 0.2, 2.0, 0.0]))
    assert [(t.field, t.name, t.error) for t in top] == [("V2", "V2", 3.0), ("V4", "V4", 2.0), ("V3", "V3", 0.2)]
    (top,) = model.top_features(np.array([1.0, 0, 0, 0, 5.0]), k=1)
    assert (top.field, top.name, top.error) == ("amount", "amount_log", 5.0)


def test_missing_files_are_refused(copy, tmp_path):
    onnx_path, card_path, _ = copy
    with pytest.raises(ModelError, match="model file .*nope.onnx does not exist"):
        load_model(tmp_path / "nope.onnx")
    card_path.unlink()
    with pytest.raises(ModelError, match="model card .*m.json does not exist"):
        load_model(onnx_path)


def test_invalid_or_incomplete_card_is_refused(copy):
    onnx_path, card_path, card = copy
    card_path.write_text("{not json")
    with pytest.raises(ModelError, match="m.json is not valid JSON"):
        load_model(onnx_path)
    write_card(card_path, {k: v for k, v in card.items() if k != "threshold"})
    with pytest.raises(ModelError, match=r"m.json is not valid \(lacks threshold\): retrain or pick the matching card"):
        load_model(onnx_path)


def test_card_of_another_graph_is_refused(copy):
    onnx_path, card_path, card = copy
    write_card(card_path, {**card, "onnx_sha256": "0" * 64})
    with pytest.raises(ModelError, match="written for another graph .*retrain or pick the matching card"):
        load_model(onnx_path)


def test_feature_count_mismatch_is_refused(copy):
    onnx_path, card_path, card = copy
    wider = {**card, "feature_names": [*card["feature_names"], "hour_sin"], "n_features": 6}
    write_card(card_path, wider)
    with pytest.raises(ModelError, match=r"explanation.fields must cover each of feature_names exactly once"):
        load_model(onnx_path)
    write_card(card_path, {**wider, "explanation": None})
    with pytest.raises(ModelError, match=r"model card .*m.json lists 6 features but .*m.onnx takes 5: "
                                         r"retrain or pick the matching card"):
        load_model(onnx_path)


def test_corrupt_onnx_is_refused_as_such(copy):
    onnx_path, card_path, card = copy
    onnx_path.write_bytes(b"this is not an onnx graph")
    write_card(card_path, card, onnx_path)
    with pytest.raises(ModelError, match="m.onnx is not a valid ONNX model"):
        load_model(onnx_path)


def test_graph_returning_non_finite_values_fails_the_probe(copy):
    onnx_path, card_path, card = copy
    zeros = helper.make_tensor("zeros", TensorProto.FLOAT, [5], [0.0] * 5)
    graph = helper.make_graph(
        [helper.make_node("Div", ["features", "zeros"], ["feature_errors"]),  # 0 / 0 = NaN
         helper.make_node("ReduceMean", ["feature_errors"], ["score"], axes=[1], keepdims=0)],
        "nan", [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 5])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"]),
         helper.make_tensor_value_info("feature_errors", TensorProto.FLOAT, ["batch", 5])],
        [zeros],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), onnx_path)
    write_card(card_path, card, onnx_path)
    with pytest.raises(ModelError, match="non-finite values on a probe of zeros"):
        load_model(onnx_path)


def test_predict_names_the_part_that_drove_each_score(copy, published):
    """With a `score_contributions` output, each row's driver is the part with the larger contribution; without
    it (an autoencoder alone), every row's is the autoencoder."""
    onnx_path, card_path, card = copy
    start, end, axes = (helper.make_tensor(name, TensorProto.INT64, [1], [value])
                        for name, value in (("start", 0), ("end", 2), ("axes", 1)))
    graph = helper.make_graph(
        [helper.make_node("Mul", ["features", "features"], ["feature_errors"]),
         helper.make_node("ReduceMean", ["feature_errors"], ["score"], axes=[1], keepdims=0),
         helper.make_node("Slice", ["features", "start", "end", "axes"], ["score_contributions"])],
        "parts", [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 5])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"]),
         helper.make_tensor_value_info("feature_errors", TensorProto.FLOAT, ["batch", 5]),
         helper.make_tensor_value_info("score_contributions", TensorProto.FLOAT, ["batch", 2])],
        [start, end, axes],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), onnx_path)
    write_card(card_path, card, onnx_path)
    x = np.array([[3.0, 1.0, 0, 0, 0], [1.0, 3.0, 0, 0, 0], [-2.0, -1.0, 0, 0, 0]], dtype=np.float32)
    prediction = load_model(onnx_path).predict(x)
    assert prediction.drivers() == ["autoencoder", "supervised", "supervised"]
    assert np.allclose(prediction.instance_score, (x ** 2).mean(axis=1))
    autoencoder = load_model(published[2])
    assert autoencoder.predict(np.zeros((2, autoencoder.card.n_features), np.float32)).drivers() == \
        ["autoencoder", "autoencoder"]
    shutil.copy(published[2], onnx_path)  # the same graph, but its card says it holds a supervised head
    parts = {"autoencoder": {}, "head": {"model": "logistic regression"}, "combination": "exp(a log ae + b logit)"}
    write_card(card_path, {**card, "parts": parts}, onnx_path)
    assert load_model(onnx_path).predict(np.zeros((2, 5), np.float32)).drivers() == [None, None]


def test_the_shipped_default_model_serves_simulated_events():
    from stream_app.features import EVENT_FEATURES, vectorize
    from training.simulate import SimulationConfig, simulate

    model = load_model(PROJECT_ROOT / "models" / "default.onnx")
    assert model.feature_names == list(EVENT_FEATURES)
    assert model.card["training"]["command"].startswith("fraudmon train --simulate 100000")
    events, truth = simulate(SimulationConfig(n_events=2000, n_accounts=100, fraud_rate=0.05, seed=11))
    scores, errors = model.score(vectorize(events, model.feature_names))
    assert np.isfinite(scores).all() and errors.shape == (2000, len(EVENT_FEATURES))
    labels = np.array([t.label for t in truth], dtype=bool)
    assert scores[labels].mean() > scores[~labels].mean()


def test_score_buckets_separate_normal_scores_from_the_threshold():
    """The score histogram (dashboard heatmap) must resolve the shipped model's typical normal score from its
    threshold: the median and the threshold in buckets apart, the p99 and p99.9 in order between and around."""
    import bisect
    import json

    from stream_app.metrics import SCORE_BUCKETS
    from tests.conftest import PROJECT_ROOT

    card = json.loads((PROJECT_ROOT / "models" / "default.json").read_text())
    quantiles = card["score_quantiles"]
    positions = [bisect.bisect_left(SCORE_BUCKETS, v)
                 for v in (quantiles["p50"], quantiles["p99"], card["threshold"]["value"], quantiles["p999"])]
    assert positions == sorted(positions), f"buckets out of order: {positions}"
    assert positions[0] < positions[2], f"the median and the threshold share a bucket: {positions}"
    assert list(SCORE_BUCKETS) == sorted(SCORE_BUCKETS) and SCORE_BUCKETS[0] < quantiles["p50"]
