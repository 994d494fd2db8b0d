import json
import re

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from gptclf import figures, train
from gptclf.calibration import softmax
from gptclf.cli import main
from gptclf.reporting import REPORT_FIGURES
from gptclf.tracking import read_train_log, tensorboard_missing

from conftest import sentiment_rows, write_tsv

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_real_png(path, min_bytes=8_000, min_std=0.05):
    """A PNG file with enough bytes and pixel spread that something was drawn."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG"
    assert len(data) > min_bytes, f"{path.name} is only {len(data)} bytes"
    pixels = matplotlib.image.imread(path)[..., :3]
    assert pixels.shape[0] > 200, f"{path.name} is {pixels.shape}"
    assert pixels.shape[1] > 200, f"{path.name} is {pixels.shape}"
    assert pixels.std() > min_std, f"{path.name} is nearly blank (pixel std {pixels.std():.3f})"


def image_sources(page: str) -> list[str]:
    return re.findall(r"<img[^>]*\ssrc=['\"]([^'\"]+)['\"]", page)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, base_models):
    """A small classifier trained with validation, so it has a log, figures and a temperature."""
    root = tmp_path_factory.mktemp("report")
    train_file = write_tsv(root / "train.tsv", sentiment_rows(96, seed=1))
    validation = write_tsv(root / "validation.tsv", sentiment_rows(40, seed=2))
    out = root / "clf"
    train(train=str(train_file), validation=str(validation), output=str(out), model=str(base_models["llama"]),
          max_steps=8, batch_size=12, lr=0.05, lora_r=4, eval_every=4)
    return out, validation


def _scores(n=300, classes=2, seed=0):
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, classes, n)
    logits = rng.normal(0, 1, (n, classes))
    logits[np.arange(n), targets] += 1.5
    return targets, softmax(3 * logits)


# --- figures ---------------------------------------------------------------------------------


@pytest.mark.parametrize("classes", [2, 4])
def test_figures_are_real_pngs(tmp_path, classes):
    targets, probs = _scores(classes=classes)
    labels = [f"class {k}" for k in range(classes)]
    matrix = np.zeros((classes, classes), dtype=int)
    np.add.at(matrix, (targets, probs.argmax(-1)), 1)
    written = [
        figures.plot_confusion_matrix(matrix, labels, tmp_path / "cm.png"),
        figures.plot_roc_curves(targets, probs, labels, tmp_path / "roc.png"),
        figures.plot_pr_curves(targets, probs, labels, tmp_path / "pr.png"),
        figures.plot_reliability(targets, probs, softmax(np.log(probs) / 3), 3.0, tmp_path / "rel.png"),
        figures.plot_confidence_histogram(targets, probs, tmp_path / "hist.png"),
    ]
    for path in written:
        assert_real_png(path)
    if classes == 2:
        assert_real_png(figures.plot_roc_curves(targets, probs, labels, tmp_path / "roc_t.png", threshold=0.3))
        assert_real_png(figures.plot_pr_curves(targets, probs, labels, tmp_path / "pr_t.png", threshold=0.3))


def test_training_curves_are_real_pngs(tmp_path):
    steps = [{"step": s, "loss": 1.0 / s + 0.1 * np.sin(s), "lr": 1e-3 * (1 - s / 60)} for s in range(1, 61)]
    evaluations = [{"step": s, "accuracy": 0.5 + s / 200, "loss": 1.0 / s} for s in (20, 40, 60)]
    assert_real_png(figures.plot_training_loss(steps, tmp_path / "loss.png"))
    assert_real_png(figures.plot_validation_metrics(evaluations, tmp_path / "val.png"))


# --- training outputs ------------------------------------------------------------------------


def test_training_writes_log_and_curves(trained):
    out, _ = trained
    steps, evaluations = read_train_log(out / "train_log.jsonl")
    assert [r["step"] for r in steps] == list(range(1, 9))
    for record in steps:
        assert set(record) >= {"step", "epoch", "loss", "lr", "samples_per_second"}
        assert record["samples_per_second"] > 0
    assert [r["step"] for r in evaluations] == [4, 8]
    assert all(0 <= r["accuracy"] <= 1 and r["loss"] > 0 for r in evaluations)
    assert_real_png(out / "training_loss.png")
    assert_real_png(out / "validation_metrics.png")
    meta = json.loads((out / "gptclf.json").read_text())
    assert meta["calibration"]["rows"] == 40
    assert meta["temperature"] == meta["calibration"]["temperature"]


@pytest.mark.skipif(tensorboard_missing(), reason="tensorboard is not installed")
def test_report_to_tensorboard_writes_events(tmp_path, base_models, toy_data):
    train_file, validation = toy_data
    out = tmp_path / "clf"
    train(train=str(train_file), validation=str(validation), output=str(out), model=str(base_models["gpt2"]),
          max_steps=2, batch_size=16, lr=0.05, lora_r=4, report_to="tensorboard", calibrate=False)
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    assert events[0].stat().st_size > 100


def test_report_to_rejects_unknown_tracker(tmp_path, capsys):
    code = main(["train", "--train", str(tmp_path / "t.tsv"), "--output", str(tmp_path / "o"), "--report-to", "wandb"])
    assert code == 2
    assert "--report-to must be one of tensorboard" in capsys.readouterr().err


# --- evaluate --report -----------------------------------------------------------------------


def test_evaluate_report_writes_every_file(trained, tmp_path, capsys):
    out, validation = trained
    report = tmp_path / "report"
    assert main(["evaluate", str(out), "--data", str(validation), "--report", str(report)]) == 0
    assert "report written to" in capsys.readouterr().out
    for name in ("metrics.json", "classification_report.txt", "misclassified.csv", "report.html", *REPORT_FIGURES):
        assert (report / name).is_file(), name
    for name in REPORT_FIGURES:
        assert_real_png(report / name)
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["rows"] == 40
    assert set(metrics["calibration"]) >= {"temperature", "ece", "ece_uncalibrated", "log_loss", "log_loss_uncalibrated"}
    assert "precision" in (report / "classification_report.txt").read_text()


def test_report_html_references_every_figure(trained, tmp_path):
    out, validation = trained
    report = tmp_path / "report"
    assert main(["evaluate", str(out), "--data", str(validation), "--report", str(report)]) == 0
    page = (report / "report.html").read_text()
    sources = image_sources(page)
    assert sorted(sources) == sorted(REPORT_FIGURES)
    for source in sources:
        assert (report / source).is_file(), f"report.html shows missing {source}"
    assert "ECE before / after calibration" in page
    assert "lora_alpha" in page  # the model's configuration from gptclf.json


def test_misclassified_csv_lists_confident_errors(trained, tmp_path):
    out, validation = trained
    report = tmp_path / "report"
    assert main(["evaluate", str(out), "--data", str(validation), "--report", str(report), "--threshold", "0.0"]) == 0
    wrong = pd.read_csv(report / "misclassified.csv")
    assert list(wrong.columns) == ["row", "text", "true_label", "predicted_label", "probability", "true_label_probability"]
    # Threshold 0 predicts the second label for every row, so every row of the first label is wrong.
    labels = json.loads((out / "gptclf.json").read_text())["labels"]
    first = sum(1 for _, label in sentiment_rows(40, seed=2) if label == labels[0])
    assert len(wrong) == first
    assert (wrong["true_label"] != wrong["predicted_label"]).all()
    assert wrong["probability"].is_monotonic_decreasing


def test_multiclass_report_has_one_vs_rest_curves(tmp_path, base_models):
    rows = [(t, ["neg", "pos"][label == "positive"]) for t, label in sentiment_rows(60, seed=3)]
    rows += [(f"the {w} was long ." if i % 2 else f"one {w} day .", "neutral") for i, w in enumerate(["film", "story", "book"] * 10)]
    train_file = write_tsv(tmp_path / "train.tsv", rows)
    out = tmp_path / "clf"
    train(train=str(train_file), validation=str(train_file), output=str(out), model=str(base_models["gpt2"]),
          max_steps=3, batch_size=16, lr=0.05, lora_r=4)
    report = tmp_path / "report"
    assert main(["evaluate", str(out), "--data", str(train_file), "--report", str(report)]) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    assert len(metrics["per_class"]) == 3
    assert_real_png(report / "roc_curve.png")
    assert_real_png(report / "confusion_matrix.png")
    assert main(["evaluate", str(out), "--data", str(train_file), "--threshold", "0.5"]) == 2
