"""The PRX denoiser: a "simplified MMDiT" whose text stream is never updated.

Computes what diffusers' ``PRXTransformer2DModel`` computes (weights map one to one), plus block hooks on
the image tokens and ``flops_per_step``. ``t`` in [0, 1], t = 1 pure noise, is embedded as ``t * time_scale``."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from speedrun.errors import SpeedrunError
from speedrun.kernels import dispatch
from speedrun.kernels.rope import rope_tables
from speedrun.protocol import BlockHook, StepState

BlockHooks = Mapping[int, Sequence[tuple[BlockHook | None, BlockHook | None]]]
"""``{block_index: [(before, after), ...]}``; pairs on one block run in sequence order."""


@dataclass(frozen=True, kw_only=True, slots=True)
class PRXConfig:
    """Architecture of a PRX denoiser; defaults are diffusers' ``PRXTransformer2DModel`` ones. With
    ``bottleneck_dim`` b, patches enter through ``Linear(patch_dim, b) -> Linear(b, hidden)`` (pixel space)."""

    in_channels: int
    patch_size: int
    hidden_size: int
    depth: int
    num_heads: int
    mlp_ratio: float
    text_dim: int
    time_embed_dim: int = 256
    time_scale: float = 1000.0
    time_max_period: float = 10000.0
    rope_theta: float = 10000.0
    bottleneck_dim: int | None = None
    norm_eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    @property
    def patch_dim(self) -> int:
        return self.in_channels * self.patch_size**2


# DiT-style factories; keyword arguments override any field, e.g. MODEL_CONFIGS["tiny"](depth=4). tiny: 1.35M
# parameters, ~4.7 steps/s at batch 32 on 2 CPU cores; its head dim 32 suits the Triton kernels on a GPU.
_PRX = functools.partial(PRXConfig, mlp_ratio=3.5)
MODEL_CONFIGS: dict[str, Callable[..., PRXConfig]] = {
    "smoke": functools.partial(_PRX, in_channels=3, patch_size=4, hidden_size=64, depth=2, num_heads=2, text_dim=384),
    "tiny": functools.partial(_PRX, in_channels=3, patch_size=4, hidden_size=96, depth=6, num_heads=3, text_dim=384),
    "prx-1.2b": functools.partial(
        _PRX, in_channels=16, patch_size=2, hidden_size=1792, depth=16, num_heads=28, text_dim=2304
    ),
}


def build_model(name: str, **overrides) -> PRXDenoiser:
    """A fresh denoiser from ``MODEL_CONFIGS[name]`` with field ``overrides`` (under ``torch.device("meta")``:
    then ``to_empty(device=...)`` and ``init_weights()``)."""
    if name not in MODEL_CONFIGS:
        raise SpeedrunError(f"unknown model config '{name}'; known: {sorted(MODEL_CONFIGS)}")
    return PRXDenoiser(MODEL_CONFIGS[name](**overrides))


def timestep_embedding(t: torch.Tensor, dim: int, scale: float, max_period: float) -> torch.Tensor:
    """``(B,) -> (B, dim)`` float32 ``[cos, sin]`` of ``t * scale * max_period ** (-j / (dim / 2))``
    (diffusers' ``get_timestep_embedding`` with ``flip_sin_to_cos=True, downscale_freq_shift=0``)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None, :] * scale
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """``(B, C, H, W) -> (B, N, C*p*p)``: tokens row-major over the patch grid, features ordered (c, py, px)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


def unpatchify(tokens: torch.Tensor, p: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`patchify` for an ``h x w`` image."""
    b, _, d = tokens.shape
    c = d // (p * p)
    x = tokens.reshape(b, h // p, w // p, c, p, p).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, h, w)


class PRXBlock(nn.Module):
    """``x <- x + gate_a * Attn(modulate(LN(x)))``, ``x <- x + gate_m * GeGLU(modulate(LN(x)))`` on image
    tokens, shift/scale/gate from a zero-initialised ``Linear(silu(vec))`` (a fresh block is the identity).
    Image queries attend over [text keys (padding-masked); image keys]; text tokens are not updated."""

    def __init__(self, config: PRXConfig):
        super().__init__()
        h, d = config.hidden_size, config.head_dim
        self.num_heads, self.head_dim, self.eps = config.num_heads, d, config.norm_eps
        self.modulation = nn.Linear(h, 6 * h)
        self.qkv = nn.Linear(h, 3 * h, bias=False)
        self.q_norm = nn.Parameter(torch.ones(d))
        self.k_norm = nn.Parameter(torch.ones(d))
        self.text_kv = nn.Linear(h, 2 * h, bias=False)
        self.text_k_norm = nn.Parameter(torch.ones(d))
        self.attn_out = nn.Linear(h, h, bias=False)
        self.mlp_gate = nn.Linear(h, config.mlp_hidden, bias=False)
        self.mlp_up = nn.Linear(h, config.mlp_hidden, bias=False)
        self.mlp_down = nn.Linear(config.mlp_hidden, h, bias=False)

    def init_weights(self) -> None:
        for linear in (self.qkv, self.text_kv, self.attn_out, self.mlp_gate, self.mlp_up, self.mlp_down):
            linear.reset_parameters()
        for weight in (self.q_norm, self.k_norm, self.text_k_norm):
            nn.init.ones_(weight)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(
        self, x: torch.Tensor, text: torch.Tensor, vec: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
        text_mask: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        """Image tokens ``x`` (B, N, h), projected text (B, L, h), conditioning ``vec`` (B, h),
        RoPE tables (N, D/2) or (B, N, D/2) for exactly these N tokens, ``text_mask`` (B, L) bool."""
        b, n, h = x.shape
        heads, d = self.num_heads, self.head_dim
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.modulation(F.silu(vec))[:, None].chunk(6, dim=-1)

        y = (1 + scale_a) * F.layer_norm(x, (h,), eps=self.eps) + shift_a
        q, k, v = self.qkv(y).view(b, n, 3, heads, d).permute(2, 0, 3, 1, 4)
        q, k = dispatch.qk_norm_rope(q, k, self.q_norm, self.k_norm, cos, sin, self.eps)
        text_k, text_v = self.text_kv(text).view(b, text.shape[1], 2, heads, d).permute(2, 0, 3, 1, 4)
        text_k = dispatch.rms_norm(text_k, self.text_k_norm, self.eps)
        key_mask = torch.cat([text_mask, text_mask.new_ones(b, n)], dim=1)
        attn = dispatch.attention(q, torch.cat([text_k, k], dim=2), torch.cat([text_v, v], dim=2), key_mask)
        x = x + gate_a * self.attn_out(attn.transpose(1, 2).reshape(b, n, h))

        y = (1 + scale_m) * F.layer_norm(x, (h,), eps=self.eps) + shift_m
        mlp = self.mlp_down(F.gelu(self.mlp_gate(y), approximate="tanh") * self.mlp_up(y))
        return x + gate_m * mlp


class PRXDenoiser(nn.Module):
    """PRX denoiser ``(x_t, t, text, text_mask) -> prediction``; hook indices refer to ``blocks`` (0-based)."""

    def __init__(self, config: PRXConfig):
        super().__init__()
        self.config = config
        p, h, b = config.patch_dim, config.hidden_size, config.bottleneck_dim
        self.img_in = nn.Linear(p, h) if b is None else nn.Sequential(nn.Linear(p, b), nn.Linear(b, h))
        self.time_in = nn.Sequential(nn.Linear(config.time_embed_dim, h), nn.SiLU(), nn.Linear(h, h))
        self.text_in = nn.Linear(config.text_dim, h)
        self.blocks = nn.ModuleList(PRXBlock(config) for _ in range(config.depth))
        self.final_modulation = nn.Linear(h, 2 * h)
        self.final_linear = nn.Linear(h, config.patch_dim)
        self.init_weights()

    def init_weights(self) -> None:
        """(Re)initialise every parameter: torch's default Linear init (as diffusers), adaLN
        modulations and the final projection zero, so a fresh model outputs exactly zero."""
        for part in (self.img_in, self.time_in, self.text_in, self.final_modulation):
            for module in part.modules():
                if isinstance(module, nn.Linear):
                    module.reset_parameters()
        for block in self.blocks:
            block.init_weights()
        nn.init.zeros_(self.final_linear.weight)
        nn.init.zeros_(self.final_linear.bias)

    def grid(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        """Token rows and columns for an ``(H, W)`` input."""
        (h, w), p = image_hw, self.config.patch_size
        if h % p or w % p:
            raise ValueError(f"image size {h}x{w} is not divisible by patch size {p}")
        return h // p, w // p

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor | None = None, *,
        hooks: BlockHooks | None = None, state: StepState | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """``(B, C, H, W)`` prediction for noisy ``x``, times ``t`` (B,), ``text`` (B, L, text_dim) and
        ``text_mask`` (B, L) bool, True for real tokens (None: all real; padding has no influence).
        Block ``i`` runs between the ``before`` and ``after`` hooks of ``hooks[i]``, in order; under routing
        (``state.token_index``, B, N_kept) it takes RoPE for exactly the kept positions."""
        cfg, (_, c, height, width) = self.config, x.shape
        if c != cfg.in_channels:  # a track pairing a pixel model with latents, say
            raise ValueError(f"input has {c} channels, the model expects {cfg.in_channels}")
        if text_mask is None:
            text_mask = torch.ones(text.shape[:2], dtype=torch.bool, device=text.device)
        state, hooks = StepState() if state is None else state, hooks or {}

        cos, sin = rope_tables(*self.grid((height, width)), cfg.head_dim, cfg.rope_theta, x.device)
        tokens = self.img_in(patchify(x, cfg.patch_size))
        text_tokens = self.text_in(text)  # projected once; the blocks never update it
        t_embed = timestep_embedding(t, cfg.time_embed_dim, cfg.time_scale, cfg.time_max_period)
        vec = self.time_in(t_embed.to(tokens.dtype))
        text_mask = text_mask.to(torch.bool)

        for i, block in enumerate(self.blocks):
            pairs = hooks.get(i, ())
            for before in (b for b, _ in pairs if b is not None):
                tokens = before(tokens, state)
            index = state.token_index
            block_cos, block_sin = (cos, sin) if index is None else (cos[index], sin[index])
            tokens = block(tokens, text_tokens, vec, block_cos, block_sin, text_mask)
            for after in (a for _, a in pairs if a is not None):
                tokens = after(tokens, state)

        shift, scale = self.final_modulation(F.silu(vec))[:, None].chunk(2, dim=-1)
        tokens = (1 + scale) * F.layer_norm(tokens, (cfg.hidden_size,), eps=cfg.norm_eps) + shift
        return unpatchify(self.final_linear(tokens), cfg.patch_size, height, width)

    def flops_per_step(self, batch: int, image_hw: tuple[int, int], text_len: int) -> int:
        """Training FLOPs of one step on ``batch`` samples, all tokens kept: 3 x forward matmul FLOPs.
        An ``(m, k) @ (k, n)`` matmul counts ``2 m n k``. Per sample, with N image and L text tokens,
        hidden h, patch features P, GeGLU width M, time embedding E, text_dim T and depth d:
        ``2 N P h`` (``P b + b h`` with a bottleneck b) + ``2 L T h`` + ``2 (E h + h h)`` + d [``2 h 6h``
        modulation + ``2 N h 3h`` qkv + ``2 L h 2h`` text kv + ``4 N (L + N) h`` attention + ``2 N h h``
        output + ``3 (2 N h M)`` GeGLU] + ``2 h 2h + 2 N h P`` final. Elementwise ops are not counted."""
        cfg, n, length = self.config, math.prod(self.grid(image_hw)), text_len
        h, p_dim, m = cfg.hidden_size, cfg.patch_dim, cfg.mlp_hidden
        embed = p_dim * h if cfg.bottleneck_dim is None else p_dim * cfg.bottleneck_dim + cfg.bottleneck_dim * h
        block = 2 * h * 6 * h + 2 * n * h * 3 * h + 2 * length * h * 2 * h + 2 * 2 * n * (length + n) * h
        block += 2 * n * h * h + 3 * 2 * n * h * m
        forward = 2 * n * embed + 2 * length * cfg.text_dim * h + 2 * (cfg.time_embed_dim * h + h * h)
        forward += cfg.depth * block + 2 * h * 2 * h + 2 * n * h * p_dim
        return 3 * batch * forward
