"""Reduce a padded batch of hidden states to one vector per row, reading only real tokens.

Real tokens are found from the attention mask, never from ``input_ids == pad_token_id``: the pad
token is often the EOS token, which can also occur inside real text. Both functions work for
left and right padding. Shape letters: B batch, T seq_len, H hidden.
"""

from __future__ import annotations

import torch


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Number real tokens 0, 1, 2, ... so left padding does not shift positions.

    Pad positions get 0; their outputs are never read.
    """
    positions = attention_mask.long().cumsum(dim=-1) - 1  # (B, T)
    return positions.clamp(min=0)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token; a row without real tokens is an error.

    Taking the max over ``position * mask`` finds the last 1 whatever the padding side: with left
    padding [0, 0, 1, 1] gives 3, with right padding [1, 1, 0, 0] gives 1.
    """
    mask = attention_mask.bool()
    empty = ~mask.any(dim=-1)
    if bool(empty.any()):
        rows = empty.nonzero().flatten().tolist()
        raise ValueError(f"rows {rows} have no real tokens in the attention mask; every text needs at least one token")
    positions = torch.arange(mask.shape[-1], device=mask.device)  # (T,)
    return (positions * mask).argmax(dim=-1)  # (B,)


def pool_last(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Hidden state of each row's last real token."""
    index = last_token_index(attention_mask)  # (B,)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return hidden[rows, index]  # (B, H)


def pool_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the hidden states of each row's real tokens."""
    last_token_index(attention_mask)  # raises on rows without real tokens
    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    total = (hidden * weights).sum(dim=1)  # (B, H)
    return total / weights.sum(dim=1)


POOLERS = {"last": pool_last, "mean": pool_mean}
