"""Public component API for submissions: subclass ``Component`` with a ``Params`` model."""

from speedrun.components.base import Component, ComponentContext, Params, TrainBatch
from speedrun.components.registry import Registry
from speedrun.errors import SpeedrunError
from speedrun.state import BlockHook, StepState

__all__ = [
    "BlockHook",
    "Component",
    "ComponentContext",
    "Params",
    "Registry",
    "SpeedrunError",
    "StepState",
    "TrainBatch",
]
