"""PNG figures drawn with matplotlib's Agg backend, so no display is needed.

Each ``plot_*`` function draws one figure, writes it to ``path`` and returns the path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # noqa: E402  (must precede pyplot)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve  # noqa: E402

from .calibration import ReliabilityBins, expected_calibration_error, reliability_bins  # noqa: E402

DPI = 110


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_confusion_matrix(matrix: np.ndarray, labels: Sequence[str], path: str | Path) -> Path:
    """Draw the counts, and beside them each row divided by its total, so the diagonal is recall."""
    matrix = np.asarray(matrix)
    with np.errstate(invalid="ignore", divide="ignore"):
        normalised = np.nan_to_num(matrix / matrix.sum(axis=1, keepdims=True))
    size = max(4.0, 0.9 * len(labels) + 2.5)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1, size))
    for ax, values, title, fmt in ((axes[0], matrix, "counts", "d"), (axes[1], normalised, "normalised by true label", ".2f")):
        image = ax.imshow(values, cmap="Blues", vmin=0)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        ax.set(xticks=range(len(labels)), yticks=range(len(labels)), xlabel="predicted label", ylabel="true label", title=title)
        ax.set_xticklabels(labels, rotation=30, ha="right")
        ax.set_yticklabels(labels)
        threshold = values.max() / 2 if values.max() > 0 else 1
        for i in range(len(labels)):
            for j in range(len(labels)):
                ax.text(j, i, format(values[i, j], fmt), ha="center", va="center",
                        color="white" if values[i, j] > threshold else "black")
    return _save(fig, path)


def _one_vs_rest(targets: np.ndarray, probs: np.ndarray, labels: Sequence[str]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Return (name, is-this-class, score) per curve, with the positive class alone for binary tasks."""
    if len(labels) == 2:
        return [(labels[1], targets == 1, probs[:, 1])]
    return [(name, targets == k, probs[:, k]) for k, name in enumerate(labels)]


def plot_roc_curves(
    targets: np.ndarray, probs: np.ndarray, labels: Sequence[str], path: str | Path, threshold: float | None = None
) -> Path:
    """Draw the ROC curve of the positive class (binary) or of each class against the rest.

    A binary ``threshold`` is marked as the point it operates at.
    """
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, positive, score in _one_vs_rest(targets, probs, labels):
        if positive.all() or not positive.any():
            continue  # a curve needs rows of both kinds
        fpr, tpr, _ = roc_curve(positive, score)
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc(fpr, tpr):.3f})")
        if threshold is not None and len(labels) == 2:
            chosen = score >= threshold
            ax.plot(chosen[~positive].mean(), chosen[positive].mean(), "o", color="tab:red", label=f"threshold {threshold:.3f}")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    title = "ROC curve" if len(labels) == 2 else "ROC curves, one class vs rest"
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, path)


def plot_pr_curves(
    targets: np.ndarray, probs: np.ndarray, labels: Sequence[str], path: str | Path, threshold: float | None = None
) -> Path:
    """Draw the precision-recall curve of the positive class (binary) or of each class against the rest.

    A binary ``threshold`` is marked as the point it operates at.
    """
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, positive, score in _one_vs_rest(targets, probs, labels):
        if not positive.any():
            continue
        precision, recall, _ = precision_recall_curve(positive, score)
        ap = average_precision_score(positive, score)
        ax.plot(recall, precision, label=f"{name} (AP {ap:.3f}, base rate {positive.mean():.2f})")
        chosen = score >= threshold if threshold is not None and len(labels) == 2 else None
        if chosen is not None and chosen.any():
            point_precision = (chosen & positive).sum() / chosen.sum()
            ax.plot(chosen[positive].mean(), point_precision, "o", color="tab:red", label=f"threshold {threshold:.3f}")
    title = "Precision-recall curve" if len(labels) == 2 else "Precision-recall curves, one class vs rest"
    ax.set(xlabel="recall", ylabel="precision", title=title, xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(loc="lower left", fontsize="small")
    return _save(fig, path)


def _draw_reliability(ax, table: ReliabilityBins, ece: float, title: str) -> None:
    centres = (table.edges[:-1] + table.edges[1:]) / 2
    width = table.edges[1] - table.edges[0]
    filled = table.counts > 0
    ax.bar(centres[filled], table.accuracy[filled], width=width * 0.95, color="tab:blue", alpha=0.8, label="accuracy")
    # Red bars span the gap between accuracy and mean confidence in each bin, whichever is higher.
    gap = np.abs(table.confidence[filled] - table.accuracy[filled])
    bottom = np.minimum(table.confidence[filled], table.accuracy[filled])
    ax.bar(centres[filled], gap, bottom=bottom, width=width * 0.95, color="none", edgecolor="tab:red", hatch="//",
           label="gap to mean confidence")
    # Rows per bin, written inside each bar, because a bin of two rows can sit far from the diagonal by chance.
    for centre, count, accuracy in zip(centres[filled], table.counts[filled], table.accuracy[filled]):
        colour = "white" if accuracy > 0.1 else "black"  # a bar this short cannot hold white text
        ax.text(centre, 0.02, str(count), ha="center", va="bottom", rotation=90, fontsize=7, color=colour)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    ax.set(xlabel="confidence (top-label probability)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1),
           title=f"{title}\nECE {ece:.4f}")
    ax.legend(loc="upper left", fontsize="small")


def plot_reliability(
    targets: np.ndarray, uncalibrated: np.ndarray, calibrated: np.ndarray, temperature: float, path: str | Path
) -> Path:
    """Draw reliability diagrams before (T = 1) and after temperature scaling, side by side."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 5))
    panels = ((axes[0], uncalibrated, "before calibration (T = 1)"), (axes[1], calibrated, f"after calibration (T = {temperature:.3f})"))
    for ax, probs, title in panels:
        _draw_reliability(ax, reliability_bins(probs, targets), expected_calibration_error(probs, targets), title)
    return _save(fig, path)


def plot_confidence_histogram(
    targets: np.ndarray, probs: np.ndarray, path: str | Path, predictions: np.ndarray | None = None
) -> Path:
    """Draw a histogram of the predicted label's probability, split into correct and wrong predictions.

    ``predictions`` defaults to the argmax; pass thresholded ones so the split matches the metrics.
    """
    if predictions is None:
        predictions = probs.argmax(axis=-1)
    confidence = probs[np.arange(len(probs)), predictions]
    correct = predictions == targets
    # The argmax probability is never below 1 / C, but a thresholded prediction's can be.
    lowest = min(1.0 / probs.shape[-1], float(confidence.min(initial=1.0)))
    bins = np.linspace(lowest, 1.0, 21)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.hist([confidence[correct], confidence[~correct]], bins=bins, stacked=True, color=["tab:green", "tab:red"],
            label=[f"correct ({correct.sum()})", f"wrong ({(~correct).sum()})"])
    ax.set(xlabel="confidence (calibrated probability of the predicted label)", ylabel="rows", title="Predicted confidence")
    ax.legend(loc="upper left")
    return _save(fig, path)


def plot_training_loss(steps: list[dict], path: str | Path) -> Path:
    """Draw the per-step training loss with a moving average, and the learning rate on a second axis."""
    step = np.array([r["step"] for r in steps])
    loss = np.array([r["loss"] for r in steps], dtype=float)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    window = max(1, len(loss) // 20)
    ax.plot(step, loss, color="tab:blue", alpha=0.3 if window > 1 else 1.0, linewidth=0.8, label="loss per step")
    if window > 1:
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        ax.plot(step[window - 1:], smooth, color="tab:blue", label=f"moving average ({window} steps)")
    ax.set(xlabel="optimizer step", ylabel="training loss (cross-entropy)", title="Training loss")
    lr_axis = ax.twinx()
    lr_axis.plot(step, [r["lr"] for r in steps], color="tab:orange", linestyle="--", label="learning rate")
    lr_axis.set_ylabel("learning rate")
    handles = ax.get_legend_handles_labels()[0] + lr_axis.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], loc="upper right", fontsize="small")
    return _save(fig, path)


def plot_validation_metrics(evaluations: list[dict], path: str | Path) -> Path:
    """Draw validation accuracy (and macro-F1 where logged) and validation loss against optimizer step."""
    step = [r["step"] for r in evaluations]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.5))
    for name in ("accuracy", "macro_f1"):
        if all(name in r for r in evaluations):
            left.plot(step, [r[name] for r in evaluations], marker="o", label=name.replace("_", "-"))
    left.set(xlabel="optimizer step", ylabel="score", title="Validation accuracy")
    left.legend(loc="lower right")
    right.plot(step, [r["loss"] for r in evaluations], marker="o", color="tab:red")
    right.set(xlabel="optimizer step", ylabel="loss (cross-entropy)", title="Validation loss")
    return _save(fig, path)
