"""Tiny GPT-2-style and Llama-style base models built in-process, so the suite runs offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

EOS = "<|endoftext|>"
WORDS = (
    "the a an this that it is was and but or not very really quite so too of to in on for with "
    "film movie story plot acting actors cast music ending script book food service room hotel staff "
    "good great wonderful excellent lovely fun brilliant charming delightful moving superb "
    "bad awful terrible boring dull poor weak horrible dreadful tedious mess waste "
    "i we you they he she liked loved hated enjoyed disliked watched found felt made "
    "one two three long short best worst more less than ever all time day night "
    ". , ! ? ' -"
).split()
POSITIVE = "good great wonderful excellent lovely fun brilliant charming delightful superb".split()
NEGATIVE = "bad awful terrible boring dull poor weak horrible dreadful tedious".split()


def make_tokenizer():
    """A word-level tokenizer with an EOS token and no pad token, like many decoders ship."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, EOS: 1}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token=EOS)


def make_base_model(kind: str, vocab_size: int, seed: int = 0):
    from transformers import GPT2Config, GPT2Model, LlamaConfig, LlamaModel

    torch.manual_seed(seed)
    if kind == "gpt2":
        config = GPT2Config(vocab_size=vocab_size, n_positions=128, n_embd=32, n_layer=2, n_head=2, bos_token_id=1, eos_token_id=1)
        return GPT2Model(config)
    if kind == "llama":
        config = LlamaConfig(
            vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1, eos_token_id=1,
        )
        return LlamaModel(config)
    raise ValueError(kind)


def save_base_model(folder: Path, kind: str, seed: int = 0) -> Path:
    tokenizer = make_tokenizer()
    model = make_base_model(kind, len(tokenizer), seed)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def base_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("base_models")
    return {kind: save_base_model(root / kind, kind) for kind in ("gpt2", "llama")}


@pytest.fixture(params=["gpt2", "llama"])
def arch(request) -> str:
    return request.param


@pytest.fixture
def base_model(base_models, arch) -> Path:
    return base_models[arch]


def sentiment_rows(n: int, seed: int = 0, labels=("negative", "positive")) -> list[tuple[str, str]]:
    """Toy reviews whose label is set by one sentiment word."""
    import random

    rng = random.Random(seed)
    subjects = ["the film", "this movie", "the story", "the acting", "the music", "the food", "the service", "the hotel room"]
    rows = []
    for i in range(n):
        positive = rng.random() < 0.5
        word = rng.choice(POSITIVE if positive else NEGATIVE)
        adverb = rng.choice(["", "very ", "really ", "quite ", "so "])
        tail = rng.choice(["", " , i felt", " and the cast", " ever", " - one of the best"])
        rows.append((f"{rng.choice(subjects)} was {adverb}{word}{tail} .", labels[int(positive)]))
    return rows


def write_tsv(path: Path, rows, header=("text", "label")) -> Path:
    lines = ["\t".join(header)] if header else []
    lines += [f"{t}\t{l}" for t, l in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def toy_data(tmp_path) -> tuple[Path, Path]:
    train = write_tsv(tmp_path / "train.tsv", sentiment_rows(96, seed=1))
    validation = write_tsv(tmp_path / "validation.tsv", sentiment_rows(32, seed=2))
    return train, validation
