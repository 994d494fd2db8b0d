"""Score a labelled file with a saved classifier and report scikit-learn metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support, roc_auc_score

from .data import LabelSet, encode_labels, read_labelled
from .inference import Classifier


def classification_metrics(targets: np.ndarray, probs: np.ndarray, labels: list[str]) -> dict:
    """Accuracy, per-class precision/recall/F1, macro-F1, binary ROC-AUC and the confusion matrix."""
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


def evaluate_file(
    classifier: Classifier, path: str | Path, text_column: str | None = None, label_column: str | None = None, batch_size: int = 64
) -> dict:
    """Score a labelled file; labels may be given as raw values or label names."""
    table, texts, raw_labels = read_labelled(path, text_column, label_column)
    label_set = LabelSet(names=classifier.labels, values=list(classifier.meta.label_values))
    targets = encode_labels(table, raw_labels, label_set, seen_in="the classifier's labels")
    probs = classifier.predict_proba(texts, batch_size=batch_size)
    metrics = classification_metrics(targets, probs, classifier.labels)
    metrics["data"] = str(path)
    return metrics


def format_metrics(metrics: dict) -> str:
    """Render metrics as plain-text tables."""
    labels = metrics["confusion_matrix"]["labels"]
    width = max(12, *(len(n) for n in labels)) + 2
    lines = [f"rows: {metrics['rows']}", f"accuracy: {metrics['accuracy']:.4f}", f"macro F1: {metrics['macro_f1']:.4f}"]
    if "roc_auc" in metrics:
        auc = metrics["roc_auc"]
        lines.append(f"ROC-AUC: {auc:.4f}" if auc is not None else "ROC-AUC: undefined (one class in the data)")
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
