"""Audit a saved classifier for the silent failures of GPT classifiers.

A classifier can train and score while it reads a pad token, loses its head on reload or depends
on batch composition. Each check below is a small function that returns a ``CheckResult``: PASS,
WARN, FAIL or SKIP, the measured figure and the tolerance it was held to. ``run_checks`` loads
the classifier once and runs them all; ``check_after_training`` runs the quick subset that
``gptclf train`` logs after saving. Probabilities are compared, not logits, because they are
what users read. Shape letters: B batch, T seq_len, C classes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .backbone import fingerprint
from .batching import collate, encode
from .checkpoint import ADAPTER_DIR, MERGED_KIND, ClassifierMeta, attach_saved_parts, load_base_model, read_meta
from .data import LABEL_COLUMN_CANDIDATES, LabelSet, encode_labels, read_labelled, read_texts
from .errors import GptclfError
from .inference import Classifier, autocast_context, resolve_dtype, score_ids
from .model import GPTClassifier, build_classifier

log = logging.getLogger(__name__)

PASS, WARN, FAIL, SKIP = "PASS", "WARN", "FAIL", "SKIP"

# Row names, in table order.
PADDING = "padding invariance"
RELOAD = "reload equality"
HEAD = "head trained"
LORA_B = "LoRA B non-zero"
FINITE = "finite tensors"
TARGETS = "adapter targets"
IDENTITY = "base model identity"
PAD_TOKEN = "pad token set"
PAD_VALUE = "pad token value"
LABEL_MAP = "label map"
COLUMNS = "prediction columns"
TRUNCATION = "truncation"
DISTRIBUTION = "class distribution"
ACCURACY = "accuracy"
DETERMINISM = "determinism"
ROW_ORDER = (
    PADDING, RELOAD, HEAD, LORA_B, FINITE, TARGETS, IDENTITY, PAD_TOKEN, PAD_VALUE, LABEL_MAP, COLUMNS,
    TRUNCATION, DISTRIBUTION, ACCURACY, DETERMINISM,
)

# Largest change in any class probability allowed between two paddings of the same text.
# fp32 differences come only from summation order in kernels of other shapes: the SST-2 classifier
# on SmolLM2-135M (CPU, 42 probes) measured 1.7e-6, and the bound leaves room for longer texts and
# deeper models. bf16 keeps 8 significant bits: the same run under CPU bf16 autocast measured 1.7e-2.
# NOTE: the bf16 bound is an estimate from that CPU run; GPU bf16 kernels were not measured.
PADDING_TOLERANCE = {"fp32": 1e-4, "bf16": 5e-2}
# A fresh process runs the same kernels on the same shapes, so probabilities should match exactly.
# The small allowance covers another thread count, which can change the summation order.
RELOAD_TOLERANCE = {"fp32": 1e-6, "bf16": 1e-6}
# Pad columns added beyond the longest row for the extra-padding layouts.
EXTRA_PADDING = 7
# The head must move at least this far from its initialisation, relative to the initial norm.
MIN_HEAD_CHANGE = 1e-4
# Two class rows of the head closer than this, relative to the mean row norm, are indistinguishable.
MIN_CLASS_ROW_GAP = 1e-3
# Texts longer than the stored max length are classified from their first max_length tokens only.
MAX_TRUNCATED_SHARE = 0.01
# Share of predictions in one class above which the distribution is suspicious.
MAX_ONE_CLASS_SHARE = 0.9
# A column order that scores this much more accuracy than the stored one means a swapped label map.
SWAP_MARGIN = 0.1
RELOAD_TIMEOUT_S = 1800
RELOAD_SEED = 1234

BUILTIN_PROBES = (
    "Good.",
    "not bad at all",
    "The film was good, and the music was even better.",
    "A slow, joyless film that I could not finish; the plot goes nowhere and the acting is wooden.",
    "It broke on the second day and support never answered. 0/10, would not buy again!",
    "Ünïcödé text, an emoji 🎬 and numbers like 3.14 and 1,000",
    "two lines\nof text",
    "  spaces around the text  ",
)
FILLER_TEXT = "This longer text only pads the batch, so that every probe in it gets padding tokens. "


@dataclass
class CheckResult:
    """One row of the check table."""

    name: str
    status: str
    measured: str
    tolerance: str
    message: str = ""
    """Reason for a status other than PASS: the value at fault and the next step; empty on PASS."""


@dataclass
class CheckReport:
    folder: str
    dtype: str
    device: str
    results: list[CheckResult] = field(default_factory=list)

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if r.status == FAIL]

    def counts(self) -> dict[str, int]:
        return {status: sum(r.status == status for r in self.results) for status in (PASS, WARN, FAIL, SKIP)}

    def summary(self) -> str:
        counts = self.counts()
        return f"{len(self.results)} checks: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n or s != SKIP)

    def to_dict(self) -> dict:
        return {
            "classifier": self.folder,
            "dtype": self.dtype,
            "device": self.device,
            "passed": not self.failed,
            "counts": self.counts(),
            "checks": [dataclasses.asdict(r) for r in self.results],
        }


class CheckFailedError(GptclfError, RuntimeError):
    """A check of a saved classifier failed."""

    def __init__(self, message: str, report: CheckReport):
        super().__init__(message)
        self.report = report


@dataclass
class CheckData:
    """Texts of ``--data``, with class indices when the file has a label column."""

    texts: list[str]
    targets: np.ndarray | None


# ---------------------------------------------------------------------------------------------
# Running the checks


def run_checks(
    folder: str | Path,
    data: str | Path | None = None,
    *,
    base_model: str | None = None,
    dtype: str = "auto",
    device: str | None = None,
    probe_rows: int = 32,
    text_column: str | None = None,
    label_column: str | None = None,
    batch_size: int = 64,
    quick: bool = False,
    reload: bool = True,
) -> CheckReport:
    """Load a classifier folder once and run every check on it; rows come back in table order.

    ``quick`` runs only padding invariance on the built-in probes, the trained-parts checks and
    the tokenizer and label checks, which is what ``gptclf train`` runs after saving.
    ``reload=False`` skips the reload check, which starts a second Python process.
    """
    folder = Path(folder)
    meta = read_meta(folder)
    check_data = read_check_data(data, meta, text_column, label_column) if data is not None else None
    backbone = load_base_model(folder, meta, base_model)
    exported = meta.base_model.get("kind") == MERGED_KIND
    results: list[CheckResult] = []
    if not quick:
        results.append(check_base_identity(fingerprint(backbone.model), meta, backbone.source.describe()))
    if exported:
        results.append(_skipped(TARGETS, "exported classifier: the LoRA update is merged into backbone/"))
    else:
        results.append(check_adapter_targets(backbone.model, folder / ADAPTER_DIR))
    if results[-1].status == FAIL:
        reason = "the adapter cannot be attached to this base model"
        skipped = _rows_left(results, quick)
        target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        report = CheckReport(str(folder), resolve_dtype(dtype, target), str(target), results + [_skipped(name, reason) for name in skipped])
        return _ordered(report)

    fresh_head = rebuild_initial_head(backbone.model, meta)
    model = attach_saved_parts(folder, backbone, meta)
    results.append(check_head_trained(model, fresh_head, meta.config.get("optim", {}).get("seed")))
    if exported:
        results.append(_skipped(LORA_B, "exported classifier: the LoRA update is merged into backbone/"))
    else:
        results.append(check_lora_b_nonzero(model))
    results.append(check_finite_tensors(model))
    classifier = Classifier.from_model(model, backbone.tokenizer, meta, device=device, dtype=dtype)
    report = CheckReport(str(folder), classifier.dtype, str(next(model.parameters()).device), results)
    probes = probe_texts(classifier.tokenizer, check_data.texts if check_data and not quick else (), probe_rows)
    probe_probs = classifier.predict_proba(probes, batch_size=batch_size)  # (n, C)
    report.results += _scoring_checks(classifier, probes, probe_probs, batch_size, quick)
    if not quick:
        report.results += _data_checks(classifier, check_data, batch_size)
        report.results.append(_reload_row(folder, classifier, probes, probe_probs, base_model, report.results, reload))
    return _ordered(report)


def check_after_training(folder: str | Path) -> CheckReport:
    """Run the quick checks on a just-saved classifier, log the summary and raise on any FAIL."""
    # NOTE: this loads a second copy of the base model next to the one training used.
    report = run_checks(folder, quick=True)
    for row in report.results:
        if row.status in (WARN, FAIL):
            log.warning("check %s %s: %s", row.name, row.status, row.message)
    log.info("check after training: %s", report.summary())
    if report.failed:
        reasons = "\n".join(f"  {r.name}: {r.message}" for r in report.failed)
        raise CheckFailedError(
            f"the classifier was saved to {folder}, but the check after training failed:\n{reasons}\n"
            f"run `gptclf check {folder}` for the full report",
            report,
        )
    return report


def read_check_data(path: str | Path, meta: ClassifierMeta, text_column: str | None, label_column: str | None) -> CheckData:
    """Read ``--data`` before any model loads; labels are optional unless ``label_column`` is given."""
    table, texts = read_texts(path, text_column, [label_column] if label_column else [])
    columns = [str(c) for c in table.frame.columns]
    if label_column is None and not any(c in columns for c in LABEL_COLUMN_CANDIDATES):
        return CheckData(texts, None)
    table, texts, raw_labels = read_labelled(path, text_column, label_column)
    label_set = LabelSet(names=list(meta.labels), values=list(meta.label_values))
    targets = encode_labels(table, raw_labels, label_set, seen_in="the classifier's labels")
    return CheckData(texts, targets)


def probe_texts(tokenizer, data_texts: Sequence[str], rows: int) -> list[str]:
    """Built-in probes, texts with the EOS and pad token strings in them, and up to ``rows`` data texts."""
    probes = list(BUILTIN_PROBES)
    for special in dict.fromkeys(t for t in (tokenizer.eos_token, tokenizer.pad_token) if t):
        probes += [f"the story {special} was lovely", f"the story was lovely {special}"]
    if rows and len(data_texts):
        # Spread the picks over the whole file: files are often sorted by label or length.
        picks = np.unique(np.linspace(0, len(data_texts) - 1, min(rows, len(data_texts))).round().astype(int))
        probes += [data_texts[i] for i in picks]
    return probes


def _scoring_checks(
    classifier: Classifier, probes: list[str], probe_probs: np.ndarray, batch_size: int, quick: bool
) -> list[CheckResult]:
    ids = encode(classifier.tokenizer, probes, classifier.meta.max_length).ids
    layouts = score_padding_layouts(classifier, ids, batch_size)
    results = [
        check_pad_token(classifier),
        check_label_map(classifier.meta, classifier.model.head.out_features),
        check_prediction_columns(classifier, probes, probe_probs, batch_size),
        check_padding_invariance(classifier, probes, ids, layouts, batch_size),
        check_pad_token_value(classifier, probes, ids, layouts, batch_size),
    ]
    if not quick:
        results.append(check_determinism(classifier, ids, batch_size))
    return results


def _data_checks(classifier: Classifier, check_data: CheckData | None, batch_size: int) -> list[CheckResult]:
    if check_data is None:
        return [_skipped(name, "needs --data") for name in (TRUNCATION, DISTRIBUTION, ACCURACY)]
    probs = classifier.predict_proba(check_data.texts, batch_size=batch_size)
    predictions = probs.argmax(axis=-1)
    return [
        check_truncation(classifier.tokenizer, check_data.texts, classifier.meta.max_length),
        check_class_distribution(predictions, check_data.targets, classifier.labels),
        check_accuracy(predictions, check_data.targets, classifier.labels),
    ]


def _reload_row(
    folder: Path, classifier: Classifier, probes: list[str], probe_probs: np.ndarray, base_model: str | None,
    earlier: list[CheckResult], reload: bool,
) -> CheckResult:
    if not reload:
        return _skipped(RELOAD, "not run (reload=False)")
    if any(r.name == IDENTITY and r.status == FAIL for r in earlier):
        return _skipped(RELOAD, "the base model fingerprint differs, so Classifier.load rejects it")
    return check_reload_equality(classifier, folder, probes, probe_probs, base_model)


def _rows_left(results: list[CheckResult], quick: bool) -> list[str]:
    quick_rows = (PADDING, HEAD, LORA_B, FINITE, PAD_TOKEN, PAD_VALUE, LABEL_MAP, COLUMNS)
    wanted = quick_rows if quick else ROW_ORDER
    done = {r.name for r in results}
    return [name for name in wanted if name not in done]


def _skipped(name: str, reason: str) -> CheckResult:
    return CheckResult(name, SKIP, "-", "-", reason)


def _ordered(report: CheckReport) -> CheckReport:
    report.results.sort(key=lambda r: ROW_ORDER.index(r.name))
    return report


# ---------------------------------------------------------------------------------------------
# Padding


def score_padding_layouts(classifier: Classifier, ids: list[list[int]], batch_size: int) -> dict[tuple[str, int], np.ndarray]:
    """Score the probes in batches with longer texts, left and right padded, with and without extra padding.

    Returns probabilities (n, C) keyed by (padding side, extra pad columns).
    """
    pad_id = classifier.tokenizer.pad_token_id
    return {
        (side, extra): _probabilities_with_fillers(classifier, ids, side, extra, pad_id, batch_size)
        for side in ("right", "left")
        for extra in (0, EXTRA_PADDING)
    }


def check_padding_invariance(
    classifier: Classifier, probes: list[str], ids: list[list[int]], layouts: dict[tuple[str, int], np.ndarray], batch_size: int
) -> CheckResult:
    """Score each probe alone and check that every padded layout gives the same probabilities.

    A bf16 failure is scored again in fp32: if fp32 passes, pooling is right and the change is
    bf16 rounding of differently shaped batches, which is a warning, not a failure.
    """
    tolerance = PADDING_TOLERANCE[classifier.dtype]
    difference, row, layout = _worst_padding_change(classifier, ids, layouts)
    measured = f"max |Δp| {difference:.1e} over {len(probes)} texts × {len(layouts)} layouts"
    limit = f"≤ {tolerance:.0e} ({classifier.dtype})"
    if difference <= tolerance:
        return CheckResult(PADDING, PASS, measured, limit)
    if classifier.dtype != "fp32":
        fp32_difference = _fp32_padding_change(classifier, ids, batch_size)
        if fp32_difference <= PADDING_TOLERANCE["fp32"]:
            message = (
                f"under {classifier.dtype} autocast probe {_shorten(probes[row])!r} changed by {difference:.3g} when "
                f"{layout}; in fp32 the largest change is {fp32_difference:.1e}, so pooling is right and the change "
                "is rounding. Score with --dtype fp32 for probabilities that do not depend on the batch"
            )
            return CheckResult(PADDING, WARN, f"{measured}; fp32 {fp32_difference:.1e}", limit, message)
    message = (
        f"probe {_shorten(probes[row])!r} changed by {difference:.3g} when {layout}, compared with scoring it "
        "alone; pooling or attention reads pad positions. Pool the last real token found from the attention "
        "mask, not position -1"
    )
    return CheckResult(PADDING, FAIL, measured, limit, message)


def _worst_padding_change(
    classifier: Classifier, ids: list[list[int]], layouts: dict[tuple[str, int], np.ndarray]
) -> tuple[float, int, str]:
    """Return the largest probability change between a probe scored alone and in any padded layout."""
    pad_id = classifier.tokenizer.pad_token_id
    alone = np.concatenate([_probabilities(classifier, [x], "right", 0, pad_id) for x in ids])  # (n, C)
    return max(_worst_row(batched, alone, _layout(side, extra)) for (side, extra), batched in layouts.items())


def _fp32_padding_change(classifier: Classifier, ids: list[list[int]], batch_size: int) -> float:
    """Return the padding check's largest change with autocast off."""
    dtype = classifier.dtype
    classifier.dtype = "fp32"
    try:
        return _worst_padding_change(classifier, ids, score_padding_layouts(classifier, ids, batch_size))[0]
    finally:
        classifier.dtype = dtype


def check_pad_token_value(
    classifier: Classifier, probes: list[str], ids: list[list[int]], layouts: dict[tuple[str, int], np.ndarray], batch_size: int
) -> CheckResult:
    """Fill the pad positions with another token id and check that the probabilities stay the same."""
    tolerance = PADDING_TOLERANCE[classifier.dtype]
    pad_id = classifier.tokenizer.pad_token_id
    other_id = (pad_id + 1) % classifier.model.backbone.get_input_embeddings().num_embeddings
    worst = (0.0, 0, "")
    for side in ("right", "left"):
        with_pad = layouts[(side, EXTRA_PADDING)]
        with_other = _probabilities_with_fillers(classifier, ids, side, EXTRA_PADDING, other_id, batch_size)
        worst = max(worst, _worst_row(with_other, with_pad, _layout(side, EXTRA_PADDING)))
    difference, row, layout = worst
    measured = f"max |Δp| {difference:.1e}, pad id {pad_id} → {other_id}"
    limit = f"≤ {tolerance:.0e} ({classifier.dtype})"
    if difference <= tolerance:
        return CheckResult(PAD_VALUE, PASS, measured, limit)
    message = (
        f"probe {_shorten(probes[row])!r} changed by {difference:.3g} when its pad tokens ({layout}) were "
        f"id {other_id} instead of {pad_id}; the model reads pad tokens. Mask them with the attention mask"
    )
    return CheckResult(PAD_VALUE, FAIL, measured, limit, message)


def _probabilities_with_fillers(classifier, ids, side, extra, pad_id, batch_size) -> np.ndarray:
    """Probabilities of each probe scored in chunks together with two texts longer than any probe."""
    longest = max(len(x) for x in ids)
    fillers = [_filler_ids(classifier, longest + 5), _filler_ids(classifier, longest + 11)]
    chunk = max(1, batch_size - len(fillers))
    parts = []
    for start in range(0, len(ids), chunk):
        rows = [fillers[0], *ids[start : start + chunk], fillers[1]]
        parts.append(_probabilities(classifier, rows, side, extra, pad_id)[1:-1])
    return np.concatenate(parts)


def _filler_ids(classifier: Classifier, length: int) -> list[int]:
    """Token ids of a real text, cut to ``length`` tokens (at most the stored max length)."""
    length = min(length, classifier.meta.max_length)
    text = FILLER_TEXT
    ids = classifier.tokenizer(text)["input_ids"]
    while len(ids) < length:
        text += text
        ids = classifier.tokenizer(text)["input_ids"]
    return ids[:length]


@torch.inference_mode()
def _probabilities(classifier: Classifier, rows: list[list[int]], side: str, extra: int, pad_id: int) -> np.ndarray:
    """Class probabilities of one batch, padded on ``side`` with ``extra`` more pad columns than needed."""
    batch = _add_padding(collate(rows, pad_id, padding_side=side), side, extra, pad_id)
    device = next(classifier.model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    with autocast_context(device, classifier.dtype):
        logits = classifier.model(**batch)
    return torch.softmax(logits.float(), dim=-1).cpu().numpy()  # (B, C)


def _add_padding(batch: dict[str, torch.Tensor], side: str, extra: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Add ``extra`` masked pad columns on ``side`` of a collated batch."""
    rows = batch["input_ids"].shape[0]
    pads = torch.full((rows, extra), pad_id, dtype=torch.long)
    masked = torch.zeros((rows, extra), dtype=torch.long)
    if side == "right":
        input_ids = torch.cat([batch["input_ids"], pads], dim=1)  # (B, T + extra)
        attention_mask = torch.cat([batch["attention_mask"], masked], dim=1)
    else:
        input_ids = torch.cat([pads, batch["input_ids"]], dim=1)
        attention_mask = torch.cat([masked, batch["attention_mask"]], dim=1)
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def _worst_row(probs: np.ndarray, reference: np.ndarray, layout: str) -> tuple[float, int, str]:
    per_row = np.abs(probs - reference).max(axis=-1)  # (n,)
    row = int(per_row.argmax())
    return float(per_row[row]), row, layout


def _layout(side: str, extra: int) -> str:
    if extra:
        return f"{side}-padded with {extra} extra pad tokens"
    return f"{side}-padded in a batch with longer texts"


def _shorten(text: str, width: int = 48) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


# ---------------------------------------------------------------------------------------------
# Trained parts


def rebuild_initial_head(base: nn.Module, meta: ClassifierMeta) -> nn.Linear | None:
    """Rebuild the head that training started from by repeating ``build_classifier`` with the recorded settings.

    The seed covers the LoRA A initialisation before the head, so only the same call reproduces it.
    The LoRA layers are unloaded again, leaving ``base`` as it was, and global RNG state is kept.
    Returns None when ``gptclf.json`` records no training settings.
    """
    settings = meta.config.get("model")
    seed = meta.config.get("optim", {}).get("seed")
    if not settings or seed is None:
        return None
    with torch.random.fork_rng(devices=[]):
        fresh = build_classifier(
            base, num_labels=len(meta.labels), pooling=meta.pooling, lora_r=settings["lora_r"],
            lora_alpha=settings["lora_alpha"], lora_dropout=settings["lora_dropout"],
            lora_targets=settings.get("lora_targets"), seed=int(seed), lora_layers=settings.get("lora_layers"),
        )
    fresh.backbone.unload()
    return fresh.head


def check_head_trained(model: GPTClassifier, fresh: nn.Linear | None, seed: int | None) -> CheckResult:
    """Check that the head moved away from its initialisation ``fresh`` and separates every class."""
    weight = model.head.weight.detach().float().cpu()  # (C, H)
    bias = model.head.bias.detach().float().cpu()  # (C,)
    gap = _smallest_class_gap(weight)
    limit = f"change > {MIN_HEAD_CHANGE:.0e}, class-row gap > {MIN_CLASS_ROW_GAP:.0e}"
    if fresh is None:
        measured = f"class-row gap {gap:.3g}"
        return CheckResult(HEAD, WARN, measured, limit, "gptclf.json records no training settings, so the fresh head cannot be rebuilt to compare")
    trained = torch.cat([weight.flatten(), bias])
    initial = torch.cat([fresh.weight.detach().flatten(), fresh.bias.detach()])
    change = float((trained - initial).norm() / initial.norm())
    measured = f"change {change:.3g}, class-row gap {gap:.3g}"
    if change <= MIN_HEAD_CHANGE:
        message = (
            f"the head equals a fresh initialisation with seed {seed} (relative change {change:.2g}); it was "
            "never trained or was re-initialised after training. Retrain, or restore head.safetensors"
        )
        return CheckResult(HEAD, FAIL, measured, limit, message)
    if gap <= MIN_CLASS_ROW_GAP:
        message = (
            f"two class rows of the head are nearly equal (gap {gap:.2g} of the mean row norm), so those "
            "classes get the same score up to the bias; the head is degenerate. Retrain"
        )
        return CheckResult(HEAD, FAIL, measured, limit, message)
    return CheckResult(HEAD, PASS, measured, limit)


def _smallest_class_gap(weight: torch.Tensor) -> float:
    """Smallest distance between two class rows, relative to the mean row norm; 0 for a zero head."""
    mean_norm = float(weight.norm(dim=1).mean())
    if mean_norm == 0.0:
        return 0.0
    distances = torch.cdist(weight[None], weight[None])[0]  # (C, C)
    distances.fill_diagonal_(float("inf"))
    return float(distances.min()) / mean_norm


def check_lora_b_nonzero(model: GPTClassifier) -> CheckResult:
    """Check that every LoRA B matrix has a non-zero entry; PEFT starts B at zero, so an all-zero B never trained."""
    matrices = {_short_name(n): p.detach() for n, p in model.named_parameters() if ".lora_B." in n}
    limit = "every B has max |B| > 0"
    if not matrices:
        return CheckResult(LORA_B, FAIL, "0 LoRA B matrices", limit, "the model has no LoRA B matrices; the adapter did not attach")
    zero = [name for name, b in matrices.items() if not bool(b.any())]
    smallest = min(float(b.abs().max()) for b in matrices.values())
    measured = f"{len(matrices) - len(zero)}/{len(matrices)} non-zero, smallest max |B| {smallest:.2g}"
    if not zero:
        return CheckResult(LORA_B, PASS, measured, limit)
    shown = ", ".join(zero[:3]) + (f" and {len(zero) - 3} more" if len(zero) > 3 else "")
    message = f"LoRA B is all zeros in {shown}, so those adapters do nothing; retrain, or restore adapter/adapter_model.safetensors"
    return CheckResult(LORA_B, FAIL, measured, limit, message)


def check_finite_tensors(model: GPTClassifier) -> CheckResult:
    """Check that no weight of the base model, the adapter or the head is NaN or infinite."""
    tensors = {n: t for n, t in model.state_dict().items() if t.is_floating_point()}
    bad = [_short_name(n) for n, t in tensors.items() if not bool(torch.isfinite(t).all())]
    measured = f"{len(bad)} of {len(tensors)} tensors with NaN or inf"
    if not bad:
        return CheckResult(FINITE, PASS, measured, "0")
    message = f"NaN or infinite values in {', '.join(bad[:3])}{' …' if len(bad) > 3 else ''}; retrain with a lower --lr"
    return CheckResult(FINITE, FAIL, measured, "0", message)


def check_adapter_targets(base: nn.Module, adapter_dir: Path) -> CheckResult:
    """Check that each adapter target module name matches at least one module of the base model."""
    config_path = adapter_dir / "adapter_config.json"
    limit = "each target ≥ 1 module"
    if not config_path.is_file():
        return CheckResult(TARGETS, FAIL, "-", limit, f"{config_path} is missing; retrain or restore the folder")
    targets = json.loads(config_path.read_text()).get("target_modules") or []
    names = [name for name, _ in base.named_modules() if name]
    if isinstance(targets, str):  # PEFT reads a string as one regular expression over full module names
        counts = {targets: sum(bool(re.fullmatch(targets, n)) for n in names)}
    else:
        counts = {t: sum(n == t or n.endswith("." + t) for n in names) for t in sorted(targets)}
    measured = ", ".join(f"{t} ×{c}" for t, c in counts.items()) or "no targets"
    missing = [t for t, c in counts.items() if c == 0]
    if counts and not missing:
        return CheckResult(TARGETS, PASS, measured, limit)
    message = (
        f"adapter target(s) {missing or 'none'} match no module of the base model {type(base).__name__}; "
        "the adapter was trained on another architecture. Pass the original base model with --base-model"
    )
    return CheckResult(TARGETS, FAIL, measured, limit, message)


def _short_name(name: str) -> str:
    """Drop PEFT's wrapper prefixes and adapter name from a parameter name."""
    return name.replace("backbone.base_model.model.", "").replace(".default.weight", "").replace(".default", "")


# ---------------------------------------------------------------------------------------------
# Base model, tokenizer and labels


def check_base_identity(found: str, meta: ClassifierMeta, description: str) -> CheckResult:
    """Check that the base model found now has the weight fingerprint recorded at training time."""
    recorded = meta.base_model["fingerprint"]
    measured = f"fingerprint {found[:12]}…"
    limit = f"= recorded {recorded[:12]}…"
    if found == recorded:
        return CheckResult(IDENTITY, PASS, measured, limit)
    message = (
        f"the base model {description} has fingerprint {found[:16]}…, but the classifier was trained on "
        f"{recorded[:16]}…; the adapter and head expect other weights. Pass the original base model with --base-model"
    )
    return CheckResult(IDENTITY, FAIL, measured, limit, message)


def check_pad_token(classifier: Classifier) -> CheckResult:
    """Check that a pad token is set, lies inside the vocabulary and is the one recorded at training time."""
    tokenizer = classifier.tokenizer
    pad, pad_id = tokenizer.pad_token, tokenizer.pad_token_id
    limit = "set, in the vocabulary, as recorded"
    if pad is None or pad_id is None:
        return CheckResult(PAD_TOKEN, FAIL, "none", limit, "the tokenizer has no pad token, so batches cannot be padded; set one (the EOS token works)")
    vocabulary = classifier.model.backbone.get_input_embeddings().num_embeddings
    measured = f"{pad!r} (id {pad_id})"
    if not 0 <= pad_id < vocabulary:
        message = f"pad token id {pad_id} is outside the embedding table of {vocabulary} rows; choose a pad token from the vocabulary"
        return CheckResult(PAD_TOKEN, FAIL, measured, limit, message)
    recorded, recorded_id = classifier.meta.tokenizer.get("pad_token"), classifier.meta.tokenizer.get("pad_token_id")
    if (recorded, recorded_id) != (pad, pad_id):
        message = f"the classifier recorded pad token {recorded!r} (id {recorded_id}) but the tokenizer now has {pad!r} (id {pad_id}); the tokenizer changed since training"
        return CheckResult(PAD_TOKEN, WARN, measured, limit, message)
    return CheckResult(PAD_TOKEN, PASS, measured, limit)


def check_label_map(meta: ClassifierMeta, num_outputs: int) -> CheckResult:
    """Check that label names, raw label values and head outputs correspond one to one, in the same order."""
    names, values = list(meta.labels), list(meta.label_values)
    limit = "one-to-one, same order"
    problems = []
    if len(names) != len(values):
        problems.append(f"{len(names)} label names but {len(values)} label values")
    if len(set(names)) != len(names) or len(set(values)) != len(values):
        problems.append(f"repeated label names or values: names {names}, values {values}")
    if len(names) != num_outputs:
        problems.append(f"{len(names)} label names but the head has {num_outputs} outputs")
    if not problems:
        index = LabelSet(names=names, values=values).index_of()
        for column, name in enumerate(names):
            if index[name] != column:
                problems.append(
                    f"label name {name!r} is prediction column {column}, but data labelled {name!r} maps to class "
                    f"{index[name]} (named {names[index[name]]!r}), so predictions carry swapped names"
                )
    measured = ", ".join(n if n == v else f"{n}={v}" for n, v in zip(names, values))
    if not problems:
        return CheckResult(LABEL_MAP, PASS, measured, limit)
    return CheckResult(LABEL_MAP, FAIL, measured, limit, "; ".join(problems) + "; fix labels and label_values in gptclf.json or retrain")


def check_prediction_columns(classifier: Classifier, probes: list[str], probs: np.ndarray, batch_size: int) -> CheckResult:
    """Check that the ``predict_proba`` columns ``probs`` match ``labels`` and that ``predict`` agrees with them."""
    labels = classifier.labels
    predicted = classifier.predict(probes, batch_size=batch_size)
    limit = "columns = labels, rows sum to 1"
    measured = f"{probs.shape[1]} columns for {len(labels)} labels"
    problems = []
    if probs.shape[1] != len(labels):
        problems.append(f"predict_proba returns {probs.shape[1]} columns but there are {len(labels)} labels {labels}")
    else:
        expected = [labels[i] for i in probs.argmax(axis=-1)]
        if predicted != expected:
            problems.append("predict does not return the label of the most probable column")
    if not np.allclose(probs.sum(axis=-1), 1.0, atol=1e-4):
        problems.append("probability rows do not sum to 1")
    if len({f"prob_{name}" for name in labels}) != len(labels):
        problems.append("two labels give the same prob_<label> output column")
    if not problems:
        return CheckResult(COLUMNS, PASS, measured, limit)
    return CheckResult(COLUMNS, FAIL, measured, limit, "; ".join(problems) + "; the label list in gptclf.json does not match the head")


# ---------------------------------------------------------------------------------------------
# Data


def check_truncation(tokenizer, texts: list[str], max_length: int) -> CheckResult:
    """Measure the share of texts longer than the stored max length, which the classifier reads only in part."""
    truncated = encode(tokenizer, texts, max_length).truncated
    share = truncated / len(texts)
    measured = f"{share:.1%} ({truncated} of {len(texts)}) > {max_length} tokens"
    limit = f"≤ {MAX_TRUNCATED_SHARE:.0%}"
    if share <= MAX_TRUNCATED_SHARE:
        return CheckResult(TRUNCATION, PASS, measured, limit)
    message = (
        f"{truncated} texts are cut to their first {max_length} tokens, so last-token pooling reads a token "
        "from the middle of the text; retrain with a larger --max-length"
    )
    return CheckResult(TRUNCATION, WARN, measured, limit, message)


def check_class_distribution(predictions: np.ndarray, targets: np.ndarray | None, labels: list[str]) -> CheckResult:
    """Check that predictions do not collapse onto one class unless the labels do too."""
    counts = np.bincount(predictions, minlength=len(labels))
    top = int(counts.argmax())
    share = counts[top] / len(predictions)
    measured = f"{share:.1%} predicted {labels[top]!r}"
    limit = f"≤ {MAX_ONE_CLASS_SHARE:.0%} in one class, unless the labels are as skewed"
    if share <= MAX_ONE_CLASS_SHARE:
        return CheckResult(DISTRIBUTION, PASS, measured, limit)
    if targets is None:
        message = f"{share:.1%} of predictions are {labels[top]!r} and the file has no labels to compare; check that the data is that skewed"
        return CheckResult(DISTRIBUTION, WARN, measured, limit, message)
    label_share = np.bincount(targets, minlength=len(labels)).max() / len(targets)
    if label_share > MAX_ONE_CLASS_SHARE:
        return CheckResult(DISTRIBUTION, PASS, measured + f" (labels {label_share:.1%})", limit)
    message = (
        f"{share:.1%} of predictions are {labels[top]!r} while the most common label covers only {label_share:.1%}; "
        "the classifier has collapsed onto one class. Train longer or check the label balance"
    )
    return CheckResult(DISTRIBUTION, WARN, measured, limit, message)


def check_accuracy(predictions: np.ndarray, targets: np.ndarray | None, labels: list[str]) -> CheckResult:
    """Check that accuracy beats the most common label and that no other column order scores clearly higher."""
    if targets is None:
        return _skipped(ACCURACY, "the --data file has no label column")
    from scipy.optimize import linear_sum_assignment
    from sklearn.metrics import confusion_matrix

    accuracy = float((predictions == targets).mean())
    majority = float(np.bincount(targets, minlength=len(labels)).max() / len(targets))
    matrix = confusion_matrix(targets, predictions, labels=list(range(len(labels))))  # (true, predicted)
    true_rows, predicted_columns = linear_sum_assignment(matrix, maximize=True)
    best = float(matrix[true_rows, predicted_columns].sum() / len(targets))
    measured = f"{accuracy:.4f} on {len(targets)} rows"
    limit = f"> majority {majority:.4f}, no relabelling +{SWAP_MARGIN}"
    # A collapsed classifier also scores the majority rate under some relabelling, so that is no swap.
    if best - accuracy > SWAP_MARGIN and best - majority > SWAP_MARGIN:
        pairs = [f"column {labels[c]!r} → {labels[t]!r}" for t, c in zip(true_rows, predicted_columns) if t != c]
        message = (
            f"reading the prediction columns as {', '.join(pairs[:4])} would give accuracy {best:.4f} instead of "
            f"{accuracy:.4f}; the label map is swapped. Fix the label order in gptclf.json or retrain"
        )
        return CheckResult(ACCURACY, FAIL, measured, limit, message)
    if accuracy <= majority:
        message = f"accuracy {accuracy:.4f} is no better than always predicting the most common label ({majority:.4f}); train longer or check the data"
        return CheckResult(ACCURACY, WARN, measured, limit, message)
    return CheckResult(ACCURACY, PASS, measured, limit)


# ---------------------------------------------------------------------------------------------
# Determinism and reload


def check_determinism(classifier: Classifier, ids: list[list[int]], batch_size: int) -> CheckResult:
    """Check that the same batches scored twice give bitwise-identical logits."""
    pad_id = classifier.tokenizer.pad_token_id
    first = score_ids(classifier.model, ids, pad_id, batch_size, classifier.dtype)
    second = score_ids(classifier.model, ids, pad_id, batch_size, classifier.dtype)
    difference = float(np.abs(first - second).max())
    measured = f"max |Δlogit| {difference:.1e} over {len(ids)} texts"
    if np.array_equal(first, second):
        return CheckResult(DETERMINISM, PASS, measured, "bitwise equal")
    message = (
        f"two passes over the same batches differ by up to {difference:.3g} in a logit; something random runs at "
        "inference (dropout in training mode, or non-deterministic kernels). Call model.eval() before scoring"
    )
    return CheckResult(DETERMINISM, FAIL, measured, "bitwise equal", message)


def check_reload_equality(
    classifier: Classifier, folder: Path, probes: list[str], expected: np.ndarray | None = None, base_model: str | None = None
) -> CheckResult:
    """Load the folder in a fresh Python process under another global seed and compare probabilities.

    ``expected`` is ``classifier.predict_proba(probes)`` when the caller already has it.
    """
    tolerance = RELOAD_TOLERANCE[classifier.dtype]
    limit = f"≤ {tolerance:.0e} ({classifier.dtype})"
    if expected is None:
        expected = classifier.predict_proba(probes)
    # An explicit seed other than this process's one guarantees that a random step in loading shows up.
    seed = RELOAD_SEED if torch.initial_seed() != RELOAD_SEED else RELOAD_SEED + 1
    device = str(next(classifier.model.parameters()).device)
    try:
        reloaded = score_in_fresh_process(folder, probes, base_model, device, classifier.dtype, seed)
    except GptclfError as err:
        return CheckResult(RELOAD, FAIL, "-", limit, str(err))
    difference = float(np.abs(reloaded - expected).max())
    measured = f"max |Δp| {difference:.1e} over {len(probes)} texts, seed {seed}"
    if difference <= tolerance:
        return CheckResult(RELOAD, PASS, measured, limit)
    row = int(np.abs(reloaded - expected).max(axis=-1).argmax())
    message = (
        f"probe {_shorten(probes[row])!r} scores differently after reloading in a fresh process (|Δp| {difference:.3g}); "
        "some part of the classifier is not saved, or loading initialises it at random"
    )
    return CheckResult(RELOAD, FAIL, measured, limit, message)


_RELOAD_SCRIPT = """
import json, random, sys
import numpy as np, torch
request = json.load(open(sys.argv[1]))
torch.manual_seed(request["seed"]); np.random.seed(request["seed"] % 2**32); random.seed(request["seed"])
from gptclf.inference import Classifier
classifier = Classifier.load(request["folder"], base_model=request["base_model"], device=request["device"], dtype=request["dtype"])
np.save(request["output"], classifier.predict_proba(request["texts"]))
"""


def score_in_fresh_process(folder: Path, texts: list[str], base_model: str | None, device: str, dtype: str, seed: int) -> np.ndarray:
    """Score texts with ``Classifier.load`` in a new Python process seeded with ``seed``; return probabilities."""
    with tempfile.TemporaryDirectory(prefix="gptclf-check-") as scratch:
        request = Path(scratch) / "request.json"
        output = Path(scratch) / "probabilities.npy"
        request.write_text(json.dumps({
            "folder": str(folder), "base_model": base_model, "device": device, "dtype": dtype,
            "seed": seed, "texts": texts, "output": str(output),
        }))
        try:
            done = subprocess.run(
                [sys.executable, "-c", _RELOAD_SCRIPT, str(request)], capture_output=True, text=True, timeout=RELOAD_TIMEOUT_S
            )
        except subprocess.TimeoutExpired:
            raise GptclfError(f"loading {folder} in a fresh process timed out after {RELOAD_TIMEOUT_S} s") from None
        if done.returncode != 0 or not output.is_file():
            last = (done.stderr.strip().splitlines() or ["no error output"])[-1]
            raise GptclfError(f"loading {folder} in a fresh process failed (exit code {done.returncode}): {last}")
        return np.load(output)


# ---------------------------------------------------------------------------------------------
# Output


def format_report(report: CheckReport) -> str:
    """Render the report as a table, then the reason for every row that did not pass, then the counts."""
    header = ("check", "status", "measured", "tolerance")
    rows = [header] + [(r.name, r.status, r.measured, r.tolerance) for r in report.results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    notes = [f"{r.status} {r.name}: {r.message}" for r in report.results if r.status != PASS and r.message]
    if notes:
        lines += ["", *notes]
    lines += ["", f"{report.summary()} ({report.folder}, {report.dtype} on {report.device})"]
    return "\n".join(lines)


def write_report_json(report: CheckReport, path: str | Path) -> None:
    """Write the report as JSON through a temporary file, so an existing file is never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")
    tmp.replace(path)
