"""flash_attention against F.scaled_dot_product_attention (fp32) with the same boolean key mask."""

import pytest
import torch
import torch.nn.functional as F

from speedrun.kernels.triton_attention import flash_attention

CUDA = torch.cuda.is_available()
# The interpreter's bf16 tl.dot is not trustworthy, so bf16 is checked on GPU only.
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if CUDA else [])
TOLERANCE = {
    torch.float32: dict(atol=1e-4, rtol=1e-4),
    torch.float16: dict(atol=5e-3, rtol=5e-3),
    torch.bfloat16: dict(atol=4e-2, rtol=4e-2),
}


def _inputs(batch, heads, image_tokens, text_tokens, text_lengths, head_dim, dtype, device):
    """Image queries laid out tokens-major (as the qkv projection leaves them), [text, image]
    keys/values, and a mask that keeps the first text_lengths[b] text tokens of sample b."""
    n_keys = text_tokens + image_tokens
    q = torch.randn(batch, image_tokens, heads, head_dim, device=device).to(dtype).transpose(1, 2)
    k = torch.randn(batch, heads, n_keys, head_dim, device=device).to(dtype)
    v = torch.randn(batch, heads, n_keys, head_dim, device=device).to(dtype)
    key_mask = torch.ones(batch, n_keys, dtype=torch.bool, device=device)
    for b, length in enumerate(text_lengths):
        key_mask[b, length:text_tokens] = False
    return [t.detach().requires_grad_() for t in (q, k, v)], key_mask


def _check(q, k, v, key_mask, loss=None):
    out = flash_attention(q, k, v, key_mask)
    assert out.shape == q.shape and out.dtype == q.dtype
    grad_out = torch.randn_like(out, dtype=torch.float32)
    grads = torch.autograd.grad((out.float() * grad_out).sum(), (q, k, v))

    leaves = [t.detach().float().requires_grad_() for t in (q, k, v)]
    mask = None if key_mask is None else key_mask[:, None, None, :]
    ref = F.scaled_dot_product_attention(*leaves, attn_mask=mask)
    ref_grads = torch.autograd.grad((ref * grad_out).sum(), leaves)

    tol = TOLERANCE[q.dtype]
    torch.testing.assert_close(out.float(), ref, **tol)
    for name, got, want in zip("qkv", grads, ref_grads):
        torch.testing.assert_close(got.float(), want, **tol, msg=f"grad {name}")


CASES = {
    # 9 image + 5 text tokens: every length is a partial tile; the two samples keep 5 and 2 text keys.
    "odd_lengths": dict(image_tokens=9, text_tokens=5, text_lengths=[5, 2]),
    # 17 fully padded text tokens in sample 1 fill the whole first key tile with masked keys;
    # 20 queries and 37 keys give several tiles with tails.
    "padded_text_tile": dict(image_tokens=20, text_tokens=17, text_lengths=[3, 0]),
    # Sample 0 keeps 3 of 40 text keys: with 16-key tiles the second tile is all padding between
    # two valid ones, so the backward's dQ partial sums must carry across a skipped tile.
    "padded_middle_tile": dict(image_tokens=11, text_tokens=40, text_lengths=[3, 33]),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("head_dim", [16, 32])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_sdpa(dtype, head_dim, case, device):
    torch.manual_seed(0)
    (q, k, v), key_mask = _inputs(2, 2, head_dim=head_dim, dtype=dtype, device=device, **CASES[case])
    _check(q, k, v, key_mask)


def test_padding_anywhere_in_the_keys(device):
    # The kernels skip key tiles that hold only padding; a mask outside the PRX layout (padding
    # also in the first tile and between image keys, several all-padding 16-key tiles apart) must
    # still give SDPA's result, whichever of those tiles a kernel skips or visits.
    torch.manual_seed(5)
    (q, k, v), key_mask = _inputs(2, 2, 48, 32, [32, 32], 16, torch.float32, device)
    key_mask[0, 0:16] = False
    key_mask[0, 30:50] = False
    key_mask[0, 64:80] = False
    key_mask[1, 3:48] = False
    key_mask[1, 70:] = False
    _check(q, k, v, key_mask)


def test_head_dim_64(device):
    torch.manual_seed(1)
    (q, k, v), key_mask = _inputs(1, 2, 9, 5, [4], 64, torch.float16, device)
    _check(q, k, v, key_mask)


def test_grads_are_deterministic(device):
    torch.manual_seed(4)
    (q, k, v), key_mask = _inputs(2, 2, 20, 17, [3, 0], 16, torch.float32, device)
    grad_out = torch.randn(q.shape, device=device)
    first, second = (
        torch.autograd.grad(flash_attention(q, k, v, key_mask), (q, k, v), grad_out) for _ in range(2)
    )
    for name, a, b in zip("qkv", first, second):
        assert torch.equal(a, b), f"grad {name} differs between two identical calls"


def test_without_mask_and_broadcast_output_grad(device):
    torch.manual_seed(2)
    (q, k, v), _ = _inputs(1, 1, 9, 5, [5], 16, torch.float32, device)
    out = flash_attention(q, k, v, None)
    # sum() hands backward a stride-0 expanded gradient.
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    ref = F.scaled_dot_product_attention(*leaves)
    ref_grads = torch.autograd.grad(ref.sum(), leaves)
    torch.testing.assert_close(out, ref, **TOLERANCE[torch.float32])
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, **TOLERANCE[torch.float32])


def test_sample_without_valid_keys_gives_zeros(device):
    # Not reachable from image queries, but the contract matches the torch path: zeros, not NaN.
    torch.manual_seed(3)
    (q, k, v), key_mask = _inputs(2, 1, 9, 5, [5, 5], 16, torch.float32, device)
    key_mask[1] = False
    out = flash_attention(q, k, v, key_mask)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    for grad in grads:
        assert torch.equal(grad[1], torch.zeros_like(grad[1]))
    ref = F.scaled_dot_product_attention(q[:1], k[:1], v[:1], attn_mask=key_mask[:1, None, None, :])
    torch.testing.assert_close(out[:1], ref, **TOLERANCE[torch.float32])


def test_rejects_bad_mask(device):
    (q, k, v), key_mask = _inputs(1, 1, 9, 5, [5], 16, torch.float32, device)
    with pytest.raises(ValueError, match="key_mask"):
        flash_attention(q, k, v, key_mask[:, :-1])
