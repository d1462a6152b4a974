"""What `fraudmon train` tells a new user: a data summary before the first epoch, a loud warning without labels,
a caveat when the held-out part has few frauds, and clear errors for empty, fraud-only and all-NaN data."""

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from fraudmon.cli import app
from fraudmon.core.errors import InputDataError
from tests.test_training import HEADER, card_csv
from training.data import load_dataset, split_dataset
from training.report import few_frauds_caveat

START_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z


def events_jsonl(path: Path, n: int, features=None) -> Path:
    """`n` events a minute apart; `features(i)` may give each its `features` mapping."""
    rows = [{"transaction_id": f"t{i}", "account_id": f"a{i % 7}", "amount": 10.0 + i % 13,
             "timestamp": START_MS + 60_000 * i, **({"features": features(i)} if features else {})} for i in range(n)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def truth_csv(path: Path, n: int, label: int) -> Path:
    path.write_text("transaction_id,label,scenario\n" + "".join(f"t{i},{label},x\n" for i in range(n)))
    return path


def test_empty_files_say_what_to_pass(tmp_path):
    for name, text in (("zero.csv", ""), ("zero.jsonl", ""), ("blank.csv", "\n  \n")):
        (tmp_path / name).write_text(text)
        with pytest.raises(InputDataError, match=rf"{name} is empty \(\d+ bytes, no header and no rows\); pass "
                                                 "events as JSON lines or a CSV with the columns transaction_id,"):
            load_dataset(tmp_path / name)
    header_only = tmp_path / "header.csv"
    header_only.write_text(",".join(HEADER) + "\n")
    events_header = tmp_path / "events.csv"
    events_header.write_text("transaction_id,account_id,amount,timestamp\n")
    for path in (header_only, events_header):
        with pytest.raises(InputDataError, match=f"{path.name} has a header but no data rows; add the rows"):
            load_dataset(path)
    empty_truth = tmp_path / "truth.csv"
    empty_truth.write_text("")
    with pytest.raises(InputDataError, match=r"ground-truth file .*truth.csv is empty; it needs the header"):
        load_dataset(events_jsonl(tmp_path / "e.jsonl", 5), empty_truth)


def test_fraud_only_data_says_there_are_no_normal_rows_and_shows_the_labels(tmp_path):
    dataset = load_dataset(card_csv(tmp_path / "cc.csv", n=800, fraud_every=1))
    with pytest.raises(InputDataError) as caught:
        split_dataset(dataset)
    message = str(caught.value)
    assert message.startswith("no normal rows to train the autoencoder on: all 800 rows are labelled fraud")
    assert "column Class of" in message and "value 1 in 800 rows, value 0 in none; 1 = fraud, 0 = normal" in message
    assert "--test-fraction" not in message
    events = load_dataset(events_jsonl(tmp_path / "e.jsonl", 50), truth_csv(tmp_path / "truth.csv", 50, label=1))
    with pytest.raises(InputDataError, match=r"all 50 rows are labelled fraud \(column label of .*truth.csv: value 1"):
        split_dataset(events)


def test_all_nan_columns_are_named_with_their_counts(tmp_path):
    def blank_v3_and_two_amounts(rows):
        for row in rows:
            row[3] = ""
        rows[5][29] = rows[6][29] = "nan"

    path = card_csv(tmp_path / "cc.csv", n=40, edit=blank_v3_and_two_amounts)
    for on_nonfinite in ("drop", "raise"):
        with pytest.raises(InputDataError, match=r"column V3 \(40 NaN/empty\) holds no number in any of the 40 rows, "
                                                 r"so dropping .* \(other columns with NaN/inf cells: Amount: 2\); "
                                                 "fill the column with numbers"):
            load_dataset(path, on_nonfinite=on_nonfinite)
    jsonl = events_jsonl(tmp_path / "e.jsonl", 6, features=lambda i: {"V1": float("nan"), "V2": float(i)})
    with pytest.raises(InputDataError, match=r"column features.V1 \(6 NaN/empty\) holds no number in any of the 6"):
        load_dataset(jsonl)


def test_nan_rows_are_refused_with_the_first_one_named(tmp_path):
    jsonl = events_jsonl(tmp_path / "e.jsonl", 6, features=lambda i: {"V1": float("nan") if i in (2, 4) else 1.0})
    with pytest.raises(InputDataError, match=r"2 rows hold NaN or infinite values \(features.V1: 2\), the first at "
                                             "file line 3; fix or drop them"):
        load_dataset(jsonl, on_nonfinite="raise")
    dataset = load_dataset(jsonl)
    assert len(dataset) == 4 and dataset.rows_read == 6
    assert dataset.source["dropped_detail"] == {"features.V1": 2}
    nan_everywhere = events_jsonl(tmp_path / "n.jsonl", 6, features=lambda i: {"V1": float("nan") if i % 2 else 1.0,
                                                                                "V2": 1.0 if i % 2 else float("nan")})
    with pytest.raises(InputDataError, match=r"all 6 rows of .*n.jsonl hold NaN or infinite values \(features.V2: 3, "
                                             r"features.V1: 3\); fix the file"):
        load_dataset(nan_everywhere)


def train_cli(data: Path, out: Path, *options: str) -> tuple[int, str]:
    """`fraudmon train` on `data` with a tiny network and one epoch: (exit code, output with stderr)."""
    result = CliRunner().invoke(app, ["train", "--data", str(data), "--out-dir", str(out), "--epochs", "1",
                                      "--hidden", "8,4", *options])
    return result.exit_code, result.output


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path):
    (tmp_path / "zero.csv").write_text("")
    all_nan = card_csv(tmp_path / "nan.csv", n=600, edit=lambda rows: [row.__setitem__(3, "") for row in rows])
    cases = {
        tmp_path / "zero.csv": "zero.csv is empty (0 bytes",
        card_csv(tmp_path / "fraud.csv", n=600, fraud_every=1): "no normal rows to train the autoencoder on",
        all_nan: "column V3 (600 NaN/empty) holds no number",
        card_csv(tmp_path / "no-frauds.csv", n=1200): "max_f1 needs frauds among the validation rows, and the 168",
    }
    for data, expected in cases.items():
        code, output = train_cli(data, tmp_path / "models", "--quiet")
        assert code == 2, output
        assert output.startswith("error: ") and output.count("\n") == 1 and expected in output, output
    assert not (tmp_path / "models").exists()


def test_summary_comes_before_the_first_epoch_and_few_frauds_get_a_caveat(tmp_path):
    def poison(rows):
        rows[1][3] = "nan"
        rows[2][3] = ""
        rows[3][29] = "inf"

    data = card_csv(tmp_path / "cc.csv", n=1500, fraud_every=50, edit=poison)
    code, output = train_cli(data, tmp_path / "models")
    assert code == 0, output
    summary = output[: output.index(" - loss: ")]  # the first epoch's progress line (verbose 2)
    assert "cc.csv (creditcard): 1,500 rows read" in summary
    assert "NaN/inf cells per column: V3 2, Amount 1; 3 rows dropped, 1,497 kept" in summary
    assert "1,467 normal, 30 fraud (2.00%)" in summary
    assert "split by time" in summary
    rows = {line.split()[0]: int(line.split()[1].replace(",", "")) for line in summary.splitlines()
            if line.startswith("  ")}
    assert rows == {"train": 822, "validation": 210, "held-out": 449}
    assert "normal only, 16 frauds left out" in summary
    assert "features: 29 (V1, V2, V3, V4, V5, V6, V7, V8, …, V28, amount_log)" in summary
    assert "WARNING: only 9 frauds in the 449 held-out rows (fewer than 30)" in summary
    report = (tmp_path / "models" / "default-report" / "report.md").read_text()
    assert "> **Caveat:** Only 9 frauds in the 449 evaluated rows (fewer than 30): precision, recall" in report


def test_few_frauds_caveat_starts_below_30():
    assert few_frauds_caveat(30, "the rows") is None
    assert "only 29 frauds in the rows" in few_frauds_caveat(29, "the rows")
    assert few_frauds_caveat(0, "the rows").startswith("no frauds in the rows")


def test_no_labels_is_a_loud_warning_and_label_methods_are_refused_before_training(tmp_path):
    data = tmp_path / "nolabels.csv"
    pd.read_csv(card_csv(tmp_path / "cc.csv", n=1200, fraud_every=50)).drop(columns="Class").to_csv(data, index=False)
    code, output = train_cli(data, tmp_path / "models", "--quiet")
    assert code == 0, output
    (warning,) = [line for line in output.splitlines() if line.startswith("WARNING:")]
    assert warning.startswith("WARNING: no labels given (the file has no Class column): every row is treated as normal")
    assert "threshold methods that need labels (max_f1) cannot be used" in warning
    assert "labels: none, all 1,200 rows treated as normal" in output
    assert "> **No labels:**" in (tmp_path / "models" / "default-report" / "report.md").read_text()
    code, output = train_cli(data, tmp_path / "other", "--quiet", "--threshold-method", "max_f1")
    assert code == 2 and output.startswith("error: the threshold method max_f1 needs labels, and this data has none")
    assert output.count("\n") == 1 and not (tmp_path / "other").exists()


def _verdicts(path: Path, verdicts: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"transaction_id": tx, "label": label, "reviewer": "ana"}) + "\n"
                            for tx, label in verdicts))
    return path


def test_verdicts_override_labels_and_train_the_head(tmp_path):
    """Analysts' verdicts replace the ground truth of their transactions; the supervised head learns from them."""
    from fraudmon.core.eventfiles import write_events, write_ground_truth
    from training.simulate import SimulationConfig, simulate

    events, truth = simulate(SimulationConfig(n_events=3000, n_accounts=200, fraud_rate=0.03, seed=5))
    write_events(tmp_path / "e.jsonl", events)
    write_ground_truth(tmp_path / "truth.csv", truth)
    dataset = load_dataset(tmp_path / "e.jsonl", tmp_path / "truth.csv")
    past = split_dataset(dataset).past
    frauds = [dataset.events[i].transaction_id for i in past if dataset.labels[i]]
    normals = [dataset.events[i].transaction_id for i in past if not dataset.labels[i]]
    verdicts = _verdicts(tmp_path / "verdicts.jsonl", [*((tx, "legit") for tx in frauds[:5]),
                                                      *((tx, "fraud") for tx in normals[:20]), ("tx-unknown", "fraud")])
    merged = load_dataset(tmp_path / "e.jsonl", tmp_path / "truth.csv", verdicts=verdicts)
    assert merged.source["verdicts"] == {"path": str(verdicts), "read": 26, "unknown_transactions": 1, "fraud": 20,
                                         "legit": 5, "labels_changed": 25}
    assert int(merged.labels[past].sum()) == len(frauds) - 5 + 20
    code, output = train_cli(tmp_path / "e.jsonl", tmp_path / "models", "--truth", str(tmp_path / "truth.csv"),
                             "--verdicts", str(verdicts), "--quiet")
    assert code == 0, output
    assert "verdicts: 26 read (20 fraud, 5 legit), 25 labels changed, 1 name no transaction here" in output
    card = json.loads((tmp_path / "models" / "default.json").read_text())
    assert card["parts"]["head"]["fitted_on"]["frauds"] == int(merged.labels.sum())  # the served head: every row
    assert card["training"]["data"]["verdicts"]["labels_changed"] == 25

    unlabelled = load_dataset(tmp_path / "e.jsonl", verdicts=verdicts)  # no ground truth: the verdicts are the labels
    assert int(unlabelled.labels.sum()) == 20 and unlabelled.scenarios.count("verdict") == 20
    assert "with the verdicts of" in unlabelled.label_origin
    with pytest.raises(InputDataError, match=r"none of the 1 verdicts in .*other.jsonl names a transaction"):
        load_dataset(tmp_path / "e.jsonl", verdicts=_verdicts(tmp_path / "other.jsonl", [("nope", "fraud")]))
    (tmp_path / "bad.jsonl").write_text('{"transaction_id": "t1", "label": "maybe"}\n')
    with pytest.raises(InputDataError, match=r"bad.jsonl line 1: label: 'maybe' is not one of fraud, legit"):
        load_dataset(tmp_path / "e.jsonl", verdicts=tmp_path / "bad.jsonl")
