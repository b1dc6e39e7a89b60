"""Rectified flow: timesteps, targets, losses, the Euler sampler and validation loss. Everywhere
``x_t = (1 - t) x0 + t noise`` (t = 1 pure noise) and ``v = dx_t/dt = noise - x0``; sampling runs t = 1 -> 0."""

from __future__ import annotations

import functools
import hashlib
from abc import ABC, abstractmethod
from typing import Callable, get_args

import torch
import torch.nn.functional as F

from speedrun.protocol import PredictionKind
from speedrun.tracks import TimestepSpec

# model_fn(x_t (B, C, H, W), t (B,), text, text_mask) -> velocity
ModelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _per_sample(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def keyed_generator(key: str, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded by 32 bits (all torch's CPU generator keeps) of the sha256 of ``key`` (its use, seed,
    step, ...): what it draws depends on nothing drawn before, so paired runs share it whatever else they draw."""
    digest = hashlib.sha256(key.encode()).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:4], "little"))


def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    t = _per_sample(t, x0)
    return (1 - t) * x0 + t * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return noise - x0


def velocity_from_prediction(
    kind: PredictionKind, pred: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, t_clamp: float = 0.05
) -> torch.Tensor:
    """Convert a model output of ``kind`` to velocity: ``x0`` becomes ``(x_t - x0_hat) / max(t, t_clamp)``
    (finite near t = 0, as in JiT-style x-prediction)."""
    if kind not in get_args(PredictionKind):
        raise ValueError(f"unknown prediction kind '{kind}'; expected one of {list(get_args(PredictionKind))}")
    return pred if kind == "velocity" else (x_t - pred) / _per_sample(t, x_t).clamp(min=t_clamp)


def sample_timesteps(
    n: int, spec: TimestepSpec, generator: torch.Generator, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """``n`` training times in ``[t_min, t_max)``, float32 on ``device``: with probability ``uniform_fraction``
    ``U(0, 1)``, else ``sigmoid(N(mean, std))`` shifted by ``s t / (1 + (s - 1) t)``. Drawn on ``generator``'s
    device, so a seed gives the same times on every device."""
    normal = torch.randn(n, generator=generator, device=generator.device) * spec.std + spec.mean
    t = torch.sigmoid(normal)
    t = spec.shift * t / (1 + (spec.shift - 1) * t)
    use_uniform = torch.rand(n, generator=generator, device=generator.device) < spec.uniform_fraction
    uniform = torch.rand(n, generator=generator, device=generator.device)
    t = torch.where(use_uniform, uniform, t)
    upper = torch.nextafter(torch.tensor(spec.t_max, dtype=torch.float32), torch.tensor(0.0)).item()
    return t.clamp(min=spec.t_min, max=upper).to(device)


class Objective(ABC):
    """What the model learns to predict and how it is scored; the trainer knows nothing else. ``prediction``
    is saved in the checkpoint for :func:`velocity_from_prediction`; ``sample_t``: ``(n,)`` training times in
    [0, 1), t = 1 noise; ``input_and_target``: the network input ``x_t`` and the regression target; ``loss``:
    a scalar to minimise, averaged over the batch; ``velocity``: what a prediction implies, for the sampler."""

    prediction: PredictionKind

    @abstractmethod
    def sample_t(self, n: int, generator: torch.Generator, device: torch.device | str) -> torch.Tensor: ...

    @abstractmethod
    def input_and_target(
        self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    @abstractmethod
    def loss(self, pred: torch.Tensor, target: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor: ...

    def velocity(self, pred: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return velocity_from_prediction(self.prediction, pred, x_t, t)


class RectifiedFlowObjective(Objective):
    """The baseline: predict velocity ``noise - x0``, plain MSE (in float32), times from ``timestep_spec``."""

    prediction: PredictionKind = "velocity"

    def __init__(self, timestep_spec: TimestepSpec):
        self.timestep_spec = timestep_spec

    def sample_t(self, n: int, generator: torch.Generator, device: torch.device | str) -> torch.Tensor:
        return sample_timesteps(n, self.timestep_spec, generator, device)

    def input_and_target(
        self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return interpolate(x0, noise, t), velocity_target(x0, noise)

    def loss(self, pred: torch.Tensor, target: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(pred.float(), target.float())


def _batched_null(null: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The empty caption (with or without a batch axis of 1) expanded to ``like``'s batch."""
    return null.to(device=like.device, dtype=like.dtype).expand_as(like)


def caption_drop_mask(n: int, p: float, generator: torch.Generator) -> torch.Tensor:
    """``(n,)`` bool: which captions become the empty caption, each with probability ``p`` (drawn for the
    global batch, so it does not depend on the process count)."""
    return torch.rand(n, generator=generator, device=generator.device) < p


def apply_caption_dropout(
    text: torch.Tensor, mask: torch.Tensor, null_text: torch.Tensor, null_mask: torch.Tensor, drop: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace the captions ``(B, L, Dt)``/``(B, L)`` where ``drop`` ``(B,)`` is True by the empty caption."""
    text = torch.where(drop[:, None, None], _batched_null(null_text, text), text)
    mask = torch.where(drop[:, None], _batched_null(null_mask, mask), mask)
    return text, mask


@torch.no_grad()
def euler_sample(
    model_fn: ModelFn, noise: torch.Tensor, text: torch.Tensor, mask: torch.Tensor, null_text: torch.Tensor,
    null_mask: torch.Tensor, steps: int, cfg_scale: float,
) -> torch.Tensor:  # fmt: skip
    """Integrate ``dx/dt = v`` from t = 1 (``noise``) to t = 0 in ``steps`` uniform Euler steps, with
    ``v = v_uncond + cfg_scale (v_cond - v_uncond)`` (both branches as one batch; ``cfg_scale == 1``
    runs the conditional one alone)."""
    b = noise.shape[0]
    guided = cfg_scale != 1.0
    if guided:
        text = torch.cat([text, _batched_null(null_text, text)])
        mask = torch.cat([mask, _batched_null(null_mask, mask)])
    x = noise
    for i in range(steps):
        t_now, t_next = 1 - i / steps, 1 - (i + 1) / steps
        t = torch.full((2 * b if guided else b,), t_now, device=x.device, dtype=torch.float32)
        v = model_fn(torch.cat([x, x]) if guided else x, t, text, mask)
        if guided:
            v_cond, v_uncond = v.chunk(2)
            v = v_uncond + cfg_scale * (v_cond - v_uncond)
        x = x + (t_next - t_now) * v
    return x


@torch.no_grad()
def validation_loss_per_sample(
    model_fn: ModelFn, x0: torch.Tensor, text: torch.Tensor, mask: torch.Tensor, *, timesteps: int = 8, seed: int = 0,
    first_index: int = 0,
) -> torch.Tensor:  # fmt: skip
    """``(B, timesteps)`` float64 velocity MSE of each sample (validation sample ``first_index + j``) at each
    fixed time; sample ``i``'s noise ``(timesteps, C, H, W)`` depends only on ``(seed, i)``."""
    b = x0.shape[0]
    times = (torch.arange(timesteps, dtype=torch.float64) + 0.5).div(timesteps).float()
    keys = [keyed_generator(f"validation-noise:{seed}:{first_index + j}") for j in range(b)]
    noise = torch.stack([torch.randn((timesteps, *x0.shape[1:]), generator=g) for g in keys])
    noise = noise.to(device=x0.device, dtype=x0.dtype)
    losses = torch.empty(b, timesteps, dtype=torch.float64)
    for k in range(timesteps):
        t = times[k].expand(b).to(x0.device)
        x_t = interpolate(x0, noise[:, k], t)
        error = model_fn(x_t, t, text, mask).double() - velocity_target(x0, noise[:, k]).double()
        losses[:, k] = error.pow(2).flatten(1).mean(dim=1).cpu()
    return losses


def validation_loss(
    model_fn: ModelFn, x0: torch.Tensor, text: torch.Tensor, mask: torch.Tensor, *, timesteps: int = 8, seed: int = 0,
    batch_size: int | None = None,
) -> dict[str, float | list[float]]:  # fmt: skip
    """Deterministic stratified validation loss (MLPerf Flux style): the velocity MSE at the times
    ``(k + 0.5) / timesteps`` with fixed noise, averaged per time (``per_t``) and overall, in float64
    in sample order, so ``batch_size`` (samples per model call; None: all) does not change it."""
    step = batch_size or len(x0)
    per_sample = functools.partial(validation_loss_per_sample, model_fn, timesteps=timesteps, seed=seed)
    parts = [slice(i, i + step) for i in range(0, len(x0), step)]
    rows = [per_sample(x0[p], text[p], mask[p], first_index=p.start) for p in parts]
    per_t = torch.cat(rows).mean(dim=0)
    return {"overall": per_t.mean().item(), "per_t": per_t.tolist()}
