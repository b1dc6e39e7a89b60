"""How processes share the model (DDP or FSDP2), and its full state dicts, which checkpoints hold in every mode."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from speedrun.distributed import Dist


class Parallel:
    """``mode``: "single" (one process), "ddp" or "fsdp"; ``asked`` "auto" is FSDP2 for prx-1.2b, DDP otherwise."""

    def __init__(self, dist: Dist, asked: str, model_config: str, model: nn.Module, heads: dict[str, nn.Module]):
        self.dist, self.model, self.heads = dist, model, heads
        auto = "fsdp" if model_config == "prx-1.2b" else "ddp"
        self.mode = "single" if not dist.enabled else auto if asked == "auto" else asked

    def wrap(self, compile: bool, device: torch.device) -> nn.Module:
        """Shard (FSDP2, a block per communication unit), compile on CUDA if asked, or wrap in DDP; returns the
        module that runs the training forward."""
        if self.mode == "fsdp":
            from torch.distributed.fsdp import fully_shard

            for block in self.model.blocks:
                fully_shard(block)
            fully_shard(self.model)
        forward = torch.compile(self.model) if compile and device.type == "cuda" else self.model
        if self.mode == "ddp":
            forward = nn.parallel.DistributedDataParallel(
                forward, device_ids=[device.index] if device.type == "cuda" else None
            )
        return forward

    def model_state(self) -> dict[str, torch.Tensor]:
        """Full denoiser weights (on CPU under FSDP); a collective under FSDP (call on every rank)."""
        if self.mode == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return self.model.state_dict()

    def load_model_state(self, state: dict[str, torch.Tensor]) -> None:
        if self.mode == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            set_model_state_dict(self.model, state, options=StateDictOptions(full_state_dict=True, strict=True))
        else:
            self.model.load_state_dict(state, strict=True)

    def optim_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        if self.mode == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            return get_optimizer_state_dict(self._optimized(), optimizer, options=options)
        return optimizer.state_dict()

    def load_optim_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        # The device's implementation flags win over saved ones (a pre-fused checkpoint would resume on foreach).
        for saved, current in zip(state["param_groups"], optimizer.param_groups):
            for flag in ("fused", "foreach"):
                saved[flag] = current[flag]
        if self.mode == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            options = StateDictOptions(full_state_dict=True)
            set_optimizer_state_dict(self._optimized(), optimizer, state, options=options)
        else:
            optimizer.load_state_dict(state)

    def _optimized(self) -> nn.Module:
        """One module over every optimized parameter: FSDP keys optimizer state by name; heads are outside the model."""
        return nn.ModuleDict({"model": self.model, "heads": nn.ModuleList(self.heads.values())})
