"""Training settings: grouped dataclasses, one doc line per field, validated before any model loads.

Every field name maps to a command-line flag: ``lora_r`` is ``--lora-r``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .imbalance import parse_class_weights

POOLING_CHOICES = ("last", "mean")
DTYPE_CHOICES = ("auto", "fp32", "bf16")
# TrainConfig's own settings, outside the data, model and optim groups.
TOP_LEVEL_SETTINGS = ("output", "overwrite", "save_every", "keep_checkpoints", "resume", "report_to")


def setting(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    """Declare a settings field with its one-line help, shown by ``--help`` and in the docs.

    ``choices`` only shows the allowed values in ``--help``; ``validate`` checks them, so that
    every bad flag is reported at once.
    """
    return field(default=default, metadata={"help": help, "choices": choices})


def flag(name: str) -> str:
    """Return the command-line flag for a settings field name."""
    return "--" + name.replace("_", "-")


@dataclass
class DataConfig:
    train: str | None = setting(None, "Labelled training file (CSV, TSV, JSONL or Parquet); required unless --resume.")
    validation: str | None = setting(None, "Labelled validation file, scored each epoch; the best-scoring checkpoint is kept.")
    text_column: str | None = setting(None, "Column with the text; detected from `text` or `sentence` when unset.")
    label_column: str | None = setting(None, "Column with the label; `label` when unset.")
    label_names: list[str] | None = setting(None, "Names for integer labels 0..K-1, or the class order for string labels.")
    max_length: int = setting(128, "Maximum tokens per text; longer texts are truncated and counted.")
    max_train_samples: int | None = setting(None, "Train on a seeded random subset of this many rows.")


@dataclass
class ModelConfig:
    model: str | None = setting(None, "Base model: hub id, local folder, .gguf file, or unset for the embedded SmolLM2-135M-Instruct.")
    pooling: str = setting("last", "How the head reads the sequence: `last` real token or `mean` over real tokens.", POOLING_CHOICES)
    lora_r: int = setting(8, "LoRA rank r.")
    lora_alpha: float = setting(16.0, "LoRA alpha; the update is scaled by alpha / r.")
    lora_dropout: float = setting(0.05, "Dropout on the LoRA input path during training.")
    lora_targets: list[str] | None = setting(None, "Module names to adapt; detected per architecture (Q, K, V projections) when unset.")
    lora_layers: int | None = setting(None, "Adapt only the top N decoder layers; backward then stops below them, which is faster.")


@dataclass
class OptimConfig:
    epochs: float = setting(1.0, "Passes over the training rows (fractions allowed); ignored when --max-steps is set.")
    max_steps: int | None = setting(None, "Stop after this many optimizer steps.")
    batch_size: int = setting(16, "Rows per micro-batch on each process; an optimizer step takes --grad-accum micro-batches.")
    grad_accum: int = setting(1, "Micro-batches whose gradients are summed into one optimizer step.")
    lr: float = setting(2e-3, "Peak learning rate for the LoRA matrices and the head (AdamW).")
    weight_decay: float = setting(0.0, "AdamW weight decay.")
    warmup_ratio: float = setting(0.06, "Fraction of optimizer steps spent warming the learning rate up linearly from 0.")
    max_grad_norm: float = setting(1.0, "Clip the gradient norm of the trainable weights to this value.")
    eval_every: int | None = setting(None, "Also evaluate on --validation every this many optimizer steps.")
    patience: int | None = setting(None, "Stop after this many evaluations without a better validation accuracy.")
    gradient_checkpointing: bool = setting(False, "Recompute activations in backward (non-reentrant) to save memory at some speed cost.")
    compile: bool = setting(False, "Compile the backbone's training forward and backward with torch.compile (dynamic shapes); compiling takes minutes, so it pays off only on long runs.")
    eval_batch_size: int = setting(64, "Rows per forward pass when evaluating.")
    class_weights: str | None = setting(None, "Loss weight per class: `auto` (inverse class frequency, n / (C * count)) or comma-separated numbers in label order; unset weighs every class 1.")
    calibrate: bool = setting(True, "Fit a temperature on --validation after training and store it in the classifier.")
    seed: int = setting(0, "Seed for the head initialisation, the subset, the batch order and dropout.")
    dtype: str = setting("auto", "Autocast dtype for the forward pass: `auto` (bf16 where the hardware multiplies bf16 natively: CUDA GPUs that support it, CPUs with AVX-512 BF16 or AMX; else fp32), `fp32` or `bf16`; trainable weights stay fp32.", DTYPE_CHOICES)


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    output: str | None = setting(None, "Folder to write the classifier to.")
    overwrite: bool = setting(False, "Replace an existing classifier in --output.")
    save_every: int | None = setting(None, "Write a resumable checkpoint to OUTPUT/checkpoints every this many optimizer steps.")
    keep_checkpoints: int = setting(2, "How many of the newest resumable checkpoints to keep.")
    resume: str | None = setting(None, "Continue an interrupted run from OUTPUT (its newest checkpoint) or from one checkpoint folder.")
    report_to: str | None = setting(None, "Also log the training scalars to `tensorboard`, in OUTPUT/tensorboard (needs the tensorboard package).")

    @classmethod
    def from_flat(cls, **options: Any) -> "TrainConfig":
        """Build a config from flat keyword arguments named like the flags (``lora_r=8``)."""
        groups = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig}
        values: dict[str, dict[str, Any]] = {name: {} for name in groups}
        top: dict[str, Any] = {}
        unknown = []
        for key, value in options.items():
            for group, group_cls in groups.items():
                if key in {f.name for f in dataclasses.fields(group_cls)}:
                    values[group][key] = value
                    break
            else:
                if key in TOP_LEVEL_SETTINGS:
                    top[key] = value
                else:
                    unknown.append(key)
        if unknown:
            raise ConfigError([f"unknown option {name!r}" for name in unknown])
        return cls(**{g: groups[g](**values[g]) for g in groups}, **top)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_flat(self) -> dict[str, Any]:
        """Flat keyword arguments that ``from_flat`` turns back into this config."""
        nested = self.to_dict()
        flat = {k: v for k, v in nested.items() if k not in ("data", "model", "optim")}
        for group in ("data", "model", "optim"):
            flat.update(nested[group])
        return flat

    def validate(self) -> None:
        """Raise one ConfigError that lists every invalid setting by its flag."""
        problems = _data_problems(self.data) + _model_problems(self.model) + _optim_problems(self.optim)
        problems += _report_problems(self.report_to)
        if not self.output:
            problems.append(f"{flag('output')} is required: the folder to write the classifier to")
        else:
            out = Path(self.output)
            if out.exists() and not out.is_dir():
                problems.append(f"{flag('output')} {self.output!r} is a file; give a folder path")
            elif out.is_dir() and any(out.iterdir()) and not (self.overwrite or self.resume):
                problems.append(
                    f"{flag('output')} {self.output!r} is not empty; choose a new folder "
                    f"or pass {flag('overwrite')} to replace the classifier in it"
                )
        if self.save_every is not None and self.save_every < 1:
            problems.append(f"{flag('save_every')} must be at least 1, got {self.save_every}")
        if self.keep_checkpoints < 1:
            problems.append(f"{flag('keep_checkpoints')} must be at least 1, got {self.keep_checkpoints}")
        if problems:
            raise ConfigError(problems)


def _data_problems(data: DataConfig) -> list[str]:
    problems = []
    if not data.train:
        problems.append(f"{flag('train')} is required: a labelled CSV, TSV, JSONL or Parquet file")
    for name in ("train", "validation"):
        path = getattr(data, name)
        if path and not Path(path).is_file():
            problems.append(f"{flag(name)} {path!r}: file not found")
    if data.max_length < 2:
        problems.append(f"{flag('max_length')} must be at least 2 tokens, got {data.max_length}")
    if data.max_train_samples is not None and data.max_train_samples < 2:
        problems.append(f"{flag('max_train_samples')} must be at least 2, got {data.max_train_samples}")
    if data.label_names is not None:
        if len(data.label_names) < 2:
            problems.append(f"{flag('label_names')} needs at least two names, got {data.label_names}")
        if len(set(data.label_names)) != len(data.label_names):
            problems.append(f"{flag('label_names')} has repeated names: {data.label_names}")
    return problems


def _model_problems(model: ModelConfig) -> list[str]:
    problems = []
    if model.pooling not in POOLING_CHOICES:
        problems.append(f"{flag('pooling')} must be one of {', '.join(POOLING_CHOICES)}, got {model.pooling!r}")
    if model.lora_r < 1:
        problems.append(f"{flag('lora_r')} must be a positive integer, got {model.lora_r}")
    if model.lora_alpha <= 0:
        problems.append(f"{flag('lora_alpha')} must be positive, got {model.lora_alpha}")
    if not 0.0 <= model.lora_dropout < 1.0:
        problems.append(f"{flag('lora_dropout')} must be in [0, 1), got {model.lora_dropout}")
    if model.lora_layers is not None and model.lora_layers < 1:
        problems.append(f"{flag('lora_layers')} must be at least 1, got {model.lora_layers}")
    if model.lora_targets is not None and not [t for t in model.lora_targets if t.strip()]:
        problems.append(f"{flag('lora_targets')} is empty; give module names such as q_proj,k_proj,v_proj")
    return problems


def _optim_problems(optim: OptimConfig) -> list[str]:
    problems = []
    if optim.epochs <= 0:
        problems.append(f"{flag('epochs')} must be positive, got {optim.epochs}")
    if optim.max_steps is not None and optim.max_steps < 1:
        problems.append(f"{flag('max_steps')} must be at least 1, got {optim.max_steps}")
    if optim.batch_size < 1:
        problems.append(f"{flag('batch_size')} must be at least 1, got {optim.batch_size}")
    if optim.grad_accum < 1:
        problems.append(f"{flag('grad_accum')} must be at least 1, got {optim.grad_accum}")
    if optim.patience is not None and optim.patience < 1:
        problems.append(f"{flag('patience')} must be at least 1, got {optim.patience}")
    if optim.eval_batch_size < 1:
        problems.append(f"{flag('eval_batch_size')} must be at least 1, got {optim.eval_batch_size}")
    if optim.lr <= 0:
        problems.append(f"{flag('lr')} must be positive, got {optim.lr}")
    if optim.weight_decay < 0:
        problems.append(f"{flag('weight_decay')} must be non-negative, got {optim.weight_decay}")
    if not 0.0 <= optim.warmup_ratio < 1.0:
        problems.append(f"{flag('warmup_ratio')} must be in [0, 1), got {optim.warmup_ratio}")
    if optim.max_grad_norm <= 0:
        problems.append(f"{flag('max_grad_norm')} must be positive, got {optim.max_grad_norm}")
    if optim.eval_every is not None and optim.eval_every < 1:
        problems.append(f"{flag('eval_every')} must be at least 1, got {optim.eval_every}")
    if optim.dtype not in DTYPE_CHOICES:
        problems.append(f"{flag('dtype')} must be auto, fp32 or bf16, got {optim.dtype!r}")
    try:
        parse_class_weights(optim.class_weights)
    except ValueError as err:
        problems.append(str(err))
    return problems


def _report_problems(report_to: str | None) -> list[str]:
    from .tracking import REPORT_TO_CHOICES, tensorboard_missing

    if report_to is None:
        return []
    if report_to not in REPORT_TO_CHOICES:
        return [f"{flag('report_to')} must be one of {', '.join(REPORT_TO_CHOICES)}, got {report_to!r}"]
    if report_to == "tensorboard" and tensorboard_missing():
        return [f"{flag('report_to')} tensorboard needs the tensorboard package; install it with `pip install 'gptclf[tensorboard]'`"]
    return []


@dataclass
class ServeConfig:
    """Settings of the HTTP server (`gptclf serve`)."""

    host: str = setting("127.0.0.1", "Address to listen on; 0.0.0.0 exposes the server to the network.")
    port: int = setting(8000, "TCP port to listen on; 0 picks a free one.")
    max_batch_size: int = setting(64, "Maximum texts collected from concurrent requests into one batch.")
    forward_batch_size: int = setting(
        16, "Texts per forward pass within a batch; texts are sorted by length first, so smaller passes pad less."
    )
    batch_window_ms: float = setting(5.0, "Milliseconds to wait for more requests before scoring a batch.")
    max_texts: int = setting(128, "Maximum texts per request; larger requests get 413.")
    max_text_chars: int = setting(10000, "Maximum characters per text; longer texts get 413.")
    max_pending_texts: int = setting(4096, "Maximum texts waiting to be scored; beyond it requests get 503.")
    log_texts: bool = setting(False, "Log the text of each request (off by default, because texts may be private).")

    def validate(self) -> None:
        """Raise one ConfigError that lists every invalid setting by its flag."""
        problems = []
        if not 0 <= self.port <= 65535:
            problems.append(f"{flag('port')} must be in 0..65535, got {self.port}")
        for name in ("max_batch_size", "forward_batch_size", "max_texts", "max_text_chars", "max_pending_texts"):
            if getattr(self, name) < 1:
                problems.append(f"{flag(name)} must be at least 1, got {getattr(self, name)}")
        if self.batch_window_ms < 0:
            problems.append(f"{flag('batch_window_ms')} must be non-negative, got {self.batch_window_ms}")
        if self.max_pending_texts < self.max_texts:
            problems.append(
                f"{flag('max_pending_texts')} ({self.max_pending_texts}) must be at least {flag('max_texts')} "
                f"({self.max_texts}), or a full request could never be queued"
            )
        if problems:
            raise ConfigError(problems)
