import json

import numpy as np
import pandas as pd
import pytest

from gptclf.data import build_label_set, encode_labels, read_labelled, read_texts
from gptclf.errors import DataError
from gptclf.training import load_training_data
from gptclf.config import TrainConfig

from conftest import write_tsv


def _config(train, validation=None, **data):
    return TrainConfig.from_flat(train=str(train), validation=str(validation) if validation else None, output="unused", **data)


def test_tsv_with_and_without_header(tmp_path):
    with_header = write_tsv(tmp_path / "a.tsv", [("good film", "1"), ("bad film", "0")], header=("sentence", "label"))
    without = write_tsv(tmp_path / "b.tsv", [("good film", "1"), ("bad film", "0")], header=None)
    for path in (with_header, without):
        _, texts, labels = read_labelled(path, None, None)
        assert texts == ["good film", "bad film"]
        assert labels == ["1", "0"]


def test_tsv_keeps_quote_characters(tmp_path):
    path = write_tsv(tmp_path / "q.tsv", [('a "quoted" word', "1"), ("it 's fine", "0")])
    _, texts, _ = read_labelled(path, None, None)
    assert texts[0] == 'a "quoted" word'


def test_csv_jsonl_parquet(tmp_path):
    frame = pd.DataFrame({"review": ["nice, really", "awful"], "stars": ["pos", "neg"]})
    frame.to_csv(tmp_path / "d.csv", index=False)
    frame.to_json(tmp_path / "d.jsonl", orient="records", lines=True)
    frame.to_parquet(tmp_path / "d.parquet")
    for name in ("d.csv", "d.jsonl", "d.parquet"):
        _, texts, labels = read_labelled(tmp_path / name, "review", "stars")
        assert texts == ["nice, really", "awful"], name
        assert labels == ["pos", "neg"], name


def test_jsonl_integer_labels(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"text": t, "label": l}) for t, l in [("a", 1), ("b", 0)]) + "\n")
    _, _, labels = read_labelled(path, None, None)
    assert labels == ["1", "0"]


def test_missing_column_names_columns_and_flag(tmp_path):
    path = write_tsv(tmp_path / "d.tsv", [("good", "1")], header=("text", "target"))
    with pytest.raises(DataError, match=r"no label column found .*columns are \['text', 'target'\]; name it with --label-column"):
        read_labelled(path, None, None)
    with pytest.raises(DataError, match="text column 'body' not found"):
        read_labelled(path, "body", "target")


def test_empty_text_names_rows_and_lines(tmp_path):
    path = write_tsv(tmp_path / "d.tsv", [("good", "1"), ("", "0"), ("   ", "1"), ("ok", "0")])
    with pytest.raises(DataError, match=r"empty or missing text .* rows 2 \(line 3\), 3 \(line 4\)"):
        read_labelled(path, None, None)


def test_missing_label_names_row(tmp_path):
    path = write_tsv(tmp_path / "d.tsv", [("good", "1"), ("bad", "")])
    with pytest.raises(DataError, match=r"missing label .* row 2 \(line 3\)"):
        read_labelled(path, None, None)


def test_unseen_validation_label(tmp_path):
    train = write_tsv(tmp_path / "t.tsv", [("good", "pos"), ("bad", "neg")])
    validation = write_tsv(tmp_path / "v.tsv", [("fine", "pos"), ("meh", "neutral")])
    with pytest.raises(DataError, match=r"\['neutral'\] at row 2 \(line 3\) never appear in the training file"):
        load_training_data(_config(train, validation))


def test_one_class_rejected(tmp_path):
    train = write_tsv(tmp_path / "t.tsv", [("good", "pos"), ("great", "pos")])
    with pytest.raises(DataError, match="only one class"):
        load_training_data(_config(train))


def test_undecodable_bytes_name_line(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_bytes(b"text\tlabel\ngood\t1\ncaf\xe9\t0\n")
    with pytest.raises(DataError, match=r"line 3 is not valid UTF-8 \(byte\(s\) e9.*iconv"):
        read_labelled(path, None, None)


def test_unsupported_extension(tmp_path):
    path = tmp_path / "d.xlsx"
    path.write_text("x")
    with pytest.raises(DataError, match="unsupported extension"):
        read_texts(path)


def test_label_names_map_integer_labels(tmp_path):
    train = write_tsv(tmp_path / "t.tsv", [("good", "1"), ("bad", "0"), ("fine", "1")])
    data = load_training_data(_config(train, label_names=["Negative", "Positive"]))
    assert data.label_set.names == ["Negative", "Positive"]
    assert data.train_labels.tolist() == [1, 0, 1]


def test_label_names_out_of_range(tmp_path):
    train = write_tsv(tmp_path / "t.tsv", [("good", "1"), ("bad", "0"), ("odd", "2")])
    with pytest.raises(DataError, match=r"label '2' at row 3 .* has no name in --label-names"):
        load_training_data(_config(train, label_names=["Negative", "Positive"]))


def test_string_labels_first_seen_order(tmp_path):
    train = write_tsv(tmp_path / "t.tsv", [("a", "World"), ("b", "Sports"), ("c", "Business"), ("d", "Sports")])
    data = load_training_data(_config(train))
    assert data.label_set.names == ["World", "Sports", "Business"]
    assert data.train_labels.tolist() == [0, 1, 2, 1]


def test_integer_labels_sorted_numerically(tmp_path):
    train = write_tsv(tmp_path / "t.tsv", [("a", "10"), ("b", "2"), ("c", "1.0")])
    data = load_training_data(_config(train))
    assert data.label_set.names == ["1", "2", "10"]


def test_subset_is_seeded(tmp_path):
    rows = [(f"text {i}", str(i % 2)) for i in range(100)]
    train = write_tsv(tmp_path / "t.tsv", rows)
    first = load_training_data(_config(train, max_train_samples=10))
    again = load_training_data(_config(train, max_train_samples=10))
    other = load_training_data(TrainConfig.from_flat(train=str(train), output="x", max_train_samples=10, seed=1))
    assert first.train_texts == again.train_texts
    assert first.train_texts != other.train_texts
    assert len(first.train_texts) == 10


def test_encode_labels_accepts_names(tmp_path):
    table, _, _ = read_labelled(write_tsv(tmp_path / "t.tsv", [("a", "0"), ("b", "1")]), None, None)
    label_set = build_label_set(table, ["0", "1"], ["Negative", "Positive"])
    assert encode_labels(table, ["Positive", "0"], label_set).tolist() == [1, 0]
