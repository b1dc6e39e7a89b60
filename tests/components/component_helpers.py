"""Helpers for the built-in component tests: a randomised smoke denoiser, a setup context, inputs.

Imported by name from the test modules of this folder (pytest puts the folder on sys.path).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from model_helpers import randomized

from speedrun.components import ComponentContext, StepState, TrainBatch
from speedrun.data.loader import to_uint8
from speedrun.data.source import TrainData
from speedrun.model import build_model
from speedrun.protocol import collect_hooks
from speedrun.tracks import load_track
from speedrun.train import Trainer, TrainOptions

TEXT_DIM = 384
TEXT_LEN = 5



def make_ctx(track_id: str = "smoke", track=None, seed: int = 0, **model_overrides) -> ComponentContext:
    track = track or load_track(track_id)
    torch.manual_seed(seed)
    model = randomized(build_model(track.model.config, text_dim=TEXT_DIM, **model_overrides), seed)
    side = track.data.image_size // model.config.patch_size  # pixel tracks: the images are x
    return ComponentContext(
        model=model, track=track, device=torch.device("cpu"), seed=seed, token_grid=(side, side), images_available=True
    )


def make_batch(ctx: ComponentContext, b: int = 3, seed: int = 1) -> tuple[TrainBatch, torch.Tensor, torch.Tensor]:
    """A pixel batch on the context's track: (TrainBatch, x_t, t)."""
    side = ctx.track.data.image_size
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.rand(b, 3, side, side, generator=gen) * 2 - 1
    noise = torch.randn(b, 3, side, side, generator=gen)
    t = torch.rand(b, generator=gen)
    text = torch.randn(b, TEXT_LEN, TEXT_DIM, generator=gen)
    mask = torch.ones(b, TEXT_LEN, dtype=torch.bool)
    x_t = (1 - t[:, None, None, None]) * x0 + t[:, None, None, None] * noise
    batch = TrainBatch(x0=x0, noise=noise, text=text, text_mask=mask, images_uint8=to_uint8(x0))
    return batch, x_t, t


def forward(ctx: ComponentContext, components, batch: TrainBatch, x_t, t, *, step: int = 0, training: bool = True):
    """One denoiser forward with the components' hooks; returns (prediction, state)."""
    state = StepState(step=step, seed=ctx.seed, rank=0, training=training, x_t=x_t, t=t)
    hooks = collect_hooks(list(components), ctx.model.config.depth)
    pred = ctx.model(x_t, t, batch.text, batch.text_mask, hooks=hooks, state=state)
    return pred, state


def train(track, data_root: Path, run_dir: Path, components=(), seed: int = 0, **opts):
    data = TrainData.open(track, data_root)
    options = TrainOptions(run_dir=run_dir, seed=seed, device="cpu", progress=False, **opts)
    trainer = Trainer(track, data, list(components), options)
    return trainer, trainer.run()


def step_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "train.jsonl").read_text().splitlines()]
    return [r for r in rows if "step" in r and "event" not in r]
