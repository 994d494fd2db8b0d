"""Tokenise once, group rows of similar length into batches, and pad each batch only to its own max."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

# A window of this many batches is sorted by length before it is cut into batches. Larger windows
# waste less padding but make batch order less random.
GROUP_WINDOW_BATCHES = 64


@dataclass
class Encoded:
    """Token ids of a set of texts, unpadded."""

    ids: list[list[int]]
    truncated: int
    """How many texts were cut to max_length."""

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))


def encode(tokenizer, texts: Sequence[str], max_length: int) -> Encoded:
    """Tokenise texts without padding; count the ones longer than ``max_length`` tokens."""
    ids = tokenizer(list(texts), add_special_tokens=True, truncation=False)["input_ids"]
    truncated = sum(len(x) > max_length for x in ids)
    ids = [x[:max_length] for x in ids]
    empty = [i for i, x in enumerate(ids) if not x]
    if empty:
        raise ValueError(f"texts at positions {empty[:5]} produce no tokens; remove them or check the tokenizer")
    return Encoded(ids=ids, truncated=truncated)


def length_grouped_batches(lengths: np.ndarray, batch_size: int, generator: np.random.Generator) -> list[np.ndarray]:
    """Shuffle rows, sort each window of rows by length, cut into batches and shuffle the batches.

    Rows of similar length share a batch, so padding is small while batch order stays random.
    """
    order = generator.permutation(len(lengths))
    window = batch_size * GROUP_WINDOW_BATCHES
    batches = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in generator.permutation(len(batches))]


def sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Cut rows sorted by length into batches, for scoring where order does not matter."""
    order = np.argsort(lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def collate(ids: Sequence[Sequence[int]], pad_token_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Pad token id lists to the longest one in the batch."""
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_token_id, dtype=torch.long)  # (batch, seq_len)
    attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, tokens in enumerate(ids):
        n = len(tokens)
        span = slice(0, n) if padding_side == "right" else slice(width - n, width)
        input_ids[row, span] = torch.as_tensor(tokens, dtype=torch.long)
        attention_mask[row, span] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def iterate_batches(encoded: Encoded, batches: Sequence[np.ndarray], pad_token_id: int) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
    for rows in batches:
        yield rows, collate([encoded.ids[i] for i in rows], pad_token_id)
