"""Train a classifier: one loop over optimizer steps, with evaluation and best-checkpoint saving."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .backbone import Backbone, load_backbone, resolve_source
from .calibration import store_temperature
from .batching import Encoded, collate, encode, length_grouped_batches
from .check import check_after_training
from .checkpoint import ClassifierMeta, describe_base, load_trainable_weights, read_meta, save_classifier
from .config import DataConfig, ModelConfig, OptimConfig, TrainConfig
from .distributed import Engine
from .data import LabelSet, build_label_set, encode_labels, read_labelled
from .errors import ConfigError, GptclfError
from .imbalance import resolve_class_weights, warn_if_collapsed, warn_if_imbalanced
from .inference import autocast_context, resolve_dtype, score_ids
from .model import GPTClassifier, build_classifier, check_trainable, enable_gradient_checkpointing
from .tracking import TrainLogger
from .training_state import LoopState, find_resume_checkpoint, load_training_state, save_training_checkpoint

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
    calibration: dict = field(default_factory=dict)
    """Temperature, and ECE and log loss before and after it, on the validation set."""


def train(config: TrainConfig | None = None, **options) -> TrainResult:
    """Train and save a classifier; options are the CLI flags as keywords (``lora_r=8``).

    With ``resume``, the settings saved in that run are the base and ``options`` override them.

    >>> train(train="train.tsv", validation="dev.tsv", output="runs/sst2", max_train_samples=4000)
    """
    config = _resolve_config(config, options)
    config.validate()
    engine = Engine(cpu=not torch.cuda.is_available())
    log.info("resolved config:\n%s", json.dumps(config.to_dict(), indent=2))
    data = load_training_data(config)
    warn_if_imbalanced(data.train_labels, data.label_set.names)
    class_weights = _resolve_class_weights(config, data)

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
        lora_layers=config.model.lora_layers,
    )
    if config.optim.gradient_checkpointing:
        enable_gradient_checkpointing(backbone.model)
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
            "layers": config.model.lora_layers,
        },
        config=config.to_dict(),
        class_weights=class_weights,
    )
    result = run_training(classifier, backbone, data, config, meta, engine)
    if engine.is_main:
        check_after_training(result.output)  # raises CheckFailedError, after saving, on any FAIL
    return result


def _resolve_config(config: TrainConfig | None, options: dict) -> TrainConfig:
    if config is not None:
        if options:
            raise TypeError("pass either a TrainConfig or keyword options, not both")
        return config
    resume = options.get("resume")
    if not resume:
        return TrainConfig.from_flat(**options)
    checkpoint = find_resume_checkpoint(resume)
    saved = read_meta(checkpoint).config
    flat = TrainConfig(
        data=DataConfig(**saved["data"]), model=ModelConfig(**saved["model"]), optim=OptimConfig(**saved["optim"]),
        **{k: v for k, v in saved.items() if k not in ("data", "model", "optim")},
    ).to_flat()
    changed = {k: v for k, v in options.items() if k != "resume" and flat.get(k) != v}
    if changed:
        log.info("resuming with changed settings: %s", changed)
    flat.update(options)
    return TrainConfig.from_flat(**flat)


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


def _resolve_class_weights(config: TrainConfig, data: TrainingData) -> list[float] | None:
    try:
        weights = resolve_class_weights(config.optim.class_weights, data.train_labels, len(data.label_set.names))
    except ValueError as err:
        raise ConfigError([str(err)]) from None
    if weights is not None:
        log.info("class weights in the loss: %s", ", ".join(f"{n}: {w:.3f}" for n, w in zip(data.label_set.names, weights)))
    return weights


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
    classifier: GPTClassifier, backbone: Backbone, data: TrainingData, config: TrainConfig, meta: ClassifierMeta, engine: Engine
) -> TrainResult:
    """Run the training loop, evaluating and saving as configured.

    Each optimizer step takes ``grad_accum`` global micro-batches of ``batch_size x processes``
    length-grouped rows; each process scores its share of every micro-batch. The loss is the sum
    over rows divided by the rows in the step, so the gradient does not depend on how the rows
    are split across micro-batches and processes.
    """
    optim = config.optim
    device = engine.device
    dtype_name = resolve_dtype(optim.dtype, device)
    classifier.to(device)
    pad_id = backbone.tokenizer.pad_token_id

    train_enc = _encode_logged(backbone.tokenizer, data.train_texts, config.data.max_length, "training")
    val_enc = None
    if data.validation_texts is not None:
        val_enc = _encode_logged(backbone.tokenizer, data.validation_texts, config.data.max_length, "validation")

    global_batch = optim.batch_size * engine.world_size
    micro_batches_per_epoch = len(_epoch_micro_batches(train_enc, global_batch, engine.world_size, optim.seed, 0))
    steps_per_epoch = math.ceil(micro_batches_per_epoch / optim.grad_accum)
    total_steps = optim.max_steps or max(1, math.ceil(optim.epochs * steps_per_epoch))
    params = [p for p in classifier.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay)
    scheduler = warmup_linear_decay(optimizer, total_steps, optim.warmup_ratio)
    if optim.compile:
        # NOTE: compiled training is measured on one CPU process only, not under DDP or on GPUs.
        classifier.backbone.compile(dynamic=True)
    model = engine.prepare(classifier)
    log.info(
        "training: %d optimizer steps of %d micro-batch(es) x %d rows x %d process(es) (%.2f epochs), dtype %s, device %s",
        total_steps, optim.grad_accum, optim.batch_size, engine.world_size, total_steps / steps_per_epoch, dtype_name, device,
    )

    torch.manual_seed(optim.seed)
    state = LoopState()
    if config.resume:
        checkpoint = find_resume_checkpoint(config.resume)
        load_trainable_weights(checkpoint, classifier)
        state = load_training_state(checkpoint, optimizer, scheduler)
        log.info("resumed from %s at optimizer step %d", checkpoint, state.optimizer_step)

    labels = torch.as_tensor(data.train_labels)
    loss_weights = None if meta.class_weights is None else torch.tensor(meta.class_weights, device=device)
    best_logits: dict = {}  # validation logits of the best evaluation in this run, for the temperature fit
    evaluate = partial(_evaluate_and_save, classifier, val_enc, data, config, meta, engine, pad_id, dtype_name, best_logits)
    train_log = TrainLogger(config.output, config.report_to, append=bool(config.resume), enabled=engine.is_main)
    progress = tqdm(total=total_steps, initial=state.optimizer_step, unit="step", desc="train", mininterval=1.0, disable=not engine.is_main)
    start, eval_seconds, rows_at_start = time.perf_counter(), 0.0, state.rows_seen
    stop = False
    classifier.train()
    while state.optimizer_step < total_steps and not stop:
        epoch_batches = _epoch_micro_batches(train_enc, global_batch, engine.world_size, optim.seed, state.epoch)
        while state.micro_batch_in_epoch < len(epoch_batches) and state.optimizer_step < total_steps:
            step_batches = epoch_batches[state.micro_batch_in_epoch : state.micro_batch_in_epoch + optim.grad_accum]
            step_rows = sum(len(rows) for rows in step_batches)
            step_weight = _total_weight(step_batches, data.train_labels, meta.class_weights)  # step_rows when unweighted
            loss_sum = 0.0
            for i, global_rows in enumerate(step_batches):
                rows = global_rows[engine.rank :: engine.world_size]
                batch = {k: v.to(device) for k, v in collate([train_enc.ids[r] for r in rows], pad_id).items()}
                with engine.sync_gradients(model, sync=i == len(step_batches) - 1):
                    with autocast_context(device, dtype_name):
                        logits = model(**batch)
                    loss = F.cross_entropy(logits, labels[rows].to(device), weight=loss_weights, reduction="sum")
                    # DDP averages gradients over processes, hence the factor world_size.
                    (loss * engine.world_size / step_weight).backward()
                loss_sum += loss.item()
            if not math.isfinite(loss_sum):
                raise TrainingError(
                    f"loss became {loss_sum} at optimizer step {state.optimizer_step + 1}; lower --lr or check the data. "
                    f"Nothing from this step was saved to {config.output}"
                )
            torch.nn.utils.clip_grad_norm_(params, optim.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            state.optimizer_step += 1
            state.micro_batch_in_epoch += len(step_batches)
            state.rows_seen += step_rows
            step_loss = loss_sum * engine.world_size / step_weight  # this process's rows only, for the progress bar
            state.smoothed_loss = step_loss if state.smoothed_loss is None else 0.95 * state.smoothed_loss + 0.05 * step_loss
            epoch_done = state.micro_batch_in_epoch >= len(epoch_batches)
            if epoch_done:
                state.epoch += 1
                state.micro_batch_in_epoch = 0
            train_seconds = time.perf_counter() - start - eval_seconds
            progress.set_postfix(
                loss=f"{state.smoothed_loss:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}",
                rows_s=f"{(state.rows_seen - rows_at_start) / max(train_seconds, 1e-9):.1f}", refresh=False,
            )
            progress.update(1)
            train_log.log_step(
                state.optimizer_step, state.optimizer_step / steps_per_epoch, step_loss, scheduler.get_last_lr()[0],
                (state.rows_seen - rows_at_start) / max(train_seconds, 1e-9),
            )

            last_step = state.optimizer_step >= total_steps
            if val_enc is not None and (last_step or epoch_done or (optim.eval_every and state.optimizer_step % optim.eval_every == 0)):
                eval_start = time.perf_counter()
                stop = evaluate(state, state.optimizer_step / steps_per_epoch)
                train_log.log_evaluation(state.history[-1])
                eval_seconds += time.perf_counter() - eval_start
            if config.save_every and state.optimizer_step % config.save_every == 0 and not last_step:
                if engine.is_main:
                    save_training_checkpoint(Path(config.output), classifier, meta, optimizer, scheduler, state, config.keep_checkpoints)
                engine.wait()
            if stop or epoch_done:
                break
    progress.close()
    if optim.compile:
        # Module.compile has no public undo. Clearing its compiled call makes the returned model
        # eager again, so that scoring it does not compile a second, inference-mode graph.
        classifier.backbone._compiled_call_impl = None

    result = TrainResult(output=Path(config.output), best_metrics=state.best_metrics, history=state.history)
    result.optimizer_steps = state.optimizer_step
    result.model = classifier.eval()
    result.seconds = time.perf_counter() - start
    trained_rows = state.rows_seen - rows_at_start
    log.info(
        "trained to optimizer step %d (%d rows this run) in %.0f s (%.0f s of it evaluating), %.1f training rows/s",
        state.optimizer_step, trained_rows, result.seconds, eval_seconds, trained_rows / max(result.seconds - eval_seconds, 1e-9),
    )
    if stop:
        log.info("stopped early: no better validation accuracy in %d evaluations (--patience)", optim.patience)
    if val_enc is None:
        meta.metrics = {"optimizer_steps": state.optimizer_step, "train_loss_smoothed": state.smoothed_loss}
        if engine.is_main:
            save_classifier(config.output, classifier, meta)
        log.info("saved classifier to %s", config.output)
    else:
        log.info("best validation accuracy %.4f at optimizer step %d; classifier in %s",
                 state.best_metrics["accuracy"], state.best_metrics["optimizer_step"], config.output)

    train_log.close()
    if engine.is_main:
        result.calibration = _calibrate(config, data, best_logits, val_enc is not None)
        _write_training_figures(config.output)
    engine.wait()
    return result


def _total_weight(step_batches: list[np.ndarray], labels: np.ndarray, class_weights: list[float] | None) -> float:
    """Sum of the loss weights of a step's rows, the denominator of its weighted mean loss."""
    if class_weights is None:
        return float(sum(len(rows) for rows in step_batches))
    weights = np.asarray(class_weights)
    return float(sum(weights[labels[rows]].sum() for rows in step_batches))


def _calibrate(config: TrainConfig, data: TrainingData, best_logits: dict, validating: bool) -> dict:
    if not (validating and config.optim.calibrate):
        return {}
    if "logits" not in best_logits:
        log.warning(
            "the best classifier comes from before --resume, so no temperature was fitted; "
            "run `gptclf calibrate %s --data %s`", config.output, config.data.validation,
        )
        return {}
    return store_temperature(config.output, best_logits["logits"], data.validation_labels, config.data.validation)


def _write_training_figures(folder: str) -> None:
    from .reporting import write_training_figures  # imported here: matplotlib is slow to import

    for path in write_training_figures(folder):
        log.info("wrote %s", path)


def _epoch_micro_batches(encoded: Encoded, global_batch: int, world_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Length-grouped global micro-batches of one epoch, the same on every process."""
    batches = length_grouped_batches(encoded.lengths, global_batch, np.random.default_rng([seed, epoch]))
    if world_size > 1:
        # Every process needs at least one row of each micro-batch to join the gradient all-reduce.
        batches = [b for b in batches if len(b) >= world_size]
    return batches


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


def _evaluate_and_save(
    classifier, val_enc, data, config, meta, engine, pad_id, dtype_name, best_logits: dict, state: LoopState, epoch: float
) -> bool:
    """Score the validation set, save the classifier when it is the best so far; return whether to stop.

    NOTE: every process scores the whole validation set, so all of them reach the same decision to
    stop without communicating. Only the main process writes.
    """
    classifier.eval()
    # A compiled backbone would compile a second graph for inference mode, so evaluation runs eagerly.
    with torch.compiler.set_stance("force_eager"):
        logits = score_ids(classifier, val_enc.ids, pad_id, config.optim.eval_batch_size, dtype_name)
    classifier.train()
    targets = data.validation_labels
    loss = float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(targets)))
    accuracy = float((logits.argmax(axis=-1) == targets).mean())
    if engine.is_main:
        warn_if_collapsed(logits.argmax(axis=-1), data.label_set.names, state.optimizer_step)
    metrics = {"optimizer_step": state.optimizer_step, "epoch": round(epoch, 4), "accuracy": accuracy, "loss": loss}
    state.history.append(metrics)
    improved = not state.best_metrics or accuracy > state.best_metrics["accuracy"]
    log.info(
        "optimizer step %d (epoch %.2f): validation accuracy %.4f, loss %.4f%s",
        state.optimizer_step, epoch, accuracy, loss, " (best so far, saved)" if improved else "",
    )
    if improved:
        state.best_metrics = metrics
        best_logits["logits"] = logits
        state.evaluations_without_improvement = 0
        meta.metrics = {"validation": metrics}
        if engine.is_main:
            save_classifier(config.output, classifier, meta)
        engine.wait()
    else:
        state.evaluations_without_improvement += 1
    patience = config.optim.patience
    return bool(patience and state.evaluations_without_improvement >= patience)
