"""Fixtures for the data tests: small tracks, a fast fake text encoder, one prepared dataset."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from speedrun.data.prepare import prepare
from speedrun.data.shards import open_dataset
from speedrun.data.text import TextEncoder
from speedrun.tracks import Track, load_track


class HashEncoder(TextEncoder):
    """A deterministic stand-in encoder: one start token, then one hashed vector per word."""

    key = "minilm"
    id = "test:hash-encoder"
    revision = "1"
    dim = 8
    precision = "float32"

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self.calls = 0

    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls += 1
        emb = torch.zeros(len(captions), self.max_tokens, self.dim)
        mask = torch.zeros(len(captions), self.max_tokens, dtype=torch.bool)
        for i, caption in enumerate(captions):
            words = ["<s>", *caption.split()][: self.max_tokens]
            for j, word in enumerate(words):
                digest = hashlib.sha256(word.encode()).digest()[: self.dim]
                emb[i, j] = torch.tensor(list(digest), dtype=torch.float32) / 255
                mask[i, j] = True
        return emb, mask


def _make_track(base: str = "smoke", **data: object) -> Track:
    """``tracks/<base>.toml`` with some data fields replaced (no validation: tests only)."""
    track = load_track(base)
    return track.model_copy(update={"data": track.data.model_copy(update=data)})


# A T5Gemma encoder small enough for CPU tests (module config fields).
TINY_T5GEMMA = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 16,
    "query_pre_attn_scalar": 16,
    "sliding_window": 16,
}
SMALL = {"train_examples": 300, "validation_examples": 16, "reference_examples": 32}


@pytest.fixture(scope="session")
def make_track():
    """``make_track(base, **data_fields)``: a track with some data fields replaced."""
    return _make_track


@pytest.fixture(scope="session")
def hash_encoder():
    """The ``HashEncoder`` class: ``hash_encoder(max_tokens)`` is a fast fake text encoder."""
    return HashEncoder


@pytest.fixture(scope="session")
def tiny_t5gemma_config() -> dict[str, int]:
    return dict(TINY_T5GEMMA)


@pytest.fixture(scope="session")
def small_track() -> Track:
    return _make_track(**SMALL)


@pytest.fixture(scope="session")
def prepared_root(tmp_path_factory, small_track):
    """A prepared shapes dataset with 64-example shards (train has 5), shared by read-only tests."""
    root = tmp_path_factory.mktemp("prepared")
    encoder = HashEncoder(small_track.data.text_max_tokens)
    return prepare(small_track, root, progress=False, text_encoder=encoder, examples_per_shard=64)


@pytest.fixture(scope="session")
def prepared(prepared_root):
    return open_dataset(prepared_root)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
