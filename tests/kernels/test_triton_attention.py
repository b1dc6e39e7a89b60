"""flash_attention against F.scaled_dot_product_attention (fp32) with the same boolean key mask."""

import pytest
import torch
import torch.nn.functional as F
from attention_helpers import CASES, DTYPES, TOLERANCE, attention_inputs, check_against_sdpa

from speedrun.kernels.triton_attention import flash_attention


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("head_dim", [16, 32])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_sdpa(dtype, head_dim, case, device):
    torch.manual_seed(0)
    (q, k, v), key_mask = attention_inputs(2, 2, head_dim=head_dim, dtype=dtype, device=device, **CASES[case])
    check_against_sdpa(flash_attention, q, k, v, key_mask)


def test_padding_anywhere_in_the_keys(device):
    # The kernels skip key tiles that hold only padding; a mask outside the PRX layout (padding
    # also in the first tile and between image keys, several all-padding 16-key tiles apart) must
    # still give SDPA's result, whichever of those tiles a kernel skips or visits.
    torch.manual_seed(5)
    (q, k, v), key_mask = attention_inputs(2, 2, 48, 32, [32, 32], 16, torch.float32, device)
    key_mask[0, 0:16] = False
    key_mask[0, 30:50] = False
    key_mask[0, 64:80] = False
    key_mask[1, 3:48] = False
    key_mask[1, 70:] = False
    check_against_sdpa(flash_attention, q, k, v, key_mask)


def test_head_dim_64(device):
    torch.manual_seed(1)
    (q, k, v), key_mask = attention_inputs(1, 2, 9, 5, [4], 64, torch.float16, device)
    check_against_sdpa(flash_attention, q, k, v, key_mask)


def test_grads_are_deterministic(device):
    torch.manual_seed(4)
    (q, k, v), key_mask = attention_inputs(2, 2, 20, 17, [3, 0], 16, torch.float32, device)
    grad_out = torch.randn(q.shape, device=device)
    first, second = (
        torch.autograd.grad(flash_attention(q, k, v, key_mask), (q, k, v), grad_out) for _ in range(2)
    )
    for name, a, b in zip("qkv", first, second):
        assert torch.equal(a, b), f"grad {name} differs between two identical calls"


def test_without_mask_and_broadcast_output_grad(device):
    torch.manual_seed(2)
    (q, k, v), _ = attention_inputs(1, 1, 9, 5, [5], 16, torch.float32, device)
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
    (q, k, v), key_mask = attention_inputs(2, 1, 9, 5, [5, 5], 16, torch.float32, device)
    key_mask[1] = False
    out = flash_attention(q, k, v, key_mask)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    for grad in grads:
        assert torch.equal(grad[1], torch.zeros_like(grad[1]))
    ref = F.scaled_dot_product_attention(q[:1], k[:1], v[:1], attn_mask=key_mask[:1, None, None, :])
    torch.testing.assert_close(out[:1], ref, **TOLERANCE[torch.float32])


def test_rejects_bad_mask(device):
    (q, k, v), key_mask = attention_inputs(1, 1, 9, 5, [5], 16, torch.float32, device)
    with pytest.raises(ValueError, match="key_mask"):
        flash_attention(q, k, v, key_mask[:, :-1])
