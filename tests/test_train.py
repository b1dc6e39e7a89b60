"""The fixed trainer: warmup undone, exact resume, clock, divergence, hooks, optimizer coverage, DDP."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from launch_helpers import free_port
from torch import nn

from speedrun import optim
from speedrun.checkpoint import read_meta
from speedrun.clock import Budget, Clock, Paused, median_speed
from speedrun.components import Component, ComponentContext, Params, StepState, TrainBatch
from speedrun.data.source import TrainData
from speedrun.errors import SpeedrunError
from speedrun.flow import RectifiedFlowObjective
from speedrun.optim import build_optimizer, check_fp32_master, check_optimizer_coverage, clip_gradients
from speedrun.parallel import Parallel
from speedrun.runlog import RunLog
from speedrun.train import Trainer, TrainOptions
from speedrun.verify import flops_per_step_of

REPO = Path(__file__).resolve().parent.parent


def log_rows(run_dir: Path) -> list[dict]:
    """Every line of the run's training log (steps, and the events marked "event")."""
    return [json.loads(line) for line in (run_dir / "train.jsonl").read_text().splitlines()]


def losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in log_rows(run_dir) if "loss" in r and "event" not in r]


def starts(run_dir: Path) -> list[str | None]:
    """The checkpoint each session of the run's log resumed from (None: from scratch)."""
    return [r["resumed_from"] for r in log_rows(run_dir) if r.get("event") == "start"]


def train(track, data_root, run_dir, components=(), seed=0, code=None, **opts):
    data = TrainData.open(track, data_root)
    options = TrainOptions(run_dir=run_dir, seed=seed, device="cpu", progress=False, **opts)
    trainer = Trainer(track, data, list(components), options, code=code)
    return trainer, trainer.run()


# ---------------------------------------------------------------- test-only components
class AlignParams(Params):
    block: int = 1
    weight: float = 0.5


class FeatureAlign(Component):
    """Cosine alignment of block ``block``'s output tokens (through a head) with a fixed target."""

    name = "test-align"
    Params = AlignParams

    def setup(self, ctx: ComponentContext) -> None:
        hidden = ctx.model.config.hidden_size
        self.head = ctx.add_trainable("align", nn.Linear(hidden, 8))
        self.teacher = ctx.add_frozen("teacher", nn.Linear(3 * 16, 8))

    def hooks(self):
        def record(tokens: torch.Tensor, state: StepState) -> torch.Tensor:
            state.records["align"] = (tokens, state.token_index)
            return tokens

        return {self.params.block: (None, record)}

    def losses(self, batch: TrainBatch, prediction: torch.Tensor, state: StepState):
        tokens, visible = state.records["align"]
        b = batch.x0.shape[0]
        patches = batch.x0.unfold(2, 4, 4).unfold(3, 4, 4).permute(0, 2, 3, 1, 4, 5).reshape(b, -1, 48)
        with torch.no_grad():
            target = self.teacher(patches)
        if visible is not None:
            target = target.gather(1, visible[..., None].expand(-1, -1, target.shape[-1]))
        cos = nn.functional.cosine_similarity(self.head(tokens), target, dim=-1)
        return {"align": -self.params.weight * cos.mean()}


class DropParams(Params):
    start: int = 0
    end: int = 1
    keep: float = 0.5


class TokenDrop(Component):
    """Keeps a random ``keep`` fraction of image tokens from block ``start`` through ``end``."""

    name = "test-drop"
    Params = DropParams

    def hooks(self):
        def gather(tokens: torch.Tensor, state: StepState) -> torch.Tensor:
            if not state.training:
                return tokens
            b, n, _ = tokens.shape
            g = torch.Generator().manual_seed(state.seed * 7919 + state.step)
            keep = int(round(self.params.keep * n))
            idx = torch.rand(b, n, generator=g).argsort(dim=1)[:, :keep].sort(dim=1).values
            state.records["full"] = tokens
            state.token_index = idx
            return tokens.gather(1, idx[..., None].expand(-1, -1, tokens.shape[-1]))

        def scatter(tokens: torch.Tensor, state: StepState) -> torch.Tensor:
            if state.token_index is None:
                return tokens
            full = state.records.pop("full").clone()
            full.scatter_(1, state.token_index[..., None].expand(-1, -1, tokens.shape[-1]), tokens)
            state.token_index = None
            return full

        return {self.params.start: (gather, None), self.params.end: (None, scatter)}


class NanAt(Component):
    name = "test-nan"

    def losses(self, batch, prediction, state):
        bad = float("nan") if state.step == 3 else 0.0
        return {"poison": prediction.sum() * 0 + bad}


# ---------------------------------------------------------------- tests
def test_warmup_buys_nothing(smoke_data_root, tmp_path, track_variant):
    """Untimed warmup steps are undone: the timed losses equal a run without warmup, bit for bit."""
    cold = track_variant(train={"steps": 5, "untimed_warmup_steps": 0})
    warm = track_variant(train={"steps": 5, "untimed_warmup_steps": 3})
    _, s0 = train(cold, smoke_data_root, tmp_path / "cold")
    _, s1 = train(warm, smoke_data_root, tmp_path / "warm")
    assert losses(tmp_path / "cold") == losses(tmp_path / "warm")
    assert s0.warmup_seconds == 0 and s1.warmup_seconds > 0


def test_resume_equals_uninterrupted(smoke_data_root, tmp_path, track_variant):
    track = track_variant(train={"steps": 8, "checkpoint_every": 4, "untimed_warmup_steps": 1})
    _, full = train(track, smoke_data_root, tmp_path / "full")
    _, part = train(track, smoke_data_root, tmp_path / "cut", stop_after=4)
    assert part.steps == 4
    _, rest = train(track, smoke_data_root, tmp_path / "cut")
    assert rest.steps == 8
    assert losses(tmp_path / "cut") == losses(tmp_path / "full")
    assert rest.val_loss_curve == full.val_loss_curve


def test_a_resumed_run_warms_up_before_its_clock_starts(smoke_data_root, tmp_path, track_variant, monkeypatch):
    """Each process pays for compilation and caches in its first step; a resumed one too, and that
    step must be an untimed warmup step there as well, not the first timed one. The delay dwarfs a smoke step
    even on a loaded machine (0.9 s seen beside a training run), so no timed step can reach it by itself."""
    first_call_s = 3.0
    original = Trainer._step

    def slow_first_step(self, *args):
        if not getattr(self, "warmed", False):
            self.warmed = True
            time.sleep(first_call_s)
        return original(self, *args)

    monkeypatch.setattr(Trainer, "_step", slow_first_step)
    track = track_variant(train={"steps": 4, "checkpoint_every": 2, "untimed_warmup_steps": 1})
    _, part = train(track, smoke_data_root, tmp_path / "run", stop_after=2)
    _, rest = train(track, smoke_data_root, tmp_path / "run")
    assert starts(tmp_path / "run") == [None, "step-00000002"] and rest.steps == 4
    rows = log_rows(tmp_path / "run")
    assert [r["step"] for r in rows if "step_s" in r] == [0, 1, 2, 3]
    assert max(r["step_s"] for r in rows if "step_s" in r) < first_call_s
    assert part.warmup_seconds >= first_call_s and rest.warmup_seconds >= part.warmup_seconds + first_call_s


def test_a_finished_run_resumed_reports_what_it_reported(smoke_data_root, tmp_path, track_variant):
    """Run again after it finished (as `speedrun run` does when the evaluation failed), a seed takes no
    step: its summary still has the last loss, the FLOPs per step and the speed of the steps it took."""
    track = track_variant(train={"steps": 4, "checkpoint_every": 2})
    _, done = train(track, smoke_data_root, tmp_path / "run")
    _, again = train(track, smoke_data_root, tmp_path / "run")
    assert starts(tmp_path / "run") == [None, "step-00000004"] and again.steps == 4
    for name in ("status", "final_loss", "last_finite_loss", "flops_per_step", "batches_per_second"):
        assert getattr(again, name) == getattr(done, name), name
    # The checkpoint's reading: the resumed clock starts and stops with no step between (microseconds).
    saved = read_meta(tmp_path / "run" / "checkpoints" / "step-00000004").clock_seconds
    assert saved <= again.clock_seconds < saved + 0.01 and saved <= done.clock_seconds
    assert done.flops_per_step > 0 and done.final_loss is not None


def test_step_times_cover_the_clock_between_steps(smoke_data_root, tmp_path, track_variant, monkeypatch):
    """Host work between two steps (here a progress bar that takes 50 ms) runs on the clock, so the
    per-step times that make batches/s must include it: they add up to the clock."""
    pause = 0.05

    monkeypatch.setattr(RunLog, "progress", lambda *_: time.sleep(pause))
    track = track_variant(train={"steps": 6, "checkpoint_every": 6})
    _, summary = train(track, smoke_data_root, tmp_path / "run")
    rows = log_rows(tmp_path / "run")
    steps = [r for r in rows if "event" not in r]
    step_s = [r["step_s"] for r in steps]
    assert len(step_s) == 6 and min(step_s[1:]) >= pause
    # The steps add up to the clock's reading at the end of the last one; only the last update,
    # after it, is on the clock but in no step.
    assert sum(step_s) == pytest.approx(steps[-1]["clock_s"], abs=1e-3)
    assert summary.clock_seconds >= steps[-1]["clock_s"] + pause
    assert summary.batches_per_second == pytest.approx(6 / sum(step_s))


def test_a_timed_budget_ends_on_an_evaluated_step_and_stays_spent(smoke_data_root, tmp_path, track_variant):
    """train.max_seconds: the step in which the clock passes it is the last one, validated and made an
    evaluation checkpoint like the last step of a step budget; run again, the seed takes no further step."""
    track = track_variant(train={"steps": 20, "checkpoint_every": 10, "max_seconds": 1e-9})
    _, spent = train(track, smoke_data_root, tmp_path / "run")
    assert (spent.status, spent.steps, spent.eval_checkpoints) == ("ok", 1, ["step-00000001"])
    assert [v.step for v in spent.val_loss_curve] == [1]
    _, again = train(track, smoke_data_root, tmp_path / "run")
    assert (again.steps, again.eval_checkpoints, again.val_loss_curve) == (1, ["step-00000001"], spent.val_loss_curve)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*")) == ["step-00000001"]


def test_a_run_cut_at_the_step_that_spends_its_timed_budget_resumes_spent(smoke_data_root, tmp_path, track_variant):
    """--stop-after cuts the run at the very step whose clock passes the budget: that step still spends
    it, so the resumed run takes no further step, like the uninterrupted run (one step)."""
    track = track_variant(train={"steps": 20, "checkpoint_every": 10, "max_seconds": 1e-9})
    _, part = train(track, smoke_data_root, tmp_path / "run", stop_after=1)
    assert part.steps == 1
    _, rest = train(track, smoke_data_root, tmp_path / "run")
    assert (rest.status, rest.steps, rest.eval_checkpoints) == ("ok", 1, ["step-00000001"])


def test_a_checkpoint_whose_clock_passed_the_budget_after_the_decision_takes_one_more_step(
    smoke_data_root, tmp_path, track_variant, monkeypatch
):
    """The budget is decided on a reading of the running clock; the checkpoint's clock is read later,
    paused. A checkpoint clock past the budget that no decision spent (here every paused reading is
    1000 s late) must not end the resumed run without a step: the step in which the clock passes the
    budget is taken, validated and evaluated, as the budget's last."""
    track = track_variant(train={"steps": 20, "checkpoint_every": 10, "max_seconds": 500.0})
    real = Budget.run_clock
    monkeypatch.setattr(Budget, "run_clock", lambda self: real(self) + (0 if self.clock.running else 1e3))
    _, part = train(track, smoke_data_root, tmp_path / "run", stop_after=10)
    assert part.steps == 10 and part.clock_seconds >= 1e3
    monkeypatch.setattr(Budget, "run_clock", real)
    _, rest = train(track, smoke_data_root, tmp_path / "run")
    assert (rest.status, rest.steps) == ("ok", 11) and rest.eval_checkpoints[-1] == "step-00000011"
    assert rest.val_loss_curve[-1].step == 11 and rest.clock_seconds >= 1e3


class DrawParams(Params):
    extra: int = 0


class DrawsMoreTimesteps(Component):
    """Replaces the objective by the baseline's, but its ``sample_t`` first spends ``extra`` draws of the
    generator it is given; records the noise each step hands it."""

    name = "test-draws"
    Params = DrawParams

    def setup(self, ctx: ComponentContext) -> None:
        extra, noises = self.params.extra, []

        class Recording(RectifiedFlowObjective):
            def sample_t(self, n, generator, device):
                torch.rand(extra, generator=generator, device=device)
                return super().sample_t(n, generator, device)

            def input_and_target(self, x0, noise, t):
                noises.append(noise.clone())
                return super().input_and_target(x0, noise, t)

        self.noises, self._objective = noises, Recording(ctx.track.train.timesteps)
        ctx.add_trainable("extra-head", nn.Linear(4, 4))  # initialised from the global RNG, after the denoiser

    def objective(self):
        return self._objective


def test_paired_seeds_share_noise_and_initial_weights_whatever_an_entry_draws(smoke_data_root, tmp_path, track_variant):
    """Seed s of an entry that draws more randomness (a head, extra timestep draws) sees the very noise
    and initial denoiser the baseline's seed s sees, at every step: entries compare seed by seed."""
    track = track_variant(train={"steps": 4, "untimed_warmup_steps": 0})
    plain, greedy = DrawsMoreTimesteps(DrawParams()), DrawsMoreTimesteps(DrawParams(extra=5))
    base, _ = train(track, smoke_data_root, tmp_path / "base", components=[plain])
    other, _ = train(track, smoke_data_root, tmp_path / "other", components=[greedy])
    assert len(plain.noises) == len(greedy.noises) == 4
    assert all(torch.equal(a, b) for a, b in zip(plain.noises, greedy.noises))
    for key, value in base.initial_state["model"].items():
        assert torch.equal(value, other.initial_state["model"][key]), key
    third, _ = train(
        track, smoke_data_root, tmp_path / "seed1", components=[d := DrawsMoreTimesteps(DrawParams())], seed=1
    )
    assert not torch.equal(d.noises[0], plain.noises[0])


def test_resume_refuses_a_checkpoint_written_by_other_code(smoke_data_root, tmp_path, track_variant):
    """A results file names one version of the code for all its steps, so a seed whose submission or
    harness changed since its last checkpoint is not resumed; --no-resume starts it over."""
    track = track_variant(train={"steps": 4, "checkpoint_every": 2})
    code = {"harness_sha256": "a" * 64, "submission_files": {"submission.toml": "1", "components.py": "2"}}
    edited = {**code, "submission_files": {"components.py": "3", "NOTES.md": "4"}}
    run_dir = tmp_path / "run"
    _, part = train(track, smoke_data_root, run_dir, code=code, stop_after=2)
    assert part.steps == 2
    changes = r"components.py changed; NOTES.md added; submission.toml removed"
    with pytest.raises(SpeedrunError, match=rf"step-00000002: written by other code \({changes}\).*--no-resume"):
        train(track, smoke_data_root, run_dir, code=edited)
    with pytest.raises(SpeedrunError, match=r"the harness code that trains and evaluates \(speedrun/\) changed\)"):
        train(track, smoke_data_root, run_dir, code={**code, "harness_sha256": "b" * 64})
    _, rest = train(track, smoke_data_root, run_dir, code=code)
    assert rest.steps == 4 and starts(run_dir) == [None, "step-00000002"]
    _, fresh = train(track, smoke_data_root, run_dir, code=edited, resume=False)
    assert fresh.steps == 4 and starts(run_dir) == [None]
    assert json.loads((run_dir / "checkpoints" / "step-00000004" / "meta.json").read_text())["code"] == edited


def test_a_run_started_over_that_dies_before_its_first_checkpoint_is_not_resumed_from_the_old_run(
    smoke_data_root, tmp_path, track_variant, monkeypatch
):
    track = track_variant(train={"steps": 4, "checkpoint_every": 2})
    run_dir = tmp_path / "run"
    train(track, smoke_data_root, run_dir)
    original = Trainer._step

    def killed(self, step, *args):
        if step == 1:
            raise KeyboardInterrupt  # the fresh run dies in its second step, before its first checkpoint
        return original(self, step, *args)

    monkeypatch.setattr(Trainer, "_step", killed)
    with pytest.raises(KeyboardInterrupt):
        train(track, smoke_data_root, run_dir, resume=False)
    assert list((run_dir / "checkpoints").glob("step-*")) == []
    monkeypatch.setattr(Trainer, "_step", original)
    _, again = train(track, smoke_data_root, run_dir)
    assert again.steps == 4 and starts(run_dir) == [None]


def test_loss_decreases_on_smoke(smoke_data_root, tmp_path, track_variant):
    val_loss = {"samples": 16, "timesteps": 8, "seed": 0, "interval": 5}
    track = track_variant(train={"steps": 40, "checkpoint_every": 40}, eval={"val_loss": val_loss})
    _, summary = train(track, smoke_data_root, tmp_path / "run")
    curve = [p.val_loss for p in summary.val_loss_curve]
    assert summary.status == "ok" and len(curve) == 8
    assert curve[-1] < 0.8 * curve[0], curve


def test_component_hooks_heads_and_losses(smoke_data_root, tmp_path, track_variant):
    track = track_variant(train={"steps": 4, "checkpoint_every": 4})
    align = FeatureAlign(AlignParams(block=1))
    trainer, summary = train(track, smoke_data_root, tmp_path / "run", components=[align, TokenDrop(DropParams())])
    assert summary.status == "ok"
    rows = log_rows(tmp_path / "run")
    steps = [r for r in rows if "step" in r and "event" not in r]
    assert all("align" in r and r["align"] < 0.5 for r in steps)
    assert all(math.isclose(r["loss"], r["loss_fm"] + r["align"], rel_tol=1e-5) for r in steps)
    # The head trained, the teacher did not, and both are out of the denoiser's state dict.
    assert align.head.weight.grad is not None
    assert all(p.grad is None and not p.requires_grad for p in align.teacher.parameters())
    assert not any(k.startswith("components") for k in trainer.model.state_dict())
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "run" / "checkpoints" / "step-00000004" / "model.safetensors"))
    assert {k for k in saved if k.startswith("components.")} == {"components.align.weight", "components.align.bias"}


def test_token_drop_keep_all_equals_plain(smoke_data_root, tmp_path, track_variant):
    track = track_variant(train={"steps": 3, "checkpoint_every": 3})
    train(track, smoke_data_root, tmp_path / "plain")
    train(track, smoke_data_root, tmp_path / "drop", components=[TokenDrop(DropParams(keep=1.0))])
    torch.testing.assert_close(losses(tmp_path / "drop"), losses(tmp_path / "plain"), rtol=1e-6, atol=1e-6)


def use_fused_adamw(monkeypatch) -> None:
    """Give the trainer the fused AdamW it takes on CUDA: torch has the fused kernel on the CPU too,
    so the CUDA path (clip and non-finite skip inside the update kernel, no host read before the
    update) runs here."""
    cuda_choice = build_optimizer
    monkeypatch.setattr(
        "speedrun.optim.build_optimizer", lambda track, params, device: cuda_choice(track, params, torch.device("cuda"))
    )


@pytest.fixture(params=["default", "fused"])
def adamw(request, monkeypatch):
    """The trainer with the CPU's default AdamW, or with the fused one of CUDA runs."""
    if request.param == "fused":
        use_fused_adamw(monkeypatch)
    return request.param


def test_divergence_stops_within_one_step(smoke_data_root, tmp_path, track_variant, adamw):
    """A non-finite step stops the run and changes nothing: the weights and the optimizer's step count
    are those of a run stopped just before it."""
    track = track_variant(train={"steps": 10, "checkpoint_every": 10})
    trainer, summary = train(track, smoke_data_root, tmp_path / "run", components=[NanAt(Params())])
    assert summary.status == "diverged"
    assert summary.diverged_at == 3 and summary.steps == 3
    assert summary.last_finite_loss is not None and math.isfinite(summary.last_finite_loss)
    assert "non-finite loss at step 3" in summary.reason
    assert bool(trainer.optimizer.param_groups[0]["fused"]) == (adamw == "fused")
    before, _ = train(track, smoke_data_root, tmp_path / "three", components=[NanAt(Params())], stop_after=3)
    for (name, got), want in zip(trainer.model.state_dict().items(), before.model.state_dict().values()):
        assert torch.equal(got, want), name
    assert {int(s["step"]) for s in trainer.optimizer.state.values()} == {3}


def test_fused_adamw_trains_like_the_default_with_the_clip_in_its_kernel(
    smoke_data_root, tmp_path, track_variant, monkeypatch
):
    """The CUDA trainer's update (fused AdamW, clip divided inside its kernel) gives the losses and
    gradient norms of the CPU's default AdamW after torch's clip_grad_norm_, with the clip active."""
    track = track_variant(train={"steps": 5, "checkpoint_every": 5}, optim={"grad_clip": 0.05})
    train(track, smoke_data_root, tmp_path / "default")
    use_fused_adamw(monkeypatch)
    trainer, _ = train(track, smoke_data_root, tmp_path / "fused")
    assert trainer.optimizer.param_groups[0]["fused"]

    def logged(run: str, key: str) -> list[float]:
        rows = log_rows(tmp_path / run)
        return [r[key] for r in rows if key in r and "event" not in r]

    assert min(logged("default", "grad_norm")) > 0.05 * 2  # every step was clipped
    for key in ("loss", "grad_norm"):
        torch.testing.assert_close(logged("fused", key), logged("default", key), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("max_norm", [0.1, 1e6], ids=["clipped", "unclipped"])
def test_clip_gradients_in_the_fused_kernel_equals_torchs_clip_then_step(track_variant, max_norm):
    track = track_variant()
    model, reference = nn.Linear(8, 4), nn.Linear(8, 4)
    reference.load_state_dict(model.state_dict())
    fused = build_optimizer(track, list(model.parameters()), torch.device("cuda"))  # fused; CPU parameters
    o = track.optim
    plain = torch.optim.AdamW(
        reference.parameters(), lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay, foreach=False
    )
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        x = torch.randn(16, 8, generator=gen)
        for m in (model, reference):
            m.zero_grad()
            (10 * m(x)).square().mean().backward()
        want = torch.nn.utils.clip_grad_norm_(list(reference.parameters()), max_norm)
        grads = [p.grad.clone() for p in model.parameters()]
        got = clip_gradients(fused, list(model.parameters()), max_norm)
        torch.testing.assert_close(got, want)
        # The gradients are left for the kernel, which divides them by the clip's reciprocal.
        assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
        torch.testing.assert_close(fused.grad_scale, torch.tensor(max(1.0, (float(want) + 1e-6) / max_norm)))
        fused.step()
        plain.step()
    for got, want in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_clip_gradients_scales_in_place_for_other_optimizers(track_variant):
    model = nn.Linear(8, 4)
    opt = build_optimizer(track_variant(), list(model.parameters()), torch.device("cpu"))
    model(torch.ones(2, 8)).sum().mul(100).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    norm = clip_gradients(opt, list(model.parameters()), 0.5)
    torch.testing.assert_close(norm, torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads])))
    for p, g in zip(model.parameters(), grads):
        torch.testing.assert_close(p.grad, g * 0.5 / (float(norm) + 1e-6))
    assert not hasattr(opt, "grad_scale")


class LatentShapedData:
    """TrainData's interface with latent-sized inputs: 8 x 8 grids for 64 x 64 "images"."""

    text_dim, tokens = 384, 32
    x_shape, train_images, root = (3, 8, 8), False, None

    def _batch(self, n: int):
        from speedrun.data.loader import Batch

        g = torch.Generator().manual_seed(n)
        mask = torch.ones(n, self.tokens, dtype=torch.bool)
        return Batch(torch.randn(n, 3, 8, 8, generator=g), torch.randn(n, self.tokens, self.text_dim, generator=g),
                     mask, torch.arange(n))

    def null_embedding(self):
        return torch.zeros(self.tokens, self.text_dim), torch.ones(self.tokens, dtype=torch.bool)

    def loader(self, *, batch_size, seed, rank, world_size, device, images=False):
        batch = self._batch(batch_size)

        class Repeat:
            position = 0

            def __iter__(self):
                return self

            def __next__(self):
                return batch

            def state_dict(self):
                return {}

            def load_state_dict(self, state):
                pass

            def close(self):
                pass

        return Repeat()

    def validation(self, n: int):
        return self._batch(n)


def test_flops_count_the_grid_the_model_sees(tmp_path, track_variant):
    """On latent tracks MFU counts the latent grid (image_size / 8), not the image size."""
    track = track_variant(
        data={"representation": "flux-vae", "vae": "org/vae@0123abc", "image_size": 64},
        train={"steps": 2, "untimed_warmup_steps": 0},
    )
    options = TrainOptions(run_dir=tmp_path, seed=0, device="cpu", progress=False)
    trainer = Trainer(track, LatentShapedData(), [], options)
    summary = trainer.run()
    batch, tokens = track.train.global_batch, track.data.text_max_tokens
    assert summary.flops_per_step == trainer.model.flops_per_step(batch, (8, 8), tokens)
    assert summary.flops_per_step == flops_per_step_of(track)  # what `speedrun verify` expects
    assert summary.flops_per_step < trainer.model.flops_per_step(batch, (64, 64), tokens) / 10


def test_optimizer_coverage_checks():
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    ok = torch.optim.AdamW([*a.parameters(), *b.parameters()])
    check_optimizer_coverage(ok, [a, b])
    with pytest.raises(RuntimeError, match="covers 2 of 4"):
        check_optimizer_coverage(torch.optim.AdamW(a.parameters()), [a, b])
    with pytest.raises(RuntimeError, match="twice"):
        check_optimizer_coverage(torch.optim.AdamW([a.weight, a.weight, a.bias]), [a])
    frozen = nn.Linear(2, 2).requires_grad_(False)
    check_optimizer_coverage(torch.optim.AdamW(a.parameters()), [a, frozen])


def test_trainer_optimizer_covers_model_and_heads(smoke_data_root, tmp_path, track_variant):
    track = track_variant(train={"steps": 1, "checkpoint_every": 1})
    align = FeatureAlign(AlignParams())
    trainer, _ = train(track, smoke_data_root, tmp_path / "run", components=[align])
    in_optim = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    expected = {id(p) for p in trainer.model.parameters()} | {id(p) for p in align.head.parameters()}
    assert in_optim == expected
    g = trainer.optimizer.param_groups[0]
    assert (g["betas"], g["eps"], g["weight_decay"]) == (track.optim.betas, track.optim.eps, track.optim.weight_decay)
    assert not g["fused"]  # CPU keeps torch's default AdamW: CPU results do not depend on the CUDA choice


def test_optimizer_is_fused_on_cuda_with_the_same_update(track_variant):
    track = track_variant()
    model = nn.Linear(8, 4)
    reference = nn.Linear(8, 4)
    reference.load_state_dict(model.state_dict())
    initial = model.weight.detach().clone()
    # Only the device argument decides fused; the parameters can stay on the CPU, where torch also
    # has the fused kernel, so the update can be compared with the default implementation here.
    fused = build_optimizer(track, list(model.parameters()), torch.device("cuda"))
    plain = build_optimizer(track, list(reference.parameters()), torch.device("cpu"))
    assert fused.param_groups[0]["fused"] is True and not plain.param_groups[0]["fused"]
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        x = torch.randn(16, 8, generator=gen)
        for m, opt in ((model, fused), (reference, plain)):
            opt.zero_grad()
            m(x).square().mean().backward()
            opt.step()
    for got, want in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert (model.weight != initial).all()  # the comparison above is not of two untouched layers


def test_resume_keeps_the_devices_optimizer_implementation(track_variant):
    """A checkpoint saved by the default AdamW resumes as the device's choice (fused on CUDA), with
    the same moments, step count and therefore the same next update."""
    track = track_variant()
    old, new, reference = nn.Linear(8, 4), nn.Linear(8, 4), nn.Linear(8, 4)
    new.load_state_dict(old.state_dict())
    reference.load_state_dict(old.state_dict())
    saved_by = build_optimizer(track, list(old.parameters()), torch.device("cpu"))
    continued = build_optimizer(track, list(reference.parameters()), torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(16, 8, generator=gen) for _ in range(4)]
    for x in batches[:3]:
        for m, opt in ((old, saved_by), (reference, continued)):
            opt.zero_grad()
            m(x).square().mean().backward()
            opt.step()
    new.load_state_dict(old.state_dict())
    resumed = build_optimizer(track, list(new.parameters()), torch.device("cuda"))
    Parallel.load_optim_state(SimpleNamespace(mode="ddp"), resumed, saved_by.state_dict())
    assert resumed.param_groups[0]["fused"] is True
    assert int(resumed.state[new.weight]["step"]) == 3
    for m, opt in ((new, resumed), (reference, continued)):
        opt.zero_grad()
        m(batches[3]).square().mean().backward()
        opt.step()
    for got, want in zip(new.parameters(), reference.parameters()):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_fp32_master_weights_checked():
    check_fp32_master([nn.Linear(2, 2)])
    with pytest.raises(RuntimeError, match="fp32"):
        check_fp32_master([nn.Linear(2, 2).to(torch.bfloat16)])


def test_clock_pauses_and_median_speed():
    clock = Clock(torch.device("cpu"))
    clock.start()
    time.sleep(0.05)
    with Paused(clock):
        time.sleep(0.2)
    time.sleep(0.05)
    clock.pause()
    assert 0.09 < clock.elapsed < 0.2
    # 3+ windows: the first (warm-up) window is dropped, the median of the rest is taken.
    steps = [1.0] * 20 + [0.1] * 20 + [0.2] * 20 + [0.1] * 20
    assert median_speed(steps) == pytest.approx(10.0)


def test_lr_warmup_then_constant(smoke_data_root, tmp_path, track_variant):
    track = track_variant(train={"steps": 8, "checkpoint_every": 8}, optim={"warmup_steps": 4})
    train(track, smoke_data_root, tmp_path / "run")
    rows = log_rows(tmp_path / "run")
    lrs = [r["lr"] for r in rows if "lr" in r]
    lr = track.optim.lr
    assert lrs == pytest.approx([lr * 0.25, lr * 0.5, lr * 0.75, lr, lr, lr, lr, lr])


def torchrun(worker_and_args: list[str], env: dict[str, str], timeout: float | None = None) -> None:
    """``python -m torch.distributed.run --nproc-per-node=2`` of a worker (``-m speedrun.worker`` or a
    script) and its arguments; asserts a clean exit."""
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}",
         *worker_and_args],
        env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]


# The worker with the fused AdamW the trainer takes on CUDA (torch has it on the CPU too).
FUSED_WORKER = """
import runpy, torch, speedrun.optim as t
cuda_choice = t.build_optimizer
t.build_optimizer = lambda track, params, device: cuda_choice(track, params, torch.device("cuda"))
runpy.run_module("speedrun.worker", run_name="__main__")  # its exit, as torchrun runs it
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("parallel", "adamw", "submission"),
    [("ddp", "default", "baseline"), ("fsdp", "default", "custom-example"), ("fsdp", "fused", "custom-example")],
)
def test_two_process_gloo_matches_one_process(smoke_data_root, tmp_path, parallel, adamw, submission):
    """DDP or FSDP2 over 2 gloo processes gives the losses of 1 process at the same global batch,
    and a 2-process run resumes exactly from its checkpoint. Under FSDP a component's trainable head
    stays a plain tensor beside the sharded DTensor parameters, in the clip and in the optimizer
    (custom-example has one). With fused AdamW the clip's scale and the non-finite flag reach the
    kernel as plain tensors too."""
    env = {**os.environ, "SPEEDRUN_DATA_DIR": str(smoke_data_root), "OMP_NUM_THREADS": "1"}
    worker = ["-m", "speedrun.worker"]
    if adamw == "fused":
        (tmp_path / "fused_worker.py").write_text(FUSED_WORKER)
        worker = [str(tmp_path / "fused_worker.py")]
    base = [sys.executable, *worker, str(REPO / "submissions" / submission), "--track", "smoke",
            "--seed", "0", "--device", "cpu", "--no-progress", "--stop-after", "4"]
    one = subprocess.run([*base, "--run-dir", str(tmp_path / "one")], env=env, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr
    def two_processes(stop_after: int) -> None:
        args = [a if a != "4" else str(stop_after) for a in base[1 + len(worker):]]
        torchrun([*worker, *args, "--run-dir", str(tmp_path / "two"), "--parallel", parallel], env)

    two_processes(2)
    two_processes(4)  # resumes from the step-2 checkpoint
    torch.testing.assert_close(losses(tmp_path / "two"), losses(tmp_path / "one"), rtol=1e-5, atol=1e-6)


# A worker on the smoke track with a one-hour budget whose rank 1 reads its clock an hour late.
SKEWED_CLOCK_WORKER = """
import os, runpy
import speedrun.clock, speedrun.submission
from speedrun.tracks import Track
base_track = speedrun.submission.Submission.track
def timed(self, *args, **kwargs):
    data = base_track(self, *args, **kwargs).model_dump(mode="python")
    data["train"]["max_seconds"] = 3600.0
    return Track.model_validate(data)
speedrun.submission.Submission.track = timed
if os.environ["RANK"] == "1":
    elapsed = speedrun.clock.Clock.elapsed
    speedrun.clock.Clock.elapsed = property(lambda self: elapsed.fget(self) + 3600.0)
runpy.run_module("speedrun.worker", run_name="__main__")  # its exit, as torchrun runs it
"""


@pytest.mark.slow
def test_ranks_agree_on_the_step_that_spends_a_timed_budget(smoke_data_root, tmp_path):
    """Each rank reads its own clock; one that passes train.max_seconds first must not stop alone (the
    others would wait for it in the next step's collectives): all stop after the same step. The run's
    clock is the slowest rank's, so the budget it records is spent (rank 0's own clock is not)."""
    env = {**os.environ, "SPEEDRUN_DATA_DIR": str(smoke_data_root), "OMP_NUM_THREADS": "1"}
    (tmp_path / "worker.py").write_text(SKEWED_CLOCK_WORKER)
    torchrun(
        [str(tmp_path / "worker.py"), str(REPO / "submissions" / "baseline"), "--track", "smoke", "--seed", "0",
         "--device", "cpu", "--no-progress", "--run-dir", str(tmp_path / "run"), "--parallel", "ddp"],
        env, timeout=240,
    )  # fmt: skip
    end = log_rows(tmp_path / "run")[-1]
    assert (end["event"], end["status"], end["steps"], end["eval_checkpoints"]) == ("end", "ok", 1, ["step-00000001"])
    assert 3600.0 <= end["clock_seconds"] < 3600.0 + 60


@pytest.mark.parametrize("warmup, cooldown", [(0, 0), (3, 0), (3, 4), (0, 10)])
def test_learning_rate_warms_up_holds_and_cools_down_to_zero(warmup, cooldown, track_variant):
    """The factor of step s: min(1, (s + 1) / warmup, (steps - s) / cooldown); a resumed schedule continues."""
    track = track_variant(train={"steps": 10}, optim={"warmup_steps": warmup, "cooldown_steps": cooldown})
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = optim.schedule(opt, track)
    seen = []
    for _ in range(10):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [2.0 * min(1.0, (s + 1) / max(warmup, 1), (10 - s) / cooldown if cooldown else 1.0) for s in range(10)]
    assert seen == pytest.approx(expected, rel=1e-12)
    restored = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
    restored.param_groups[0]["initial_lr"] = 2.0  # as a loaded optimizer state has it
    optim.schedule(restored, track, start=7)
    assert restored.param_groups[0]["lr"] == pytest.approx(expected[7], rel=1e-12)
