"""Training-step throughput of the built-in components against the baseline, on the tiny model.

    python benchmarks/bench_components.py [--batch 32] [--steps 30] [--threads 1] [--device cpu]

One row per variant: batches/s of a full training step (forward with the components' hooks,
flow-matching loss plus the components' terms, backward, grad clipping, AdamW) on random data of
the tiny track's shape, and its ratio to the baseline. Steps are timed one at a time, round-robin
over the variants, and each variant's rate is 1 / its median step time, so a drifting or spiky
machine load hits every variant alike and single slow steps do not count. On a shared CPU,
``--threads 1`` avoids OpenMP stalls when a core is taken by someone else. REPA's teacher is the
small random-init stand-in (no weights offline): its row measures the projector and the hook
plumbing, not the cost of a real DINOv2 ViT-L.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from rich.console import Console
from rich.table import Table

from speedrun.components import Component, ComponentContext, TrainBatch
from speedrun.components.repa import REPA, REPAParams
from speedrun.components.tread import TREAD, TREADParams
from speedrun.data.loader import to_uint8
from speedrun.flow import RectifiedFlowObjective
from speedrun.model import build_model
from speedrun.optim import build_optimizer
from speedrun.protocol import StepState, collect_hooks
from speedrun.tracks import load_track

TEXT_DIM = 384  # MiniLM, the tiny track's text encoder

VARIANTS: dict[str, Callable[[], list[Component]]] = {
    "baseline": list,
    "repa (P=2048, random-init teacher)": lambda: [REPA(REPAParams(random_init_teacher=True))],
    "repa (P=1024, random-init teacher)": lambda: [REPA(REPAParams(random_init_teacher=True, projector_dim=1024))],
    "tread (keep 0.5)": lambda: [TREAD(TREADParams())],
    "tread + repa (P=2048)": lambda: [TREAD(TREADParams()), REPA(REPAParams(random_init_teacher=True))],
}


class Setup:
    """A tiny-track denoiser with one variant's components, its optimizer and a fixed batch."""

    def __init__(self, components: list[Component], batch: int, device: torch.device) -> None:
        track = load_track("tiny")
        torch.manual_seed(0)
        self.model = build_model(track.model.config, text_dim=TEXT_DIM).to(device)
        side = track.data.image_size // self.model.config.patch_size  # a pixel track: the images are x
        ctx = ComponentContext(
            model=self.model, track=track, device=device, seed=0, token_grid=(side, side), images_available=True
        )
        for comp in components:
            comp.setup(ctx)
        self.components = components
        self.hooks = collect_hooks(components, self.model.config.depth)  # as the trainer calls it
        self.objective = RectifiedFlowObjective(track.train.timesteps)
        params = [p for m in (self.model, *ctx.trainable.values()) for p in m.parameters() if p.requires_grad]
        self.params = params
        self.optimizer = build_optimizer(track, params, device)
        self.grad_clip = track.optim.grad_clip
        side, length = track.data.image_size, track.data.text_max_tokens
        gen = torch.Generator().manual_seed(1)
        x0 = (torch.rand(batch, 3, side, side, generator=gen) * 2 - 1).to(device)
        self.x0, self.noise = x0, torch.randn(x0.shape, generator=gen).to(device)
        self.text = torch.randn(batch, length, TEXT_DIM, generator=gen).to(device)
        self.mask = torch.ones(batch, length, dtype=torch.bool, device=device)
        self.gen = gen
        self.device = device
        self.step_index = 0

    def step(self) -> None:
        t = self.objective.sample_t(self.x0.shape[0], self.gen, "cpu").to(self.device)
        x_t, target = self.objective.input_and_target(self.x0, self.noise, t)
        state = StepState(step=self.step_index, seed=0, training=True, x_t=x_t, t=t)
        pred = self.model(x_t, t, self.text, self.mask, hooks=self.hooks, state=state)
        loss = self.objective.loss(pred.float(), target, x_t, t)
        batch = TrainBatch(
            x0=self.x0, noise=self.noise, text=self.text, text_mask=self.mask, images_uint8=to_uint8(self.x0)
        )
        for comp in self.components:
            for value in comp.losses(batch, pred, state).values():
                loss = loss + value
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        self.step_index += 1


def time_step(setup: Setup) -> float:
    """Seconds of one training step (CUDA synchronised on both sides)."""
    if setup.device.type == "cuda":
        torch.cuda.synchronize(setup.device)
    start = time.perf_counter()
    setup.step()
    if setup.device.type == "cuda":
        torch.cuda.synchronize(setup.device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32, help="batch size (the tiny track's global batch)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per variant (round-robin)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant before the rounds")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    setups = {name: Setup(make(), args.batch, device) for name, make in VARIANTS.items()}
    for setup in setups.values():
        for _ in range(args.warmup):
            setup.step()
    seconds: dict[str, list[float]] = {name: [] for name in setups}
    for _ in range(args.steps):
        for name, setup in setups.items():
            seconds[name].append(time_step(setup))

    rates = {name: 1 / statistics.median(values) for name, values in seconds.items()}
    title = f"training steps, tiny model, batch {args.batch}, {device.type}, {torch.get_num_threads()} threads"
    table = Table(title=title)
    for col in ("variant", "batches/s", "step ms (min / median / max)", "vs baseline"):
        table.add_column(col)
    for name, values in seconds.items():
        spread = f"{min(values) * 1e3:.0f} / {statistics.median(values) * 1e3:.0f} / {max(values) * 1e3:.0f}"
        table.add_row(name, f"{rates[name]:.3f}", spread, f"{rates[name] / rates['baseline']:.2f}x")
    Console().print(table)


if __name__ == "__main__":
    main()
