"""Public component API for submissions: subclass ``Component`` with a ``Params`` model.

The protocol's names load on first use, so that verify and the leaderboard, which read the registry
only, never import torch."""

from typing import TYPE_CHECKING

from speedrun.components.registry import Registry
from speedrun.errors import SpeedrunError

if TYPE_CHECKING:
    from speedrun.protocol import BlockHook, Component, ComponentContext, Params, StepState, TrainBatch

__all__ = [
    "BlockHook", "Component", "ComponentContext", "Params", "Registry", "SpeedrunError", "StepState", "TrainBatch",
]  # fmt: skip


def __getattr__(name: str) -> object:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from speedrun import protocol

    return getattr(protocol, name)
