import pytest
import torch

from gptclf.backbone import load_backbone, resolve_source
from gptclf.batching import collate
from gptclf.model import build_classifier
from gptclf.pooling import last_token_index, pool_last, pool_mean, position_ids_from_mask

from conftest import EOS


def test_last_token_index_right_and_left_padding():
    right = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 0, 1]])
    assert last_token_index(right).tolist() == [2, 0]
    assert last_token_index(left).tolist() == [3, 3]


def test_last_token_index_rejects_row_without_tokens():
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    with pytest.raises(ValueError, match=r"rows \[1\] have no real tokens"):
        last_token_index(mask)


def test_mean_pool_ignores_padding():
    hidden = torch.arange(12, dtype=torch.float32).reshape(1, 4, 3)
    mask = torch.tensor([[0, 1, 1, 0]])
    assert torch.equal(pool_mean(hidden, mask), hidden[:, 1:3].mean(dim=1))
    assert torch.equal(pool_last(hidden, mask), hidden[:, 2])


def test_position_ids_start_at_first_real_token():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 2, 2]]


def _classifier(folder, pooling):
    backbone = load_backbone(resolve_source(str(folder)))
    model = build_classifier(backbone.model, 3, pooling, 4, 8, 0.0, None, seed=0)
    # Non-zero LoRA B so the adapters take part in the check.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    return model.eval(), backbone.tokenizer


def _logits(model, ids_list, pad_id, side, extra=0):
    """Logits for a batch padded on ``side``, with ``extra`` more pad columns than needed."""
    batch = collate(ids_list, pad_id, padding_side=side)
    pads = torch.full((len(ids_list), extra), pad_id)
    zeros = torch.zeros((len(ids_list), extra), dtype=torch.long)
    if side == "right":
        ids = torch.cat([batch["input_ids"], pads], dim=1)
        mask = torch.cat([batch["attention_mask"], zeros], dim=1)
    else:
        ids = torch.cat([pads, batch["input_ids"]], dim=1)
        mask = torch.cat([zeros, batch["attention_mask"]], dim=1)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask)


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_logits_do_not_depend_on_padding(base_model, pooling):
    model, tokenizer = _classifier(base_model, pooling)
    pad = tokenizer.pad_token_id
    text = tokenizer("the film was good")["input_ids"]
    longer = [
        tokenizer("this movie was really very boring and the acting was poor")["input_ids"],
        tokenizer("i loved it .")["input_ids"],
    ]
    alone = _logits(model, [text], pad, "right")[0]
    for side in ("right", "left"):
        for extra in (0, 5):
            batched = _logits(model, [*longer, text], pad, side, extra)[-1]
            torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0, msg=f"{side} padding, {extra} extra pads")


def test_pad_equal_to_eos_inside_text(base_model):
    model, tokenizer = _classifier(base_model, "last")
    assert tokenizer.pad_token == EOS
    pad = tokenizer.pad_token_id
    inside = tokenizer(f"the film {EOS} was good")["input_ids"]
    ending = tokenizer(f"the film was good {EOS}")["input_ids"]
    assert pad in inside[:-1]
    assert ending[-1] == pad
    longer = tokenizer("this movie was really very boring and the acting was poor and dull")["input_ids"]
    for text in (inside, ending):
        alone = _logits(model, [text], pad, "right")[0]
        for side in ("right", "left"):
            batched = _logits(model, [longer, text], pad, side)[-1]
            torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)
    # A pad token inside the text is read as text, so cutting it off changes the logits.
    without = _logits(model, [tokenizer("the film was good")["input_ids"]], pad, "right")[0]
    ending_logits = _logits(model, [ending], pad, "right")[0]
    assert not torch.allclose(without, ending_logits, atol=1e-4)


def test_classifier_rejects_empty_row(base_model):
    model, tokenizer = _classifier(base_model, "last")
    batch = {"input_ids": torch.tensor([[3, 4], [1, 1]]), "attention_mask": torch.tensor([[1, 1], [0, 0]])}
    with pytest.raises(ValueError, match="no real tokens"):
        model(**batch)
