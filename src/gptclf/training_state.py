"""Periodic training checkpoints that a run can resume from exactly.

A checkpoint folder ``OUTPUT/checkpoints/step-000120/`` contains the classifier files (as in a
saved classifier) plus ``trainer_state.safetensors`` (optimizer moments, RNG states) and
``trainer_state.json`` (optimizer step, data-order position, scheduler, best metrics). The
folder is written under a temporary name and renamed, so every ``step-*`` folder is complete.
A process killed mid-write leaves only a ``.step-*`` staging folder, which is ignored.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .checkpoint import ClassifierMeta, write_classifier_files
from .errors import CheckpointError
from .model import GPTClassifier

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
STATE_TENSORS = "trainer_state.safetensors"
STATE_JSON = "trainer_state.json"
STEP_PATTERN = re.compile(r"^step-(\d+)$")


@dataclass
class LoopState:
    """Counters of the training loop, enough to continue it exactly."""

    optimizer_step: int = 0
    epoch: int = 0
    micro_batch_in_epoch: int = 0
    """Global micro-batches of the current epoch already consumed."""
    rows_seen: int = 0
    smoothed_loss: float | None = None
    best_metrics: dict = field(default_factory=dict)
    evaluations_without_improvement: int = 0
    history: list = field(default_factory=list)


def save_training_checkpoint(
    output: Path,
    classifier: GPTClassifier,
    meta: ClassifierMeta,
    optimizer: torch.optim.Optimizer,
    scheduler,
    state: LoopState,
    keep: int,
) -> Path:
    """Write ``output/checkpoints/step-N`` atomically and delete all but the newest ``keep``."""
    root = Path(output) / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{state.optimizer_step:06d}"
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        write_classifier_files(staging, classifier, meta)
        tensors, layout = _optimizer_tensors(optimizer)
        tensors["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_available():
            for i, rng in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng.cuda.{i}"] = rng
        save_file(tensors, str(staging / STATE_TENSORS))
        record = {"loop": asdict(state), "scheduler": scheduler.state_dict(), "optimizer": layout}
        (staging / STATE_JSON).write_text(json.dumps(record, indent=2))
        target = root / name
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _rotate(root, keep)
    return target


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into flat named tensors and a JSON-safe remainder."""
    full = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in full["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": full["param_groups"], "scalars": scalars, "indices": [str(i) for i in full["state"]]}


def _rotate(root: Path, keep: int) -> None:
    steps = sorted(complete_checkpoints(root))
    for _, path in steps[:-keep] if keep > 0 else []:
        shutil.rmtree(path, ignore_errors=True)
    for leftover in root.glob(".step-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    found = []
    for path in Path(root).glob("step-*"):
        match = STEP_PATTERN.match(path.name)
        if match and (path / STATE_JSON).is_file() and (path / STATE_TENSORS).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def find_resume_checkpoint(path: str | Path) -> Path:
    """Accept a training output folder (newest checkpoint wins) or one checkpoint folder."""
    path = Path(path)
    if (path / STATE_JSON).is_file():
        return path
    # A process killed while replacing the output folder leaves its checkpoints in a sibling
    # staging (.NAME.saving-*) or retired (.NAME.replaced-*) folder.
    folders = [path, *path.parent.glob(f".{path.name}.saving-*"), *path.parent.glob(f".{path.name}.replaced-*")]
    found = sorted(found for folder in folders for found in complete_checkpoints(folder / CHECKPOINTS_DIR))
    if not found:
        raise CheckpointError(
            f"--resume {path}: no complete checkpoint found in {path / CHECKPOINTS_DIR}; "
            "train with --save-every N to write resumable checkpoints"
        )
    return found[-1][1]


def load_training_state(checkpoint: Path, optimizer: torch.optim.Optimizer, scheduler) -> LoopState:
    """Restore optimizer, scheduler and RNG states; return the loop counters."""
    record = json.loads((checkpoint / STATE_JSON).read_text())
    tensors = load_file(str(checkpoint / STATE_TENSORS))
    layout = record["optimizer"]
    state: dict[int, dict[str, Any]] = {}
    for index in layout["indices"]:
        entry = dict(layout["scalars"].get(index, {}))
        prefix = f"optimizer.{index}."
        entry.update({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        state[int(index)] = entry
    optimizer.load_state_dict({"state": state, "param_groups": layout["param_groups"]})
    scheduler.load_state_dict(record["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    return LoopState(**record["loop"])
