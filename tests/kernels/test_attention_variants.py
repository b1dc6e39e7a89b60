"""The backward candidates in benchmarks/attention_variants/ against SDPA, as the project's kernel is
tested: a candidate timed on a GPU must first compute the same gradients.

In the interpreter every config is one 16x16 tile, so small_tiles runs the project's kernel there
and only its wiring is checked; its own tiles are compiled for sm_90 by test_kernel_resources.py
and run by these tests on a GPU."""

import sys
from pathlib import Path

import pytest
import torch
from attention_helpers import CASES, TOLERANCE, attention_inputs, check_against_sdpa

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
VARIANTS = BENCHMARKS / "attention_variants"
FILES = sorted(VARIANTS.glob("*.py"))
# The candidates are loaded as bench_kernels.py loads them, with its folder importable as when it runs.
sys.path.insert(0, str(BENCHMARKS))
from bench_kernels import load_attention_module as _load  # noqa: E402


def test_there_are_candidates():
    assert {p.stem for p in FILES} >= {"key_tile_grid", "small_tiles"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_matches_sdpa(path, case, dtype, device):
    torch.manual_seed(0)
    (q, k, v), key_mask = attention_inputs(2, 2, head_dim=16, dtype=dtype, device=device, **CASES[case])
    check_against_sdpa(_load(path).flash_attention, q, k, v, key_mask)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_padding_anywhere_and_a_sample_without_keys(path, device):
    flash_attention = _load(path).flash_attention
    torch.manual_seed(5)
    (q, k, v), key_mask = attention_inputs(3, 2, 48, 32, [32, 32, 32], 16, torch.float32, device)
    key_mask[0, 0:16] = False
    key_mask[0, 30:50] = False
    key_mask[0, 64:80] = False
    key_mask[1, 3:48] = False
    key_mask[1, 70:] = False
    check_against_sdpa(flash_attention, q[:2], k[:2], v[:2], key_mask[:2])
    # Every key of sample 2 padded: zeros and zero grads, as the project's kernel gives.
    key_mask[2] = False
    out = flash_attention(q, k, v, key_mask)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    assert torch.equal(out[2], torch.zeros_like(out[2]))
    for name, grad in zip("qkv", grads):
        assert torch.equal(grad[2], torch.zeros_like(grad[2])), f"grad {name}"
    torch.testing.assert_close(out[:2], flash_attention(q[:2], k[:2], v[:2], key_mask[:2]), **TOLERANCE[torch.float32])


def test_candidates_leave_the_projects_module_alone():
    """small_tiles swaps the backward kernel in its private copy, never in speedrun's module."""
    from speedrun.kernels import triton_attention

    before = triton_attention._attn_bwd_kernel
    for path in FILES:
        _load(path)
    assert triton_attention._attn_bwd_kernel is before
    assert _load(VARIANTS / "small_tiles.py")._copy._attn_bwd_kernel is not before
