"""2-D axial RoPE: tables and rotation against an independent complex-number reference."""

import math

import pytest
import torch

from speedrun.kernels.rope import apply_rope, rope_tables


def complex_reference(x: torch.Tensor, grid_h: int, grid_w: int, theta: float) -> torch.Tensor:
    """Rotate interleaved pairs as complex numbers z_i = x[2i] + i x[2i+1] times exp(i angle), in float64."""
    d = x.shape[-1]
    quarter = d // 4
    angles = torch.empty(grid_h * grid_w, d // 2, dtype=torch.float64)
    for n in range(grid_h * grid_w):
        row, col = divmod(n, grid_w)
        for j in range(quarter):
            omega = theta ** (-2 * j / (d // 2))
            angles[n, j] = row * omega
            angles[n, quarter + j] = col * omega
    z = torch.complex(x[..., 0::2].double(), x[..., 1::2].double())
    rotated = z * torch.polar(torch.ones_like(angles), angles)
    return torch.stack([rotated.real, rotated.imag], dim=-1).flatten(-2)


def test_tables_shape_dtype_and_row_major_order():
    cos, sin = rope_tables(3, 5, 16, 10000.0)
    assert cos.shape == sin.shape == (15, 8)
    assert cos.dtype == sin.dtype == torch.float32
    # token 7 is row 1, column 2: pair 0 (row axis, omega 1) angle 1; pair 4 (column axis, omega 1) angle 2
    assert cos[7, 0].item() == pytest.approx(math.cos(1.0), abs=1e-7)
    assert sin[7, 4].item() == pytest.approx(math.sin(2.0), abs=1e-7)
    # the second row-axis pair has omega = 10000 ** (-2/8) = 0.1
    assert sin[7, 1].item() == pytest.approx(math.sin(0.1), abs=1e-7)


@pytest.mark.parametrize("grid_h,grid_w,head_dim,theta", [(4, 4, 16, 10000.0), (3, 5, 32, 100.0), (2, 7, 8, 10000.0)])
def test_apply_rope_matches_complex_reference(grid_h, grid_w, head_dim, theta):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, grid_h * grid_w, head_dim, generator=gen)
    cos, sin = rope_tables(grid_h, grid_w, head_dim, theta)
    out = apply_rope(x, cos, sin)
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(out.double(), complex_reference(x, grid_h, grid_w, theta), atol=2e-6, rtol=0)


def test_per_sample_tables_equal_gathered_rows():
    gen = torch.Generator().manual_seed(1)
    cos, sin = rope_tables(4, 4, 16, 10000.0)
    index = torch.stack([torch.randperm(16, generator=gen)[:6] for _ in range(2)])  # (B=2, 6)
    x = torch.randn(2, 2, 6, 16, generator=gen)
    out = apply_rope(x, cos[index], sin[index])
    for b in range(2):
        expected = apply_rope(x[b : b + 1], cos[index[b]], sin[index[b]])
        torch.testing.assert_close(out[b : b + 1], expected, atol=0, rtol=0)


def test_bf16_input_keeps_dtype():
    x = torch.randn(1, 1, 4, 8).bfloat16()
    cos, sin = rope_tables(2, 2, 8, 10000.0)
    assert apply_rope(x, cos, sin).dtype == torch.bfloat16


def test_matches_diffusers_prx_rope():
    prx = pytest.importorskip("diffusers.models.transformers.transformer_prx")
    grid_h, grid_w, head_dim = 3, 4, 16
    ids = prx.get_image_ids(1, grid_h * 2, grid_w * 2, patch_size=2, device=torch.device("cpu"))
    freqs = prx.PRXEmbedND(dim=head_dim, theta=10000, axes_dim=[head_dim // 2, head_dim // 2])(ids)
    x = torch.randn(1, 2, grid_h * grid_w, head_dim, generator=torch.Generator().manual_seed(2))
    cos, sin = rope_tables(grid_h, grid_w, head_dim, 10000.0)
    torch.testing.assert_close(apply_rope(x, cos, sin), prx.apply_rope(x, freqs), atol=1e-6, rtol=0)
