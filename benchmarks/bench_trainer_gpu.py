"""The whole trainer at the prx-256 shapes on one GPU: batches/s and MFU by the trainer's FLOP count.

Runs :class:`speedrun.train.Trainer` on the ``prx-256`` track (PRX 1.2B, bf16 autocast, fp32 master
weights, AdamW, grad clipping, the harness clock) with a per-GPU batch of 32 and synthetic data of
the track's shapes: Flux-VAE latents (16 x 32 x 32 for 256 x 256 images) and T5Gemma embeddings
(256 tokens x 2304, text lengths drawn per sample so the key mask matters). Synthetic data keeps
the measurement about the GPU: the prepared dataset needs the Flux VAE and T5Gemma weights.

What differs from a real prx-256 run: the step budget, the batch (32 instead of 256 over 8 GPUs),
a 32-sample validation loss at the end, and no checkpoint writes (a 1.2B checkpoint with AdamW state
is ~14 GB; the clock is paused for it in real runs anyway). With ``--data synthetic`` (the default)
batches come from a pool already in pinned memory; ``--data shards`` writes 8 batches of rows at
the same sizes to shards (``prx_rows.py``, ~0.3 GB in a temporary folder) and reads them with the
trainer's own loader, as a real run does (rows gathered one batch ahead in a background thread,
float16 copies, float32 conversion on the GPU).

    python benchmarks/bench_trainer_gpu.py --kernels triton --compile
    python benchmarks/bench_trainer_gpu.py --kernels torch --no-compile --steps 20
    python benchmarks/bench_trainer_gpu.py --profile 5
    python benchmarks/bench_trainer_gpu.py --data shards
    python benchmarks/bench_trainer_gpu.py --inductor max_autotune=True
    python benchmarks/bench_trainer_gpu.py --host-update

Prints one JSON line with the summary (batches_per_second is the median over steady-state windows,
as results report it; mfu uses the peak bf16 rate in ``speedrun.devices.PEAK_FLOPS``). GPU only.

``--profile N`` runs torch.profiler over N steady-state steps (after the warmup and two timed steps)
and first prints where the GPU time of a step goes: the share of the step's wall time in which
kernels ran, then kernel time per step by kind (GEMMs, attention, norm+RoPE, inductor-fused
elementwise, optimizer, copies), the slowest kernels, and where in the step the GPU sits idle
(the recurring gaps, named by the kernels before and after them). The profiler slows the run, so take
batches/s from a run without it.

``--host-update`` times the trainer's update as it was before the fused AdamW took over the clip and
the skip of a non-finite step (2026-11-27): gradients scaled in place, and the loss read on the
host before the update is queued. Against a run without it on the same card, it measures that change.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from prx_rows import LATENT_SHAPE, TEXT_DIM, prx_rows_split

import speedrun.optim
from speedrun.checkpointer import Checkpointer
from speedrun.data.loader import Batch, Loader
from speedrun.kernels import dispatch
from speedrun.tracks import Track, load_track
from speedrun.train import Trainer, TrainOptions

POOL = 8  # distinct synthetic batches, cycled


def bench_track(steps: int, warmup: int, batch: int, compile_model: bool) -> Track:
    data = load_track("prx-256").model_dump(mode="python")
    data["train"] = {
        **data["train"],
        "steps": steps,
        "global_batch": batch,
        "untimed_warmup_steps": warmup,
        "checkpoint_every": 10**9,
        "compile": compile_model,
    }
    data["eval"] = {
        **data["eval"],
        "interval": 10**9,
        "val_loss": {**data["eval"]["val_loss"], "samples": batch, "interval": 10**9},
    }
    return Track.model_validate(data)


def _batch(n: int, text_tokens: int, gen: torch.Generator, start: int = 0) -> Batch:
    lengths = torch.randint(16, text_tokens + 1, (n,), generator=gen)
    mask = torch.arange(text_tokens)[None, :] < lengths[:, None]
    text = torch.randn(n, text_tokens, TEXT_DIM, generator=gen) * mask[..., None]
    x = torch.randn(n, *LATENT_SHAPE, generator=gen)
    return Batch(x=x, text=text, text_mask=mask, index=torch.arange(start, start + n))


class SyntheticLoader:
    """The Loader interface over a small pool of pinned random batches."""

    def __init__(self, pool: list[Batch], batch_size: int) -> None:
        self.pool, self.batch_size, self.position = pool, batch_size, 0

    def __iter__(self) -> SyntheticLoader:
        return self

    def __next__(self) -> Batch:
        batch = self.pool[(self.position // self.batch_size) % len(self.pool)]
        self.position += self.batch_size
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position = state["position"]

    def close(self) -> None:
        """Nothing to stop: the pool is already in pinned memory."""


class SyntheticData:
    """The TrainData interface (root, text_dim, x_shape, null_embedding, loader, validation) at prx-256 shapes.

    The pool of train batches is built, in pinned memory, when the trainer asks for its loader.
    No train images: the benchmark runs no component, and none asks for them."""

    text_dim = TEXT_DIM
    x_shape = LATENT_SHAPE
    train_images = False
    root = None  # no prepared folder: no teacher prepare trained

    def __init__(self, text_tokens: int) -> None:
        self.text_tokens = text_tokens

    @staticmethod
    def _pinned(b: Batch) -> Batch:
        return Batch(x=b.x.pin_memory(), text=b.text.pin_memory(), text_mask=b.text_mask.pin_memory(), index=b.index)

    def null_embedding(self) -> tuple[torch.Tensor, torch.Tensor]:
        mask = torch.zeros(self.text_tokens, dtype=torch.bool)
        mask[0] = True  # the empty caption still has its end-of-sequence token
        return torch.zeros(self.text_tokens, TEXT_DIM), mask

    def loader(
        self, *, batch_size: int, seed: int, rank: int, world_size: int, device: torch.device, images: bool = False
    ) -> SyntheticLoader:
        if images:
            raise ValueError("SyntheticData has no train images")
        gen = torch.Generator().manual_seed(0)
        pool = [self._pinned(_batch(batch_size, self.text_tokens, gen, i * batch_size)) for i in range(POOL)]
        return SyntheticLoader(pool, batch_size)

    def validation(self, n: int) -> Batch:
        return _batch(n, self.text_tokens, torch.Generator().manual_seed(1))


class ShardData(SyntheticData):
    """SyntheticData whose train batches come from shards on disk through the trainer's Loader."""

    def __init__(self, text_tokens: int, root: Path, batch: int) -> None:
        super().__init__(text_tokens)
        self.split = prx_rows_split(root, POOL * batch)

    def loader(
        self, *, batch_size: int, seed: int, rank: int, world_size: int, device: torch.device, images: bool = False
    ) -> Loader:
        if images:
            raise ValueError("ShardData has no train images")
        return Loader(self.split, batch_size, seed, rank=rank, world_size=world_size, device=device, prefetch=True)


class NoCheckpoints(Checkpointer):
    def save(self, *args: Any, **kwargs: Any) -> None:
        return None


class BenchTrainer(Trainer):
    """The reference trainer minus checkpoint writes (clock-paused in real runs, ~14 GB here), with
    an optional profiler advanced at the start of every step (warmup steps included)."""

    profiler: Any = None
    checkpointer = NoCheckpoints

    def _step(self, *args: Any, **kwargs: Any):
        if self.profiler is not None:
            self.profiler.step()
        return super()._step(*args, **kwargs)


# Kernel kinds by name, first match wins: cuBLAS/CUTLASS GEMMs, this project's Triton kernels,
# SDPA's backends, inductor's generated kernels, the optimizer's multi-tensor kernels, copies.
KERNEL_KINDS = [
    ("gemm", r"gemm|nvjet|cutlass|xmma|cublas"),
    ("attention (triton)", r"_attn_"),
    ("norm+rope (triton)", r"_norm_rope"),
    ("attention (sdpa)", r"flash|fmha|cudnn|attention"),
    ("inductor fused", r"^triton_"),
    ("optimizer, grad clip", r"adam|multi_tensor|foreach"),
    ("copy / memset", r"memcpy|memset|copy"),
]


def kernel_kind(name: str) -> str:
    lowered = name.lower()
    return next((kind for kind, pattern in KERNEL_KINDS if re.search(pattern, lowered)), "other")


def _is_range(event: Any) -> bool:
    """A record_function range (ProfilerStep#N, Optimizer.step#AdamW.step), not a kernel.

    Ranges come back as GPU annotations spanning the kernels launched inside them: counting them
    counted those kernels twice (an H100 profile once showed 215% of the wall time busy). Kernel
    names can also appear as CPU events (inductor's launchers are named after their kernels), so
    "seen on the CPU" does not identify a range."""
    return bool(getattr(event, "is_user_annotation", False)) or event.key.startswith(("ProfilerStep", "Optimizer."))


def _is_kernel(event: Any) -> bool:
    """A GPU kernel, copy or memset (not a range's GPU annotation, not a CPU event)."""
    from torch.autograd import DeviceType

    return event.device_type == DeviceType.CUDA and not _is_range(event)


def gpu_time_breakdown(prof: Any, steps: int, top: int = 15) -> list[str]:
    """Lines describing the profiled steps: GPU-busy share, kernel ms per step by kind, slowest kernels."""
    averages = prof.key_averages()
    wall_us = sum(e.cpu_time_total for e in averages if e.key.startswith("ProfilerStep"))
    kernels = [(e.key, e.device_time_total, e.count) for e in averages if _is_kernel(e)]
    busy_us = sum(us for _, us, _ in kernels)
    by_kind: dict[str, float] = {}
    for name, us, _ in kernels:
        by_kind[kernel_kind(name)] = by_kind.get(kernel_kind(name), 0.0) + us
    lines = [
        f"profile: {steps} steps, {wall_us / steps / 1e3:.1f} ms wall per step, kernels busy "
        f"{busy_us / steps / 1e3:.1f} ms per step ({100 * busy_us / max(wall_us, 1e-9):.1f}% of wall)"
    ]
    for kind, us in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {kind:<20} {us / steps / 1e3:8.2f} ms/step {100 * us / max(busy_us, 1e-9):5.1f}%")
    lines.append(f"  slowest {top} kernels (ms per step, launches per step, kind, name):")
    for name, us, count in sorted(kernels, key=lambda k: -k[1])[:top]:
        lines.append(f"  {us / steps / 1e3:8.2f} {count / steps:5.0f}  {kernel_kind(name):<20} {name[:90]}")
    return lines


def kernel_intervals(prof: Any) -> list[tuple[str, float, float]]:
    """(name, start µs, end µs) of every GPU kernel, copy and memset the profiler saw, ranges excluded."""
    return [(e.key, e.time_range.start, e.time_range.end) for e in prof.events() if _is_kernel(e)]


def idle_gaps(kernels: list[tuple[str, float, float]], steps: int, min_gap_us: float = 20.0, top: int = 8) -> list[str]:
    """Lines on when the GPU ran nothing: idle ms per step and the recurring gaps by the kernels around them.

    Over the span from the first kernel to the last; kernels that overlap (other streams) count
    once. A gap is named by the kernel that ended last before it and the one that starts it: the
    same pair every step is one place in the step where the GPU waits for the CPU (a synchronising
    read, host work before a launch). Gaps under ``min_gap_us`` (launch latency) are counted in
    the total only.
    """
    if not kernels:
        return ["idle: no kernels profiled"]
    ordered = sorted(kernels, key=lambda k: k[1])
    idle_us = 0.0
    places: dict[tuple[str, str], list[float]] = {}
    last_name, last_end = ordered[0][0], ordered[0][2]
    for name, start, end in ordered[1:]:
        gap = start - last_end
        if gap > 0:
            idle_us += gap
            if gap >= min_gap_us:
                places.setdefault((last_name, name), []).append(gap)
        if end >= last_end:
            last_name, last_end = name, end
    listed = sum(sum(g) for g in places.values())
    count = sum(len(g) for g in places.values())
    lines = [
        f"idle: {idle_us / steps / 1e3:.2f} ms per step with no kernel running; {listed / steps / 1e3:.2f} ms of it "
        f"in {count / steps:.1f} gaps of >= {min_gap_us:g} us per step, the largest places "
        "(ms per step, gaps per step, kernel before -> kernel after):"
    ]
    for (before, after), gaps in sorted(places.items(), key=lambda kv: -sum(kv[1]))[:top]:
        lines.append(f"  {sum(gaps) / steps / 1e3:8.2f} {len(gaps) / steps:5.1f}  {before[:60]} -> {after[:60]}")
    return lines


def apply_inductor_options(pairs: list[str]) -> dict[str, Any]:
    """Set ``torch._inductor.config`` entries from ``KEY=VALUE`` strings; returns what was set.

    KEY may be dotted (``triton.cudagraphs``); VALUE is a Python literal of the entry's type. For
    trying inductor's options on the trainer (``max_autotune=True``: Triton GEMM templates with
    fused epilogues) without touching the harness, which compiles with the defaults.
    """
    import ast

    from torch._inductor import config

    applied: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise ValueError(f"--inductor {pair!r}: expected KEY=VALUE")
        *path, name = key.split(".")
        owner: Any = config
        for part in path:
            owner = getattr(owner, part, None)
        if owner is None or not hasattr(owner, name):
            raise ValueError(f"--inductor {pair!r}: torch._inductor.config has no entry {key!r}")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            raise ValueError(f"--inductor {pair!r}: {raw!r} is not a Python literal (strings need quotes)") from None
        current = getattr(owner, name)
        if current is not None and not isinstance(value, type(current)):
            raise ValueError(
                f"--inductor {pair!r}: {key} is a {type(current).__name__}, got a {type(value).__name__}"
            )
        setattr(owner, name, value)
        applied[key] = value
    return applied


def choose_update(host: bool) -> str:
    """Make the trainer update as before 2026-11-27 when ``host`` (see the module doc); the label for
    the JSON. The trainer asks :func:`speedrun.optim.updates_in_kernel` at each use, so this is one
    switch for the whole process."""
    if host:
        speedrun.optim.updates_in_kernel = lambda optimizer: False
        return "host"
    return "in-kernel"


def _profiler(warmup: int, steps: int):
    """A torch.profiler over ``steps`` steps after the warmup and two timed ones (a null context for 0)."""
    if not steps:
        return contextlib.nullcontext()
    from torch.profiler import ProfilerActivity, profile, schedule

    plan = schedule(wait=warmup + 2, warmup=1, active=steps, repeat=1)
    return profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], schedule=plan)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", choices=["triton", "torch"], default="triton")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5, help="untimed warmup steps (compilation happens here)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="profile N steady-state steps")
    parser.add_argument("--data", choices=["synthetic", "shards"], default="synthetic", help="see the module doc")
    parser.add_argument(
        "--inductor", action="append", default=[], metavar="KEY=VALUE",
        help="set a torch._inductor.config entry before compiling (repeatable), e.g. max_autotune=True",
    )
    parser.add_argument(
        "--host-update",
        action="store_true",
        help="clip in place and read the loss before the update (see the module doc)",
    )
    args = parser.parse_args(argv)
    try:
        inductor = apply_inductor_options(args.inductor)
    except ValueError as exc:
        parser.error(str(exc))
    if args.profile and args.steps < args.profile + 3:
        parser.error(f"--steps {args.steps} leaves no room to profile {args.profile} steps after 3 timed ones")
    if not torch.cuda.is_available():
        print("bench_trainer_gpu: CUDA is not available; nothing to benchmark (skipped).")
        return 0
    dispatch.set_backend(args.kernels)
    update = choose_update(args.host_update)
    track = bench_track(args.steps, args.warmup, args.batch, args.compile)
    with tempfile.TemporaryDirectory() as tmp:
        tokens = track.data.text_max_tokens
        data = SyntheticData(tokens) if args.data == "synthetic" else ShardData(tokens, Path(tmp), args.batch)
        options = TrainOptions(run_dir=Path(tmp) / "run", seed=0, device="cuda", resume=False, progress=False)
        t0 = time.perf_counter()
        trainer = BenchTrainer(track, data, [], options)
        with _profiler(args.warmup, args.profile) as prof:
            trainer.profiler = prof
            summary = trainer.run()
        wall = time.perf_counter() - t0
        if prof is not None:
            print("\n".join(gpu_time_breakdown(prof, args.profile) + idle_gaps(kernel_intervals(prof), args.profile)))
        rows = [json.loads(x) for x in (options.run_dir / "train.jsonl").read_text().splitlines()]
    step_s = [r["step_s"] for r in rows if "step_s" in r]
    out = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "kernels": args.kernels,
        "compile": args.compile,
        "data": args.data,
        "inductor": inductor,
        "update": update,
        "batch": args.batch,
        "params": sum(p.numel() for p in trainer.model.parameters()),
        "wall_s": round(wall, 1),
        "first_timed_steps_s": [round(s, 4) for s in step_s[:3]],
        "losses": [round(r["loss"], 4) for r in rows if "loss" in r][:: max(1, args.steps // 8)],
        **summary.model_dump(exclude={"val_loss_curve", "eval_checkpoints", "code"}),
    }
    print(json.dumps(out))
    return 0 if summary.status == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
