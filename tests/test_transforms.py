"""The autoencoder's input transform: money-shaped columns (spanning orders of magnitude, non-negative or
signed) are taken to logs inside the graph, chosen per column from the training rows; the other columns pass."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from training.data import LogColumns


def money_table(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    balance = np.where(rng.random(n) < 0.3, 0.0, rng.lognormal(10, 2, n))  # non-negative, many zeros
    transfer = rng.choice([-1, 1], n) * rng.lognormal(4, 1.8, n)  # signed
    return np.column_stack([balance, transfer, rng.normal(size=n), rng.integers(0, 2, n), rng.uniform(0, 1e6, n)])


def test_money_shaped_columns_are_chosen_and_keep_their_sign():
    x = money_table(5000, 0)
    columns = LogColumns.fit(x)
    assert columns.log.tolist() == [True, True, False, False, False], "uniform, Gaussian and 0/1 columns pass"
    assert columns.scale[0] == pytest.approx(np.median(x[x[:, 0] > 0, 0]))
    out = columns(x)
    np.testing.assert_array_equal(out[:, 2:], x[:, 2:])
    np.testing.assert_array_equal(np.sign(out[:, :2]), np.sign(x[:, :2]))
    assert np.all(np.diff(out[np.argsort(x[:, 1]), 1]) >= 0), "the order of the values is kept"
    assert np.abs(out[:, :2]).max() < 15, "orders of magnitude become units"


@pytest.mark.slow
def test_the_graph_applies_the_transform_and_matches_python(tmp_path):
    pytest.importorskip("tensorflow")
    from fraudmon.core.modelcard import ONNX_INPUT
    from training.detector import FraudDetector
    from training.model import AutoencoderConfig

    x = money_table(3000, 1).astype(np.float32)
    detector = FraudDetector(AutoencoderConfig(hidden=(8, 4), epochs=3), labels="off").fit(x)
    assert detector.columns_.log[:2].all() and detector.parts()["autoencoder"]["log_columns"]["columns"] == [0, 1]
    exported = detector.to_onnx(tmp_path / "m.onnx")
    session = ort.InferenceSession(str(exported.path))
    scores, errors = session.run(None, {ONNX_INPUT: x[:500]})
    np.testing.assert_allclose(scores, detector.score_samples(x[:500]), rtol=1e-3, atol=1e-5)
    # the errors are those of the scaled logs: a balance ten times the largest seen is far off, not off the chart
    far = x[:1].copy()
    far[0, 0] = x[:, 0].max() * 10
    assert session.run(None, {ONNX_INPUT: far})[1][0, 0] < 100
