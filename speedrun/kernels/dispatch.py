"""The one dispatch point for the hot path: attention and fused QK-norm + RoPE, torch or Triton (same
contract, rounding apart). The backend is :func:`set_backend`'s, else ``$SPEEDRUN_KERNELS``; ``auto`` takes
Triton on CUDA when the kernels import and take the head dim; an explicit ``triton`` never falls back."""

from __future__ import annotations

import os
from typing import Callable, Literal

import torch
import torch.nn.functional as F

from speedrun.errors import SpeedrunError
from speedrun.kernels.rope import apply_rope

Backend = Literal["auto", "torch", "triton"]
BACKENDS: tuple[str, ...] = ("auto", "torch", "triton")
ENV_VAR = "SPEEDRUN_KERNELS"

_chosen: str | None = None  # set_backend's choice; None defers to the environment variable
_kernels: tuple[Callable, Callable] | ImportError | None = None  # filled by _triton_kernels()


def set_backend(name: Backend | None) -> None:
    """Choose the kernel backend for this process; ``None`` returns to the environment/default."""
    global _chosen
    _chosen = name


def requested_backend() -> str:
    """The backend asked for (``auto``, ``torch`` or ``triton``), before looking at the device."""
    if _chosen is not None:
        return _chosen
    name = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if name not in BACKENDS:
        raise SpeedrunError(f"{ENV_VAR}='{name}' is not a kernel backend; choose one of {list(BACKENDS)}")
    return name


def _triton_kernels() -> tuple[Callable, Callable] | ImportError:
    """The two Triton entry points, or the ImportError that kept them out (a global: torch.compile warns on
    ``functools.cache``)."""
    global _kernels
    if _kernels is None:
        try:
            from speedrun.kernels.triton_attention import flash_attention
            from speedrun.kernels.triton_rope import fused_qk_norm_rope
        except ImportError as exc:
            _kernels = exc
        else:
            _kernels = (flash_attention, fused_qk_norm_rope)
    return _kernels


def triton_head_dim(head_dim: int) -> bool:
    """A power of two of at least 16 (the attention kernel's ``tl.dot`` tiles; RoPE takes any power of two)."""
    return head_dim >= 16 and head_dim & (head_dim - 1) == 0


def active_backend(device: torch.device | str, head_dim: int) -> Literal["torch", "triton"]:
    """The backend that runs for tensors on ``device`` with ``head_dim`` channels per head."""
    device = torch.device(device)
    requested = requested_backend()
    if requested == "torch":
        return "torch"
    kernels = _triton_kernels() if device.type == "cuda" else None
    if requested == "auto":
        return "triton" if isinstance(kernels, tuple) and triton_head_dim(head_dim) else "torch"
    if device.type != "cuda":
        raise SpeedrunError(f"kernel backend 'triton' needs CUDA tensors, got device '{device}'")
    if isinstance(kernels, ImportError):
        raise SpeedrunError(f"kernel backend 'triton' is unavailable: {kernels}")
    if not triton_head_dim(head_dim):
        raise SpeedrunError(f"kernel backend 'triton' takes head dims that are powers of two of at least 16, got "
                            f"{head_dim}; choose 'torch' or 'auto' ({ENV_VAR})")  # fmt: skip
    return "triton"


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T / sqrt(D) + mask) v`` for q (B, H, Nq, D), k and v (B, H, Nk, D) and a bool
    ``key_mask`` (B, Nk), True where a key may be attended to; a sample with no valid key gets zeros."""
    if active_backend(q.device, q.shape[-1]) == "triton":
        return _triton_kernels()[0](q, k, v, key_mask)
    # A row with no valid key would softmax over -inf only (NaN): let it attend everywhere, then zero it.
    any_valid = key_mask.any(dim=-1)
    mask = (key_mask | ~any_valid[:, None])[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out * any_valid[:, None, None, None].to(out.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dimension with a learned scale, statistics in float32; returns ``x.dtype``."""
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + eps)
    return (normed * weight.float()).to(x.dtype)


def qk_norm_rope(
    q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor, cos: torch.Tensor,
    sin: torch.Tensor, eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """``apply_rope(rms_norm(x, w, eps), cos, sin)`` for q, k (B, H, N, D), weights (D,), tables (N, D // 2)
    or (B, N, D // 2)."""
    if active_backend(q.device, q.shape[-1]) == "triton":
        return _triton_kernels()[1](q, k, q_weight, k_weight, cos, sin, eps)
    return (apply_rope(rms_norm(q, q_weight, eps), cos, sin), apply_rope(rms_norm(k, k_weight, eps), cos, sin))
