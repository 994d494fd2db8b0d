import json
import random
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from gptclf import Classifier, train
from gptclf.backbone import load_backbone, resolve_source
from gptclf.check import (
    ACCURACY, COLUMNS, DETERMINISM, DISTRIBUTION, FAIL, FINITE, HEAD, IDENTITY, LABEL_MAP, LORA_B, PAD_TOKEN,
    PAD_VALUE, PADDING, PASS, RELOAD, ROW_ORDER, SKIP, TARGETS, TRUNCATION, WARN,
    CheckFailedError, check_accuracy, check_after_training, check_class_distribution, check_determinism,
    check_pad_token, check_prediction_columns, check_reload_equality, check_truncation, rebuild_initial_head, run_checks,
)
from gptclf import check
from gptclf.checkpoint import read_meta
from gptclf.cli import main
from gptclf.model import build_classifier
from gptclf.pooling import POOLERS

from conftest import NEGATIVE, POSITIVE, save_base_model, write_tsv

SUBJECTS = ["the film", "this movie", "the story", "the acting", "the music", "the food", "the service", "the hotel room"]


def easy_rows(n: int, seed: int) -> list[tuple[str, str]]:
    """Reviews that end with their sentiment word, so a tiny model learns them in a few steps."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        positive = rng.random() < 0.5
        word = rng.choice(POSITIVE if positive else NEGATIVE)
        rows.append((f"{rng.choice(SUBJECTS)} was {rng.choice(['', 'very ', 'really '])}{word}", "positive" if positive else "negative"))
    return rows


@pytest.fixture(scope="module")
def train_once(base_models, tmp_path_factory):
    """Train one well-trained tiny classifier per architecture, on first use, for the whole module."""
    folders = {}

    def get(arch: str):
        if arch not in folders:
            root = tmp_path_factory.mktemp(f"check-{arch}")
            data = write_tsv(root / "train.tsv", easy_rows(96, seed=1))
            check_data = write_tsv(root / "check.tsv", easy_rows(40, seed=2))
            train(train=str(data), output=str(root / "clf"), model=str(base_models[arch]), max_steps=24,
                  batch_size=8, lr=3e-2, lora_r=4, lora_dropout=0.0)
            folders[arch] = (root / "clf", check_data)
        return folders[arch]

    return get


@pytest.fixture
def copy_of(train_once, tmp_path):
    """Return a copy of the trained classifier folder of an architecture, for a test to break."""

    def make(arch: str):
        folder, check_data = train_once(arch)
        return shutil.copytree(folder, tmp_path / f"clf-{arch}"), check_data

    return make


class DropoutHead(torch.nn.Linear):
    """A head that applies dropout to its input, left in training mode."""

    def forward(self, x):
        return super().forward(torch.nn.functional.dropout(x, 0.5, training=True))


def _rows(report) -> dict:
    return {row.name: row for row in report.results}


def test_correct_classifier_passes_every_row(train_once):
    # The llama classifier goes through the same checks in the CLI test.
    folder, check_data = train_once("gpt2")
    report = run_checks(folder, check_data)
    assert [row.name for row in report.results] == list(ROW_ORDER)
    for row in report.results:
        assert row.status == PASS, f"{row.name}: {row.measured}; {row.message}"
    assert not report.failed


def test_check_command_prints_table_and_json(train_once, tmp_path, capsys):
    folder, check_data = train_once("llama")
    json_out = tmp_path / "check.json"
    code = main(["check", str(folder), "--data", str(check_data), "--json-out", str(json_out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    for name in ROW_ORDER:
        assert name in printed
    assert "15 checks: 15 PASS, 0 WARN, 0 FAIL" in printed
    saved = json.loads(json_out.read_text())
    assert saved["passed"] is True
    assert [row["name"] for row in saved["checks"]] == list(ROW_ORDER)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_last_position_pooling_fails_padding(copy_of, arch, monkeypatch):
    folder, _ = copy_of(arch)
    monkeypatch.setitem(POOLERS, "last", lambda hidden, mask: hidden[:, -1])
    rows = _rows(run_checks(folder, quick=True))
    assert rows[PADDING].status == FAIL
    assert "pad positions" in rows[PADDING].message
    assert "right-padded" in rows[PADDING].message
    assert rows[PAD_VALUE].status == FAIL
    assert rows[HEAD].status == PASS


def test_bf16_rounding_padding_warns(train_once, monkeypatch):
    folder, _ = train_once("llama")
    # A negative bf16 tolerance makes any bf16 result fail, so the fp32 re-check decides.
    monkeypatch.setitem(check.PADDING_TOLERANCE, "bf16", -1.0)
    rows = _rows(run_checks(folder, quick=True, dtype="bf16"))
    assert rows[PADDING].status == WARN
    assert "pooling is right and the change is rounding" in rows[PADDING].message
    assert "--dtype fp32" in rows[PADDING].message


def test_last_position_pooling_fails_bf16(copy_of, monkeypatch):
    folder, _ = copy_of("llama")
    monkeypatch.setitem(POOLERS, "last", lambda hidden, mask: hidden[:, -1])
    monkeypatch.setitem(check.PADDING_TOLERANCE, "bf16", -1.0)
    rows = _rows(run_checks(folder, quick=True, dtype="bf16"))
    assert rows[PADDING].status == FAIL
    assert "pad positions" in rows[PADDING].message


def test_reinitialised_head_fails_head_row(copy_of, base_models):
    folder, _ = copy_of("llama")
    backbone = load_backbone(resolve_source(str(base_models["llama"])))
    fresh = rebuild_initial_head(backbone.model, read_meta(folder))
    save_file({"weight": fresh.weight.detach().contiguous(), "bias": fresh.bias.detach().contiguous()}, str(folder / "head.safetensors"))
    rows = _rows(run_checks(folder, quick=True))
    assert rows[HEAD].status == FAIL
    assert "fresh initialisation with seed 0" in rows[HEAD].message
    assert rows[LORA_B].status == PASS


def test_zero_head_fails_as_degenerate(copy_of):
    folder, _ = copy_of("llama")
    tensors = load_file(str(folder / "head.safetensors"))
    save_file({name: torch.zeros_like(t) for name, t in tensors.items()}, str(folder / "head.safetensors"))
    rows = _rows(run_checks(folder, quick=True))
    assert rows[HEAD].status == FAIL
    assert "degenerate" in rows[HEAD].message


def test_zeroed_lora_b_fails_lora_row(copy_of):
    folder, _ = copy_of("llama")
    path = folder / "adapter" / "adapter_model.safetensors"
    tensors = load_file(str(path))
    name = sorted(n for n in tensors if "lora_B" in n)[0]
    tensors[name] = torch.zeros_like(tensors[name])
    save_file(tensors, str(path))
    rows = _rows(run_checks(folder, quick=True))
    assert rows[LORA_B].status == FAIL
    assert name.removeprefix("base_model.model.").removesuffix(".weight") in rows[LORA_B].message
    assert "all zeros" in rows[LORA_B].message
    assert rows[HEAD].status == PASS


def test_nan_in_head_fails_finite_row(copy_of):
    folder, _ = copy_of("llama")
    tensors = load_file(str(folder / "head.safetensors"))
    tensors["bias"][0] = float("nan")
    save_file(tensors, str(folder / "head.safetensors"))
    rows = _rows(run_checks(folder, quick=True))
    assert rows[FINITE].status == FAIL
    assert "head.bias" in rows[FINITE].message


def test_swapped_label_names_fail_label_row(copy_of):
    folder, _ = copy_of("llama")
    meta = json.loads((folder / "gptclf.json").read_text())
    meta["labels"] = meta["labels"][::-1]
    (folder / "gptclf.json").write_text(json.dumps(meta))
    rows = _rows(run_checks(folder, quick=True))
    assert rows[LABEL_MAP].status == FAIL
    assert "swapped names" in rows[LABEL_MAP].message
    assert rows[PADDING].status == PASS


def test_swapped_head_rows_fail_accuracy(copy_of):
    folder, check_data = copy_of("llama")
    tensors = load_file(str(folder / "head.safetensors"))
    save_file({name: t.flip(0).contiguous() for name, t in tensors.items()}, str(folder / "head.safetensors"))
    rows = _rows(run_checks(folder, check_data, reload=False))
    assert rows[ACCURACY].status == FAIL
    assert "label map is swapped" in rows[ACCURACY].message
    assert rows[LABEL_MAP].status == PASS


def test_different_base_model_fails_identity(copy_of, tmp_path):
    folder, _ = copy_of("llama")
    other = save_base_model(tmp_path / "other", "llama", seed=99)
    rows = _rows(run_checks(folder, base_model=str(other)))
    assert rows[IDENTITY].status == FAIL
    assert "--base-model" in rows[IDENTITY].message
    assert rows[RELOAD].status == SKIP
    assert rows[PADDING].status == PASS


def test_other_architecture_fails_adapter_targets(copy_of, base_models, capsys):
    folder, _ = copy_of("gpt2")
    other = base_models["llama"]
    assert main(["check", str(folder), "--base-model", str(other)]) == 1
    printed = capsys.readouterr().out
    assert "FAIL adapter targets" in printed
    assert "another architecture" in printed
    rows = _rows(run_checks(folder, base_model=str(other)))
    assert rows[TARGETS].status == FAIL
    assert rows[IDENTITY].status == FAIL
    assert rows[PADDING].status == SKIP


def test_unsaved_head_change_fails_reload(train_once):
    folder, _ = train_once("llama")
    classifier = Classifier.load(folder)
    with torch.no_grad():
        classifier.model.head.bias[0] += 1.0  # a shift of every bias would leave the probabilities unchanged
    row = check_reload_equality(classifier, folder, ["the film was good", "the food was awful"])
    assert row.status == FAIL
    assert "fresh process" in row.message


def test_dropout_at_inference_fails_determinism(train_once):
    folder, _ = train_once("llama")
    classifier = Classifier.load(folder)
    head = classifier.model.head
    classifier.model.head = DropoutHead(head.in_features, head.out_features)
    classifier.model.head.load_state_dict(head.state_dict())
    ids = [classifier.tokenizer(t)["input_ids"] for t in ("the film was good", "the food was awful", "fun")]
    row = check_determinism(classifier, ids, batch_size=8)
    assert row.status == FAIL
    assert "model.eval()" in row.message


def test_missing_pad_token_fails_pad_row(train_once):
    folder, _ = train_once("llama")
    classifier = Classifier.load(folder)
    classifier.tokenizer.pad_token = None
    row = check_pad_token(classifier)
    assert row.status == FAIL
    assert "no pad token" in row.message


def test_extra_label_fails_prediction_columns(train_once):
    folder, _ = train_once("llama")
    classifier = Classifier.load(folder)
    classifier.meta.labels = [*classifier.meta.labels, "neutral"]
    texts = ["the film was good"]
    row = check_prediction_columns(classifier, texts, classifier.predict_proba(texts), batch_size=8)
    assert row.status == FAIL
    assert "2 columns but there are 3 labels" in row.message


def test_truncation_warns_above_one_percent(train_once):
    folder, _ = train_once("llama")
    tokenizer = Classifier.load(folder).tokenizer
    texts = ["the film was good"] * 90 + ["the film was good and the music was great and the story was fun"] * 10
    row = check_truncation(tokenizer, texts, max_length=6)
    assert row.status == WARN
    assert "10.0% (10 of 100)" in row.measured
    assert "--max-length" in row.message
    assert check_truncation(tokenizer, texts[:90], max_length=6).status == PASS


def test_collapsed_predictions_warn_distribution():
    labels = ["negative", "positive"]
    predictions = np.array([1] * 95 + [0] * 5)
    balanced = np.array([0, 1] * 50)
    row = check_class_distribution(predictions, balanced, labels)
    assert row.status == WARN
    assert "95.0% of predictions are 'positive'" in row.message
    skewed = np.array([1] * 96 + [0] * 4)
    assert check_class_distribution(predictions, skewed, labels).status == PASS
    assert check_class_distribution(predictions, None, labels).status == WARN


def test_accuracy_at_majority_rate_warns():
    labels = ["negative", "positive"]
    targets = np.array([1] * 60 + [0] * 40)
    row = check_accuracy(np.ones(100, dtype=int), targets, labels)
    assert row.status == WARN
    assert "most common label" in row.message
    assert check_accuracy(targets.copy(), targets, labels).status == PASS
    assert check_accuracy(targets, None, labels).status == SKIP


def test_rebuilt_head_matches_build_classifier(base_models, train_once):
    folder, _ = train_once("llama")
    meta = read_meta(folder)
    settings = meta.config["model"]
    expected = build_classifier(
        load_backbone(resolve_source(str(base_models["llama"]))).model, 2, "last", settings["lora_r"],
        settings["lora_alpha"], settings["lora_dropout"], None, seed=meta.config["optim"]["seed"],
    ).head
    base = load_backbone(resolve_source(str(base_models["llama"]))).model
    rng_before = torch.get_rng_state()
    fresh = rebuild_initial_head(base, meta)
    assert torch.equal(fresh.weight, expected.weight)
    assert torch.equal(fresh.bias, expected.bias)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert not [name for name, _ in base.named_modules() if "lora" in name]


def test_quick_check_logs_summary(train_once, caplog):
    folder, _ = train_once("llama")
    caplog.set_level("INFO", logger="gptclf.check")
    report = check_after_training(folder)
    assert {row.name for row in report.results} == {PADDING, HEAD, LORA_B, FINITE, TARGETS, PAD_TOKEN, PAD_VALUE, LABEL_MAP, COLUMNS}
    assert "check after training: 9 checks: 9 PASS, 0 WARN, 0 FAIL" in caplog.text


def test_train_exits_nonzero_when_check_fails(base_models, tmp_path, monkeypatch, capsys):
    data = write_tsv(tmp_path / "train.tsv", easy_rows(16, seed=3))
    out = tmp_path / "clf"
    monkeypatch.setitem(POOLERS, "last", lambda hidden, mask: hidden[:, -1])
    code = main(["train", "--train", str(data), "--output", str(out), "--model", str(base_models["llama"]),
                 "--max-steps", "2", "--batch-size", "8", "--lora-r", "4"])
    err = capsys.readouterr().err
    assert code == 1
    assert (out / "gptclf.json").is_file()
    assert "check after training failed" in err
    assert "padding invariance" in err
    with pytest.raises(CheckFailedError, match="padding invariance"):
        check_after_training(out)
