"""fraudmon.core.eventfiles: each reader and writer round trip, the card-holder parser's non-finite policy (the
same whoever calls it), errors naming file, line and column, and ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fraudmon.core.errors import InputDataError
from fraudmon.core.eventfiles import (
    CREDITCARD_COLUMNS,
    DEFAULT_BASE_TIME,
    GroundTruth,
    Tally,
    creditcard_event,
    detect_format,
    is_json_lines,
    iter_events,
    json_lines,
    open_event_file,
    read_creditcard,
    read_events_file,
    read_ground_truth,
    read_numeric_table,
    write_events,
    write_ground_truth,
)
from fraudmon.core.events import FILE_LIMITS, Event, event_from_dict
from training.data import load_dataset

CARD_HEADER = [*CREDITCARD_COLUMNS, "Class"]


def _events() -> list[Event]:
    """Events with every optional field somewhere, and features on some of them (not the same names)."""
    rows = [
        {"transaction_id": "t1", "account_id": "a1", "amount": 12.5, "timestamp": "2026-11-01T10:00:00.000Z",
         "currency": "EUR", "merchant_id": "m-1", "merchant_category": "5411", "country": "DE", "ip": "11.0.0.1",
         "device_id": "dev-1", "channel": "ecommerce", "account_created_at": "2024-01-01T00:00:00.000Z"},
        {"transaction_id": "t2", "account_id": "a2", "amount": 0.1 + 0.2, "timestamp": 1_793_491_250_257,
         "channel": "transfer", "counterparty_id": "acc-9", "features": {"V1": -1.3598071336738, "V2": 1e-300}},
        {"transaction_id": "t3", "account_id": "a1", "amount": 2500, "timestamp": "2026-11-01T10:00:01.5+02:00",
         "features": {"V2": 3.0}},
    ]
    return [event_from_dict(row, FILE_LIMITS) for row in rows]


def _card_csv(path: Path, cells: dict[tuple[int, str], str] | None = None, n: int = 6) -> Path:
    """A card-holder CSV of `n` rows; `cells[(row, column)]` replaces a cell (row 0-based)."""
    rows = []
    for i in range(n):
        row = {"Time": str(i * 10), **{f"V{j}": f"{(i * j) % 7 - 3.0:.15g}" for j in range(1, 29)},
               "Amount": f"{10 + i}.25", "Class": str(int(i == 4))}
        for (r, column), text in (cells or {}).items():
            if r == i:
                row[column] = text
        rows.append(",".join(row[c] for c in CARD_HEADER))
    path.write_text("\n".join([",".join(CARD_HEADER), *rows]) + "\n")
    return path


# ------------------------------------------------------------------------------------------- event files


def test_json_lines_round_trip(tmp_path: Path) -> None:
    events = _events()
    path = tmp_path / "events.jsonl"
    assert write_events(path, events) == 3
    assert list(iter_events(path)) == events
    assert [json.loads(line) for _, line in json_lines(path)][1]["features"] == {"V1": -1.3598071336738, "V2": 1e-300}
    source = open_event_file(path)
    assert (source.kind, source.rows, source.ground_truth(), source.labels) == ("events-jsonl", 3, None, None)
    assert list(source.events()) == events


def test_event_csv_round_trip_keeps_features(tmp_path: Path) -> None:
    events = _events()
    path = tmp_path / "events.csv"
    assert write_events(path, events) == 3
    header = path.read_text().splitlines()[0].split(",")
    assert header[-2:] == ["features.V1", "features.V2"]
    assert detect_format(path) == "events-csv" and not is_json_lines(path)
    assert read_events_file(path) == (events, [])
    assert list(iter_events(path))[0].features == {}  # an empty features.<name> cell: the feature is absent


def test_json_lines_bad_line_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    write_events(path, _events())
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "", "{not json", lines[2]]) + "\n")
    with pytest.raises(InputDataError, match=rf"^{path} file line 3: not JSON \("):
        open_event_file(path)
    path.write_text("\n".join([lines[0], lines[1].replace('"amount":', '"amount":"lots","x":')]) + "\n")
    with pytest.raises(InputDataError, match=rf"^{path} file line 2, field amount: must be a number$"):
        list(iter_events(path))


def test_event_csv_errors_name_row_and_column(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text("transaction_id,account_id,amount,timestamp\nt1,a,1.5,0\nt2,a,lots,0\n")
    with pytest.raises(InputDataError, match=r"data row 2 \(file line 3\), column amount: 'lots' is not a number"):
        open_event_file(path)
    path.write_text("transaction_id,amount\nt1,1\n")
    with pytest.raises(InputDataError, match="lacks the event columns account_id, timestamp in its header"):
        open_event_file(path)


def test_nonfinite_event_rows_follow_the_same_policy(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text("transaction_id,account_id,amount,timestamp,features.V1\n"
                    "t1,a,1.5,0,1\nt2,a,,0,2\nt3,a,2,0,nan\nt4,a,3,0,\n")
    with pytest.raises(InputDataError, match=r"2 rows hold NaN or infinite values \(amount: 1, features.V1: 1\), "
                                             r"the first at data row 2 \(file line 3\); fix or drop them"):
        open_event_file(path)
    kept = open_event_file(path, on_nonfinite="drop")
    assert [e.transaction_id for e in kept.events()] == ["t1", "t4"] and kept.rows == 2
    assert (kept.tally.rows_read, kept.tally.dropped) == (4, {"amount": 1, "features.V1": 1})


# -------------------------------------------------------------------------------------- card-holder CSV


def test_creditcard_nan_and_empty_cells_refused_naming_row_and_column(tmp_path: Path) -> None:
    path = _card_csv(tmp_path / "cc.csv", {(1, "V3"): "NaN", (3, "Amount"): ""})
    expected = (rf"^{path}: 2 rows hold NaN or infinite values \(V3: 1, Amount: 1\), the first at data row 2 "
                r"\(file line 3\), column V3: 'NaN' is not a finite number; fix or drop them$")
    for read in (lambda: read_creditcard(path), lambda: open_event_file(path),
                 lambda: load_dataset(path, on_nonfinite="raise")):  # produce's and train's way in
        with pytest.raises(InputDataError, match=expected):
            read()
    only_empty = _card_csv(tmp_path / "empty.csv", {(3, "Amount"): ""})
    with pytest.raises(InputDataError, match=r"data row 4 \(file line 5\), column Amount: '' is not a number "
                                             r"\(empty cell\)"):
        read_creditcard(only_empty)


def test_creditcard_nan_and_empty_cells_dropped_and_counted(tmp_path: Path) -> None:
    path = _card_csv(tmp_path / "cc.csv", {(1, "V3"): "NaN", (3, "Amount"): ""})
    data = read_creditcard(path, on_nonfinite="drop")
    tally = data.table.tally
    assert (tally.rows_read, tally.dropped_rows, tally.dropped) == (6, 2, {"V3": 1, "Amount": 1})
    assert data.table.rows.tolist() == [0, 2, 4, 5] and data.table.lines.tolist() == [2, 4, 6, 7]
    events = list(data.events())
    assert [e.transaction_id for e in events] == ["cc-0", "cc-2", "cc-4", "cc-5"]  # ids keep the file's rows
    assert data.ground_truth() == [GroundTruth("cc-0", 0, "normal"), GroundTruth("cc-2", 0, "normal"),
                                   GroundTruth("cc-4", 1, "creditcard"), GroundTruth("cc-5", 0, "normal")]
    produced = list(open_event_file(path, on_nonfinite="drop").events())
    trained = load_dataset(path)  # train drops by default
    assert produced == events == trained.events
    assert trained.labels.tolist() == [0, 0, 1, 0] and trained.source["dropped_detail"] == {"V3": 1, "Amount": 1}


def test_creditcard_values_are_exact_and_accounts_stable(tmp_path: Path) -> None:
    path = _card_csv(tmp_path / "cc.csv", {(0, "V22"): "0.00527359678253453", (0, "Time"): "1.5"}, n=1)
    (event,) = open_event_file(path, accounts=37).events()
    assert event.features["V22"] == float("0.00527359678253453")  # Python's exact parse, not a 1-ulp neighbour
    assert event.timestamp_ms == int(DEFAULT_BASE_TIME.timestamp() * 1000) + 1500
    assert event.amount == 10.25 and event.currency == "EUR"
    row = read_creditcard(path).table.values[0, : len(CREDITCARD_COLUMNS)]
    base_ms = int(DEFAULT_BASE_TIME.timestamp() * 1000)
    assert creditcard_event(0, row, base_ms, 37) == event
    assert event.account_id.startswith("cc-acc-") and 0 <= int(event.account_id[7:]) < 37


@pytest.mark.parametrize(("cells", "problem"), [
    ({(2, "V7"): "abc"}, r"data row 3 \(file line 4\), column V7: 'abc' is not a number"),
    ({(2, "Amount"): "-3"}, r"data row 3 \(file line 4\), column Amount: -3 is negative"),
    ({(2, "Class"): "2"}, r"data row 3 \(file line 4\), column Class: 2 is not 0 or 1"),
])
def test_creditcard_bad_values_name_row_and_column(tmp_path: Path, cells: dict, problem: str) -> None:
    path = _card_csv(tmp_path / "cc.csv", cells)
    for on_nonfinite in ("raise", "drop"):
        with pytest.raises(InputDataError, match=problem):
            read_creditcard(path, on_nonfinite=on_nonfinite)


def test_creditcard_empty_column_header_only_and_missing_columns(tmp_path: Path) -> None:
    blank_v3 = _card_csv(tmp_path / "v3.csv", {(i, "V3"): "" for i in range(6)})
    for on_nonfinite in ("raise", "drop"):
        with pytest.raises(InputDataError, match=r"column V3 \(6 NaN/empty\) holds no number in any of the 6 rows"):
            read_creditcard(blank_v3, on_nonfinite=on_nonfinite)
    header_only = tmp_path / "header.csv"
    header_only.write_text(",".join(CARD_HEADER) + "\n")
    with pytest.raises(InputDataError, match="has a header but no data rows; add the rows below the header"):
        read_creditcard(header_only)
    no_v7 = tmp_path / "no_v7.csv"
    no_v7.write_text(",".join(c for c in CARD_HEADER if c != "V7") + "\n")
    with pytest.raises(InputDataError, match=r"required column V7 is missing from the header \(line 1\)"):
        read_creditcard(no_v7)
    no_class = _card_csv(tmp_path / "no_class.csv")
    no_class.write_text("\n".join(line.rsplit(",", 1)[0] for line in no_class.read_text().splitlines()) + "\n")
    assert read_creditcard(no_class).ground_truth() is None and detect_format(no_class) == "creditcard"


# ------------------------------------------------------------------------------------------ numeric tables


def test_numeric_table_matrix_and_column_names(tmp_path: Path) -> None:
    path = tmp_path / "table.csv"
    path.write_text("a,b,c\n1,2.5,-3e-2\n\n4,inf,6\n7,8,9\n")
    table = read_numeric_table(path, on_nonfinite="drop")
    assert table.columns == ("a", "b", "c")
    np.testing.assert_array_equal(table.values, [[1.0, 2.5, -0.03], [7.0, 8.0, 9.0]])
    assert table.rows.tolist() == [0, 2] and table.lines.tolist() == [2, 5]
    assert table.tally.dropped == {"b": 1}
    chosen = read_numeric_table(path, ["c", "a"], on_nonfinite="drop")  # only the chosen columns are read
    assert chosen.values.tolist() == [[-0.03, 1.0], [6.0, 4.0], [9.0, 7.0]] and chosen.tally.dropped_rows == 0
    with pytest.raises(InputDataError, match=r"data row 2 \(file line 4\), column b: 'inf' is not a finite number"):
        read_numeric_table(path)
    with pytest.raises(InputDataError, match="required column d is missing from the header"):
        read_numeric_table(path, ["a", "d"])
    path.write_text("a,b\n1,2\n3\n")
    with pytest.raises(InputDataError, match=r"data row 2 \(file line 3\): 1 fields but 2 columns in the header"):
        read_numeric_table(path)


# ---------------------------------------------------------------------------------------------- ground truth


def test_ground_truth_round_trip(tmp_path: Path) -> None:
    truth = [GroundTruth("t1", 0, "normal"), GroundTruth("t2", 1, "card_testing"), GroundTruth("t,3", 1, "x")]
    path = tmp_path / "truth.csv"
    assert write_ground_truth(path, truth) == 3
    assert path.read_text().splitlines()[0] == "transaction_id,label,scenario"
    assert read_ground_truth(path) == truth
    path.write_text("transaction_id,label\nt1,0\nt2,1\n")
    assert read_ground_truth(path) == [GroundTruth("t1", 0, "normal"), GroundTruth("t2", 1, "normal")]


def test_ground_truth_errors_say_what_to_fix(tmp_path: Path) -> None:
    path = tmp_path / "truth.csv"
    path.write_text("")
    with pytest.raises(InputDataError, match="is empty; it needs the header transaction_id,label,scenario"):
        read_ground_truth(path)
    path.write_text("transaction_id,label,scenario\nt1,0,normal\nt2,yes,x\n")
    with pytest.raises(InputDataError, match="line 3, column label: 'yes' is not 0 or 1"):
        read_ground_truth(path)
    path.write_text("transaction_id,scenario\nt1,normal\n")
    with pytest.raises(InputDataError, match="lacks the ground-truth columns label"):
        read_ground_truth(path)
    with pytest.raises(InputDataError, match="does not exist"):
        read_ground_truth(tmp_path / "missing.csv")


# ---------------------------------------------------------------------------------------------- any file


def test_formats_are_told_apart_and_unknown_ones_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.csv"
    other.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(InputDataError, match="unrecognised header 'a,b,c'.*Time,V1..V28,Amount,Class"):
        open_event_file(other)
    blank = tmp_path / "blank.csv"
    blank.write_text("\n \n")
    with pytest.raises(InputDataError, match=r"is empty \(3 bytes, no header and no rows\)"):
        open_event_file(blank)
    with pytest.raises(InputDataError, match="unknown data format 'table'"):
        open_event_file(other, fmt="table")  # type: ignore[arg-type]
    lines = tmp_path / "events.txt"
    write_events(lines, _events())  # JSON lines under another name: told by the first line
    assert detect_format(lines) == "events-jsonl"
    forced = open_event_file(_card_csv(tmp_path / "cc.txt"), fmt="creditcard")
    assert forced.kind == "creditcard" and forced.labels.tolist() == [0, 0, 0, 0, 1, 0]


def test_tally_settle_applies_the_policy(tmp_path: Path) -> None:
    tally = Tally(rows_read=3)
    tally.set_aside(["amount"], "file line 2")
    tally.settle(tmp_path / "x.jsonl", "drop")
    with pytest.raises(InputDataError, match=r"1 row holds NaN or infinite values \(amount: 1\), the first at file "
                                             "line 2; fix or drop them"):
        tally.settle(tmp_path / "x.jsonl", "raise")
    with pytest.raises(InputDataError, match="holds no events; add one JSON object per line"):
        Tally().settle(tmp_path / "x.jsonl", "drop", header=False)
