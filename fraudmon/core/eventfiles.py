"""Event files: the one place that reads and writes them, for produce, train, simulate, replay and evaluate.

Formats, told apart by name and header (`detect_format`):

- JSON lines: one event object per line, as the event contract (docs/contracts.md) describes it.
- Event CSV: the contract's fields as columns (`CSV_COLUMNS`; the first four are required) plus one
  `features.<name>` column per precomputed feature (an empty cell: the event lacks that feature).
- The public card-holder CSV `Time,V1..V28,Amount[,Class]`: each row becomes an event (`creditcard_event`),
  `Class` its label.
- Numeric tables: a CSV of numeric columns read as a matrix with its column names (the card-holder CSV is one).
  A feature table (`TableSpec`, `--format table --label-column COL`) is one whose numeric columns are the
  features and whose label column marks the frauds; each row becomes an event `row-<n>` carrying the columns
  in `features` (`TableData`). Columns holding text are skipped and named.
- Ground truth: `transaction_id,label,scenario`, kept apart from the events (`GroundTruth`).
- Analysts' verdicts: JSON lines of the verdict contract (`read_verdicts`).

Events are validated by the event gate (`event_from_dict` with `FILE_LIMITS`); every error is an
`InputDataError` naming the file, the line or row and the column.

Non-finite policy (`on_nonfinite`): numbers are read with Python's `float` (exact decimal to binary). A row
with a NaN, infinite or empty number (an empty `amount` or card-holder cell; an empty `features.<name>` cell
only means the feature is absent) is set aside and counted per column. Then `"raise"` refuses the file naming
the first such row and column, and `"drop"` keeps the other rows (the counts say what was dropped). Either way
a file is refused when it has no data rows, when a column holds no number in any row, or when nothing is left.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal, NamedTuple, get_args

import numpy as np

from fraudmon.core.errors import InputDataError
from fraudmon.core.events import (
    FILE_LIMITS,
    Event,
    InvalidEvent,
    Verdict,
    event_from_dict,
    event_to_dict,
    parse_verdict,
)

Format = Literal["auto", "events", "creditcard"]
FORMATS: tuple[str, ...] = get_args(Format)
"""What `--format` accepts: `auto` tells the format from the file's name and header."""
FileKind = Literal["events-jsonl", "events-csv", "creditcard", "table"]
NonFinite = Literal["raise", "drop"]

JSON_LINES_SUFFIXES = (".jsonl", ".json", ".ndjson")
CSV_COLUMNS = (
    "transaction_id", "account_id", "amount", "timestamp", "currency", "merchant_id", "merchant_category",
    "country", "ip", "device_id", "channel", "counterparty_id", "account_created_at",
)
"""The event fields written as CSV columns, named as in the JSON form; `features` become `features.<name>`."""
REQUIRED_EVENT_COLUMNS = CSV_COLUMNS[:4]
FEATURE_PREFIX = "features."
TRUTH_COLUMNS = ("transaction_id", "label", "scenario")
NORMAL = "normal"
"""The scenario of every label-0 event."""

CREDITCARD_FEATURES = tuple(f"V{i}" for i in range(1, 29))
CREDITCARD_COLUMNS = ("Time", *CREDITCARD_FEATURES, "Amount")  # plus the optional label `Class`
CREDITCARD_SCENARIO = "creditcard"
DEFAULT_BASE_TIME = datetime(2013, 9, 1, tzinfo=UTC)  # the card-holder dataset covers two days of September 2013
DEFAULT_FILE_ACCOUNTS = 1_000
_AMOUNT = len(CREDITCARD_COLUMNS) - 1  # position of Amount in a card-holder row
_CHUNK_ROWS = 8_192  # table rows gathered as Python lists before they become one numpy block
TABLE_FORMAT = "table"
DATA_FORMATS: tuple[str, ...] = (*FORMATS, TABLE_FORMAT)
"""What the commands' `--format` accepts: the event file formats, and `table` (with `--label-column`)."""
TABLE_ID_PREFIX = "row-"


# ---------------------------------------------------------------------------------------------- ground truth


class GroundTruth(NamedTuple):
    """The label of one event: 1 = fraud, with the scenario that made it (`normal` for label 0)."""

    transaction_id: str
    label: int
    scenario: str


def write_ground_truth(path: str | Path, truth: Iterable[GroundTruth]) -> int:
    """Write labels as CSV `transaction_id,label,scenario`; return the count."""
    count = 0
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with Path(path).open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(TRUTH_COLUMNS)
        for row in truth:
            writer.writerow(row)
            count += 1
    return count


def read_ground_truth(path: str | Path) -> list[GroundTruth]:
    """Read a ground-truth CSV `transaction_id,label[,scenario]` (as `write_ground_truth` writes it)."""
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"ground-truth file {path} does not exist")
    if _is_blank(path):
        raise InputDataError(f"ground-truth file {path} is empty; it needs the header {','.join(TRUTH_COLUMNS)} "
                             "and one row per event (label 1 = fraud, 0 = normal)")
    with _text(path) as source:
        reader = csv.DictReader(source)
        missing = [c for c in TRUTH_COLUMNS[:2] if c not in (reader.fieldnames or [])]
        if missing:
            raise InputDataError(f"{path} lacks the ground-truth columns {', '.join(missing)} "
                                 f"(expected {','.join(TRUTH_COLUMNS)})")
        truth = []
        for row in reader:
            label = (row["label"] or "").strip()
            if label not in ("0", "1"):
                raise InputDataError(f"{path} line {reader.line_num}, column label: {label[:20]!r} is not 0 or 1")
            if not row["transaction_id"]:
                raise InputDataError(f"{path} line {reader.line_num}, column transaction_id: empty; every label "
                                     "needs the id of its event")
            truth.append(GroundTruth(row["transaction_id"], int(label), (row.get("scenario") or "").strip() or NORMAL))
    return truth


def read_verdicts(path: str | Path) -> list[Verdict]:
    """Analysts' verdicts from JSON lines (`{"transaction_id", "label": "fraud"|"legit", ...}`), in file order;
    a malformed one is an error naming its line and field."""
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"verdicts file {path} does not exist")
    verdicts = []
    for number, line in json_lines(path):
        try:
            verdicts.append(parse_verdict(line))
        except InvalidEvent as exc:
            raise InputDataError(f"{path} line {number}: {exc}; fix or remove the verdict") from None
    if not verdicts:
        raise InputDataError(f"{path} holds no verdicts; add one JSON object per line "
                             '({"transaction_id": ..., "label": "fraud" or "legit"})')
    return verdicts


# ---------------------------------------------------------------------------------------- non-finite policy


@dataclass
class Tally:
    """Rows a reader read, and those it set aside for a NaN, infinite or empty number (cells per column)."""

    rows_read: int = 0
    dropped_rows: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    first: str = ""  # where the first set-aside row is (and why), for messages

    def set_aside(self, columns: Sequence[str], where: str) -> None:
        """Count a row with non-finite or empty numbers in `columns`, found at `where`."""
        self.dropped_rows += 1
        self.first = self.first or where
        for name in columns:
            self.dropped[name] = self.dropped.get(name, 0) + 1

    def settle(self, path: Path, on_nonfinite: NonFinite, *, header: bool = True) -> None:
        """Apply the non-finite policy once the whole file is read (see the module's docstring)."""
        if self.rows_read == 0:
            raise InputDataError(f"{path} has a header but no data rows; add the rows below the header" if header
                                 else f"{path} holds no events; add one JSON object per line")
        empty = [name for name, n in self.dropped.items() if n == self.rows_read]
        if empty:
            others = {name: n for name, n in self.dropped.items() if name not in empty}
            optional = any(name.startswith(FEATURE_PREFIX) for name in empty)
            raise InputDataError(
                f"{path}: {'column' if len(empty) == 1 else 'columns'} "
                f"{', '.join(f'{name} ({self.dropped[name]} NaN/empty)' for name in empty)} "
                f"{'holds' if len(empty) == 1 else 'hold'} no number in any of the {self.rows_read} rows, so "
                "dropping the rows with NaN would leave none"
                + (f" (other columns with NaN/inf cells: {_counts(others)})" if others else "")
                + "; fill the column with numbers"
                + (f", or remove it if it is an optional {FEATURE_PREFIX}<name> column" if optional else "")
            )
        if self.dropped_rows and on_nonfinite == "raise":
            rows = "1 row holds" if self.dropped_rows == 1 else f"{self.dropped_rows} rows hold"
            raise InputDataError(f"{path}: {rows} NaN or infinite values ({_counts(self.dropped)}), the first at "
                                 f"{self.first}; fix or drop them")
        if self.dropped_rows == self.rows_read:
            raise InputDataError(f"all {self.rows_read} rows of {path} hold NaN or infinite values "
                                 f"({_counts(self.dropped)}); fix the file")


def _counts(detail: dict[str, int]) -> str:
    return ", ".join(f"{name}: {n}" for name, n in detail.items())


def _check_policy(on_nonfinite: str) -> None:
    if on_nonfinite not in ("raise", "drop"):
        raise InputDataError(f"unknown non-finite policy {on_nonfinite!r}: use raise or drop")


# ------------------------------------------------------------------------------------------- plumbing


def _binary(path: Path) -> IO[bytes]:
    """Open a file for reading bytes, decompressing it when its name ends in `.gz`."""
    return gzip.open(path, "rb") if path.suffix.lower() == ".gz" else path.open("rb")


@contextmanager
def _text(path: Path) -> Iterator[IO[str]]:
    """Open a text file (gzipped when named `.gz`) for reading (UTF-8, an optional byte order mark); decoding and
    CSV errors name the file."""
    try:
        with io.TextIOWrapper(_binary(path), encoding="utf-8-sig", newline="") as source:
            yield source
    except UnicodeDecodeError as exc:
        raise InputDataError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x}); save it as UTF-8") from None
    except csv.Error as exc:
        raise InputDataError(f"{path}: not a readable CSV ({exc})") from None


def _is_blank(path: Path) -> bool:
    """Zero bytes or only whitespace (read until the first other byte, so a big file costs one block)."""
    with _binary(path) as handle:
        return not any(block.strip() for block in iter(lambda: handle.read(1 << 16), b""))


def _missing_columns(path: Path, missing: Sequence[str], what: str, need: str) -> InputDataError:
    if len(missing) == 1:
        return InputDataError(f"{path}: required column {missing[0]} is missing from the header (line 1); {need}")
    return InputDataError(f"{path} lacks the {what} columns {', '.join(missing)} in its header (line 1); {need}")


def _is_nonfinite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


# ----------------------------------------------------------------------------------------------- events


def is_json_lines(path: str | Path) -> bool:
    """JSON lines by name (.jsonl, .json, .ndjson) or by content (the first line is an object)."""
    path = Path(path)
    if path.suffix.lower() in JSON_LINES_SUFFIXES:
        return True
    with _text(path) as source:
        return source.readline().lstrip().startswith("{")


def json_lines(path: str | Path) -> Iterator[tuple[int, bytes]]:
    """The non-blank lines of a JSON-lines file as raw bytes with their line numbers (replay sends them as is)."""
    with _binary(Path(path)) as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                yield number, line.rstrip(b"\r\n")


def _event_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """The raw rows of a JSON-lines or event-CSV file, each with where it stands (`<path> file line N`), for
    `event_from_dict`. CSV cells arrive as JSON would: numbers for `amount` (an empty cell is NaN) and the
    `features.<name>` columns (an empty cell is left out), an all-digit `timestamp` as epoch milliseconds."""
    if is_json_lines(path):
        for number, line in json_lines(path):
            where = f"{path} file line {number}"
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputDataError(f"{where}: not UTF-8 (byte 0x{line[exc.start]:02x}); save the file as UTF-8") \
                    from None
            try:
                yield where, json.loads(text.removeprefix("\ufeff") if number == 1 else text)
            except json.JSONDecodeError as exc:
                raise InputDataError(f"{where}: not JSON ({exc.msg})") from None
        return
    with _text(path) as source:
        reader = csv.DictReader(source)
        header = reader.fieldnames or []
        missing = [c for c in REQUIRED_EVENT_COLUMNS if c not in header]
        if missing:
            need = f"event CSV files need {', '.join(REQUIRED_EVENT_COLUMNS)} (has: {', '.join(header)})"
            raise _missing_columns(path, missing, "event", need)
        for row_no, row in enumerate(reader, start=1):
            where = f"{path} data row {row_no} (file line {reader.line_num})"
            if None in row or any(value is None for value in row.values()):
                raise InputDataError(f"{where}: {len(header)} columns in the header but a different number in this row")
            data: dict[str, Any] = {k: v for k, v in row.items() if v != "" and not k.startswith(FEATURE_PREFIX)}
            numbers = {"amount": row["amount"]}
            numbers.update((k, v) for k, v in row.items() if k.startswith(FEATURE_PREFIX) and v != "")
            for column, text in numbers.items():
                try:
                    value = float(text) if text != "" else math.nan
                except ValueError:
                    raise InputDataError(f"{where}, column {column}: {text[:30]!r} is not a number") from None
                if column == "amount":
                    data["amount"] = value
                else:
                    data.setdefault("features", {})[column.removeprefix(FEATURE_PREFIX)] = value
            if data.get("timestamp", "").isdigit():
                data["timestamp"] = int(data["timestamp"])
            yield where, data


def iter_events(path: str | Path, tally: Tally | None = None) -> Iterator[Event]:
    """The events of a JSON-lines or event-CSV file, lazily, in file order.

    A row with a NaN, infinite or empty number is counted in `tally` and skipped (the caller then calls
    `tally.settle`); without a tally it is an error. Any other invalid row is an error naming the row and field.
    """
    path = Path(path)
    for where, row in _event_rows(path):
        bad = [k for k, v in row.items() if k != "features" and _is_nonfinite(v)]
        features = row.get("features")
        if isinstance(features, dict):
            bad += [f"{FEATURE_PREFIX}{k}" for k, v in features.items() if _is_nonfinite(v)]
        if tally is not None:
            tally.rows_read += 1
            if bad:
                tally.set_aside(bad, where.removeprefix(f"{path} "))
                continue
        elif bad:
            raise InputDataError(f"{where}, column {bad[0]}: NaN or infinite; fix or drop the row")
        try:
            yield event_from_dict(row, FILE_LIMITS)
        except InvalidEvent as exc:
            raise InputDataError(f"{where}, field {exc}") from None


def write_events(path: str | Path, events: Iterable[Event]) -> int:
    """Write events as JSON lines, or as event CSV when the name ends in `.csv`; return the count."""
    path = Path(path)
    count = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as out:
        if path.suffix.lower() == ".csv":
            events = list(events)  # the header names every feature any event carries
            names = dict.fromkeys(name for event in events for name in event.features)
            writer = csv.DictWriter(out, fieldnames=[*CSV_COLUMNS, *(f"{FEATURE_PREFIX}{n}" for n in names)])
            writer.writeheader()
            for event in events:
                row = event_to_dict(event)
                row.update((f"{FEATURE_PREFIX}{k}", v) for k, v in row.pop("features", {}).items())
                writer.writerow(row)
                count += 1
        else:
            for event in events:
                out.write(json.dumps(event_to_dict(event), separators=(",", ":")))
                out.write("\n")
                count += 1
    return count


# ------------------------------------------------------------------------------------------ numeric tables


@dataclass(frozen=True)
class NumericTable:
    """A CSV of numeric columns: `values[k, j]` is column `columns[j]` of kept row k, which was data row
    `rows[k]` (0-based, blank lines not counted) on file line `lines[k]`."""

    path: Path
    columns: tuple[str, ...]
    values: np.ndarray = field(repr=False)
    rows: np.ndarray = field(repr=False)
    lines: np.ndarray = field(repr=False)
    tally: Tally

    def where(self, k: int) -> str:
        """Where kept row `k` stands, for messages."""
        return f"{self.path} data row {int(self.rows[k]) + 1} (file line {int(self.lines[k])})"


def read_numeric_table(path: str | Path, columns: Sequence[str] | None = None, on_nonfinite: NonFinite = "raise",
                       *, kind: str = "numeric", need: str | None = None) -> NumericTable:
    """Read `columns` (default: all) of a CSV of numbers into a float64 matrix, under the non-finite policy.

    `kind` and `need` word the error about missing columns (e.g. `card-holder`, and what the format holds).
    """
    path = Path(path)
    _check_policy(on_nonfinite)
    columns = tuple(columns or ())
    need = need or ("the file needs the columns " + ", ".join(columns) if columns else
                    "line 1 must name the columns")
    tally = Tally()
    blocks: list[np.ndarray] = []
    chunk: list[list[float]] = []
    rows: list[int] = []
    lines: list[int] = []
    with _text(path) as source:
        reader = csv.reader(source)
        header = next(reader, None)
        if not header:
            raise InputDataError(f"{path}: no header on line 1; {need}")
        names = columns or tuple(header)
        missing = [c for c in names if c not in header]
        if missing:
            raise _missing_columns(path, missing, kind, need)
        index = [header.index(c) for c in names]
        for row in reader:
            if not row:
                continue  # a blank line
            tally.rows_read += 1
            where = f"data row {tally.rows_read} (file line {reader.line_num})"
            if len(row) != len(header):
                raise InputDataError(f"{path} {where}: {len(row)} fields but {len(header)} columns in the header")
            try:
                values = [float(row[i]) for i in index]
            except ValueError:
                values = [_cell(path, where, name, row[i]) for name, i in zip(names, index, strict=True)]
            if not all(map(math.isfinite, values)):
                bad = [j for j, value in enumerate(values) if not math.isfinite(value)]
                text = row[index[bad[0]]]
                why = f"{text!r} is not a number (empty cell)" if not text.strip() else \
                    f"{text[:30]!r} is not a finite number"
                tally.set_aside([names[j] for j in bad], f"{where}, column {names[bad[0]]}: {why}")
                continue
            chunk.append(values)
            rows.append(tally.rows_read - 1)
            lines.append(reader.line_num)
            if len(chunk) == _CHUNK_ROWS:
                blocks.append(np.asarray(chunk, dtype=np.float64))
                chunk = []
    tally.dropped = {name: tally.dropped[name] for name in names if name in tally.dropped}  # in column order
    tally.settle(path, on_nonfinite)
    if chunk:
        blocks.append(np.asarray(chunk, dtype=np.float64))
    values = np.concatenate(blocks) if blocks else np.empty((0, len(names)))
    return NumericTable(path, names, values, np.asarray(rows, dtype=np.int64), np.asarray(lines, dtype=np.int64),
                        tally)


def _cell(path: Path, where: str, name: str, text: str) -> float:
    """One cell as a number: empty is NaN (for the non-finite policy); other text is an error naming the cell."""
    if not text.strip():
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise InputDataError(f"{path} {where}, column {name}: {text[:30]!r} is not a number") from None


def _hashed_account(prefix: str, values: np.ndarray, accounts: int) -> str:
    """A made-up account id for a file row without one: a hash of its values over `accounts` (stable across runs)."""
    return f"{prefix}{zlib.crc32(np.ascontiguousarray(values).tobytes()) % accounts}"


# ---------------------------------------------------------------------------------------- feature tables


@dataclass(frozen=True)
class TableSpec:
    """How to read a feature table: the column that labels each row, the value of it that marks a fraud (compared
    as text, or as a number when both are numbers), and an optional time column (seconds; only its order matters,
    for the split)."""

    label_column: str
    fraud_value: str = "1"
    time_column: str | None = None

    def is_fraud(self, text: str) -> bool:
        text = text.strip()
        if text == self.fraud_value.strip():
            return True
        try:
            return float(text) == float(self.fraud_value)
        except ValueError:
            return False


def table_spec(fmt: str, label_column: str | None, fraud_value: str = "1",
               time_column: str | None = None) -> TableSpec | None:
    """The table reading a command was asked for (`--format table --label-column COL ...`), or None for the other
    formats; refuses the options that only make sense together."""
    if fmt not in DATA_FORMATS:
        raise InputDataError(f"unknown data format {fmt!r}: use {', '.join(DATA_FORMATS)}")
    if fmt != TABLE_FORMAT:
        if label_column or time_column:
            raise InputDataError("--label-column and --time-column read a feature table: add --format table")
        return None
    if not label_column:
        raise InputDataError("--format table needs --label-column COL: the column that marks frauds (where it equals "
                             "--fraud-value, default 1)")
    if time_column == label_column:
        raise InputDataError(f"--time-column and --label-column both name {label_column!r}; they must differ")
    return TableSpec(label_column, fraud_value, time_column)


@dataclass(frozen=True)
class TableData:
    """The rows of a feature table that passed validation: `table` holds the feature columns (then the time
    column, when there is one), `labels` 1 where the label column equals the fraud value. `skipped` names the
    columns left out because they hold text, each with an example cell."""

    table: NumericTable
    labels: np.ndarray = field(repr=False)
    spec: TableSpec
    features: tuple[str, ...]
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def scenario(self) -> str:
        """The ground-truth scenario of this table's frauds: `<label column>=<fraud value>`."""
        return f"{self.spec.label_column}={self.spec.fraud_value}"

    def events(self, base_time: datetime = DEFAULT_BASE_TIME,
               accounts: int = DEFAULT_FILE_ACCOUNTS) -> Iterator[Event]:
        """The rows as events in file order: `row-<data row number>`, amount 0, the feature columns in
        `features`; the time column (seconds after its smallest value) or else the row number (one second
        apart) after `base_time` gives the timestamp."""
        base_ms = int(base_time.timestamp() * 1000)
        width = len(self.features)
        values = self.table.values
        if self.spec.time_column:
            offsets = np.round((values[:, width] - values[:, width].min()) * 1000).astype(np.int64)
        else:
            offsets = self.table.rows * 1000
        for index, offset, row in zip(self.table.rows.tolist(), offsets.tolist(), values[:, :width], strict=True):
            yield Event(transaction_id=f"{TABLE_ID_PREFIX}{index + 1}",
                        account_id=_hashed_account("tbl-acc-", row, accounts), amount=0.0,
                        timestamp_ms=base_ms + offset, features=dict(zip(self.features, row.tolist(), strict=True)))

    def ground_truth(self) -> list[GroundTruth]:
        """The label column as ground truth (scenario `<label column>=<fraud value>`)."""
        return [GroundTruth(f"{TABLE_ID_PREFIX}{index + 1}", label, self.scenario if label else NORMAL)
                for index, label in zip(self.table.rows.tolist(), self.labels.tolist(), strict=True)]


def read_table(path: str | Path, spec: TableSpec, on_nonfinite: NonFinite = "raise") -> TableData:
    """Read a feature table: every numeric column but the label and time columns is a feature; columns holding
    text are skipped (named in `skipped`); NaN/empty cells follow the non-finite policy, counted per column."""
    path = Path(path)
    _check_policy(on_nonfinite)
    labels: list[str] = []
    text_cells: dict[str, str] = {}
    with _text(path) as source:
        reader = csv.reader(source)
        header = next(reader, None) or []
        wanted = [spec.label_column, *([spec.time_column] if spec.time_column else [])]
        missing = [c for c in wanted if c not in header]
        if missing:
            raise InputDataError(f"{path}: no column {' or '.join(map(repr, missing))} in the header; its columns are "
                                 f"{', '.join(header)[:300]}; pass --label-column (and --time-column) with one of them")
        label_at = header.index(spec.label_column)
        checked = [(i, name) for i, name in enumerate(header) if name not in wanted]
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise InputDataError(f"{path} data row {len(labels) + 1} (file line {reader.line_num}): {len(row)} "
                                     f"fields but {len(header)} columns in the header")
            if not row[label_at].strip():
                raise InputDataError(f"{path} data row {len(labels) + 1} (file line {reader.line_num}), column "
                                     f"{spec.label_column}: empty; every row needs a label ({spec.label_column} = "
                                     f"{spec.fraud_value} marks a fraud)")
            labels.append(row[label_at])
            for i, name in checked:
                if name not in text_cells and row[i].strip() and not _is_number(row[i]):
                    text_cells[name] = f"{row[i][:30]!r} in data row {len(labels)}"
    features = tuple(name for _, name in checked if name not in text_cells)
    if not features:
        raise InputDataError(f"{path}: no numeric feature column besides {', '.join(wanted)}"
                             + (f" (text in {', '.join(text_cells)})" if text_cells else ""))
    table = read_numeric_table(path, [*features, *wanted[1:]], on_nonfinite)
    kept = [labels[k] for k in table.rows.tolist()]
    fraud = np.array([spec.is_fraud(label) for label in kept], dtype=np.int8)
    if fraud.min() == fraud.max():
        seen = ", ".join(f"{value!r} ({n})" for value, n in Counter(kept).most_common(5))
        which = "every row" if fraud.max() else "no row"
        raise InputDataError(f"{path}: {spec.label_column} = {spec.fraud_value} in {which} of the {fraud.size} rows, "
                             f"so there is a single class (values seen: {seen}); pass --fraud-value with the value "
                             "that marks frauds, or data with both frauds and normal rows")
    return TableData(table, fraud, spec, features, text_cells)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# ------------------------------------------------------------------------------------ the card-holder CSV


@dataclass(frozen=True)
class CreditcardData:
    """The rows of a card-holder CSV that passed validation: Time, V1..V28, Amount, and Class when present."""

    table: NumericTable
    labels: np.ndarray | None = field(default=None, repr=False)  # int8 Class of each kept row

    def events(self, base_time: datetime = DEFAULT_BASE_TIME,
               accounts: int = DEFAULT_FILE_ACCOUNTS) -> Iterator[Event]:
        """The rows as events in file order (`Time = 0` is `base_time`); ids keep the file's row numbers."""
        base_ms = int(base_time.timestamp() * 1000)
        values = self.table.values[:, : len(CREDITCARD_COLUMNS)]
        for index, row in zip(self.table.rows.tolist(), values, strict=True):
            yield creditcard_event(index, row, base_ms, accounts)

    def ground_truth(self) -> list[GroundTruth] | None:
        """The `Class` labels as ground truth (scenario `creditcard`); None when the file has no `Class`."""
        if self.labels is None:
            return None
        return [
            GroundTruth(f"cc-{index}", label, CREDITCARD_SCENARIO if label else NORMAL)
            for index, label in zip(self.table.rows.tolist(), self.labels.tolist(), strict=True)
        ]


def read_creditcard(path: str | Path, on_nonfinite: NonFinite = "raise") -> CreditcardData:
    """Read and validate a card-holder CSV `Time,V1..V28,Amount[,Class]` under the non-finite policy; Amount
    must be >= 0 and Class 0 or 1."""
    path = Path(path)
    with _text(path) as source:
        header = next(csv.reader(source), [])
    columns = (*CREDITCARD_COLUMNS, *(("Class",) if "Class" in header else ()))
    table = read_numeric_table(path, columns, on_nonfinite, kind="card-holder",
                               need="the card-holder format is Time,V1..V28,Amount,Class (Class optional)")
    negative = np.flatnonzero(table.values[:, _AMOUNT] < 0)
    if negative.size:
        k = int(negative[0])
        raise InputDataError(f"{table.where(k)}, column Amount: {table.values[k, _AMOUNT]:g} is negative; "
                             "amounts must be >= 0")
    if "Class" not in columns:
        return CreditcardData(table)
    labels = table.values[:, -1]
    wrong = np.flatnonzero((labels != 0) & (labels != 1))
    if wrong.size:
        k = int(wrong[0])
        raise InputDataError(f"{table.where(k)}, column Class: {labels[k]:g} is not 0 or 1 (1 = fraud, 0 = normal)")
    return CreditcardData(table, labels.astype(np.int8))


def creditcard_event(index: int, row: np.ndarray, base_ms: int, accounts: int = DEFAULT_FILE_ACCOUNTS) -> Event:
    """The event of card-holder row `index` (values Time, V1..V28, Amount): `cc-<index>`, `Time` seconds after
    `base_ms`, and one of `accounts` synthetic accounts by a hash of the features (stable across runs)."""
    features = row[1:_AMOUNT]
    return Event(
        transaction_id=f"cc-{index}",
        account_id=_hashed_account("cc-acc-", features, accounts),
        amount=float(row[_AMOUNT]),
        timestamp_ms=base_ms + round(float(row[0]) * 1000),
        currency="EUR",
        features=dict(zip(CREDITCARD_FEATURES, features.tolist(), strict=True)),
    )


# ----------------------------------------------------------------------------------------- any event file


def detect_format(path: str | Path) -> FileKind:
    """Tell a file's format: JSON lines by name or content, event CSV by a `transaction_id` column, the
    card-holder CSV by its columns; anything else is an error saying which formats work."""
    path = Path(path)
    if is_json_lines(path):
        return "events-jsonl"
    with _text(path) as source:
        header = next(csv.reader(source), [])
    if "transaction_id" in header:
        return "events-csv"
    if any(c in header for c in ("Time", "Amount", "V1", "Class")):
        return "creditcard"
    raise InputDataError(
        f"{path}: unrecognised header {','.join(header)[:80]!r}; expected event columns "
        f"({', '.join(REQUIRED_EVENT_COLUMNS)}, ...), JSON lines, or the card-holder columns "
        "Time,V1..V28,Amount,Class; for any table of numeric features pass --format table --label-column COL"
    )


@dataclass(frozen=True)
class EventFile:
    """An input file that passed validation; `events()` yields its events (rows kept by the policy) in order."""

    path: Path
    kind: FileKind
    tally: Tally
    on_nonfinite: NonFinite = "raise"
    base_time: datetime = DEFAULT_BASE_TIME
    accounts: int = DEFAULT_FILE_ACCOUNTS
    creditcard: CreditcardData | None = field(default=None, repr=False)
    table: TableData | None = field(default=None, repr=False)

    @property
    def rows(self) -> int:
        """The events it yields."""
        return self.tally.rows_read - self.tally.dropped_rows

    @property
    def labels(self) -> np.ndarray | None:
        """The card-holder `Class` or the table's label of each event (int8), when the file has one; else None."""
        labelled = self.table or self.creditcard
        return None if labelled is None else labelled.labels

    def events(self) -> Iterator[Event]:
        """The file's events in order (an event file is read again, lazily)."""
        labelled = self.table or self.creditcard
        if labelled is not None:
            return labelled.events(self.base_time, self.accounts)
        return iter_events(self.path, Tally() if self.on_nonfinite == "drop" else None)

    def ground_truth(self) -> list[GroundTruth] | None:
        """Labels of a card-holder file with a `Class` column (scenario `creditcard`) or of a feature table;
        None for other files."""
        labelled = self.table or self.creditcard
        return None if labelled is None else labelled.ground_truth()


def open_event_file(path: str | Path, *, fmt: Format = "auto", on_nonfinite: NonFinite = "raise",
                    base_time: datetime = DEFAULT_BASE_TIME, accounts: int = DEFAULT_FILE_ACCOUNTS,
                    table: TableSpec | None = None) -> EventFile:
    """Validate a whole input file (any format; `fmt` forces events or card-holder, `table` reads a feature
    table) under the non-finite policy.

    `base_time` is the moment of `Time = 0` in a card-holder file (of the first row of a table); their rows are
    spread over `accounts` synthetic accounts by a hash of their features (stable across runs).
    """
    path = Path(path)
    if fmt not in FORMATS:
        raise InputDataError(f"unknown data format {fmt!r}: use {', '.join(FORMATS)}")
    _check_policy(on_nonfinite)
    if not path.is_file():
        raise InputDataError(f"{path}: no such file")
    if _is_blank(path):
        raise InputDataError(
            f"{path} is empty ({path.stat().st_size} bytes, no header and no rows); pass events as JSON lines or a "
            f"CSV with the columns {','.join(REQUIRED_EVENT_COLUMNS)}, or the card-holder CSV "
            "(Time,V1..V28,Amount,Class)"
        )
    with _text(path) as source:
        if not source.readline().strip():
            raise InputDataError(f"{path}: starts with a blank line; remove it so that line 1 is the header or "
                                 "the first JSON object")
    if table is not None:
        data = read_table(path, table, on_nonfinite)
        return EventFile(path, "table", data.table.tally, on_nonfinite, base_time, accounts, table=data)
    if fmt == "creditcard":
        kind: FileKind = "creditcard"
    elif fmt == "events":
        kind = "events-jsonl" if is_json_lines(path) else "events-csv"
    else:
        kind = detect_format(path)
    if kind == "creditcard":
        data = read_creditcard(path, on_nonfinite)
        return EventFile(path, kind, data.table.tally, on_nonfinite, base_time, accounts, data)
    tally = Tally()
    for _ in iter_events(path, tally):
        pass
    tally.settle(path, on_nonfinite, header=kind == "events-csv")
    return EventFile(path, kind, tally, on_nonfinite, base_time, accounts)


def read_events_file(path: str | Path, *, fmt: Format = "auto", base_time: datetime = DEFAULT_BASE_TIME,
                     accounts: int = DEFAULT_FILE_ACCOUNTS,
                     table: TableSpec | None = None) -> tuple[list[Event], list[GroundTruth]]:
    """All events of a file in memory, with the labels it carries (card-holder `Class`, a table's label column;
    empty otherwise)."""
    source = open_event_file(path, fmt=fmt, base_time=base_time, accounts=accounts, table=table)
    return list(source.events()), source.ground_truth() or []
