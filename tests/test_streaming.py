import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from gptclf import Classifier, train
from gptclf.errors import DataError
from gptclf.streaming import predict_file, read_chunks

from conftest import sentiment_rows, write_tsv


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory, base_models):
    root = tmp_path_factory.mktemp("streaming")
    data = write_tsv(root / "train.tsv", sentiment_rows(32, seed=3))
    folder = root / "clf"
    train(train=str(data), output=str(folder), model=str(base_models["llama"]), max_steps=2, batch_size=8, lora_r=4)
    return folder


@pytest.fixture(scope="module")
def classifier(classifier_dir):
    return Classifier.load(classifier_dir)


def _write_input(path, rows):
    frame = pd.DataFrame({"id": [str(i) for i in range(len(rows))], "text": [t for t, _ in rows]})
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        write_tsv(path, [(t, i) for i, t in zip(frame["id"], frame["text"])], header=("text", "id"))
    return path


@pytest.mark.parametrize("source_suffix", [".csv", ".jsonl", ".tsv"])
@pytest.mark.parametrize("target_suffix", [".csv", ".jsonl"])
def test_chunked_predictions_keep_input_order(classifier, tmp_path, source_suffix, target_suffix):
    rows = sentiment_rows(50, seed=11)
    source = _write_input(tmp_path / f"input{source_suffix}", rows)
    target = tmp_path / f"out{target_suffix}"
    assert predict_file(classifier, source, target, chunk_rows=7, progress=False) == 50
    frame = pd.read_csv(target, dtype={"id": str}) if target_suffix == ".csv" else pd.read_json(target, lines=True, dtype={"id": str})
    assert frame["id"].tolist() == [str(i) for i in range(50)]
    assert frame["text"].tolist() == [t for t, _ in rows]
    expected = classifier.predict_proba([t for t, _ in rows])
    np.testing.assert_allclose(frame[[f"prob_{n}" for n in classifier.labels]].to_numpy(), expected, atol=1e-5)
    assert frame["prediction"].tolist() == classifier.predict([t for t, _ in rows])
    assert not list(tmp_path.glob(".*.tmp"))


def test_jsonl_output_keeps_json_value_types(classifier, tmp_path):
    source = tmp_path / "input.jsonl"
    rows = [{"id": 1, "text": "the film was good", "score": 2.5, "tags": ["a"]}, {"id": None, "text": "dull", "score": 3, "tags": []}]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    target = tmp_path / "out.jsonl"
    predict_file(classifier, source, target, progress=False)
    written = [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines()]
    assert [{k: w[k] for k in ("id", "text", "score", "tags")} for w in written] == rows


def test_blank_text_in_later_chunk_rejected(classifier, tmp_path):
    rows = sentiment_rows(20, seed=4)
    rows[16] = ("   ", "positive")
    source = _write_input(tmp_path / "input.jsonl", rows)
    target = tmp_path / "out.csv"
    with pytest.raises(DataError, match=r"row 17 \(line 17\)"):
        predict_file(classifier, source, target, chunk_rows=5, progress=False)
    assert not target.exists()
    assert not list(tmp_path.glob(".*.tmp"))


def test_invalid_json_line_rejected(classifier, tmp_path):
    source = tmp_path / "input.jsonl"
    source.write_text('{"text": "the film was good"}\n{"text": oops}\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        predict_file(classifier, source, tmp_path / "out.csv", progress=False)


def test_late_jsonl_key_warns_and_is_dropped(tmp_path):
    source = tmp_path / "input.jsonl"
    source.write_text('{"text": "good"}\n{"text": "bad", "extra": 1}\n', encoding="utf-8")
    with pytest.warns(UserWarning, match="extra"):
        chunks = list(read_chunks(source, chunk_rows=1))
    assert [list(c.frame.columns) for c in chunks] == [["text"], ["text"]]


def test_headerless_tsv_read_in_chunks(tmp_path):
    source = write_tsv(tmp_path / "input.tsv", sentiment_rows(9, seed=2), header=None)
    chunks = list(read_chunks(source, chunk_rows=4))
    assert [len(c.texts) for c in chunks] == [4, 4, 1]
    assert list(chunks[0].frame.columns) == ["text", "label"]


def test_output_extension_checked(classifier, tmp_path):
    source = _write_input(tmp_path / "input.csv", sentiment_rows(3))
    with pytest.raises(DataError, match="use .csv or .jsonl"):
        predict_file(classifier, source, tmp_path / "out.parquet", progress=False)


PEAK_RSS_SCRIPT = """
import json, resource, sys
import torch
# One thread, because the model is too small to gain from more and extra threads slow down
# sharply when other processes compete for the CPUs.
torch.set_num_threads(1)
from gptclf import Classifier
from gptclf.streaming import predict_file
clf = Classifier.load(sys.argv[1], dtype="fp32")
rows = predict_file(clf, sys.argv[2], sys.argv[3], batch_size=256, chunk_rows=512, progress=False)
print(json.dumps({"rows": rows, "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def _peak_rss_kib(classifier_dir, tmp_path, n_rows):
    source = tmp_path / f"rows-{n_rows}.jsonl"
    words = ["good", "bad", "the film was", "dull", "really great fun"]
    # A 2,000-character column makes rows heavy to hold but cheap to score: 20,000 rows are
    # about 40 MB of text, which would show in the peak if the file were read whole.
    payload = "x" * 2000
    with source.open("w", encoding="utf-8") as handle:
        for i in range(n_rows):
            handle.write(json.dumps({"id": i, "text": f"{words[i % 5]} {words[(i * 7) % 5]} .", "payload": payload}) + "\n")
    target = tmp_path / f"out-{n_rows}.csv"
    done = subprocess.run([sys.executable, "-c", PEAK_RSS_SCRIPT, str(classifier_dir), str(source), str(target)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["rows"] == n_rows
    return report["peak_rss_kib"]


@pytest.mark.slow
def test_peak_memory_flat_as_rows_grow(classifier_dir, tmp_path):
    small = _peak_rss_kib(classifier_dir, tmp_path, 4_000)
    large = _peak_rss_kib(classifier_dir, tmp_path, 20_000)
    # Five times the rows may add a few MiB of allocator noise but not the 32 MB of extra rows.
    assert large - small < 16 * 1024, f"peak RSS grew from {small} KiB to {large} KiB"
