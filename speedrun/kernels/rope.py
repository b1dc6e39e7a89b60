"""Reference 2-D axial RoPE for image tokens (the Triton kernel must match it), as diffusers' ``PRXEmbedND``
with ``axes_dim=[head_dim // 2] * 2``: token ``n`` of a row-major grid sits at row ``n // grid_w``, column
``n % grid_w``; rotation pairs ``0 .. head_dim//4 - 1`` turn by the row, the rest by the column, pair ``j``
of an axis at ``theta ** (-2 j / (head_dim // 2))`` rad per token; pair ``i`` is features ``(2i, 2i + 1)``.
Text tokens carry no position."""

from __future__ import annotations

import torch


def rope_tables(
    grid_h: int, grid_w: int, head_dim: int, theta: float, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)``, each ``(grid_h * grid_w, head_dim // 2)`` float32, row-major over tokens; angles in
    float64 rounded once, as diffusers does, so the tables match it bit for bit."""
    if head_dim % 4:
        raise ValueError(f"head_dim must be a multiple of 4 for 2-D RoPE, got {head_dim}")
    axis_dim = head_dim // 2  # features per axis; axis_dim // 2 rotation pairs per axis
    omega = theta ** (-torch.arange(0, axis_dim, 2, dtype=torch.float64, device=device) / axis_dim)
    rows = torch.arange(grid_h, dtype=torch.float64, device=device).repeat_interleave(grid_w)
    cols = torch.arange(grid_w, dtype=torch.float64, device=device).repeat(grid_h)
    angles = torch.cat([rows[:, None] * omega, cols[:, None] * omega], dim=1)  # (N, head_dim // 2) rad
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of ``x`` (B, H, N, D) by tables (N, D // 2), or (B, N, D // 2) per
    sample under token routing: ``out[2i] = cos_i x[2i] - sin_i x[2i+1]``,
    ``out[2i+1] = sin_i x[2i] + cos_i x[2i+1]``, in float32, returned in ``x.dtype``."""
    if cos.dim() == 3:  # per-sample tables broadcast over heads
        cos, sin = cos[:, None], sin[:, None]
    pairs = x.float().unflatten(-1, (-1, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((cos * even - sin * odd, sin * even + cos * odd), dim=-1)
    return rotated.flatten(-2).to(x.dtype)
