"""Score texts with a trained classifier: batched by length, padded per batch, results in input order."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .batching import encode, sorted_batches, collate
from .model import GPTClassifier

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def autocast_context(device: torch.device, dtype_name: str):
    """Autocast for ``bf16``; a no-op for ``fp32``."""
    if dtype_name == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[dtype_name])


def resolve_dtype(name: str, device: torch.device) -> str:
    """Turn `auto` into `bf16` on CUDA GPUs that support it, else `fp32`."""
    if name != "auto":
        return name
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
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


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


class Classifier:
    """A trained classifier ready to score text.

    >>> clf = Classifier.load("runs/sst2")
    >>> clf.predict(["a gorgeous, witty film"])
    ['Positive']
    """

    def __init__(self, model: GPTClassifier, tokenizer, meta, dtype: str = "fp32"):
        self.model = model
        self.tokenizer = tokenizer
        self.meta = meta
        self.dtype = dtype

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
        """Load a classifier folder written by ``gptclf train``.

        ``base_model`` overrides the recorded base-model location (its fingerprint must still
        match). ``merge`` folds the LoRA update into the projection weights for faster scoring.
        """
        from .checkpoint import load_classifier

        model, backbone, meta = load_classifier(path, base_model=base_model)
        if merge:
            model.backbone = model.backbone.merge_and_unload()
        target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model.to(target)
        model.eval()
        return cls(model, backbone.tokenizer, meta, resolve_dtype(dtype, target))

    @property
    def labels(self) -> list[str]:
        return list(self.meta.labels)

    def logits(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Raw logits, (n, C) fp32, in input order."""
        texts = _check_texts(texts)
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        encoded = encode(self.tokenizer, texts, self.meta.max_length)
        return score_ids(self.model, encoded.ids, self.tokenizer.pad_token_id, batch_size, self.dtype)

    def predict_proba(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Class probabilities, (n, C), columns in the order of ``labels``."""
        return softmax(self.logits(texts, batch_size))

    def predict(self, texts: Sequence[str], batch_size: int = 64) -> list[str]:
        """Most probable label name for each text."""
        probs = self.predict_proba(texts, batch_size)
        return [self.labels[i] for i in probs.argmax(axis=-1)]


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


OUTPUT_FORMATS = (".csv", ".jsonl")


def predict_file(
    classifier: Classifier, input_path: str | Path, output_path: str | Path, text_column: str | None = None, batch_size: int = 64
) -> int:
    """Score every row of a file and write its columns plus `prediction` and `prob_<label>`, in input order.

    The output is written to a temporary file and renamed, so an existing file is never left half-written.
    """
    from .data import read_texts

    output_path = Path(output_path)
    if output_path.suffix.lower() not in OUTPUT_FORMATS:
        raise ValueError(f"--output {output_path}: unsupported extension; use .csv or .jsonl")
    if output_path.resolve() == Path(input_path).resolve():
        raise ValueError(f"--output {output_path} is the input file; choose another path so the input is kept")
    table, texts = read_texts(input_path, text_column)
    probs = classifier.predict_proba(texts, batch_size=batch_size)
    frame = table.frame.copy()
    frame["prediction"] = [classifier.labels[i] for i in probs.argmax(axis=-1)]
    for j, name in enumerate(classifier.labels):
        frame[f"prob_{name}"] = probs[:, j]
    output_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_path.with_name(f".{output_path.name}.tmp")
    if output_path.suffix.lower() == ".csv":
        frame.to_csv(tmp, index=False)
    else:
        frame.to_json(tmp, orient="records", lines=True, force_ascii=False)
    tmp.replace(output_path)
    return len(texts)
