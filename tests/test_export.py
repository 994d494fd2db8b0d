import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from safetensors.torch import load_file

from gptclf import Classifier, train
from gptclf.backbone import load_backbone, resolve_source
from gptclf.checkpoint import export_classifier, read_meta
from gptclf.cli import main
from gptclf.errors import CheckpointError
from gptclf.model import build_classifier

from conftest import save_base_model, sentiment_rows, write_tsv

# Lengths from 1 to about 30 tokens, so batches need padding.
TEXTS = [
    "fun !",
    "the film was good",
    "the food was awful and the service was poor , i felt",
    "a dull , weak and tedious story",
    "this movie was really brilliant and the cast was superb - one of the best i ever watched , "
    "the music was lovely and the ending was moving",
]


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def trained(tmp_path_factory, request):
    """A classifier trained on its own copy of a base model, and that base model folder."""
    root = tmp_path_factory.mktemp(f"export-{request.param}")
    base = save_base_model(root / "base", request.param)
    data = write_tsv(root / "train.tsv", sentiment_rows(32, seed=3))
    folder = root / "clf"
    train(train=str(data), output=str(folder), model=str(base), max_steps=4, batch_size=8, lr=5e-2, lora_r=4, lora_dropout=0.0)
    return folder, base


@pytest.fixture(scope="module")
def exported(trained):
    folder, _ = trained
    return export_classifier(folder, folder.parent / "exported")


def _fresh_process_logits(folder):
    code = (
        "import json, sys; from gptclf import Classifier; "
        "c = Classifier.load(sys.argv[1], dtype='fp32'); "
        "print(json.dumps(c.logits(json.loads(sys.argv[2])).tolist()))"
    )
    done = subprocess.run([sys.executable, "-c", code, str(folder), json.dumps(TEXTS)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return np.array(json.loads(done.stdout.strip().splitlines()[-1]), dtype=np.float32)


def test_export_logits_equal_unmerged(trained, exported):
    folder, _ = trained
    out = exported
    unmerged = Classifier.load(folder, merge=False, dtype="fp32").logits(TEXTS)
    exported = Classifier.load(out, dtype="fp32").logits(TEXTS)
    np.testing.assert_allclose(exported, unmerged, atol=1e-4, rtol=0)


def test_export_loads_without_base_model(trained, exported):
    folder, base = trained
    if "llama" not in str(base):
        pytest.skip("a fresh process takes seconds to start; one architecture is enough")
    unmerged = Classifier.load(folder, merge=False, dtype="fp32").logits(TEXTS)
    hidden = base.with_name("base-moved-away")
    base.rename(hidden)
    try:
        with pytest.raises(Exception):
            Classifier.load(folder)
        fresh = _fresh_process_logits(exported)
    finally:
        hidden.rename(base)
    np.testing.assert_allclose(fresh, unmerged, atol=1e-4, rtol=0)


def test_exported_head_is_trained_head(trained, exported):
    folder, base = trained
    out = exported
    exported = load_file(str(out / "head.safetensors"))
    trained_head = load_file(str(folder / "head.safetensors"))
    for name in ("weight", "bias"):
        np.testing.assert_array_equal(exported[name].numpy(), trained_head[name].numpy())
    seed = read_meta(folder).config["optim"]["seed"]
    fresh = build_classifier(load_backbone(resolve_source(str(base))).model, 2, "last", 4, 8.0, 0.0, None, seed=seed)
    assert not np.allclose(exported["weight"].numpy(), fresh.head.weight.detach().numpy(), atol=1e-4)


def test_export_folder_is_standalone(trained, exported):
    folder, _ = trained
    out = exported
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert "backbone/model.safetensors" in names
    assert "backbone/config.json" in names
    assert "backbone/tokenizer.json" in names
    assert "head.safetensors" in names
    assert not [n for n in names if n.startswith("adapter/")]
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pkl"))]
    meta = json.loads((out / "gptclf.json").read_text())
    source = json.loads((folder / "gptclf.json").read_text())
    assert meta["base_model"]["kind"] == "merged"
    assert meta["base_model"]["merged_from"] == source["base_model"]
    assert meta["base_model"]["fingerprint"] != source["base_model"]["fingerprint"]
    assert meta["labels"] == source["labels"]
    assert meta["tokenizer"] == source["tokenizer"]


def test_exported_classifier_rejects_base_model(trained, exported):
    _, base = trained
    with pytest.raises(CheckpointError, match="drop --base-model"):
        Classifier.load(exported, base_model=str(base))


def test_exported_backbone_change_rejected(exported, tmp_path):
    out = shutil.copytree(exported, tmp_path / "copy")
    weights = load_file(str(out / "backbone" / "model.safetensors"))
    name = sorted(weights)[0]
    weights[name] = weights[name] + 1.0
    from safetensors.torch import save_file

    save_file(weights, str(out / "backbone" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="changed after export"):
        Classifier.load(out)


def test_export_command_writes_folder(trained, tmp_path, capsys):
    folder, base = trained
    if "llama" not in str(base):
        pytest.skip("the command is the same for every architecture")
    out = tmp_path / "exported"
    assert main(["export", str(folder), "--output", str(out)]) == 0
    assert (out / "gptclf.json").is_file()
    assert main(["export", str(folder), "--output", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["export", str(folder), "--output", str(out), "--overwrite"]) == 0
    assert main(["predict", str(out), "the film was good"]) == 0
    assert '"label"' in capsys.readouterr().out
