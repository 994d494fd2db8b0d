"""The classifier: frozen decoder with LoRA on Q, K, V -> pooling over real tokens -> linear head.

Shape letters: B batch, T seq_len, H hidden, C classes.
"""

from __future__ import annotations

import inspect
import logging
import re
import warnings

import torch
from torch import nn

from .errors import ConfigError
from .pooling import POOLERS, position_ids_from_mask

log = logging.getLogger(__name__)

# Attention projections to adapt, tried in order; the first set whose names all occur wins.
QKV_TARGETS = (
    ("q_proj", "k_proj", "v_proj"),  # Llama, Mistral, Qwen, SmolLM2, OPT
    ("c_attn",),  # GPT-2: one fused Conv1D for Q, K and V
    ("query_key_value",),  # GPT-NeoX, Falcon, Bloom
    ("qkv_proj",),  # Phi-3
    ("Wqkv",),  # MPT
)
HEAD_NAME = "head"


class GPTClassifier(nn.Module):
    """Decoder backbone (optionally LoRA-wrapped), padding-aware pooling and a linear head."""

    def __init__(self, backbone: nn.Module, hidden_size: int, num_labels: int, pooling: str = "last"):
        super().__init__()
        if pooling not in POOLERS:
            raise ValueError(f"pooling must be one of {sorted(POOLERS)}, got {pooling!r}")
        self.backbone = backbone
        self.pooling = pooling
        self.head = nn.Linear(hidden_size, num_labels)
        self._takes_position_ids = "position_ids" in inspect.signature(_base_model(backbone).forward).parameters

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled hidden state per row, (B, H), in the backbone's compute dtype."""
        extra = {}
        if self._takes_position_ids:
            # Absolute position embeddings (GPT-2) would otherwise shift under left padding.
            extra["position_ids"] = position_ids_from_mask(attention_mask)
        output = self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **extra)
        hidden = output.last_hidden_state  # (B, T, H)
        return POOLERS[self.pooling](hidden, attention_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Return logits, (B, C), always in fp32."""
        pooled = self.pooled(input_ids, attention_mask)
        with torch.autocast(device_type=pooled.device.type, enabled=False):
            return self.head(pooled.float())


def _base_model(backbone: nn.Module) -> nn.Module:
    get_base = getattr(backbone, "get_base_model", None)
    return get_base() if get_base else backbone


def hidden_size_of(model: nn.Module) -> int:
    config = model.config
    for name in ("hidden_size", "n_embd", "d_model"):
        if getattr(config, name, None):
            return int(getattr(config, name))
    raise ConfigError([f"cannot find the hidden size in the {type(config).__name__} of the base model"])


def _adaptable_modules(model: nn.Module) -> dict[str, nn.Module]:
    from transformers.pytorch_utils import Conv1D

    return {name: m for name, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D))}


def find_lora_targets(model: nn.Module, requested: list[str] | None = None) -> list[str]:
    """Return the module names to wrap with LoRA, checked against the model.

    A ``requested`` name matches a module whose dotted name ends with it. Each must match at
    least one linear layer, and none may name the classification head.
    """
    modules = _adaptable_modules(model)
    suffixes = {name.rsplit(".", 1)[-1] for name in modules}
    if requested:
        targets = [t.strip() for t in requested if t.strip()]
        problems = []
        for target in targets:
            if target == HEAD_NAME or target.startswith(HEAD_NAME + "."):
                problems.append(f"--lora-targets {target!r} names the classification head, which is trained in full")
            elif not any(name == target or name.endswith("." + target) for name in modules):
                problems.append(
                    f"--lora-targets {target!r} matches no linear layer of the base model; "
                    f"linear layer names are {sorted(suffixes)}"
                )
        if problems:
            raise ConfigError(problems)
        return targets
    for candidate in QKV_TARGETS:
        if all(name in suffixes for name in candidate):
            return list(candidate)
    raise ConfigError(
        [
            f"cannot find the attention Q/K/V projections of {type(model).__name__}; pass --lora-targets "
            f"with some of its linear layer names: {sorted(suffixes)}"
        ]
    )


def add_lora(
    model: nn.Module, targets: list[str], r: int, alpha: float, dropout: float, top_layers: int | None = None
) -> nn.Module:
    """Wrap ``targets`` with PEFT LoRA adapters; the update B @ A is scaled by alpha / r.

    With ``top_layers``, only the last N decoder layers get adapters, so backward stops there.
    """
    from peft import LoraConfig
    from transformers.pytorch_utils import Conv1D

    modules = _adaptable_modules(model)
    # GPT-2's Conv1D stores its weight as (in, out), the transpose of nn.Linear.
    fan_in_fan_out = any(
        isinstance(m, Conv1D) for name, m in modules.items() if any(name.endswith(t) for t in targets)
    )
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        fan_in_fan_out=fan_in_fan_out,
        bias="none",
        **_layer_selection(modules, targets, top_layers),
    )
    return wrap_with_lora(model, config)


def _layer_selection(modules: dict[str, nn.Module], targets: list[str], top_layers: int | None) -> dict:
    """PEFT arguments that restrict LoRA to the top N layers, found from the module names."""
    if top_layers is None:
        return {}
    # Target names look like "layers.12.self_attn.q_proj" (Llama) or "h.3.attn.c_attn" (GPT-2):
    # the part before the first number is the layer list, the number the layer index.
    pattern, indices = None, set()
    for name in modules:
        if not any(name == t or name.endswith("." + t) for t in targets):
            continue
        match = re.search(r"(?:^|\.)([A-Za-z_]+)\.(\d+)\.", name)
        if match:
            pattern = match.group(1)
            indices.add(int(match.group(2)))
    if pattern is None:
        raise ConfigError(["--lora-layers: cannot find numbered decoder layers around the LoRA targets"])
    count = max(indices) + 1
    if top_layers > count:
        raise ConfigError([f"--lora-layers {top_layers} is more than the {count} layers of the base model"])
    return {"layers_to_transform": list(range(count - top_layers, count)), "layers_pattern": pattern}


def wrap_with_lora(model: nn.Module, config) -> nn.Module:
    """Apply a PEFT ``LoraConfig`` to a model."""
    from peft import get_peft_model

    with warnings.catch_warnings():
        # PEFT 0.21 calls a transformers 5 method that is deprecated; nothing for users to act on.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)


def build_classifier(
    base: nn.Module,
    num_labels: int,
    pooling: str,
    lora_r: int,
    lora_alpha: float,
    lora_dropout: float,
    lora_targets: list[str] | None,
    seed: int,
    lora_layers: int | None = None,
) -> GPTClassifier:
    """Add LoRA to a frozen base model and put a freshly initialised head on top."""
    base.requires_grad_(False)
    targets = find_lora_targets(base, lora_targets)
    hidden = hidden_size_of(base)
    # The seed covers both the LoRA A initialisation and the head.
    torch.manual_seed(seed)
    backbone = add_lora(base, targets, lora_r, lora_alpha, lora_dropout, lora_layers)
    classifier = GPTClassifier(backbone, hidden, num_labels, pooling)
    check_trainable(classifier)
    return classifier


def enable_gradient_checkpointing(base: nn.Module) -> None:
    """Recompute activations in backward, non-reentrant so gradients still reach the LoRA matrices.

    Reentrant checkpointing drops gradients of a block whose inputs do not require grad, which
    is every block of a frozen backbone.
    """
    options = {"use_reentrant": False}
    # transformers 5 renamed the method and its argument; older releases have only the old names.
    if hasattr(base, "activation_checkpointing_enable"):
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)


def check_trainable(classifier: GPTClassifier) -> tuple[int, int]:
    """Assert that exactly the LoRA A/B matrices and the head train; return (trainable, total) counts."""
    wrong = [
        name
        for name, p in classifier.named_parameters()
        if p.requires_grad and not (name.startswith(HEAD_NAME + ".") or ".lora_A." in name or ".lora_B." in name)
    ]
    if wrong:
        raise RuntimeError(f"parameters outside LoRA and the head would train: {wrong[:5]}")
    trainable = sum(p.numel() for p in classifier.parameters() if p.requires_grad)
    total = sum(p.numel() for p in classifier.parameters())
    return trainable, total


def lora_state(classifier: GPTClassifier) -> dict[str, torch.Tensor]:
    """LoRA A/B tensors under PEFT's saved names."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(classifier.backbone)
