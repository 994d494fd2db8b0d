"""Score a labelled file with a saved classifier and report scikit-learn metrics."""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support, roc_auc_score

from .calibration import (
    calibration_summary,
    expected_calibration_error,
    fit_temperature,
    log_loss,
    parse_threshold_metric,
    softmax,
    tune_threshold,
)
from .checkpoint import update_meta
from .data import LabelSet, encode_labels, read_labelled
from .errors import DataError
from .inference import Classifier

log = logging.getLogger(__name__)


def classification_metrics(
    targets: np.ndarray, probs: np.ndarray, labels: list[str], predictions: np.ndarray | None = None
) -> dict:
    """Accuracy, per-class precision/recall/F1, macro-F1, binary ROC-AUC and the confusion matrix.

    ``predictions`` defaults to the argmax of ``probs``; pass thresholded ones to score those.
    """
    if predictions is None:
        predictions = probs.argmax(axis=-1)
    classes = list(range(len(labels)))
    precision, recall, f1, support = precision_recall_fscore_support(
        targets, predictions, labels=classes, zero_division=0
    )
    metrics = {
        "rows": int(len(targets)),
        "accuracy": float(accuracy_score(targets, predictions)),
        "macro_f1": float(f1_score(targets, predictions, labels=classes, average="macro", zero_division=0)),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(labels, precision, recall, f1, support)
        },
        "confusion_matrix": {
            "labels": list(labels),
            "rows_are": "true label",
            "matrix": confusion_matrix(targets, predictions, labels=classes).tolist(),
        },
    }
    if len(labels) == 2:
        if len(np.unique(targets)) == 2:
            metrics["roc_auc"] = float(roc_auc_score(targets, probs[:, 1]))
        else:
            metrics["roc_auc"] = None
    return metrics


@dataclass
class ScoredFile:
    """A labelled file scored by a classifier, before any decision rule."""

    path: str
    texts: list[str]
    targets: np.ndarray  # (N,) class indices
    raw_logits: np.ndarray  # (N, C) before temperature scaling
    temperature: float

    @property
    def probs(self) -> np.ndarray:
        """Calibrated probabilities, (N, C)."""
        return softmax(self.raw_logits, self.temperature)

    @property
    def uncalibrated_probs(self) -> np.ndarray:
        return softmax(self.raw_logits)


def score_labelled_file(
    classifier: Classifier, path: str | Path, text_column: str | None = None, label_column: str | None = None, batch_size: int = 64
) -> ScoredFile:
    """Score a labelled file once; labels may be given as raw values or label names."""
    table, texts, raw_labels = read_labelled(path, text_column, label_column)
    label_set = LabelSet(names=classifier.labels, values=list(classifier.meta.label_values))
    targets = encode_labels(table, raw_labels, label_set, seen_in="the classifier's labels")
    raw = classifier.logits(texts, batch_size=batch_size, calibrated=False)
    return ScoredFile(str(path), texts, targets, raw, classifier.temperature)


def evaluate_file(
    classifier: Classifier,
    path: str | Path,
    text_column: str | None = None,
    label_column: str | None = None,
    batch_size: int = 64,
    threshold: float | None = None,
) -> dict:
    """Score a labelled file and compute its metrics with the classifier's decision rule."""
    scored = score_labelled_file(classifier, path, text_column, label_column, batch_size)
    return scored_metrics(classifier, scored, threshold)


def scored_metrics(classifier: Classifier, scored: ScoredFile, threshold: float | None = None) -> dict:
    """Metrics of a scored file, plus the calibration on it and the decision rule used."""
    probs = scored.probs
    predictions = classifier.decide(probs, threshold)
    metrics = classification_metrics(scored.targets, probs, classifier.labels, predictions)
    metrics["data"] = scored.path
    metrics["decision"] = _decision_rule(classifier, threshold)
    metrics["calibration"] = {
        "temperature": scored.temperature,
        "ece_uncalibrated": expected_calibration_error(scored.uncalibrated_probs, scored.targets),
        "ece": expected_calibration_error(probs, scored.targets),
        "log_loss_uncalibrated": log_loss(scored.raw_logits, scored.targets),
        "log_loss": log_loss(scored.raw_logits, scored.targets, scored.temperature),
    }
    return metrics


def _decision_rule(classifier: Classifier, threshold: float | None) -> dict:
    if threshold is not None:
        return {"rule": "threshold", "threshold": float(threshold), "source": "given"}
    if classifier.threshold is not None:
        return {"rule": "threshold", "threshold": classifier.threshold, "source": "stored"}
    return {"rule": "argmax"}


def calibrate_file(
    classifier: Classifier,
    path: str | Path,
    text_column: str | None = None,
    label_column: str | None = None,
    batch_size: int = 64,
    save: bool = True,
) -> dict:
    """Fit the temperature on a labelled file and, with ``save``, store it in the classifier's folder.

    Use held-out data (the validation file): fitting on training rows gives too low a temperature.
    """
    scored = score_labelled_file(classifier, path, text_column, label_column, batch_size)
    temperature = fit_temperature(scored.raw_logits, scored.targets)
    summary = calibration_summary(scored.raw_logits, scored.targets, temperature)
    summary["data"] = str(path)
    classifier.meta.temperature = temperature
    classifier.meta.calibration = summary
    if save:
        _store(classifier, temperature=temperature, calibration=summary)
        if classifier.threshold is not None:
            warnings.warn(
                f"the stored threshold {classifier.threshold:.4f} was tuned on probabilities at the old temperature; "
                "rerun `gptclf tune-threshold` to match the new one",
                stacklevel=2,
            )
    return summary


def tune_threshold_file(
    classifier: Classifier,
    path: str | Path,
    metric: str = "f1",
    text_column: str | None = None,
    label_column: str | None = None,
    batch_size: int = 64,
    save: bool = True,
) -> dict:
    """Choose the binary decision threshold that maximises ``metric`` on a labelled file.

    The threshold applies to the calibrated probability of ``labels[1]``. With ``save`` it is
    stored in the classifier's folder, and ``Classifier.predict`` uses it from then on.
    """
    if len(classifier.labels) != 2:
        raise ValueError(f"tune-threshold needs a binary classifier, but this one has {len(classifier.labels)} labels: {classifier.labels}")
    parsed = parse_threshold_metric(metric)
    scored = score_labelled_file(classifier, path, text_column, label_column, batch_size)
    try:
        choice = tune_threshold(scored.probs[:, 1], scored.targets == 1, parsed)
    except ValueError as err:
        raise DataError(f"{path}: {err}") from None
    if not choice.feasible:
        warnings.warn(f"no threshold reaches {choice.metric} on {path}; chose the one that comes closest", stacklevel=2)
    tuning = {**choice.__dict__, "data": str(path), "rows": int(len(scored.targets)), "positive_label": classifier.labels[1],
              "temperature": scored.temperature}
    classifier.meta.threshold = choice.threshold
    classifier.meta.threshold_tuning = tuning
    if save:
        _store(classifier, threshold=choice.threshold, threshold_tuning=tuning)
    return tuning


def _store(classifier: Classifier, **changes) -> None:
    if classifier.path is None:
        raise ValueError("this Classifier was not loaded from a folder, so there is nowhere to store the result; pass save=False")
    update_meta(classifier.path, **changes)
    log.info("stored %s in %s", ", ".join(changes), classifier.path)


def format_metrics(metrics: dict) -> str:
    """Render metrics as plain-text tables."""
    labels = metrics["confusion_matrix"]["labels"]
    width = max(12, *(len(n) for n in labels)) + 2
    lines = [f"rows: {metrics['rows']}", f"accuracy: {metrics['accuracy']:.4f}", f"macro F1: {metrics['macro_f1']:.4f}"]
    if "roc_auc" in metrics:
        auc = metrics["roc_auc"]
        lines.append(f"ROC-AUC: {auc:.4f}" if auc is not None else "ROC-AUC: undefined (one class in the data)")
    if "calibration" in metrics:
        cal = metrics["calibration"]
        lines.append(
            f"calibration (temperature {cal['temperature']:.3f}): ECE {cal['ece_uncalibrated']:.4f} -> {cal['ece']:.4f}, "
            f"log loss {cal['log_loss_uncalibrated']:.4f} -> {cal['log_loss']:.4f}"
        )
    if metrics.get("decision", {}).get("rule") == "threshold":
        lines.append(f"decision threshold: {metrics['decision']['threshold']:.4f} ({metrics['decision']['source']})")
    lines += ["", f"{'class':<{width}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
    for name, row in metrics["per_class"].items():
        lines.append(f"{name:<{width}}{row['precision']:>10.4f}{row['recall']:>10.4f}{row['f1']:>10.4f}{row['support']:>10d}")
    lines += ["", "confusion matrix (rows: true label, columns: predicted label)"]
    lines.append(" " * width + "".join(f"{n:>{width}}" for n in labels))
    for name, row in zip(labels, metrics["confusion_matrix"]["matrix"]):
        lines.append(f"{name:<{width}}" + "".join(f"{v:>{width}d}" for v in row))
    return "\n".join(lines)


def write_json(metrics: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    tmp.replace(path)
