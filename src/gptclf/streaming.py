"""Score a data file of any size: read a chunk of rows, score it, append its predictions, repeat.

Memory stays flat as the file grows, because at most one chunk of rows, its token ids and its
logits are held at a time. Chunks are scored and written in file order, so the output rows keep
the input order. Output goes to a temporary file that is renamed into place at the end, so an
interrupted or failed run never leaves a half-written output file.
"""

from __future__ import annotations

import csv
import logging
import math
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .data import TEXT_COLUMN_CANDIDATES, Table, _blank_rows, _headerless_names, parse_jsonl_line, resolve_column
from .errors import DataError
from .inference import Classifier

log = logging.getLogger(__name__)

OUTPUT_FORMATS = (".csv", ".jsonl")
DEFAULT_CHUNK_ROWS = 8192
"""Rows per chunk; texts are sorted by length within a chunk, so larger chunks pad less."""


def predict_file(
    classifier: Classifier,
    input_path: str | Path,
    output_path: str | Path,
    text_column: str | None = None,
    batch_size: int = 64,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    progress: bool = True,
    threshold: float | None = None,
) -> int:
    """Score every row of a file and write its columns plus `prediction` and `prob_<label>`.

    Returns the number of rows written. The output format follows the extension of
    ``output_path`` (.csv or .jsonl); rows keep the input order. ``threshold`` overrides the
    stored decision threshold of a binary classifier.
    """
    input_path, output_path = Path(input_path), Path(output_path)
    _check_paths(input_path, output_path, chunk_rows)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_path.with_name(f".{output_path.name}.tmp")
    bar = tqdm(total=count_rows(input_path), unit="row", desc="predict", mininterval=1.0, disable=not progress)
    written = 0
    try:
        with tmp.open("w", encoding="utf-8", newline="") as handle:
            for chunk in read_chunks(input_path, text_column, chunk_rows):
                probs = classifier.predict_proba(chunk.texts, batch_size=batch_size, progress=bar)
                predictions = classifier.decide(probs, threshold)
                _write_chunk(handle, _with_predictions(chunk.frame, probs, predictions, classifier.labels), output_path.suffix.lower(), first=written == 0)
                written += len(chunk.texts)
        tmp.replace(output_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    log.debug("wrote %d predictions to %s", written, output_path)  # the CLI prints the same line
    return written


def _check_paths(input_path: Path, output_path: Path, chunk_rows: int) -> None:
    if output_path.suffix.lower() not in OUTPUT_FORMATS:
        raise DataError(f"--output {output_path}: unsupported extension; use .csv or .jsonl")
    if output_path.resolve() == input_path.resolve():
        raise DataError(f"--output {output_path} is the input file; choose another path so the input is kept")
    if not input_path.is_file():
        raise DataError(f"{input_path}: file not found")
    if chunk_rows < 1:
        raise DataError(f"--chunk-size must be at least 1, got {chunk_rows}")


def _with_predictions(frame: pd.DataFrame, probs: np.ndarray, predictions: np.ndarray, labels: list[str]) -> pd.DataFrame:
    frame = frame.copy()
    frame["prediction"] = [labels[i] for i in predictions]
    for j, name in enumerate(labels):
        frame[f"prob_{name}"] = probs[:, j]
    return frame


def _write_chunk(handle, frame: pd.DataFrame, suffix: str, first: bool) -> None:
    if suffix == ".csv":
        frame.to_csv(handle, header=first, index=False)
    else:
        # pandas ends each JSON-lines block with a newline, so chunks concatenate cleanly.
        frame.to_json(handle, orient="records", lines=True, force_ascii=False)


class Chunk:
    """Consecutive data rows of a file: all their columns as strings, and the text column."""

    def __init__(self, frame: pd.DataFrame, texts: list[str]):
        self.frame = frame
        self.texts = texts


def read_chunks(path: str | Path, text_column: str | None = None, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[Chunk]:
    """Yield a file's rows in chunks, rejecting empty or missing texts with their row numbers.

    Every chunk has the columns of the first one. A JSONL key that first appears later is
    dropped with a warning, because the CSV output has one fixed header.
    """
    path = Path(path)
    frames, first_line = _frames(path, text_column, chunk_rows)
    columns: list[str] | None = None
    column = ""
    offset = 0
    for frame in frames:
        if columns is None:
            columns = [str(c) for c in frame.columns]
            column = resolve_column(Table(path, frame, first_line), text_column, TEXT_COLUMN_CANDIDATES, "text", "--text-column")
        else:
            frame = _align_columns(path, frame, columns)
        texts = _as_text(frame[column])
        blank = _blank_rows(texts)
        if len(blank):
            raise DataError(
                f"{path}: empty or missing text in column {column!r} at {Table(path, frame, first_line).where(blank + offset)}; "
                "fill in or remove those rows"
            )
        offset += len(frame)
        yield Chunk(frame.reset_index(drop=True), texts.tolist())


def _as_text(series: pd.Series) -> pd.Series:
    """Convert a text column to strings and missing values to None, since JSONL may hold numbers there."""
    return series.map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))


def _align_columns(path: Path, frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    extra = [str(c) for c in frame.columns if str(c) not in columns]
    if extra:
        warnings.warn(f"{path}: keys {extra[:5]} first appear after row 1 and are left out of the output", stacklevel=3)
    return frame.reindex(columns=columns)


def _frames(path: Path, text_column: str | None, chunk_rows: int) -> tuple[Iterator[pd.DataFrame], int]:
    """Return the chunk reader for the file's format and the file line of data row 1 (0 if unknown)."""
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".tab"):
        has_header = _tsv_has_header(path, text_column)
        return _tsv_frames(path, has_header, chunk_rows), 2 if has_header else 1
    if suffix == ".csv":
        return _csv_frames(path, chunk_rows), 0
    if suffix in (".jsonl", ".ndjson"):
        # NOTE: blank lines shift later rows off their line numbers; messages give row numbers too.
        return _jsonl_frames(path, chunk_rows), 1
    if suffix == ".parquet":
        return _parquet_frames(path, chunk_rows), 0
    raise DataError(f"{path}: unsupported extension {suffix!r}; use .csv, .tsv, .jsonl or .parquet")


def _tsv_has_header(path: Path, text_column: str | None) -> bool:
    """Guess a header row the way the whole-file reader does: a first-row cell is a known column name."""
    with _open_text(path) as handle:
        first = handle.readline().rstrip("\r\n").split("\t")
    known = {c for c in (text_column, "text", "sentence", "label") if c}
    return any(cell.strip() in known for cell in first)


def _open_text(path: Path):
    # utf-8-sig drops a byte-order mark that some editors write.
    return path.open(encoding="utf-8-sig", newline="")


def _tsv_frames(path: Path, has_header: bool, chunk_rows: int) -> Iterator[pd.DataFrame]:
    # GLUE-style TSV files contain bare quote characters, so quoting is off.
    options = dict(sep="\t", quoting=csv.QUOTE_NONE, dtype=str, keep_default_na=False, na_values=[""], chunksize=chunk_rows)
    with _open_text(path) as handle:
        reader = pd.read_csv(handle, header=0 if has_header else None, **options)
        for frame in _guard_pandas(path, reader, "TSV", "check for stray tab characters"):
            if not has_header:
                frame.columns = _headerless_names(frame.shape[1])
            yield frame


def _csv_frames(path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    with _open_text(path) as handle:
        reader = pd.read_csv(handle, dtype=str, keep_default_na=False, na_values=[""], chunksize=chunk_rows)
        yield from _guard_pandas(path, reader, "CSV", "quote fields that contain commas")


def _guard_pandas(path: Path, reader, kind: str, hint: str) -> Iterator[pd.DataFrame]:
    """Turn pandas parse and decode errors into DataError, naming the chunk where they occurred."""
    rows_read = 0
    while True:
        try:
            frame = next(reader)
        except StopIteration:
            return
        except pd.errors.ParserError as err:
            raise DataError(f"{path}: cannot parse as {kind} after row {rows_read}: {err}; {hint}") from None
        except UnicodeDecodeError:
            raise DataError(
                f"{path}: invalid UTF-8 after row {rows_read}; re-save the file as UTF-8, "
                "for example with `iconv -f latin1 -t utf-8`"
            ) from None
        rows_read += len(frame)
        yield frame


def _jsonl_frames(path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    records: list[dict] = []
    with _open_text(path) as handle:
        line_number = 0
        while True:
            try:
                line = handle.readline()
            except UnicodeDecodeError:
                raise DataError(f"{path}: line {line_number + 1} is not valid UTF-8; re-save the file as UTF-8") from None
            if not line:
                break
            line_number += 1
            if not line.strip():
                continue
            records.append(parse_jsonl_line(path, line_number, line))
            if len(records) == chunk_rows:
                yield _records_frame(records)
                records = []
    if records:
        yield _records_frame(records)


def _records_frame(records: list[dict]) -> pd.DataFrame:
    # Object columns keep each value as parsed, so an integer id is written back as an integer
    # even when another row has null there.
    return pd.DataFrame(records, dtype=object)


def _parquet_frames(path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        for batch in parquet.iter_batches(batch_size=chunk_rows):
            frame = batch.to_pandas()
            for column in frame.columns:
                frame[column] = frame[column].map(lambda v: None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
            yield frame
    except (OSError, ValueError) as err:  # pyarrow's errors derive from these
        raise DataError(f"{path}: cannot read as Parquet: {err}") from None


def count_rows(path: Path) -> int | None:
    """Count data rows for the progress bar without parsing: lines, or Parquet metadata.

    NOTE: for CSV this counts lines, so quoted fields spanning lines make it an overestimate.
    """
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(path).metadata.num_rows
        except (OSError, ValueError):
            return None
    lines = 0
    last = b"\n"
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            lines += block.count(b"\n")
            last = block[-1:]
    lines += last != b"\n"  # a last line without a newline
    has_header = suffix == ".csv" or (suffix in (".tsv", ".tab") and _tsv_has_header(path, None))
    return max(0, lines - has_header)
