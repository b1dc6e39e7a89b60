"""Reference 2-D axial rotary position embedding (RoPE) for image tokens.

This file is THE reference for the positional convention of the PRX denoiser. The fused Triton kernel
(``speedrun.kernels.triton_rope``) must reproduce :func:`apply_rope` with exactly the same tables,
pairing and signature; its tests compare against this module.

Convention (identical to diffusers' ``PRXEmbedND`` with ``axes_dim=[head_dim // 2, head_dim // 2]``):

* Tokens are the image patches of a ``grid_h x grid_w`` grid in row-major order: token ``n`` sits at
  row ``n // grid_w`` and column ``n % grid_w``.
* A head of ``head_dim`` features holds ``head_dim // 2`` rotation pairs. Pairs ``0 .. head_dim//4 - 1``
  rotate by the row index, pairs ``head_dim//4 .. head_dim//2 - 1`` by the column index. Within each
  axis, pair ``j`` has frequency ``omega_j = theta ** (-2 j / (head_dim // 2))`` radians per token.
* Pairing is interleaved: pair ``i`` is features ``(2i, 2i + 1)``, rotated as
  ``out[2i] = cos_i x[2i] - sin_i x[2i+1]`` and ``out[2i+1] = sin_i x[2i] + cos_i x[2i+1]``.
* Text tokens carry no position.
"""

from __future__ import annotations

import torch


def rope_tables(
    grid_h: int, grid_w: int, head_dim: int, theta: float, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine and sine tables for every token of a ``grid_h x grid_w`` grid.

    Args:
        grid_h: token rows.
        grid_w: token columns.
        head_dim: features per attention head; a multiple of 4.
        theta: RoPE base (10000 in PRX).
        device: where the tables live.

    Returns:
        ``(cos, sin)``, each ``(grid_h * grid_w, head_dim // 2)`` float32, row-major over tokens.
        Angles are computed in float64 and rounded once, as diffusers does, so the tables match it bit for bit.
    """
    if head_dim % 4:
        raise ValueError(f"head_dim must be a multiple of 4 for 2-D RoPE, got {head_dim}")
    axis_dim = head_dim // 2  # features per axis; axis_dim // 2 rotation pairs per axis
    omega = theta ** (-torch.arange(0, axis_dim, 2, dtype=torch.float64, device=device) / axis_dim)
    rows = torch.arange(grid_h, dtype=torch.float64, device=device).repeat_interleave(grid_w)
    cols = torch.arange(grid_w, dtype=torch.float64, device=device).repeat(grid_h)
    angles = torch.cat([rows[:, None] * omega, cols[:, None] * omega], dim=1)  # (N, head_dim // 2) rad
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved feature pairs of ``x`` by the given angles (the reference implementation).

    The Triton kernel in ``speedrun.kernels.triton_rope`` must match this function: same signature,
    same interleaved pairing, same tables (see the module docstring).

    Args:
        x: ``(B, H, N, D)`` queries or keys, any float dtype.
        cos: ``(N, D // 2)`` shared by the batch, or ``(B, N, D // 2)`` per sample (token routing
            gathers rows of the full-grid table per sample).
        sin: same shape as ``cos``.

    Returns:
        ``(B, H, N, D)`` in ``x.dtype``; the rotation itself is computed in float32.
    """
    if cos.dim() == 3:  # per-sample tables broadcast over heads
        cos, sin = cos[:, None], sin[:, None]
    pairs = x.float().unflatten(-1, (-1, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((cos * even - sin * odd, sin * even + cos * odd), dim=-1)
    return rotated.flatten(-2).to(x.dtype)
