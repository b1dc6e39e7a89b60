"""fused_qk_norm_rope against the torch path: fp32 RMSNorm then speedrun.kernels.rope.apply_rope."""

import pytest
import torch

from speedrun.kernels.dispatch import rms_norm
from speedrun.kernels.rope import apply_rope, rope_tables
from speedrun.kernels.triton_rope import fused_qk_norm_rope

CUDA = torch.cuda.is_available()
# The interpreter's bf16 arithmetic is not trustworthy, so bf16 is checked on GPU only.
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if CUDA else [])
TOLERANCE = {
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.float16: dict(atol=3e-3, rtol=3e-3),
    torch.bfloat16: dict(atol=3e-2, rtol=3e-2),
}
EPS = 1e-6


def _qk(batch, heads, tokens, head_dim, dtype, device):
    """q and k as strided views of one (B, N, 3, H, D) projection output, as the block makes them."""
    qkv = torch.randn(batch, tokens, 3, heads, head_dim, device=device).to(dtype)
    q = qkv[:, :, 0].transpose(1, 2).detach().requires_grad_()
    k = qkv[:, :, 1].transpose(1, 2).detach().requires_grad_()
    return q, k


def _tables(batch, tokens, head_dim, batched, device):
    """(N, D/2) tables of a grid, or (B, N, D/2) rows of a larger grid gathered per sample, as
    token routing does."""
    if not batched:
        side = int(tokens**0.5)
        assert side * side == tokens
        return rope_tables(side, side, head_dim, 10000.0, device=device)
    cos, sin = rope_tables(5, 5, head_dim, 10000.0, device=device)
    keep = torch.stack([torch.randperm(25, device=device)[:tokens] for _ in range(batch)])
    return cos[keep], sin[keep]


def _check(q, k, cos, sin):
    head_dim = q.shape[-1]
    q_weight = (1 + 0.1 * torch.randn(head_dim, device=q.device)).requires_grad_()
    k_weight = (1 + 0.1 * torch.randn(head_dim, device=q.device)).requires_grad_()
    q_out, k_out = fused_qk_norm_rope(q, k, q_weight, k_weight, cos, sin, EPS)
    assert q_out.shape == q.shape and q_out.dtype == q.dtype and k_out.dtype == k.dtype
    grad_q, grad_k = torch.randn_like(q_out), torch.randn_like(k_out)
    grads = torch.autograd.grad(
        (q_out.float() * grad_q.float()).sum() + (k_out.float() * grad_k.float()).sum(),
        (q, k, q_weight, k_weight),
    )

    leaves = [t.detach().float().requires_grad_() for t in (q, k, q_weight, k_weight)]
    q32, k32, qw32, kw32 = leaves
    ref_q = apply_rope(rms_norm(q32, qw32, EPS), cos, sin)
    ref_k = apply_rope(rms_norm(k32, kw32, EPS), cos, sin)
    ref_grads = torch.autograd.grad(
        (ref_q * grad_q.float()).sum() + (ref_k * grad_k.float()).sum(), leaves
    )

    tol = TOLERANCE[q.dtype]
    torch.testing.assert_close(q_out.float(), ref_q, **tol)
    torch.testing.assert_close(k_out.float(), ref_k, **tol)
    for name, got, want in zip(("q", "k", "q_weight", "k_weight"), grads, ref_grads):
        # Weight grads sum B*H*N rounded terms; scale the tolerance by their typical size.
        scale = want.abs().mean().item() if name.endswith("weight") else 1.0
        torch.testing.assert_close(
            got.float(), want, atol=tol["atol"] * max(scale, 1.0), rtol=tol["rtol"], msg=name
        )


@pytest.mark.parametrize("batched_tables", [False, True], ids=["shared_tables", "per_sample_tables"])
@pytest.mark.parametrize("head_dim", [16, 32])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_torch_path(dtype, head_dim, batched_tables, device):
    torch.manual_seed(0)
    q, k = _qk(2, 2, 9, head_dim, dtype, device)
    cos, sin = _tables(2, 9, head_dim, batched_tables, device)
    _check(q, k, cos, sin)


def test_head_dim_64_contiguous(device):
    torch.manual_seed(1)
    q = torch.randn(1, 2, 16, 64, device=device, dtype=torch.float16, requires_grad=True)
    k = torch.randn(1, 2, 16, 64, device=device, dtype=torch.float16, requires_grad=True)
    _check(q, k, *_tables(1, 16, 64, False, device))


def test_several_token_blocks_with_tail(device):
    # 300 tokens at D=16 span two row blocks, the second partial, for every (batch, head).
    torch.manual_seed(2)
    q, k = _qk(2, 1, 300, 16, torch.float32, device)
    angles = torch.rand(300, 8, device=device) * 6.0
    _check(q, k, angles.cos(), angles.sin())


def test_rejects_mismatched_tables(device):
    q, k = _qk(1, 1, 9, 16, torch.float32, device)
    weight = torch.ones(16, device=device)
    cos, sin = rope_tables(3, 3, 32, 10000.0, device=device)
    with pytest.raises(ValueError, match="cos and sin"):
        fused_qk_norm_rope(q, k, weight, weight, cos, sin, EPS)
