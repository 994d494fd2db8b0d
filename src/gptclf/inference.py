"""Score texts with a trained classifier: batched by length, padded per batch, results in input order."""

from __future__ import annotations

import contextlib
import functools
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .batching import encode, sorted_batches, collate
from .errors import ConfigError
from .calibration import check_threshold, decide, softmax
from .model import GPTClassifier

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def autocast_context(device: torch.device, dtype_name: str):
    """Autocast for ``bf16``; a no-op for ``fp32``."""
    if dtype_name == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[dtype_name])


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Report whether the CPU multiplies bf16 in hardware (AVX-512 BF16 or AMX), from /proc/cpuinfo.

    Without those instructions bf16 is emulated and slower than fp32, so `auto` keeps fp32.
    NOTE: only Linux has /proc/cpuinfo; elsewhere `auto` stays fp32 on the CPU.
    """
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool({"avx512_bf16", "amx_bf16"} & flags)
    except OSError:
        pass
    return False


def resolve_dtype(name: str, device: torch.device) -> str:
    """Turn `auto` into `bf16` where the hardware multiplies bf16 natively, else `fp32`.

    That is CUDA GPUs that support bf16 and CPUs with AVX-512 BF16 or AMX. Unsupported bf16 is rejected.
    """
    if name not in ("auto", *DTYPES):
        raise ConfigError([f"--dtype must be auto, fp32 or bf16, got {name!r}"])
    bf16_ok = device.type == "cpu" or (device.type == "cuda" and torch.cuda.is_bf16_supported())
    if name == "bf16" and not bf16_ok:
        raise ConfigError([f"--dtype bf16 is not supported on {device}; use --dtype fp32"])
    if name != "auto":
        return name
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


@torch.inference_mode()
def score_ids(
    model: GPTClassifier,
    ids: Sequence[Sequence[int]],
    pad_token_id: int,
    batch_size: int = 64,
    dtype_name: str = "fp32",
    progress=None,
) -> np.ndarray:
    """Logits for pre-tokenised texts, (n, C) fp32, in input order.

    Texts are sorted by length and each batch is padded only to its own longest text.
    """
    device = next(model.parameters()).device
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    logits = np.zeros((len(ids), model.head.out_features), dtype=np.float32)
    for rows in sorted_batches(lengths, batch_size):
        batch = collate([ids[i] for i in rows], pad_token_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast_context(device, dtype_name):
            logits[rows] = model(**batch).float().cpu().numpy()
        if progress is not None:
            progress.update(len(rows))
    return logits


class Classifier:
    """A trained classifier ready to score text.

    >>> clf = Classifier.load("runs/sst2")
    >>> clf.predict(["a gorgeous, witty film"])
    ['Positive']
    """

    def __init__(self, model: GPTClassifier, tokenizer, meta, dtype: str = "fp32", path: Path | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.meta = meta
        self.dtype = dtype
        # The folder it was loaded from, where `calibrate` and `tune-threshold` store their results.
        self.path = path

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        base_model: str | None = None,
        merge: bool = True,
        device: str | None = None,
        dtype: str = "auto",
    ) -> "Classifier":
        """Load a classifier folder written by ``gptclf train`` or ``gptclf export``.

        ``base_model`` overrides the recorded base-model location (its fingerprint must still
        match). ``merge`` folds the LoRA update into the projection weights for faster scoring.
        """
        from .checkpoint import load_classifier

        model, backbone, meta = load_classifier(path, base_model=base_model)
        classifier = cls.from_model(model, backbone.tokenizer, meta, merge=merge, device=device, dtype=dtype)
        classifier.path = Path(path)
        return classifier

    @classmethod
    def from_model(
        cls, model: GPTClassifier, tokenizer, meta, *, merge: bool = True, device: str | None = None, dtype: str = "auto"
    ) -> "Classifier":
        """Make a loaded model ready to score: merge LoRA, move it to the device and resolve the dtype."""
        # An exported classifier's backbone is already merged and has no adapter to fold in.
        if merge and hasattr(model.backbone, "merge_and_unload"):
            model.backbone = model.backbone.merge_and_unload()
        target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model.to(target)
        model.eval()
        resolved = resolve_dtype(dtype, target)
        log.info("scoring on %s in %s%s", target, resolved, " (--dtype auto)" if dtype == "auto" else "")
        return cls(model, tokenizer, meta, resolved)

    @property
    def labels(self) -> list[str]:
        return list(self.meta.labels)

    @property
    def temperature(self) -> float:
        """Divisor of the logits fitted on validation data; 1.0 for an uncalibrated classifier."""
        return float(self.meta.temperature)

    @property
    def threshold(self) -> float | None:
        """Stored decision threshold on the probability of ``labels[1]``; None means argmax."""
        return self.meta.threshold

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text, cut to the classifier's ``max_length``; rejects non-strings and blank texts."""
        texts = _check_texts(texts)
        if not texts:
            return []
        return encode(self.tokenizer, texts, self.meta.max_length).ids

    def logits_from_ids(
        self, ids: Sequence[Sequence[int]], batch_size: int = 64, progress=None, calibrated: bool = True
    ) -> np.ndarray:
        """Logits, (n, C) fp32, for token ids from :meth:`encode`, in input order.

        They are divided by the stored temperature unless ``calibrated=False``.
        """
        if not ids:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        raw = score_ids(self.model, ids, self.tokenizer.pad_token_id, batch_size, self.dtype, progress)
        if not calibrated:
            return raw
        return (raw / np.float32(self.temperature)).astype(np.float32)

    def logits(self, texts: Sequence[str], batch_size: int = 64, progress=None, calibrated: bool = True) -> np.ndarray:
        """Logits, (n, C) fp32, in input order, temperature-scaled unless ``calibrated=False``.

        ``progress`` is a tqdm bar advanced per batch.
        """
        return self.logits_from_ids(self.encode(texts), batch_size, progress, calibrated)

    def predict_proba(self, texts: Sequence[str], batch_size: int = 64, progress=None, calibrated: bool = True) -> np.ndarray:
        """Class probabilities, (n, C), columns in the order of ``labels``, temperature-scaled unless ``calibrated=False``."""
        return softmax(self.logits(texts, batch_size, progress, calibrated)).astype(np.float32)

    def predict(self, texts: Sequence[str], batch_size: int = 64, threshold: float | None = None) -> list[str]:
        """Label name for each text: by ``threshold``, else the stored threshold, else the most probable label."""
        probs = self.predict_proba(texts, batch_size)
        return [self.labels[i] for i in self.decide(probs, threshold)]

    def decide(self, probs: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """Class index per row of ``probs``, applying ``threshold`` or the stored one (binary only)."""
        if threshold is None:
            threshold = self.threshold
        else:
            threshold = check_threshold(threshold)
        return decide(probs, threshold)


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("expected a list of texts, got a single string; wrap it in a list")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"text at position {i} is a {type(text).__name__}, expected str")
        if not text.strip():
            raise ValueError(f"text at position {i} is empty; every text needs at least one token")
    return texts


def predict_file(classifier: Classifier, input_path: str | Path, output_path: str | Path, **options) -> int:
    """Score a data file in chunks; see :func:`gptclf.streaming.predict_file`."""
    from .streaming import predict_file as stream_predictions

    return stream_predictions(classifier, input_path, output_path, **options)
