import pytest
import torch
import torch.nn.functional as F

from gptclf.backbone import load_backbone, resolve_source
from gptclf.batching import collate
from gptclf.errors import ConfigError
from gptclf.model import build_classifier, check_trainable, find_lora_targets


def _build(folder, targets=None, dropout=0.0):
    backbone = load_backbone(resolve_source(str(folder)))
    model = build_classifier(backbone.model, 2, "last", 4, 8, dropout, targets, seed=0)
    return model, backbone.tokenizer


def _batch(tokenizer):
    texts = ["the film was good", "the food was awful and the service poor", "fun !"]
    return collate(tokenizer(texts)["input_ids"], tokenizer.pad_token_id)


def test_default_targets_per_architecture(base_models):
    gpt2 = load_backbone(resolve_source(str(base_models["gpt2"]))).model
    llama = load_backbone(resolve_source(str(base_models["llama"]))).model
    assert find_lora_targets(gpt2) == ["c_attn"]
    assert find_lora_targets(llama) == ["q_proj", "k_proj", "v_proj"]


def test_trainable_set_is_lora_and_head(base_model, arch):
    model, _ = _build(base_model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"head.weight", "head.bias"} <= trainable
    lora = trainable - {"head.weight", "head.bias"}
    assert lora, "no LoRA parameters train"
    assert all(".lora_A." in n or ".lora_B." in n for n in lora)
    per_layer = 1 if arch == "gpt2" else 3
    assert len(lora) == 2 * 2 * per_layer  # A and B, two layers
    count, total = check_trainable(model)
    assert count == sum(p.numel() for n, p in model.named_parameters() if n in trainable)
    assert total > count


def test_lora_is_noop_at_init(base_model):
    model, tokenizer = _build(base_model)
    model.eval()
    batch = _batch(tokenizer)
    with torch.no_grad():
        with_lora = model(**batch)
        with model.backbone.disable_adapter():
            without = model(**batch)
    torch.testing.assert_close(with_lora, without, atol=0, rtol=0)


def test_training_steps_change_lora_b_and_head_only(base_model):
    model, tokenizer = _build(base_model, dropout=0.1)
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    head_before = model.head.weight.detach().clone()
    b_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = _batch(tokenizer)
    model.train()
    for _ in range(3):
        loss = F.cross_entropy(model(**batch), torch.tensor([1, 0, 1]))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert not torch.equal(model.head.weight, head_before)
    for name, before in b_before.items():
        assert not torch.equal(dict(model.named_parameters())[name], before), f"{name} did not change"
    for name, p in model.named_parameters():
        if name in base_before:
            assert torch.equal(p, base_before[name]), f"base weight {name} changed"


def test_merged_equals_unmerged(base_model):
    model, tokenizer = _build(base_model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    model.eval()
    batch = _batch(tokenizer)
    with torch.no_grad():
        unmerged = model(**batch)
        model.backbone = model.backbone.merge_and_unload()
        merged = model(**batch)
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)


def test_targets_matching_nothing_rejected(base_model):
    with pytest.raises(ConfigError, match="--lora-targets 'nonexistent' matches no linear layer"):
        _build(base_model, targets=["nonexistent"])


def test_targets_naming_head_rejected(base_model):
    with pytest.raises(ConfigError, match="names the classification head"):
        _build(base_model, targets=["head"])


def test_explicit_targets_used(base_models):
    model, _ = _build(base_models["llama"], targets=["q_proj", "o_proj"])
    names = {n for n, p in model.named_parameters() if ".lora_A." in n}
    assert any(".o_proj." in n for n in names)
    assert not any(".k_proj." in n for n in names)
