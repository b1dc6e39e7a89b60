"""Harness overhead: a trainer step vs a bare forward+backward+AdamW step of the same model.

The trainer adds the clock, the loader, the CPU-side randomness of the global batch, caption
dropout, the hook plumbing, grad clipping and the JSONL log. Target: at most 5% slower than the
bare step on the tiny config (batch 32, 32x32 pixels, CPU fp32).

    python -m pytest benchmarks/bench_train.py --benchmark-enable -q
    python benchmarks/bench_train.py        # prints the two rates and the overhead
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from speedrun.data.prepare import prepare
from speedrun.data.source import TrainData
from speedrun.model import build_model
from speedrun.tracks import Track, load_track
from speedrun.train import Trainer, TrainOptions

STEPS = 60


def _track(steps: int) -> Track:
    data = load_track("tiny").model_dump(mode="python")
    data["train"] = {**data["train"], "steps": steps, "checkpoint_every": 10_000, "untimed_warmup_steps": 3}
    data["eval"] = {**data["eval"], "interval": 10_000, "val_loss": {**data["eval"]["val_loss"], "interval": 10_000}}
    return Track.model_validate(data)


def trainer_rate(data_root: Path, steps: int = STEPS) -> float:
    """Steps/s over the timed steps of a trainer run (median of windows, as results report)."""
    track = _track(steps)
    with tempfile.TemporaryDirectory() as tmp:
        options = TrainOptions(run_dir=Path(tmp), seed=0, device="cpu", progress=False)
        summary = Trainer(track, TrainData.open(track, data_root), [], options).run()
        rows = [json.loads(x) for x in (Path(tmp) / "train.jsonl").read_text().splitlines()]
    step_s = [r["step_s"] for r in rows if "step_s" in r][5:]
    assert summary.status == "ok"
    return 1.0 / statistics.median(step_s)


def bare_rate(data_root: Path, steps: int = STEPS) -> float:
    """Steps/s of the same model, batch and optimizer with nothing around it (random tensors)."""
    track = load_track("tiny")
    data = TrainData.open(track, data_root)
    torch.manual_seed(0)
    model = build_model("tiny", text_dim=data.text_dim)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), eps=1e-15)
    b = track.train.global_batch
    x = torch.randn(b, 3, 32, 32)
    text = torch.randn(b, track.data.text_max_tokens, data.text_dim)
    mask = torch.ones(b, track.data.text_max_tokens, dtype=torch.bool)
    times = []
    for i in range(steps + 3):
        t0 = time.perf_counter()
        t = torch.rand(b)
        loss = (model(x, t, text, mask) - x).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 3 + 5:
            times.append(time.perf_counter() - t0)
    return 1.0 / statistics.median(times)


def _data_root() -> Path:
    from speedrun.paths import data_root

    root = data_root()
    prepare(load_track("tiny"), root, progress=False)
    return root


def test_trainer_overhead(benchmark):
    root = _data_root()
    rates = benchmark.pedantic(lambda: (trainer_rate(root), bare_rate(root)), rounds=1, iterations=1)
    benchmark.extra_info.update(
        trainer_steps_per_s=rates[0], bare_steps_per_s=rates[1], overhead=rates[1] / rates[0] - 1
    )


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    root = _data_root()
    bare = bare_rate(root)
    trainer = trainer_rate(root)
    print(f"bare {bare:.2f} steps/s  trainer {trainer:.2f} steps/s  overhead {100 * (bare / trainer - 1):+.1f}%")
