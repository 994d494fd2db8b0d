"""Read labelled or unlabelled text tables and check them before any model loads.

Supported formats, chosen by extension: ``.csv``, ``.tsv``/``.tab`` (with or without a header
row), ``.jsonl``/``.ndjson`` and ``.parquet``. Row numbers in messages count data rows from 1;
for line-based formats the file line number is given too.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .errors import DataError

TEXT_COLUMN_CANDIDATES = ("text", "sentence")
LABEL_COLUMN_CANDIDATES = ("label",)
HEADERLESS_COLUMNS = ("text", "label")
MAX_ROWS_LISTED = 5


@dataclass
class Table:
    """A data file read as strings, with where each row came from."""

    path: Path
    frame: pd.DataFrame
    first_line: int
    """File line of data row 1, or 0 where lines do not map to rows (CSV, Parquet)."""

    def where(self, rows: Sequence[int]) -> str:
        """Describe 0-based data rows as 1-based row (and line) numbers for a message."""
        shown = [int(r) for r in rows[:MAX_ROWS_LISTED]]
        if self.first_line:
            parts = [f"{r + 1} (line {r + self.first_line})" for r in shown]
        else:
            parts = [str(r + 1) for r in shown]
        more = f" and {len(rows) - len(shown)} more" if len(rows) > len(shown) else ""
        noun = "row" if len(rows) == 1 else "rows"
        return f"{noun} {', '.join(parts)}{more}"


@dataclass
class LabelSet:
    """Class names in model order, and the raw label values that map to them."""

    names: list[str]
    values: list[str]
    """Raw label values as text, one per class (``"0"``, ``"1"`` or the names themselves)."""

    def index_of(self) -> dict[str, int]:
        mapping = {v: i for i, v in enumerate(self.values)}
        for i, name in enumerate(self.names):
            mapping.setdefault(name, i)
        return mapping


@dataclass
class LabelledTexts:
    texts: list[str]
    labels: np.ndarray
    """Class indices into a LabelSet, shape (n,)."""


def read_table(path: str | Path, wanted_columns: Sequence[str] = ()) -> Table:
    """Read a data file as a table of strings; missing cells become NaN."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _read_parquet(path)
    content = _decode(path)
    if suffix in (".tsv", ".tab"):
        return _read_tsv(path, content, wanted_columns)
    if suffix == ".csv":
        return _read_csv(path, content)
    if suffix in (".jsonl", ".ndjson"):
        return _read_jsonl(path, content)
    raise DataError(
        f"{path}: unsupported extension {suffix!r}; use .csv, .tsv, .jsonl or .parquet"
    )


def _decode(path: Path) -> str:
    raw = path.read_bytes()
    try:
        content = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        bad = raw[err.start : err.end].hex(" ")
        raise DataError(
            f"{path}: line {line} is not valid UTF-8 (byte(s) {bad} at offset {err.start}); "
            "re-save the file as UTF-8, for example with `iconv -f latin1 -t utf-8`"
        ) from None
    return content.removeprefix("\ufeff")


def _read_tsv(path: Path, content: str, wanted_columns: Sequence[str]) -> Table:
    first = content.split("\n", 1)[0].rstrip("\r").split("\t")
    known = set(wanted_columns) | set(TEXT_COLUMN_CANDIDATES) | set(LABEL_COLUMN_CANDIDATES)
    has_header = any(cell.strip() in known for cell in first)
    # GLUE-style TSV files contain bare quote characters, so quoting is off.
    options = dict(sep="\t", quoting=csv.QUOTE_NONE, dtype=str, keep_default_na=False, na_values=[""])
    try:
        if has_header:
            frame = pd.read_csv(io.StringIO(content), **options)
        else:
            frame = pd.read_csv(io.StringIO(content), header=None, **options)
            frame.columns = _headerless_names(frame.shape[1])
    except pd.errors.ParserError as err:
        raise DataError(f"{path}: cannot parse as TSV: {err}; check for stray tab characters") from None
    return Table(path, frame, first_line=2 if has_header else 1)


def _headerless_names(n_columns: int) -> list[str]:
    if n_columns == 2:
        return list(HEADERLESS_COLUMNS)
    if n_columns == 1:
        return ["text"]
    return [f"column_{i + 1}" for i in range(n_columns)]


def _read_csv(path: Path, content: str) -> Table:
    try:
        frame = pd.read_csv(io.StringIO(content), dtype=str, keep_default_na=False, na_values=[""])
    except pd.errors.ParserError as err:
        raise DataError(f"{path}: cannot parse as CSV: {err}; quote fields that contain commas") from None
    return Table(path, frame, first_line=0)


def parse_jsonl_line(path: Path, line_number: int, line: str) -> dict:
    """Parse one JSONL line into a record; anything but a JSON object is a DataError naming the line."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: line {line_number} is not valid JSON ({err.msg}); fix or remove it") from None
    if not isinstance(record, dict):
        raise DataError(f"{path}: line {line_number} is a JSON {type(record).__name__}, expected an object")
    return record


def _read_jsonl(path: Path, content: str) -> Table:
    records = []
    line_numbers = []
    for line_number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        records.append(parse_jsonl_line(path, line_number, line))
        line_numbers.append(line_number)
    frame = pd.DataFrame.from_records(records)
    for column in frame.columns:
        frame[column] = frame[column].map(lambda v: None if v is None else str(v))
    # Blank lines are skipped, so row r sits on line_numbers[r]; first_line is exact only without them.
    first_line = 1 if line_numbers == list(range(1, len(records) + 1)) else 0
    return Table(path, frame, first_line=first_line)


def _read_parquet(path: Path) -> Table:
    try:
        frame = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several unrelated types for damaged files
        raise DataError(f"{path}: cannot read as Parquet: {err}") from None
    for column in frame.columns:
        frame[column] = frame[column].map(lambda v: None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
    return Table(path, frame, first_line=0)


def resolve_column(table: Table, requested: str | None, candidates: Sequence[str], role: str, option: str) -> str:
    """Return the column to use for ``role``, or raise naming the columns that exist."""
    columns = [str(c) for c in table.frame.columns]
    if requested is not None:
        if requested in columns:
            return requested
        raise DataError(
            f"{table.path}: {role} column {requested!r} not found; columns are {columns}; "
            f"pass the right name with {option}"
        )
    for candidate in candidates:
        if candidate in columns:
            return candidate
    raise DataError(
        f"{table.path}: no {role} column found (looked for {', '.join(repr(c) for c in candidates)}); "
        f"columns are {columns}; name it with {option}"
    )


def read_texts(
    path: str | Path, text_column: str | None = None, other_columns: Sequence[str] = ()
) -> tuple[Table, list[str]]:
    """Read the text column of a file, rejecting empty or missing texts."""
    wanted = [c for c in (text_column, *other_columns) if c]
    table = read_table(path, wanted)
    column = resolve_column(table, text_column, TEXT_COLUMN_CANDIDATES, "text", "--text-column")
    rows = _blank_rows(table.frame[column])
    if len(rows):
        raise DataError(
            f"{table.path}: empty or missing text in column {column!r} at {table.where(rows)}; "
            "fill in or remove those rows"
        )
    return table, table.frame[column].tolist()


def read_labelled(
    path: str | Path, text_column: str | None, label_column: str | None
) -> tuple[Table, list[str], list[str]]:
    """Read texts and raw label strings, rejecting missing values."""
    table, texts = read_texts(path, text_column, [label_column] if label_column else [])
    column = resolve_column(table, label_column, LABEL_COLUMN_CANDIDATES, "label", "--label-column")
    rows = _blank_rows(table.frame[column])
    if len(rows):
        raise DataError(
            f"{table.path}: missing label in column {column!r} at {table.where(rows)}; "
            "add the label or remove those rows"
        )
    return table, texts, [_canonical_label(v) for v in table.frame[column].tolist()]


def _blank_rows(series: pd.Series) -> np.ndarray:
    blank = series.isna().to_numpy() | (series.fillna("").str.strip() == "").to_numpy()
    return np.flatnonzero(blank)


_INTEGER = re.compile(r"^[+-]?\d+(\.0+)?$")


def _canonical_label(value: str) -> str:
    """Strip spaces and write integer labels one way, so `1`, `01` and `1.0` are one class."""
    value = value.strip()
    if _INTEGER.match(value):
        return str(int(float(value)))
    return value


def _is_integer(value: str) -> bool:
    return bool(_INTEGER.match(value))


def build_label_set(table: Table, raw_labels: Sequence[str], label_names: Sequence[str] | None) -> LabelSet:
    """Decide the class order from the training labels.

    Integer labels keep numeric order and may be named with ``label_names`` (0 -> first name).
    String labels keep first-seen order, or the order of ``label_names`` when given.
    """
    distinct = list(dict.fromkeys(raw_labels))
    if len(distinct) < 2:
        raise DataError(
            f"{table.path}: training labels contain only one class ({distinct[0]!r}); "
            "a classifier needs rows of at least two classes"
        )
    if all(_is_integer(v) for v in distinct):
        numbers = sorted(int(v) for v in distinct)
        if label_names is None:
            values = [str(n) for n in numbers]
            return LabelSet(names=list(values), values=values)
        bad = [i for i, v in enumerate(raw_labels) if not 0 <= int(v) < len(label_names)]
        if bad:
            raise DataError(
                f"{table.path}: label {raw_labels[bad[0]]!r} at {table.where(bad)} has no name in "
                f"--label-names {list(label_names)} (integer labels must be 0..{len(label_names) - 1}); "
                "give one name per class in label order"
            )
        return LabelSet(names=list(label_names), values=[str(i) for i in range(len(label_names))])
    if label_names is None:
        return LabelSet(names=distinct, values=list(distinct))
    unknown = [i for i, v in enumerate(raw_labels) if v not in label_names]
    if unknown:
        raise DataError(
            f"{table.path}: label {raw_labels[unknown[0]]!r} at {table.where(unknown)} is not in "
            f"--label-names {list(label_names)}; add it to --label-names or fix the rows"
        )
    return LabelSet(names=list(label_names), values=list(label_names))


def encode_labels(table: Table, raw_labels: Sequence[str], label_set: LabelSet, seen_in: str = "training") -> np.ndarray:
    """Map raw labels to class indices; a value the label set lacks is an error naming its rows."""
    index = label_set.index_of()
    unknown = [i for i, v in enumerate(raw_labels) if v not in index]
    if unknown:
        values = sorted({raw_labels[i] for i in unknown})
        raise DataError(
            f"{table.path}: label(s) {values} at {table.where(unknown)} never appear in {seen_in}; "
            f"known labels are {label_set.names}; fix those rows or retrain with them included"
        )
    return np.array([index[v] for v in raw_labels], dtype=np.int64)
