"""The batch explanation (`OnnxModel.top_fields` and `explain`) gives exactly what a plain per-row loop gives:
the largest-error fields whose value lies outside the normal range, read as a person reads them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fraudmon.core.events import Event
from fraudmon.core.modelcard import ModelCard
from stream_app.features import field_values
from stream_app.scoring import OnnxModel, TopField, load_model
from tests.conftest import PROJECT_ROOT
from training.simulate import SimulationConfig, simulate


def reference_top(model: OnnxModel, errors: np.ndarray, k: int = 3) -> list[list[TopField]]:
    """Row by row: the fields ranked as `top_features` ranks them, each field's largest feature and summed error."""
    names = list(model.fields)
    position = {name: i for i, name in enumerate(model.feature_names)}
    members = [np.array(sorted(position[f] for f in model.fields[name].features)) for name in names]
    matrix = np.zeros((len(position), len(names)))
    for j, m in enumerate(members):
        matrix[m, j] = 1.0
    summed = errors @ matrix
    k = min(k, len(names))
    top = np.argpartition(-summed, k - 1, axis=1)[:, :k]
    top = np.take_along_axis(top, np.argsort(-np.take_along_axis(summed, top, axis=1), axis=1, kind="stable"), axis=1)
    return [[TopField(names[j], model.feature_names[members[j][np.argmax(row[members[j]])]],
                      float(row[members[j]].sum())) for j in fields]
            for row, fields in zip(errors, top.tolist(), strict=True)]


DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def reference_item(field, value) -> tuple[bool, object, object, object]:
    """One value against its field's range, plainly: (outside, value shown, normal shown, beyond)."""
    normal, kind = field.normal, field.kind
    missing = value is None or (not isinstance(value, str) and math.isnan(value))
    if normal is None:
        if missing or isinstance(value, str):
            return True, None if missing else value, None, None
        shown = {"hour": f"{int(value * 60) // 60:02d}:{int(value * 60) % 60:02d}",
                 "weekday": DAYS[int(value) % 7]}.get(kind, round(float(value), 4))
        return True, shown, None, None
    if kind == "category":
        return value not in normal, value, list(normal), None
    if kind in ("hour", "weekday"):
        period, (start, end) = (24, 7)[kind == "weekday"], (int(normal[0]), int(normal[1]))
        window = [(start + i) % period for i in range((end - start) % period + 1)]
        shown_normal = [f"{start:02d}:00", f"{end + 1:02d}:00"] if kind == "hour" else [DAYS[start], DAYS[end]]
        if missing:
            return True, None, shown_normal, None
        unit = int(value // 1) % period
        if kind == "hour":
            shown = f"{int(value * 60) // 60:02d}:{int(value * 60) % 60:02d}"
            after, before = (value - end - 1) % period, (start - value) % period
        else:
            shown, after, before = DAYS[unit], (unit - end) % period, (start - unit) % period
        outside = unit not in window
        return outside, shown, shown_normal, (round(after if after <= before else -before, 4) if outside else None)
    low, high = normal
    if missing:
        return True, None, list(normal), None
    value = float(value)
    outside = not low <= value <= high
    beyond = value - high if value > high else value - low
    return outside, round(value, 4), list(normal), round(beyond, 4) if outside else None


def reference_explain(model: OnnxModel, events: list[Event], tops: list[list[TopField]], k: int) -> list[list[dict]]:
    """Row by row: the first `k` ranked fields whose value lies outside their normal range (or range unknown)."""
    explained = []
    for i, row in enumerate(tops):
        items = []
        for top in row:
            outside, value, normal, beyond = reference_item(model.fields[top.field],
                                                            field_values([events[i]], top.field)[0])
            if outside and len(items) < k:
                items.append({"name": top.name, "field": top.field, "value": value, "normal": normal,
                              "beyond": beyond, "error": float(f"{top.error:.6g}")})
        explained.append(items)
    return explained


def random_errors(rng: np.random.Generator, n: int, width: int) -> np.ndarray:
    """Half the rows continuous, half from a few values (ties between fields and between a field's features)."""
    continuous = rng.exponential(1.0, (n, width)) * 10.0 ** rng.integers(-6, 4, (n, 1))
    tied = rng.choice([0.0, 0.125, 0.5, 1.0, 3.0], (n, width))
    return np.where(np.arange(n)[:, None] % 2 == 0, continuous, tied).astype(np.float32)


def assert_same(model: OnnxModel, events: list[Event], errors: np.ndarray, k: int = 3) -> None:
    expected = reference_top(model, errors.astype(np.float64), k)
    assert model.top_features(errors, k) == expected
    got = model.explain(events, model.top_fields(errors), k)
    want = reference_explain(model, events, reference_top(model, errors.astype(np.float64), len(model.fields)), k)
    assert got == want
    named = [[item["field"] for item in row] for row in got]
    assert named != [[top.field for top in row] for row in expected], "some field within its range is skipped"
    assert [[type(item["value"]) for item in row] for row in got] == [[type(i["value"]) for i in r] for r in want]


def test_the_shipped_model_explains_a_batch_as_row_by_row():
    model = load_model(PROJECT_ROOT / "models" / "default.onnx")
    events, _ = simulate(SimulationConfig(n_events=400, n_accounts=60, fraud_rate=0.05, seed=4))
    rng = np.random.default_rng(1)
    assert {len(field.features) for field in model.fields.values()} >= {1, 2, 9}, "one-feature and wide fields"
    for k in (1, 3, 5, 50):
        assert_same(model, events, random_errors(rng, len(events), len(model.feature_names)), k)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_any_field_width_sums_to_the_same_last_bit(seed):
    """Fields of 1 to 300 features (numpy adds a row of 8 or more in a pairwise order of its own)."""
    rng = np.random.default_rng(seed)
    widths = [1, 1, 2, 3, 7, 8, 9, 15, 16, 17, 130, 300]
    names = [f"f{i}" for i in range(sum(widths))]
    rng.shuffle(names)
    fields, start = {}, 0
    for i, width in enumerate(widths):
        fields[names[start] if width == 1 else f"g{i}"] = {
            "features": names[start:start + width], "normal": None if i % 3 == 0 else [0.0, float(i)]}
        start += width
    card = ModelCard.model_validate({
        "name": "wide", "version": "v", "feature_names": names, "n_features": len(names), "threshold": {"value": 1.0},
        "onnx_sha256": "0" * 64, "explanation": {"fields": fields}})
    model = OnnxModel(session=None, card=card, path=None)
    values = list(fields)
    events = [Event(f"t{i}", "a", 10.0, 1_700_000_000_000, features={
        name: float(rng.normal(0, 100)) for name in values if rng.random() < 0.8}) for i in range(300)]
    for k in (1, 3, len(widths)):
        assert_same(model, events, random_errors(rng, len(events), len(names)), k)


def test_no_rows_or_no_fields_explain_nothing():
    model = load_model(PROJECT_ROOT / "models" / "default.onnx")
    width = len(model.feature_names)
    assert model.explain([], model.top_fields(np.zeros((0, width)))) == []
    assert model.top_features(np.zeros(width), k=0) == [] and model.top_features(np.zeros((2, width)), k=0) == [[], []]
