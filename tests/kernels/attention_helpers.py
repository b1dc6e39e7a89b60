"""Inputs, cases and the SDPA reference check shared by the flash-attention tests."""

from typing import Callable

import torch
import torch.nn.functional as F

CUDA = torch.cuda.is_available()
# The interpreter's bf16 tl.dot is not trustworthy, so bf16 is checked on GPU only.
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if CUDA else [])
TOLERANCE = {
    torch.float32: dict(atol=1e-4, rtol=1e-4),
    torch.float16: dict(atol=5e-3, rtol=5e-3),
    torch.bfloat16: dict(atol=4e-2, rtol=4e-2),
}


def attention_inputs(batch, heads, image_tokens, text_tokens, text_lengths, head_dim, dtype, device):
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


def check_against_sdpa(attention: Callable, q, k, v, key_mask) -> None:
    """``attention``'s output and q, k, v grads equal SDPA's in fp32 with the same boolean mask."""
    out = attention(q, k, v, key_mask)
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
