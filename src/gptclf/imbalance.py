"""Class imbalance: loss weights per class, and warnings when one class dominates."""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

# A class holding more than this share of the training labels gets a warning.
DOMINANT_SHARE = 0.9


class ImbalanceWarning(UserWarning):
    """One class dominates the training labels or the validation predictions."""


def parse_class_weights(spec: str | Sequence[float] | None, num_labels: int | None = None) -> str | list[float] | None:
    """Check a ``--class-weights`` value: None, ``auto``, or one positive number per class.

    Returns ``"auto"``, a list of floats, or None; raises ValueError naming the bad value.
    """
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec.strip().lower() == "auto":
            return "auto"
        parts = [p.strip() for p in spec.split(",") if p.strip()]
    else:
        parts = list(spec)
    try:
        values = [float(p) for p in parts]
    except (TypeError, ValueError):
        raise ValueError(f"--class-weights {spec!r} is not valid; use `auto` or comma-separated numbers such as 1,3") from None
    if len(values) < 2:
        raise ValueError(f"--class-weights {spec!r} needs one number per class (at least two), or `auto`")
    if any(not np.isfinite(v) or v <= 0 for v in values):
        raise ValueError(f"--class-weights {spec!r}: every weight must be a positive number")
    if num_labels is not None and len(values) != num_labels:
        raise ValueError(
            f"--class-weights gives {len(values)} weights but the training labels have {num_labels} classes; "
            "give one weight per class in label order"
        )
    return values


def resolve_class_weights(spec: str | Sequence[float] | None, labels: np.ndarray, num_labels: int) -> list[float] | None:
    """Per-class loss weights in label order; ``auto`` is n / (C * count), scikit-learn's `balanced`.

    With 900 rows of class 0 and 100 of class 1, `auto` gives 1000 / (2 * 900) = 0.556 and
    1000 / (2 * 100) = 5.0, so both classes add the same total weight to the loss.
    """
    parsed = parse_class_weights(spec, num_labels)
    if parsed != "auto":
        return parsed
    counts = np.bincount(labels, minlength=num_labels)
    # A class absent from the (sub-sampled) training rows gets weight 0 in place of a division by 0.
    weights = np.where(counts > 0, len(labels) / (num_labels * np.maximum(counts, 1)), 0.0)
    return [float(w) for w in weights]


def warn_if_imbalanced(labels: np.ndarray, names: Sequence[str]) -> None:
    """Warn when one class is more than 90% of the training labels."""
    counts = np.bincount(labels, minlength=len(names))
    top = int(counts.argmax())
    share = counts[top] / counts.sum()
    if share > DOMINANT_SHARE:
        warnings.warn(
            f"class {names[top]!r} is {share:.1%} of the training labels ({counts[top]} of {counts.sum()}); "
            "the classifier may learn to predict it always. Consider --class-weights auto, and judge it by "
            "macro-F1 rather than accuracy",
            ImbalanceWarning,
            stacklevel=2,
        )


def warn_if_collapsed(predictions: np.ndarray, names: Sequence[str], step: int) -> None:
    """Warn when every validation prediction is the same class."""
    distinct = np.unique(predictions)
    if len(predictions) > 1 and len(distinct) == 1:
        warnings.warn(
            f"at optimizer step {step} every validation prediction is {names[int(distinct[0])]!r}; "
            "the classifier has collapsed to one class. Try --class-weights auto, a lower --lr or more steps",
            ImbalanceWarning,
            stacklevel=2,
        )
