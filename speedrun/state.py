"""Per-step state shared by the denoiser, the trainer and components.

It lives in its own module so that the model can read it without importing the component
package (the dependency points from components to the model, never back).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch

PredictionKind = Literal["velocity", "x0"]
"""What a network outputs: a velocity, or the clean sample x0 (see :mod:`speedrun.flow`)."""

BlockHook = Callable[[torch.Tensor, "StepState"], torch.Tensor]
"""``hook(tokens, state) -> tokens``: run before or after a block on the image tokens (B, N, hidden)."""


@dataclass
class StepState:
    """What one forward pass knows beyond its tensors.

    Attributes:
        step: optimizer step (0-based) the forward belongs to; -1 at evaluation.
        seed: the run seed; components derive their RNG from (seed, step, rank).
        rank: the distributed rank of this process.
        training: False at evaluation, where routing components must keep every token.
        x_t: the noisy input of this step (B, C, H, W), or None.
        t: the timesteps of this step (B,), or None.
        prediction: what the network outputs under this run's objective, ``"velocity"`` or ``"x0"``
            (:data:`PredictionKind`); :func:`speedrun.flow.velocity_from_prediction`
            turns an output into velocity.
        token_index: (B, N_kept) long tensor of the image tokens currently flowing through the
            blocks, as indices into the full row-major token grid; None means all tokens in order.
            Routing hooks set and clear it; the model gathers RoPE positions with it; alignment
            losses read it to compare only visible tokens.
        records: free space for hooks to leave activations for the loss functions.
    """

    step: int = -1
    seed: int = 0
    rank: int = 0
    training: bool = False
    x_t: torch.Tensor | None = None
    t: torch.Tensor | None = None
    prediction: PredictionKind = "velocity"
    token_index: torch.Tensor | None = None
    records: dict[str, Any] = field(default_factory=dict)
