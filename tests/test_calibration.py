import json
import shutil
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gptclf import Classifier, train
from gptclf.calibration import (
    calibration_summary,
    decide,
    expected_calibration_error,
    fit_temperature,
    log_loss,
    parse_threshold_metric,
    softmax,
    tune_threshold,
)
from gptclf.checkpoint import read_meta
from gptclf.cli import main
from gptclf.errors import ConfigError
from gptclf.evaluation import calibrate_file, evaluate_file, tune_threshold_file
from gptclf.imbalance import ImbalanceWarning, resolve_class_weights, warn_if_collapsed, warn_if_imbalanced

from conftest import sentiment_rows, write_tsv


def _overconfident_logits(n: int = 2000, scale: float = 6.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a noisy linear model multiplied by `scale`, so probabilities are too extreme."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(0.0, 1.5, size=(n, 3))
    cumulative = softmax(true_logits).cumsum(axis=-1)  # (n, 3)
    targets = (rng.random((n, 1)) > cumulative).sum(axis=-1).clip(max=2)
    return scale * true_logits, targets


@pytest.fixture(scope="module")
def trained(tmp_path_factory, base_models):
    """A small calibrated classifier; tests that change it work on a copy (see `trained_copy`)."""
    root = tmp_path_factory.mktemp("calibration")
    train_file = write_tsv(root / "train.tsv", sentiment_rows(64, seed=1))
    validation = write_tsv(root / "validation.tsv", sentiment_rows(48, seed=2))
    out = root / "clf"
    result = train(train=str(train_file), validation=str(validation), output=str(out), model=str(base_models["llama"]),
                   max_steps=4, batch_size=16, lr=0.05, lora_r=4)
    return out, validation, result


@pytest.fixture
def trained_copy(trained, tmp_path):
    out, validation, _ = trained
    copy = tmp_path / "clf"
    shutil.copytree(out, copy)
    return copy, validation


# --- temperature scaling ---------------------------------------------------------------------


def test_fit_temperature_recovers_known_scale():
    logits, targets = _overconfident_logits(scale=3.0)
    assert fit_temperature(logits, targets) == pytest.approx(3.0, rel=0.15)


def test_temperature_lowers_overconfident_log_loss():
    logits, targets = _overconfident_logits()
    temperature = fit_temperature(logits, targets)
    assert temperature > 2.0
    assert log_loss(logits, targets, temperature) < 0.8 * log_loss(logits, targets)
    summary = calibration_summary(logits, targets, temperature)
    assert summary["ece_after"] < summary["ece_before"]
    assert summary["log_loss_after"] < summary["log_loss_before"]


def test_temperature_keeps_predicted_class():
    logits, _ = _overconfident_logits()
    assert (softmax(logits, 4.0).argmax(-1) == logits.argmax(-1)).all()


def test_log_loss_matches_cross_entropy():
    logits, targets = _overconfident_logits(n=50)
    expected = F.cross_entropy(torch.tensor(logits / 2.0), torch.tensor(targets)).item()
    assert log_loss(logits, targets, 2.0) == pytest.approx(expected)


def test_ece_matches_hand_computation():
    # Bin (0.6, 0.667]: confidences 0.62, 0.66, accuracy 1/2 -> gap |0.5 - 0.64| = 0.14, weight 2/4.
    # Bin (0.933, 1.0]: confidences 0.95, 1.0, accuracy 2/2 -> gap |1 - 0.975| = 0.025, weight 2/4.
    probs = np.array([[0.38, 0.62], [0.66, 0.34], [0.05, 0.95], [0.0, 1.0]])
    targets = np.array([1, 1, 1, 1])
    assert expected_calibration_error(probs, targets) == pytest.approx(0.5 * 0.14 + 0.5 * 0.025)


def test_temperature_on_overconfident_classifier(trained_copy):
    out, validation = trained_copy
    clf = Classifier.load(out)
    # Multiply the head by 30 so the classifier is deliberately over-confident.
    with torch.no_grad():
        clf.model.head.weight.mul_(30.0)
        clf.model.head.bias.mul_(30.0)
    before = evaluate_file(clf, validation)["calibration"]["log_loss_uncalibrated"]
    summary = calibrate_file(clf, validation)
    assert summary["temperature"] > 1.0
    assert summary["log_loss_before"] == pytest.approx(before)
    assert summary["log_loss_after"] < summary["log_loss_before"]
    assert read_meta(out).temperature == pytest.approx(summary["temperature"])
    scaled = clf.logits(["the film was good ."])
    raw = clf.logits(["the film was good ."], calibrated=False)
    np.testing.assert_allclose(scaled, raw / summary["temperature"], rtol=1e-5)


def test_training_stores_fitted_temperature(trained):
    out, _, result = trained
    meta = read_meta(out)
    assert meta.temperature == pytest.approx(result.calibration["temperature"])
    assert meta.calibration["rows"] == 48
    assert meta.calibration["log_loss_after"] <= meta.calibration["log_loss_before"] + 1e-9
    assert (out / "train_log.jsonl").is_file()
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


def test_uncalibrated_classifier_loads_with_temperature_one(trained_copy):
    out, _ = trained_copy
    raw = json.loads((out / "gptclf.json").read_text())
    for key in ("temperature", "calibration", "threshold", "threshold_tuning", "class_weights"):
        del raw[key]
    (out / "gptclf.json").write_text(json.dumps(raw))
    clf = Classifier.load(out)
    assert clf.temperature == 1.0
    assert clf.threshold is None


def test_no_calibrate_flag_keeps_temperature_one():
    from gptclf import TrainConfig
    from gptclf.cli import build_parser, train_options_from_args

    args = build_parser().parse_args(["train", "--train", "t.tsv", "--output", "o", "--no-calibrate"])
    assert TrainConfig.from_flat(**train_options_from_args(args)).optim.calibrate is False
    args = build_parser().parse_args(["train", "--train", "t.tsv", "--output", "o"])
    assert TrainConfig.from_flat(**train_options_from_args(args)).optim.calibrate is True


# --- thresholds ------------------------------------------------------------------------------

# Negatives below 0.45 except one at 0.8; positives above 0.45 except one at 0.3.
SCORES = np.array([0.05, 0.1, 0.2, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95])
TARGETS = np.array([0, 0, 0, 1, 0, 0, 1, 1, 1, 0, 1, 1])


def _brute_force(scores, targets, objective):
    best = None
    for t in np.unique(scores):
        pred = scores >= t
        tp = (pred & (targets == 1)).sum()
        precision, recall = tp / pred.sum(), tp / (targets == 1).sum()
        value = objective(precision, recall)
        if value is not None and (best is None or value > best[0]):
            best = (value, t)
    return best


def test_threshold_tuner_finds_f1_optimum():
    choice = tune_threshold(SCORES, TARGETS, parse_threshold_metric("f1"))
    # Threshold between 0.4 and 0.5: 5 of 6 positives caught, 1 false positive -> F1 = 10/12.
    assert 0.4 < choice.threshold <= 0.5
    assert choice.f1 == pytest.approx(10 / 12)
    best_f1, _ = _brute_force(SCORES, TARGETS, lambda p, r: 2 * p * r / (p + r) if p + r else 0.0)
    assert choice.value == pytest.approx(best_f1)


def test_threshold_tuner_precision_at_recall():
    choice = tune_threshold(SCORES, TARGETS, parse_threshold_metric("precision@1.0"))
    # Every positive is caught only from 0.3 down, with 3 negatives above it: precision 6/9.
    assert 0.2 < choice.threshold <= 0.3
    assert choice.recall == 1.0
    assert choice.value == pytest.approx(6 / 9)


def test_threshold_tuner_recall_at_precision():
    choice = tune_threshold(SCORES, TARGETS, parse_threshold_metric("recall@0.8"))
    best, _ = _brute_force(SCORES, TARGETS, lambda p, r: r if p >= 0.8 else None)
    assert choice.value == pytest.approx(best) == pytest.approx(5 / 6)
    assert choice.precision >= 0.8
    assert 0.4 < choice.threshold <= 0.5
    assert choice.feasible


def test_threshold_metric_rejects_bad_forms():
    for bad in ("accuracy", "precision@", "recall@1.5", "precision@0"):
        with pytest.raises(ValueError, match="--metric"):
            parse_threshold_metric(bad)


def test_decide_applies_threshold_binary_only():
    probs = np.array([[0.7, 0.3], [0.4, 0.6]])
    assert decide(probs).tolist() == [0, 1]
    assert decide(probs, 0.25).tolist() == [1, 1]
    assert decide(probs, 0.65).tolist() == [0, 0]
    with pytest.raises(ValueError, match="binary"):
        decide(np.full((1, 3), 1 / 3), 0.5)


def test_stored_threshold_drives_predict(trained_copy):
    out, validation = trained_copy
    clf = Classifier.load(out)
    tuning = tune_threshold_file(clf, validation, "f1")
    assert read_meta(out).threshold == pytest.approx(tuning["threshold"])
    reloaded = Classifier.load(out)
    texts = [t for t, _ in sentiment_rows(20, seed=5)]
    probs = reloaded.predict_proba(texts)
    expected = [reloaded.labels[int(p >= tuning["threshold"])] for p in probs[:, 1]]
    assert reloaded.predict(texts) == expected
    assert set(reloaded.predict(texts, threshold=0.0)) == {reloaded.labels[1]}
    with pytest.raises(ValueError, match="--threshold"):
        reloaded.predict(texts, threshold=1.5)
    assert evaluate_file(reloaded, validation)["decision"]["source"] == "stored"


def test_tune_threshold_command_stores_threshold(trained_copy, capsys):
    out, validation = trained_copy
    assert main(["tune-threshold", str(out), "--data", str(validation), "--metric", "recall@0.5", "--dry-run"]) == 0
    assert read_meta(out).threshold is None
    assert main(["tune-threshold", str(out), "--data", str(validation), "--metric", "recall@0.5"]) == 0
    meta = json.loads((out / "gptclf.json").read_text())
    assert 0.0 <= meta["threshold"] <= 1.0
    assert meta["threshold_tuning"]["metric"] == "recall@0.5"
    assert "stored in" in capsys.readouterr().out
    assert main(["predict", str(out), "the film was good .", "--threshold", "0.0"]) == 0
    record = json.loads(capsys.readouterr().out.strip())
    assert record["label"] == meta["labels"][1]
    assert main(["tune-threshold", str(out), "--data", str(validation), "--metric", "accuracy"]) == 2
    assert "--metric" in capsys.readouterr().err


def test_calibrate_command_stores_temperature(trained_copy, capsys):
    out, validation = trained_copy
    (out / "gptclf.json").write_text(json.dumps({**json.loads((out / "gptclf.json").read_text()), "temperature": 1.0}))
    assert main(["calibrate", str(out), "--data", str(validation)]) == 0
    assert "ECE" in capsys.readouterr().out
    meta = read_meta(out)
    assert meta.temperature == pytest.approx(meta.calibration["temperature"])
    assert meta.calibration["data"] == str(validation)


# --- class weights and imbalance warnings ----------------------------------------------------


def test_auto_class_weights_are_inverse_frequency():
    labels = np.array([0, 0, 0, 1])
    assert resolve_class_weights("auto", labels, 2) == pytest.approx([4 / (2 * 3), 4 / (2 * 1)])
    assert resolve_class_weights("1, 2.5", labels, 2) == [1.0, 2.5]
    assert resolve_class_weights(None, labels, 2) is None
    with pytest.raises(ValueError, match="one weight per class"):
        resolve_class_weights("1,2,3", labels, 2)


def test_class_weights_change_loss_as_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.5, 0.5], [0.0, 1.0], [1.0, -1.0]])
    targets = torch.tensor([0, 0, 0, 1])
    weights = resolve_class_weights("auto", targets.numpy(), 2)  # [2/3, 2]
    nll = -torch.log_softmax(logits, dim=-1)[torch.arange(4), targets]
    by_hand = sum(weights[t] * n for t, n in zip(targets.tolist(), nll.tolist())) / sum(weights[t] for t in targets.tolist())
    weighted = F.cross_entropy(logits, targets, weight=torch.tensor(weights)).item()
    assert weighted == pytest.approx(by_hand)
    assert weighted != pytest.approx(F.cross_entropy(logits, targets).item())


def test_training_uses_class_weights(tmp_path, base_models, toy_data):
    train_file, _ = toy_data
    first_losses = {}
    for spec in (None, "1,5"):
        out = tmp_path / f"clf-{spec}"
        train(train=str(train_file), output=str(out), model=str(base_models["llama"]),
              max_steps=1, batch_size=16, lr=0.05, lora_r=4, class_weights=spec)
        first = json.loads((out / "train_log.jsonl").read_text().splitlines()[0])
        first_losses[spec] = first["loss"]
        assert read_meta(out).class_weights == (None if spec is None else [1.0, 5.0])
    # Same seed, same first micro-batch and model: only the weights differ.
    assert first_losses[None] != pytest.approx(first_losses["1,5"], abs=1e-6)


def test_bad_class_weights_rejected_by_flag(tmp_path, capsys):
    code = main(["train", "--train", str(tmp_path / "missing.tsv"), "--output", str(tmp_path / "o"), "--class-weights", "1,-2"])
    assert code == 2
    assert "--class-weights" in capsys.readouterr().err


def test_class_weight_count_must_match_labels(tmp_path, toy_data):
    train_file, _ = toy_data
    with pytest.raises(ConfigError, match="one weight per class"):
        train(train=str(train_file), output=str(tmp_path / "o"), class_weights="1,2,3")


def test_dominant_class_warns():
    with pytest.warns(ImbalanceWarning, match="95.0% of the training labels"):
        warn_if_imbalanced(np.array([0] * 95 + [1] * 5), ["a", "b"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_imbalanced(np.array([0] * 90 + [1] * 10), ["a", "b"])


def test_collapsed_predictions_warn():
    with pytest.warns(ImbalanceWarning, match="every validation prediction is 'b'"):
        warn_if_collapsed(np.array([1, 1, 1]), ["a", "b"], step=7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_collapsed(np.array([0, 1, 1]), ["a", "b"], step=7)
