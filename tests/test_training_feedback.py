"""What `fraudmon train` tells a new user: clear errors for empty, fraud-only and all-NaN data."""

import json
from pathlib import Path

import pytest

from fraudmon.errors import InputDataError
from tests.test_training import HEADER, card_csv
from training.data import load_dataset, time_split

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
        time_split(dataset)
    message = str(caught.value)
    assert message.startswith("no normal rows to train the autoencoder on: all 800 rows are labelled fraud")
    assert "column Class of" in message and "value 1 in 800 rows, value 0 in none; 1 = fraud, 0 = normal" in message
    assert "--test-fraction" not in message
    events = load_dataset(events_jsonl(tmp_path / "e.jsonl", 50), truth_csv(tmp_path / "truth.csv", 50, label=1))
    with pytest.raises(InputDataError, match=r"all 50 rows are labelled fraud \(column label of .*truth.csv: value 1"):
        time_split(events)


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
