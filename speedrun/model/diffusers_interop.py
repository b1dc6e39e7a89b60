"""Exchange weights with diffusers' ``PRXTransformer2DModel``.

The two models compute the same function; only parameter names differ. Every tensor maps one to one
with the same shape and layout (no transposes, no splitting), so conversion is a renaming:

=======================================  ==============================================
ours                                     diffusers
=======================================  ==============================================
``img_in.*`` (``img_in.{0,1}.*``)        ``img_in.*`` (``img_in.{0,1}.*`` with a bottleneck)
``time_in.0.*`` / ``time_in.2.*``        ``time_in.in_layer.*`` / ``time_in.out_layer.*``
``text_in.*``                            ``txt_in.*``
``blocks.i.modulation.*``                ``blocks.i.modulation.lin.*``
``blocks.i.qkv.weight``                  ``blocks.i.attention.img_qkv_proj.weight``
``blocks.i.q_norm`` / ``k_norm``         ``blocks.i.attention.norm_q.weight`` / ``norm_k.weight``
``blocks.i.text_kv.weight``              ``blocks.i.attention.txt_kv_proj.weight``
``blocks.i.text_k_norm``                 ``blocks.i.attention.norm_added_k.weight``
``blocks.i.attn_out.weight``             ``blocks.i.attention.to_out.0.weight``
``blocks.i.mlp_{gate,up,down}.weight``   ``blocks.i.{gate,up,down}_proj.weight``
``final_modulation.*``                   ``final_layer.adaLN_modulation.1.*``
``final_linear.*``                       ``final_layer.linear.*``
=======================================  ==============================================

diffusers' optional resolution embedder (PRX-7B) and non-default RoPE axis splits have no
counterpart here and are rejected.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import torch

from speedrun.errors import SpeedrunError
from speedrun.model.prx import PRXConfig, PRXDenoiser

_TOP_PREFIXES = {  # ours -> diffusers, for keys outside the blocks
    "img_in.": "img_in.",
    "time_in.0.": "time_in.in_layer.",
    "time_in.2.": "time_in.out_layer.",
    "text_in.": "txt_in.",
    "final_modulation.": "final_layer.adaLN_modulation.1.",
    "final_linear.": "final_layer.linear.",
}
_BLOCK_KEYS = {  # ours -> diffusers, after "blocks.<i>."
    "modulation.weight": "modulation.lin.weight",
    "modulation.bias": "modulation.lin.bias",
    "qkv.weight": "attention.img_qkv_proj.weight",
    "q_norm": "attention.norm_q.weight",
    "k_norm": "attention.norm_k.weight",
    "text_kv.weight": "attention.txt_kv_proj.weight",
    "text_k_norm": "attention.norm_added_k.weight",
    "attn_out.weight": "attention.to_out.0.weight",
    "mlp_gate.weight": "gate_proj.weight",
    "mlp_up.weight": "up_proj.weight",
    "mlp_down.weight": "down_proj.weight",
}
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")


def _rename(key: str, top: Mapping[str, str], block: Mapping[str, str]) -> str | None:
    match = _BLOCK.match(key)
    if match:
        suffix = block.get(match.group(2))
        return None if suffix is None else f"blocks.{match.group(1)}.{suffix}"
    for src, dst in top.items():
        if key.startswith(src):
            return dst + key[len(src) :]
    return None


def _convert(sd: Mapping[str, torch.Tensor], top: Mapping[str, str], block: Mapping[str, str], source: str) -> dict:
    out, unknown = {}, []
    for key, value in sd.items():
        new = _rename(key, top, block)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise SpeedrunError(f"{source} state dict has keys with no PRXDenoiser counterpart: {unknown[:8]}")
    return out


def from_diffusers_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers ``PRXTransformer2DModel`` state dict -> :class:`PRXDenoiser` state dict (same tensors)."""
    return _convert(sd, {v: k for k, v in _TOP_PREFIXES.items()}, {v: k for k, v in _BLOCK_KEYS.items()}, "diffusers")


def to_diffusers_state_dict(ours: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """:class:`PRXDenoiser` state dict -> diffusers ``PRXTransformer2DModel`` state dict (same tensors)."""
    return _convert(ours, _TOP_PREFIXES, _BLOCK_KEYS, "PRXDenoiser")


def config_from_diffusers(diffusers_config: Mapping[str, Any]) -> PRXConfig:
    """A :class:`PRXConfig` from a diffusers ``PRXTransformer2DModel`` config (dict or ``FrozenDict``).

    Missing fields take diffusers' defaults; features we do not implement are errors.
    """
    c = dict(diffusers_config)
    hidden, heads = c.get("hidden_size", 1792), c.get("num_heads", 28)
    axes_dim = list(c.get("axes_dim") or [32, 32])
    head_dim = hidden // heads
    if axes_dim != [head_dim // 2, head_dim // 2]:
        expected = [head_dim // 2, head_dim // 2]
        raise SpeedrunError(f"diffusers axes_dim {axes_dim} is unsupported; PRXDenoiser uses {expected}")
    if c.get("resolution_embeds", False):
        raise SpeedrunError("diffusers resolution_embeds=True (PRX-7B) is not supported by PRXDenoiser")
    return PRXConfig(
        in_channels=c.get("in_channels", 16),
        patch_size=c.get("patch_size", 2),
        hidden_size=hidden,
        depth=c.get("depth", 16),
        num_heads=heads,
        mlp_ratio=c.get("mlp_ratio", 3.5),
        text_dim=c.get("context_in_dim", 2304),
        time_scale=float(c.get("time_factor", 1000.0)),
        time_max_period=float(c.get("time_max_period", 10000)),
        rope_theta=float(c.get("theta", 10000)),
        bottleneck_dim=c.get("bottleneck_size"),
    )


def diffusers_config(config: PRXConfig) -> dict[str, Any]:
    """The ``PRXTransformer2DModel`` constructor arguments equivalent to ``config``."""
    if config.time_embed_dim != 256 or config.norm_eps != 1e-6:
        raise SpeedrunError("diffusers PRX fixes time_embed_dim=256 and norm_eps=1e-6; this config differs")
    return {
        "in_channels": config.in_channels,
        "patch_size": config.patch_size,
        "context_in_dim": config.text_dim,
        "hidden_size": config.hidden_size,
        "mlp_ratio": config.mlp_ratio,
        "num_heads": config.num_heads,
        "depth": config.depth,
        "axes_dim": [config.head_dim // 2, config.head_dim // 2],
        "theta": config.rope_theta,
        "time_factor": config.time_scale,
        "time_max_period": config.time_max_period,
        "bottleneck_size": config.bottleneck_dim,
        "resolution_embeds": False,
    }


def load_diffusers_prx(path_or_model: str | Path | torch.nn.Module) -> PRXDenoiser:
    """A :class:`PRXDenoiser` holding the weights of a diffusers PRX transformer.

    Args:
        path_or_model: a ``PRXTransformer2DModel`` instance, or a local directory written by its
            ``save_pretrained`` (``config.json`` + safetensors). Nothing is downloaded.
    """
    if isinstance(path_or_model, torch.nn.Module):
        source = path_or_model
    else:
        from diffusers import PRXTransformer2DModel

        path = Path(path_or_model)
        if not (path / "config.json").is_file():
            raise SpeedrunError(f"{path}: not a diffusers model directory (no config.json)")
        source = PRXTransformer2DModel.from_pretrained(path, local_files_only=True)
    model = PRXDenoiser(config_from_diffusers(source.config))
    model.load_state_dict(from_diffusers_state_dict(source.state_dict()), strict=True)
    return model


def save_diffusers_prx(model: PRXDenoiser, path: str | Path) -> None:
    """Write ``model`` as a diffusers ``PRXTransformer2DModel`` directory loadable with ``from_pretrained``."""
    from diffusers import PRXTransformer2DModel

    target = PRXTransformer2DModel(**diffusers_config(model.config))
    target.load_state_dict(to_diffusers_state_dict(model.state_dict()), strict=True)
    target.save_pretrained(Path(path))
