"""Save and load a trained classifier folder.

Layout of a classifier folder::

    gptclf.json                  labels, base-model reference and fingerprint, pooling, tokenizer
                                 settings, LoRA settings, resolved training config, package version
    head.safetensors             head weight (C, H) and bias (C,)
    adapter/                     the LoRA adapter in PEFT's folder format
        adapter_config.json
        adapter_model.safetensors

An exported classifier (``gptclf export``) has ``backbone/`` in place of ``adapter/``: the base
model with the LoRA update merged into its weights, in Hugging Face's folder format, plus the
tokenizer. Its ``gptclf.json`` records ``base_model.kind = "merged"`` and the original base
model under ``base_model.merged_from``, so it loads without the base model.

Training also writes ``train_log.jsonl`` (and ``tensorboard/`` when asked) into the folder.
Re-saving keeps them, like every other entry that is not part of the classifier.

Writes go to a temporary sibling folder that is renamed into place, so a crash never leaves a
half-written classifier behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import __version__
from .backbone import Backbone, ModelSource, fingerprint, load_backbone, resolve_source
from .errors import CheckpointError
from .model import GPTClassifier, hidden_size_of, wrap_with_lora

META_FILE = "gptclf.json"
HEAD_FILE = "head.safetensors"
ADAPTER_DIR = "adapter"
BACKBONE_DIR = "backbone"
MERGED_KIND = "merged"
FORMAT_VERSION = 1
# Files that training writes into the output folder while it runs; re-saving keeps them, like
# every entry that is not part of the classifier itself (see _swap_into_place).
TRAIN_LOG_FILE = "train_log.jsonl"
TENSORBOARD_DIR = "tensorboard"


@dataclass
class ClassifierMeta:
    """Everything besides tensors that is needed to rebuild and explain a classifier."""

    labels: list[str]
    label_values: list[str]
    base_model: dict[str, Any]
    """`kind`, `reference`, `fingerprint` and `architecture` of the base model, plus `merged_from` when exported."""
    pooling: str
    max_length: int
    tokenizer: dict[str, Any]
    """`pad_token`, `pad_token_id`, `pad_token_added` and `padding_side`."""
    lora: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    temperature: float = 1.0
    """Logits are divided by this before the softmax; 1.0 leaves them as trained."""
    calibration: dict[str, Any] = field(default_factory=dict)
    """Record of the temperature fit: data, rows, ECE and log loss before and after."""
    threshold: float | None = None
    """Binary only: predict ``labels[1]`` when its calibrated probability is >= this; argmax when None."""
    threshold_tuning: dict[str, Any] = field(default_factory=dict)
    """Record of the threshold choice: metric, its value, precision, recall and data."""
    class_weights: list[float] | None = None
    """Per-class weights the training loss used, in label order; None when unweighted."""
    package_version: str = __version__
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, sort_keys=True)


def save_classifier(folder: str | Path, classifier: GPTClassifier, meta: ClassifierMeta) -> Path:
    """Write the classifier folder atomically, replacing any earlier version of it."""

    return _write_atomically(Path(folder), lambda staging: write_classifier_files(staging, classifier, meta))


def export_classifier(source: str | Path, output: str | Path, base_model: str | None = None) -> Path:
    """Write a standalone copy of a classifier: backbone with LoRA merged, tokenizer, head and metadata.

    The copy loads without the base model. Its logits equal the source's up to float rounding,
    because merging replaces W x + (alpha / r) B A x with (W + (alpha / r) B A) x.
    """
    classifier, backbone, meta = load_classifier(source, base_model=base_model)
    if not hasattr(classifier.backbone, "merge_and_unload"):
        raise CheckpointError(f"{source}: this classifier is already exported (merged); copy the folder instead")
    classifier.backbone = classifier.backbone.merge_and_unload()
    exported = ClassifierMeta(**{**meta.__dict__, "package_version": __version__})
    exported.base_model = {
        "kind": MERGED_KIND,
        "reference": BACKBONE_DIR,
        "fingerprint": fingerprint(classifier.backbone),
        "architecture": meta.base_model.get("architecture", type(classifier.backbone).__name__),
        "merged_from": dict(meta.base_model),
    }

    def write(staging: Path) -> None:
        classifier.backbone.save_pretrained(staging / BACKBONE_DIR, safe_serialization=True)
        backbone.tokenizer.save_pretrained(staging / BACKBONE_DIR)
        _write_head_and_meta(staging, classifier, exported)

    return _write_atomically(Path(output), write)


def _write_head_and_meta(staging: Path, classifier: GPTClassifier, meta: ClassifierMeta) -> None:
    head = {k: v.detach().float().cpu().contiguous() for k, v in classifier.head.state_dict().items()}
    save_file(head, str(staging / HEAD_FILE), metadata={"format": "pt"})
    (staging / META_FILE).write_text(meta.to_json() + "\n")


def _write_atomically(folder: Path, write) -> Path:
    """Run ``write`` on a temporary sibling folder, then rename it to ``folder``."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.saving-", dir=folder.parent))
    try:
        write(staging)
        _swap_into_place(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def write_classifier_files(folder: Path, classifier: GPTClassifier, meta: ClassifierMeta) -> None:
    """Write adapter, head and metadata into an existing folder; non-finite weights are an error."""
    head = {k: v.detach().float().cpu().contiguous() for k, v in classifier.head.state_dict().items()}
    trainable = {n: p for n, p in classifier.named_parameters() if p.requires_grad}
    bad = [n for n, p in {**trainable, **{f"head.{k}": v for k, v in head.items()}}.items() if not torch.isfinite(p).all()]
    if bad:
        raise CheckpointError(f"refusing to save non-finite weights in {bad[:3]}; lower --lr or check the data")
    classifier.backbone.save_pretrained(folder / ADAPTER_DIR, safe_serialization=True)
    _write_head_and_meta(folder, classifier, meta)


def update_meta(folder: str | Path, **changes: Any) -> ClassifierMeta:
    """Change fields of a saved classifier's gptclf.json in place, leaving its tensors alone."""
    folder = Path(folder)
    meta = read_meta(folder)
    for name, value in changes.items():
        if name not in ClassifierMeta.__dataclass_fields__:
            raise TypeError(f"ClassifierMeta has no field {name!r}")
        setattr(meta, name, value)
    path = folder / META_FILE
    tmp = path.with_name(f".{META_FILE}.tmp")
    tmp.write_text(meta.to_json() + "\n")
    tmp.replace(path)
    return meta


def _swap_into_place(staging: Path, folder: Path) -> None:
    """Rename ``staging`` to ``folder``, keeping what else the old folder held (training checkpoints, logs).

    The other entries are hard-linked into ``staging`` first, so at every moment one complete copy
    of them exists on disk.
    """
    if not folder.exists():
        os.replace(staging, folder)
        return
    _link_other_entries(folder, staging)
    # NOTE: between the two renames the folder is briefly absent. If the process dies there, the
    # old copy survives under the .replaced- name, where resuming looks for checkpoints.
    retired = folder.parent / f".{folder.name}.replaced-{os.getpid()}"
    shutil.rmtree(retired, ignore_errors=True)
    os.replace(folder, retired)
    os.replace(staging, folder)
    shutil.rmtree(retired, ignore_errors=True)


CLASSIFIER_ENTRIES = (META_FILE, HEAD_FILE, ADAPTER_DIR)


def _link_other_entries(old: Path, staging: Path) -> None:
    for entry in old.iterdir():
        target = staging / entry.name
        if entry.name in CLASSIFIER_ENTRIES or target.exists():
            continue
        if entry.is_dir():
            shutil.copytree(entry, target, copy_function=os.link)
        else:
            os.link(entry, target)


def read_meta(folder: str | Path) -> ClassifierMeta:
    folder = Path(folder)
    path = folder / META_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder}: not a gptclf classifier folder ({META_FILE} is missing); pass the --output folder of `gptclf train`")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: invalid JSON ({err}); the classifier folder is damaged, retrain or restore it") from None
    known = set(ClassifierMeta.__dataclass_fields__)
    missing = [k for k in ("labels", "label_values", "base_model", "pooling", "max_length", "tokenizer", "lora") if k not in raw]
    if missing:
        raise CheckpointError(f"{path}: missing keys {missing}; the classifier folder is damaged, retrain or restore it")
    return ClassifierMeta(**{k: v for k, v in raw.items() if k in known})


def load_classifier(folder: str | Path, base_model: str | None = None) -> tuple[GPTClassifier, Backbone, ClassifierMeta]:
    """Rebuild a saved classifier on its base model, checking the fingerprint and every tensor name."""
    folder = Path(folder)
    meta = read_meta(folder)
    if meta.base_model.get("kind") == MERGED_KIND:
        return _load_merged(folder, meta, base_model)
    backbone = load_base_model(folder, meta, base_model)
    found = fingerprint(backbone.model)
    if found != meta.base_model["fingerprint"]:
        raise CheckpointError(
            f"{folder}: the base model {backbone.source.describe()} has fingerprint {found[:16]}…, but the classifier "
            f"was trained on one with fingerprint {meta.base_model['fingerprint'][:16]}…; pass the original "
            "base model with --base-model (Python: base_model=...)"
        )
    classifier = attach_saved_parts(folder, backbone, meta)
    return classifier, backbone, meta


def load_base_model(folder: str | Path, meta: ClassifierMeta, base_model: str | None = None) -> Backbone:
    """Load the recorded base model, or ``base_model`` when given, without checking its fingerprint.

    An exported classifier's base model is its own merged ``backbone/`` folder.
    """
    folder = Path(folder)
    if meta.base_model.get("kind") == MERGED_KIND:
        if base_model is not None:
            raise CheckpointError(f"{folder}: an exported classifier carries its own merged backbone; drop --base-model")
        backbone_dir = folder / meta.base_model.get("reference", BACKBONE_DIR)
        if not (backbone_dir / "config.json").is_file():
            raise CheckpointError(f"{backbone_dir}: config.json is missing; the exported classifier is incomplete, export it again")
        return load_backbone(ModelSource("folder", str(backbone_dir.resolve())))
    if base_model is not None:
        source = resolve_source(base_model)
    else:
        source = ModelSource(meta.base_model["kind"], meta.base_model["reference"])
    return load_backbone(source)


def attach_saved_parts(folder: str | Path, backbone: Backbone, meta: ClassifierMeta) -> GPTClassifier:
    """Restore the pad token, wrap the base model with the saved adapter (unless exported) and load the head."""
    folder = Path(folder)
    _restore_tokenizer(backbone.tokenizer, meta)
    if meta.base_model.get("kind") == MERGED_KIND:
        classifier = GPTClassifier(backbone.model, hidden_size_of(backbone.model), len(meta.labels), meta.pooling)
    else:
        classifier = _attach_adapter(folder, backbone.model, meta)
    _load_head(folder, classifier, len(meta.labels))
    classifier.eval()
    return classifier


def _load_merged(folder: Path, meta: ClassifierMeta, base_model: str | None) -> tuple[GPTClassifier, Backbone, ClassifierMeta]:
    """Load an exported classifier from its own merged backbone folder."""
    backbone = load_base_model(folder, meta, base_model)
    found = fingerprint(backbone.model)
    if found != meta.base_model["fingerprint"]:
        backbone_dir = folder / meta.base_model.get("reference", BACKBONE_DIR)
        raise CheckpointError(
            f"{backbone_dir}: the merged backbone has fingerprint {found[:16]}…, but {META_FILE} records "
            f"{meta.base_model['fingerprint'][:16]}…; the folder was changed after export, export it again"
        )
    classifier = attach_saved_parts(folder, backbone, meta)
    return classifier, backbone, meta


def _restore_tokenizer(tokenizer, meta: ClassifierMeta) -> None:
    pad = meta.tokenizer.get("pad_token")
    if pad is not None and tokenizer.pad_token != pad:
        tokenizer.pad_token = pad


def _attach_adapter(folder: Path, base: torch.nn.Module, meta: ClassifierMeta) -> GPTClassifier:
    from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict

    adapter_dir = folder / ADAPTER_DIR
    weights_path = adapter_dir / "adapter_model.safetensors"
    if not (adapter_dir / "adapter_config.json").is_file() or not weights_path.is_file():
        raise CheckpointError(f"{adapter_dir}: adapter_config.json or adapter_model.safetensors is missing; retrain or restore the folder")
    config = LoraConfig.from_pretrained(str(adapter_dir))
    config.inference_mode = True
    peft_model = wrap_with_lora(base, config)
    saved = _read_tensors(weights_path)
    expected = get_peft_model_state_dict(peft_model)
    _check_tensor_names(weights_path, saved, expected)
    set_peft_model_state_dict(peft_model, saved)
    return GPTClassifier(peft_model, hidden_size_of(base), len(meta.labels), meta.pooling)


def load_trainable_weights(folder: str | Path, classifier: GPTClassifier) -> None:
    """Copy the adapter and head tensors of a saved folder into a classifier built the same way."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    folder = Path(folder)
    weights_path = folder / ADAPTER_DIR / "adapter_model.safetensors"
    saved = _read_tensors(weights_path)
    _check_tensor_names(weights_path, saved, get_peft_model_state_dict(classifier.backbone))
    set_peft_model_state_dict(classifier.backbone, saved)
    _load_head(folder, classifier, classifier.head.out_features)


def _load_head(folder: Path, classifier: GPTClassifier, num_labels: int) -> None:
    path = folder / HEAD_FILE
    saved = _read_tensors(path)
    expected = classifier.head.state_dict()
    _check_tensor_names(path, saved, expected)
    for name, tensor in saved.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(
                f"{path}: tensor {name!r} has shape {tuple(tensor.shape)}, expected {tuple(expected[name].shape)} "
                f"for {num_labels} labels; the head does not match the label list in {META_FILE}"
            )
    classifier.head.load_state_dict(saved)


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: file is missing; the classifier folder is incomplete, retrain or restore it")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: cannot read safetensors file ({err}); retrain or restore it") from None


def _check_tensor_names(path: Path, saved: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensors {missing[:3]}{' …' if len(missing) > 3 else ''} ({len(missing)} in all)")
        if unexpected:
            parts.append(f"unexpected tensors {unexpected[:3]}{' …' if len(unexpected) > 3 else ''} ({len(unexpected)} in all)")
        raise CheckpointError(f"{path}: {'; '.join(parts)}; it was saved for a different model or is damaged")


def describe_base(backbone: Backbone) -> dict[str, str]:
    return {
        "kind": backbone.source.kind,
        "reference": backbone.source.reference,
        "fingerprint": fingerprint(backbone.model),
        "architecture": type(backbone.model).__name__,
    }
