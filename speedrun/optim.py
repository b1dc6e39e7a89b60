"""The track's AdamW over the denoiser and component heads, its gradient clip, update and lr schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from speedrun.tracks import Track


def schedule(optimizer: torch.optim.Optimizer, track: Track, start: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """The track's learning-rate factor: linear warmup from 1/warmup to 1 over ``optim.warmup_steps``, constant,
    then a linear cooldown to 0 at ``train.steps`` over the last ``optim.cooldown_steps``; at step ``start``."""
    warmup, cooldown, steps = track.optim.warmup_steps, track.optim.cooldown_steps, track.train.steps

    def factor(step: int) -> float:
        return min(1.0, (step + 1) / max(warmup, 1), (steps - step) / max(cooldown, 1) if cooldown else 1.0)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor, last_epoch=start - 1)


def build_optimizer(track: Track, params: list[nn.Parameter], device: torch.device) -> torch.optim.Optimizer:
    """The track's AdamW: fused on CUDA (prx-1.2b on an H100: 36 -> 18 ms, BENCHMARKS.md), else torch's default."""
    o, fused = track.optim, True if device.type == "cuda" else None
    # One group per kind (FSDP's sharded DTensors, plain heads): the fused update takes one kind per call.
    groups = [{"params": kind} for kind in _by_kind(params) if kind]
    return torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay, fused=fused)


def _by_kind(tensors: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(DTensors, plain tensors) of ``tensors``, in order: torch's multi-tensor kernels refuse a mix."""
    return [t for t in tensors if hasattr(t, "full_tensor")], [t for t in tensors if not hasattr(t, "full_tensor")]


def updates_in_kernel(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` clips and skips a non-finite step in its kernel (``grad_scale``, ``found_inf``)."""
    return bool(optimizer.param_groups[0].get("fused"))


def clip_gradients(optimizer: torch.optim.Optimizer, params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Clip as ``clip_grad_norm_``; returns the prior norm. In-kernel ``grad_scale`` spares a 4.7 GB pass (prx-1.2b)."""
    kinds = [kind for kind in _by_kind([p for p in params if p.grad is not None]) if kind]
    # One norm per kind (FSDP's sharded DTensors, plain heads), combined as the L2 norm of the two.
    norms = [torch.nn.utils.get_total_norm([p.grad for p in kind]) for kind in kinds]
    norms = [n.full_tensor() if hasattr(n, "full_tensor") else n for n in norms]  # a DTensor under FSDP
    norm = norms[0] if len(norms) == 1 else torch.linalg.vector_norm(torch.stack(norms))
    if updates_in_kernel(optimizer):
        optimizer.grad_scale = torch.clamp(max_norm / (norm + 1e-6), max=1.0).reciprocal()
    else:
        for kind in kinds:
            torch.nn.utils.clip_grads_with_norm_(kind, max_norm, norm)
    return norm


def update(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler, loss: torch.Tensor,
           grad_norm: torch.Tensor) -> tuple[float, float]:  # fmt: skip
    """Update and advance the schedule unless ``loss`` or ``grad_norm`` is not finite; returns both as floats."""
    in_kernel = updates_in_kernel(optimizer)
    if in_kernel:
        # Queued right behind the backward, not after a host read of the loss; it skips itself if not finite.
        optimizer.found_inf = (~(loss.isfinite() & grad_norm.isfinite())).float()
        optimizer.step()
    loss_value, norm = float(loss), float(grad_norm)
    if not (math.isfinite(loss_value) and math.isfinite(norm)):
        optimizer.zero_grad(set_to_none=True)
    else:
        if not in_kernel:
            optimizer.step()
        scheduler.step()
    return loss_value, norm


def check_optimizer_coverage(optimizer: torch.optim.Optimizer, modules: list[nn.Module]) -> None:
    """Every trainable parameter of the denoiser and heads is in the optimizer exactly once."""
    ids = [id(p) for g in optimizer.param_groups for p in g["params"]]
    if len(ids) != len(set(ids)):
        raise RuntimeError("a parameter appears twice in the optimizer")
    expected = {id(p) for m in modules for p in m.parameters() if p.requires_grad}
    if set(ids) != expected:
        raise RuntimeError(f"optimizer covers {len(set(ids) & expected)} of {len(expected)} trainable parameters "
                           f"and {len(set(ids) - expected)} foreign ones")  # fmt: skip


def check_fp32_master(modules: list[nn.Module]) -> None:
    """Master weights stay fp32 under autocast (bf16-stored weights cost +3.7 FID in PRX)."""
    if bad := [n for m in modules for n, p in m.named_parameters() if p.dtype != torch.float32]:
        raise RuntimeError(f"master weights must be fp32; found other dtypes in {bad[:5]}")
