"""Exchange weights with diffusers' ``PRXTransformer2DModel``: every tensor maps one to one (same shape
and layout), so conversion is renaming. Its resolution embedder (PRX-7B) and non-default RoPE axis
splits have no counterpart here and are rejected."""

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
# diffusers config key -> (PRXConfig field, diffusers' default); axes_dim and resolution_embeds apart.
_CONFIG = {
    "in_channels": ("in_channels", 16), "patch_size": ("patch_size", 2), "hidden_size": ("hidden_size", 1792),
    "depth": ("depth", 16), "num_heads": ("num_heads", 28), "mlp_ratio": ("mlp_ratio", 3.5),
    "context_in_dim": ("text_dim", 2304), "time_factor": ("time_scale", 1000.0),
    "time_max_period": ("time_max_period", 10000), "theta": ("rope_theta", 10000),
    "bottleneck_size": ("bottleneck_dim", None),
}  # fmt: skip
_FLOAT_FIELDS = {"time_scale", "time_max_period", "rope_theta"}  # PRXConfig floats that diffusers may give as ints


def _convert(sd: Mapping[str, torch.Tensor], top: Mapping[str, str], block: Mapping[str, str], source: str) -> dict:
    out, unknown = {}, []
    for key, value in sd.items():
        if match := _BLOCK.match(key):
            suffix = block.get(match.group(2))
            new = None if suffix is None else f"blocks.{match.group(1)}.{suffix}"
        else:
            new = next((dst + key[len(src) :] for src, dst in top.items() if key.startswith(src)), None)
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
    """A :class:`PRXConfig` from a ``PRXTransformer2DModel`` config (dict or ``FrozenDict``), with its defaults."""
    c = dict(diffusers_config)
    fields = {ours: c.get(theirs, default) for theirs, (ours, default) in _CONFIG.items()}
    fields |= {name: float(fields[name]) for name in _FLOAT_FIELDS}
    axes_dim = list(c.get("axes_dim") or [32, 32])
    expected = [fields["hidden_size"] // fields["num_heads"] // 2] * 2
    if axes_dim != expected:
        raise SpeedrunError(f"diffusers axes_dim {axes_dim} is unsupported; PRXDenoiser uses {expected}")
    if c.get("resolution_embeds", False):
        raise SpeedrunError("diffusers resolution_embeds=True (PRX-7B) is not supported by PRXDenoiser")
    return PRXConfig(**fields)


def diffusers_config(config: PRXConfig) -> dict[str, Any]:
    """The ``PRXTransformer2DModel`` constructor arguments equivalent to ``config``."""
    if config.time_embed_dim != 256 or config.norm_eps != 1e-6:
        raise SpeedrunError("diffusers PRX fixes time_embed_dim=256 and norm_eps=1e-6; this config differs")
    fields = {theirs: getattr(config, ours) for theirs, (ours, _) in _CONFIG.items()}
    return fields | {"axes_dim": [config.head_dim // 2, config.head_dim // 2], "resolution_embeds": False}


def load_diffusers_prx(path_or_model: str | Path | torch.nn.Module) -> PRXDenoiser:
    """A :class:`PRXDenoiser` from a ``PRXTransformer2DModel`` or its local ``save_pretrained`` directory."""
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
