"""Train a classifier: one loop over optimizer steps, with evaluation and best-checkpoint saving."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .backbone import Backbone, load_backbone, resolve_source
from .batching import Encoded, encode, iterate_batches, length_grouped_batches
from .checkpoint import ClassifierMeta, describe_base, save_classifier
from .config import TrainConfig
from .data import LabelSet, build_label_set, encode_labels, read_labelled
from .errors import GptclfError
from .inference import autocast_context, resolve_dtype, score_ids
from .model import GPTClassifier, build_classifier, check_trainable

log = logging.getLogger(__name__)


class TrainingError(GptclfError, RuntimeError):
    """Training cannot go on (for example the loss is no longer finite)."""


@dataclass
class TrainingData:
    label_set: LabelSet
    train_texts: list[str]
    train_labels: np.ndarray
    validation_texts: list[str] | None = None
    validation_labels: np.ndarray | None = None


@dataclass
class TrainResult:
    output: Path
    best_metrics: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    optimizer_steps: int = 0
    seconds: float = 0.0
    model: GPTClassifier | None = field(default=None, repr=False)
    """The in-memory classifier after the last step (the saved one is the best, when validating)."""


def train(config: TrainConfig | None = None, **options) -> TrainResult:
    """Train and save a classifier; options are the CLI flags as keywords (``lora_r=8``).

    >>> train(train="train.tsv", validation="dev.tsv", output="runs/sst2", max_train_samples=4000)
    """
    if config is None:
        config = TrainConfig.from_flat(**options)
    elif options:
        raise TypeError("pass either a TrainConfig or keyword options, not both")
    config.validate()
    log.info("resolved config:\n%s", json.dumps(config.to_dict(), indent=2))
    data = load_training_data(config)

    backbone = load_backbone(resolve_source(config.model.model))
    base_description = describe_base(backbone)
    classifier = build_classifier(
        backbone.model,
        num_labels=len(data.label_set.names),
        pooling=config.model.pooling,
        lora_r=config.model.lora_r,
        lora_alpha=config.model.lora_alpha,
        lora_dropout=config.model.lora_dropout,
        lora_targets=config.model.lora_targets,
        seed=config.optim.seed,
    )
    trainable, total = check_trainable(classifier)
    log.info("parameters: %s trainable of %s total (%.3f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total)

    meta = ClassifierMeta(
        labels=data.label_set.names,
        label_values=data.label_set.values,
        base_model=base_description,
        pooling=config.model.pooling,
        max_length=config.data.max_length,
        tokenizer=_tokenizer_settings(backbone),
        lora={
            "r": config.model.lora_r,
            "alpha": config.model.lora_alpha,
            "dropout": config.model.lora_dropout,
            "targets": sorted(classifier.backbone.peft_config["default"].target_modules),
        },
        config=config.to_dict(),
    )
    return run_training(classifier, backbone, data, config, meta)


def load_training_data(config: TrainConfig) -> TrainingData:
    """Read and check the training and validation files before any model loads."""
    cfg = config.data
    table, texts, raw_labels = read_labelled(cfg.train, cfg.text_column, cfg.label_column)
    label_set = build_label_set(table, raw_labels, cfg.label_names)
    labels = encode_labels(table, raw_labels, label_set)
    if cfg.max_train_samples is not None and cfg.max_train_samples < len(texts):
        rows = np.random.default_rng(config.optim.seed).choice(len(texts), cfg.max_train_samples, replace=False)
        texts = [texts[i] for i in rows]
        labels = labels[rows]
        if len(np.unique(labels)) < 2:
            raise GptclfError(f"the random subset of {len(rows)} rows from {cfg.train} has only one class; raise --max-train-samples")
    counts = np.bincount(labels, minlength=len(label_set.names))
    log.info("training rows: %d (%s)", len(texts), ", ".join(f"{n}: {c}" for n, c in zip(label_set.names, counts)))
    data = TrainingData(label_set, texts, labels)
    if cfg.validation:
        val_table, val_texts, val_raw = read_labelled(cfg.validation, cfg.text_column, cfg.label_column)
        data.validation_texts = val_texts
        data.validation_labels = encode_labels(val_table, val_raw, label_set, seen_in=f"the training file {cfg.train}")
        log.info("validation rows: %d", len(val_texts))
    return data


def _tokenizer_settings(backbone: Backbone) -> dict:
    tokenizer = backbone.tokenizer
    return {
        "pad_token": tokenizer.pad_token,
        "pad_token_id": tokenizer.pad_token_id,
        "pad_token_added": backbone.pad_token_added,
        "padding_side": "right",
        "name_or_path": getattr(tokenizer, "name_or_path", None),
    }


def run_training(
    classifier: GPTClassifier, backbone: Backbone, data: TrainingData, config: TrainConfig, meta: ClassifierMeta
) -> TrainResult:
    """The training loop: length-grouped micro-batches, one optimizer step each, evaluation and saving."""
    optim = config.optim
    tokenizer = backbone.tokenizer
    pad_id = tokenizer.pad_token_id
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype_name = resolve_dtype(optim.dtype, device)
    classifier.to(device)

    train_enc = _encode_logged(tokenizer, data.train_texts, config.data.max_length, "training")
    val_enc = None
    if data.validation_texts is not None:
        val_enc = _encode_logged(tokenizer, data.validation_texts, config.data.max_length, "validation")

    batches_per_epoch = math.ceil(len(train_enc.ids) / optim.batch_size)
    total_steps = optim.max_steps or max(1, math.ceil(optim.epochs * batches_per_epoch))
    params = [p for p in classifier.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay)
    scheduler = warmup_linear_decay(optimizer, total_steps, optim.warmup_ratio)
    log.info(
        "training: %d optimizer steps of %d rows (%.2f epochs of %d batches), dtype %s, device %s",
        total_steps, optim.batch_size, total_steps / batches_per_epoch, batches_per_epoch, dtype_name, device,
    )

    result = TrainResult(output=Path(config.output))
    lengths = train_enc.lengths
    labels = torch.as_tensor(data.train_labels)
    step, epoch, rows_seen, smoothed_loss, eval_seconds = 0, 0, 0, None, 0.0
    start = time.perf_counter()
    progress = tqdm(total=total_steps, unit="step", desc="train", mininterval=1.0)
    torch.manual_seed(optim.seed)
    classifier.train()
    while step < total_steps:
        order = length_grouped_batches(lengths, optim.batch_size, np.random.default_rng([optim.seed, epoch]))
        for rows, batch in iterate_batches(train_enc, order, pad_id):
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast_context(device, dtype_name):
                logits = classifier(**batch)
            loss = F.cross_entropy(logits, labels[rows].to(device))
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"loss became {loss.item()} at optimizer step {step + 1}; lower --lr or check the data. "
                    f"Only checkpoints from before this step were written to {config.output}"
                )
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, optim.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            rows_seen += len(rows)
            smoothed_loss = loss.item() if smoothed_loss is None else 0.95 * smoothed_loss + 0.05 * loss.item()
            train_seconds = time.perf_counter() - start - eval_seconds
            progress.set_postfix(loss=f"{smoothed_loss:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}", rows_s=f"{rows_seen / train_seconds:.1f}", refresh=False)
            progress.update(1)
            at_epoch_end = step % batches_per_epoch == 0
            if step >= total_steps or at_epoch_end or (optim.eval_every and step % optim.eval_every == 0):
                eval_start = time.perf_counter()
                _evaluate_and_save(classifier, val_enc, data, config, meta, result, step, step / batches_per_epoch, pad_id, dtype_name)
                eval_seconds += time.perf_counter() - eval_start
            if step >= total_steps:
                break
        epoch += 1
    progress.close()
    result.optimizer_steps = step
    result.model = classifier.eval()
    result.seconds = time.perf_counter() - start
    log.info(
        "trained %d optimizer steps (%d rows) in %.0f s (%.0f s of it evaluating), %.1f training rows/s",
        step, rows_seen, result.seconds, eval_seconds, rows_seen / (result.seconds - eval_seconds),
    )
    if val_enc is None:
        meta.metrics = {"optimizer_steps": step, "train_loss_smoothed": smoothed_loss}
        save_classifier(config.output, classifier, meta)
        log.info("saved classifier to %s", config.output)
    else:
        log.info("best validation accuracy %.4f at optimizer step %d; classifier in %s",
                 result.best_metrics["accuracy"], result.best_metrics["optimizer_step"], config.output)
    return result


def warmup_linear_decay(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float):
    """Learning-rate factor rising linearly from 0 over the warmup steps, then falling linearly to 0."""
    warmup = int(round(total_steps * warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _encode_logged(tokenizer, texts: list[str], max_length: int, name: str) -> Encoded:
    encoded = encode(tokenizer, texts, max_length)
    if encoded.truncated:
        log.warning(
            "%d of %d %s texts (%.1f%%) are longer than --max-length %d tokens and were truncated",
            encoded.truncated, len(texts), name, 100 * encoded.truncated / len(texts), max_length,
        )
    else:
        log.info("%s texts: none longer than --max-length %d tokens", name, max_length)
    return encoded


def _evaluate_and_save(classifier, val_enc, data, config, meta, result, step, epoch, pad_id, dtype_name) -> None:
    """Score the validation set and save the classifier when it is the best so far."""
    if val_enc is None:
        return
    classifier.eval()
    logits = score_ids(classifier, val_enc.ids, pad_id, config.optim.eval_batch_size, dtype_name)
    classifier.train()
    targets = data.validation_labels
    loss = float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(targets)))
    accuracy = float((logits.argmax(axis=-1) == targets).mean())
    metrics = {"optimizer_step": step, "epoch": epoch, "accuracy": accuracy, "loss": loss}
    result.history.append(metrics)
    improved = not result.best_metrics or accuracy > result.best_metrics["accuracy"]
    log.info(
        "optimizer step %d (epoch %.2f): validation accuracy %.4f, loss %.4f%s",
        step, epoch, accuracy, loss, " (best so far, saved)" if improved else "",
    )
    if improved:
        result.best_metrics = metrics
        meta.metrics = {"validation": metrics}
        save_classifier(config.output, classifier, meta)
