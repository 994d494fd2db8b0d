"""Calibration and decision rules: temperature scaling, calibration error and binary thresholds.

Everything here works on numpy arrays of logits or probabilities, so it can be tested without a
model. Shape letters: N rows, C classes.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

# Equal-width confidence bins for the expected calibration error, as in Guo et al. (2017),
# "On Calibration of Modern Neural Networks", which uses 15.
ECE_BINS = 15
# Temperatures outside this range mean the fit failed rather than a useful rescaling.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Class probabilities, (N, C), from logits divided by ``temperature``."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled -= scaled.max(axis=-1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=-1, keepdims=True)


def log_loss(logits: np.ndarray, targets: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the targets, in nats."""
    scaled = torch.as_tensor(np.asarray(logits, dtype=np.float64)) / temperature
    return float(F.cross_entropy(scaled, torch.as_tensor(targets, dtype=torch.long)))


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """Find the temperature T that minimises the log loss of softmax(logits / T) on labelled rows.

    T > 1 softens over-confident probabilities and T < 1 sharpens under-confident ones; the
    predicted class never changes. The search runs on log T, so T stays positive.
    """
    if len(targets) == 0:
        raise ValueError("cannot fit a temperature on zero rows; give a non-empty labelled file")
    logits_t = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    targets_t = torch.as_tensor(targets, dtype=torch.long)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(logits_t / log_t.exp(), targets_t)
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(log_t.detach().exp())
    if not math.isfinite(temperature):
        return 1.0
    return min(max(temperature, MIN_TEMPERATURE), MAX_TEMPERATURE)


@dataclass
class ReliabilityBins:
    """Top-label confidence against accuracy in equal-width bins over [0, 1]."""

    edges: np.ndarray  # (bins + 1,)
    confidence: np.ndarray  # (bins,) mean confidence per bin, NaN where empty
    accuracy: np.ndarray  # (bins,) fraction correct per bin, NaN where empty
    counts: np.ndarray  # (bins,)


def reliability_bins(probs: np.ndarray, targets: np.ndarray, bins: int = ECE_BINS) -> ReliabilityBins:
    """Group rows by their top-label confidence and compare it with how often they are right."""
    confidence = probs.max(axis=-1)
    correct = probs.argmax(axis=-1) == targets
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bins are closed on the right, so confidence 1.0 falls in the last bin.
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(index, weights=confidence, minlength=bins) / counts
        mean_accuracy = np.bincount(index, weights=correct.astype(float), minlength=bins) / counts
    return ReliabilityBins(edges, mean_confidence, mean_accuracy, counts)


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label ECE: the row-weighted mean gap between confidence and accuracy over the bins."""
    table = reliability_bins(probs, targets, bins)
    filled = table.counts > 0
    gaps = np.abs(table.accuracy[filled] - table.confidence[filled])
    return float((gaps * table.counts[filled]).sum() / table.counts.sum())


def calibration_summary(logits: np.ndarray, targets: np.ndarray, temperature: float) -> dict:
    """ECE and log loss before (T = 1) and after temperature scaling, for reports and gptclf.json."""
    return {
        "temperature": float(temperature),
        "rows": int(len(targets)),
        "ece_bins": ECE_BINS,
        "ece_before": expected_calibration_error(softmax(logits), targets),
        "ece_after": expected_calibration_error(softmax(logits, temperature), targets),
        "log_loss_before": log_loss(logits, targets),
        "log_loss_after": log_loss(logits, targets, temperature),
    }


# --- binary decision thresholds -------------------------------------------------------------

THRESHOLD_METRIC_FORMS = "f1, precision@R (best precision with recall >= R) or recall@P (best recall with precision >= P)"


@dataclass(frozen=True)
class ThresholdMetric:
    """Objective of a threshold search: `f1`, or one rate subject to a floor on the other."""

    name: str  # "f1", "precision" or "recall"
    floor: float | None = None  # minimum recall for "precision", minimum precision for "recall"

    def __str__(self) -> str:
        return self.name if self.floor is None else f"{self.name}@{self.floor:g}"


def parse_threshold_metric(text: str) -> ThresholdMetric:
    """Parse `f1`, `precision@0.9` or `recall@0.95` (the floor is a fraction in (0, 1])."""
    cleaned = text.strip().lower()
    if cleaned == "f1":
        return ThresholdMetric("f1")
    match = re.fullmatch(r"(precision|recall)@([0-9.]+)", cleaned)
    if match:
        try:
            floor = float(match.group(2))
        except ValueError:
            floor = -1.0
        if 0.0 < floor <= 1.0:
            return ThresholdMetric(match.group(1), floor)
    raise ValueError(f"--metric {text!r} is not valid; use {THRESHOLD_METRIC_FORMS}, with R and P fractions such as 0.9")


@dataclass
class ThresholdChoice:
    threshold: float
    metric: str
    value: float
    """The metric at the chosen threshold (precision or recall for the constrained forms)."""
    precision: float
    recall: float
    f1: float
    feasible: bool = True
    """False when no threshold meets the floor; the threshold then comes closest to the floor."""


def tune_threshold(scores: np.ndarray, targets: np.ndarray, metric: ThresholdMetric) -> ThresholdChoice:
    """Pick the threshold on the positive-class score that maximises ``metric``.

    A row is predicted positive when its score is >= the threshold. The candidates lie halfway
    between neighbouring distinct scores; ties in the metric go to the threshold nearest 0.5. When no threshold reaches the
    floor of a constrained metric, the one closest to it is returned with ``feasible=False``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets).astype(bool)
    if targets.all() or not targets.any():
        raise ValueError("threshold tuning needs rows of both classes in the labelled data")
    candidates, precision, recall = _rates_per_threshold(scores, targets)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    rates = {"precision": precision, "recall": recall, "f1": f1}
    objective = rates[metric.name]
    allowed = np.ones(len(candidates), dtype=bool)
    feasible = True
    if metric.floor is not None:
        partner = recall if metric.name == "precision" else precision
        allowed = partner >= metric.floor
        if not allowed.any():
            # Nothing meets the floor, so return the threshold that comes closest to it.
            feasible, objective, allowed = False, partner, np.ones(len(candidates), dtype=bool)
    best = _best_index(objective, allowed, candidates)
    return ThresholdChoice(
        threshold=float(candidates[best]),
        metric=str(metric),
        value=float(rates[metric.name][best]),
        precision=float(precision[best]),
        recall=float(recall[best]),
        f1=float(f1[best]),
        feasible=feasible,
    )


def _rates_per_threshold(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate thresholds, one below each distinct score, with the precision and recall of each."""
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_targets = scores[order], targets[order]
    true_pos = np.cumsum(sorted_targets)
    predicted_pos = np.arange(1, len(scores) + 1)
    # Keep the last row of each run of equal scores, so ties are all in or all out.
    last_of_run = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
    distinct = sorted_scores[last_of_run]
    # Threshold halfway to the next lower score, so a tiny change in a score does not flip its row.
    candidates = (distinct + np.r_[distinct[1:], distinct[-1]]) / 2
    precision = true_pos[last_of_run] / predicted_pos[last_of_run]
    recall = true_pos[last_of_run] / targets.sum()
    return candidates, precision, recall


def _best_index(objective: np.ndarray, allowed: np.ndarray, candidates: np.ndarray) -> int:
    masked = np.where(allowed, objective, -np.inf)
    top = np.flatnonzero(masked >= masked.max() - 1e-12)
    return int(top[np.argmin(np.abs(candidates[top] - 0.5))])


def decide(probs: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Predicted class per row, (N,): argmax, or for two classes class 1 when its probability >= threshold."""
    if threshold is None:
        return probs.argmax(axis=-1)
    if probs.shape[-1] != 2:
        raise ValueError(
            f"a decision threshold applies to binary classifiers only, but this one has {probs.shape[-1]} labels; "
            "drop --threshold (Python: threshold=None)"
        )
    return (probs[:, 1] >= threshold).astype(np.int64)


def check_threshold(threshold: float) -> float:
    """Reject thresholds outside [0, 1], naming the value."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"--threshold must be a probability in [0, 1], got {threshold}")
    return float(threshold)


def store_temperature(folder, logits: np.ndarray, targets: np.ndarray, data_name: str | None = None) -> dict:
    """Fit the temperature on validation logits and write it, with its summary, into a saved classifier."""
    from .checkpoint import update_meta

    temperature = fit_temperature(logits, targets)
    summary = calibration_summary(logits, targets, temperature)
    summary["data"] = data_name
    update_meta(folder, temperature=temperature, calibration=summary)
    log.info(
        "temperature %.3f fitted on %d validation rows: ECE %.4f -> %.4f, log loss %.4f -> %.4f",
        temperature, summary["rows"], summary["ece_before"], summary["ece_after"],
        summary["log_loss_before"], summary["log_loss_after"],
    )
    return summary
