import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from gptclf import Classifier, train
from gptclf.batching import encode
from gptclf.checkpoint import read_meta
from gptclf.errors import CheckpointError
from gptclf.inference import score_ids

from conftest import save_base_model, sentiment_rows, write_tsv

TEXTS = ["the film was good", "the food was awful and the service was poor , i felt", "fun !", "a dull , weak and tedious story"]


@pytest.fixture
def trained(tmp_path, base_model):
    # First-seen order "positive", "negative" is not alphabetical.
    rows = [("the film was great .", "positive"), ("the film was bad .", "negative")] + sentiment_rows(30, seed=3)
    data = write_tsv(tmp_path / "train.tsv", rows)
    out = tmp_path / "clf"
    result = train(train=str(data), output=str(out), model=str(base_model), max_steps=4, batch_size=8, lr=5e-2, lora_r=4, lora_dropout=0.0)
    return out, result


def _fresh_process_logits(folder, extra=""):
    code = (
        "import json, sys, torch; torch.manual_seed(12345); from gptclf import Classifier; "
        f"c = Classifier.load(sys.argv[1], merge=False{extra}); "
        "print(json.dumps(c.logits(json.loads(sys.argv[2])).tolist()))"
    )
    done = subprocess.run([sys.executable, "-c", code, str(folder), json.dumps(TEXTS)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return np.array(json.loads(done.stdout.strip().splitlines()[-1]), dtype=np.float32)


def test_reload_in_fresh_process_gives_identical_logits(trained):
    folder, result = trained
    tokenizer = Classifier.load(folder).tokenizer
    in_memory = score_ids(result.model, encode(tokenizer, TEXTS, 128).ids, tokenizer.pad_token_id)
    reloaded = _fresh_process_logits(folder, extra=", dtype='fp32'")
    np.testing.assert_allclose(reloaded, in_memory, atol=1e-6, rtol=0)


def test_string_labels_keep_first_seen_order(trained):
    folder, _ = trained
    assert read_meta(folder).labels == ["positive", "negative"]
    classifier = Classifier.load(folder)
    assert classifier.labels == ["positive", "negative"]
    assert set(classifier.predict(TEXTS)) <= {"positive", "negative"}
    assert classifier.predict_proba(TEXTS).shape == (len(TEXTS), 2)


def test_folder_contents(trained):
    folder, _ = trained
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert "adapter/adapter_config.json" in names
    assert "adapter/adapter_model.safetensors" in names
    assert "head.safetensors" in names
    assert "gptclf.json" in names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pkl"))]
    meta = json.loads((folder / "gptclf.json").read_text())
    assert meta["base_model"]["fingerprint"]
    assert meta["package_version"]
    assert meta["tokenizer"]["pad_token"] == "<|endoftext|>"
    assert meta["tokenizer"]["pad_token_added"] == "<|endoftext|>"
    assert meta["config"]["optim"]["max_steps"] == 4


def test_different_base_model_rejected(trained, tmp_path, arch):
    folder, _ = trained
    other = save_base_model(tmp_path / "other", arch, seed=99)
    with pytest.raises(CheckpointError, match="fingerprint"):
        Classifier.load(folder, base_model=str(other))


def test_missing_adapter_tensor_rejected(trained):
    folder, _ = trained
    path = folder / "adapter" / "adapter_model.safetensors"
    tensors = load_file(str(path))
    tensors.pop(sorted(tensors)[0])
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError, match="missing tensors"):
        Classifier.load(folder)


def test_unexpected_head_tensor_rejected(trained):
    folder, _ = trained
    path = folder / "head.safetensors"
    tensors = load_file(str(path))
    tensors["extra"] = torch.zeros(2)
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError, match="unexpected tensors"):
        Classifier.load(folder)


def test_not_a_classifier_folder_rejected(tmp_path):
    with pytest.raises(CheckpointError, match="not a gptclf classifier folder"):
        Classifier.load(tmp_path)
