"""The fixed reference trainer every submission runs on; it knows components only through ``speedrun.protocol``."""

from __future__ import annotations

import copy
import errno
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from speedrun import advice, distributed, flow, optim, protocol
from speedrun.checkpointer import Checkpointer
from speedrun.clock import SPEED_WINDOW, Budget, Clock, Paused, median_speed
from speedrun.devices import ParallelMode, model_flops_utilisation
from speedrun.errors import OutOfMemory, WriteFailed
from speedrun.kernels import dispatch
from speedrun.model import build_model
from speedrun.parallel import Parallel
from speedrun.protocol import Component, ComponentContext, StepState, TrainBatch
from speedrun.results import CheckpointMeta, CurvePoint, TrainSummary
from speedrun.runlog import STEP_LOG_KEYS, RunLog
from speedrun.stops import StopRequest
from speedrun.tracks import Track


@dataclass(frozen=True, kw_only=True)
class TrainOptions:
    """Run-level settings; all that decides the score comes from the Track."""

    run_dir: Path
    seed: int
    device: str | None = None
    resume: bool = True
    progress: bool = True
    stop_after: int | None = None  # stop (with a checkpoint) after this step, for tests of resume; None: the budget
    parallel: ParallelMode = "auto"  # "auto": FSDP2 for prx-1.2b, DDP otherwise


class Trainer:
    """One seed of one submission on one track. ``run()`` returns a ``TrainSummary``."""

    def __init__(self, track: Track, data: Any, components: list[Component], options: TrainOptions,
                 log_header: dict[str, Any] | None = None, code: dict[str, Any] | None = None) -> None:  # fmt: skip
        """``code`` (harness and submission file hashes) goes into checkpoints; a resume refuses other code's.
        The process count must divide the global batch (``speedrun run`` checks it)."""
        self.track, self.data, self.components, self.opt = track, data, components, options
        self.dist = distributed.setup(options.device)
        self.device, self.run_dir = self.dist.device, options.run_dir
        self.log_header, self.code = log_header or {}, code or {}
        self.local_batch = track.train.global_batch // self.dist.world_size
        self.autocast = self.device.type == "cuda" and track.train.precision == "bf16"
        torch.manual_seed(self.opt.seed)  # identical init on every rank
        self.model = build_model(self.track.model.config, text_dim=self.data.text_dim).to(self.device)
        self.ctx = ComponentContext(
            model=self.model, track=self.track, device=self.device, seed=self.opt.seed, data_dir=self.data.root,
            token_grid=self.model.grid(self.data.x_shape[1:]), images_available=self.data.train_images,
        )  # fmt: skip
        for comp in self.components:
            comp.setup(self.ctx)
        self.heads: dict[str, nn.Module] = self.ctx.trainable
        self.hooks = protocol.collect_hooks(self.components, self.model.config.depth)
        self.objective = protocol.replacing_objective(components) or flow.RectifiedFlowObjective(track.train.timesteps)
        optim.check_fp32_master([self.model, *self.heads.values()])
        self.initial_state = {
            "model": copy.deepcopy(self.model.state_dict()),
            "heads": {n: copy.deepcopy(h.state_dict()) for n, h in self.heads.items()},
        }
        self.parallel = Parallel(self.dist, self.opt.parallel, self.track.model.config, self.model, self.heads)
        self.forward_model = self.parallel.wrap(self.track.train.compile, self.device)
        self._new_optimizer()
        self.null_text, self.null_mask = (t.to(self.device) for t in self.data.null_embedding())
        self.kernels = dispatch.active_backend(self.device, self.model.config.head_dim)

    def _new_optimizer(self) -> None:
        params = [p for m in (self.model, *self.heads.values()) for p in m.parameters() if p.requires_grad]
        self.optimizer = optim.build_optimizer(self.track, params, self.device)
        self.scheduler = optim.schedule(self.optimizer, self.track)
        optim.check_optimizer_coverage(self.optimizer, [self.model, *self.heads.values()])

    def _step(self, step: int, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        x0, text, mask = (x.to(self.device, non_blocking=True) for x in (batch.x, batch.text, batch.text_mask))
        # Randomness is drawn for the global batch, each rank taking its slice: N processes see what 1 process
        # sees. Each draw has its own generator per (seed, step), so seed s of every entry shares it (paired
        # seeds) whatever else an entry draws; on the run's device, as host draws add copies to every step.
        g, key = self.track.train.global_batch, f"{self.opt.seed}:{step}"
        rows = slice(self.dist.rank * self.local_batch, (self.dist.rank + 1) * self.local_batch)
        noise_gen, t_gen, drop_gen = (flow.keyed_generator(f"{w}:{key}", self.device) for w in ("noise", "t", "drop"))
        noise = torch.randn((g, *x0.shape[1:]), generator=noise_gen, device=self.device)[rows]
        t = self.objective.sample_t(g, t_gen, self.device)[rows]
        drop = flow.caption_drop_mask(g, self.track.train.caption_dropout, drop_gen)[rows]
        text, mask = flow.apply_caption_dropout(text, mask, self.null_text, self.null_mask, drop)
        x_t, target = self.objective.input_and_target(x0, noise, t)
        state = StepState(
            step=step, seed=self.opt.seed, rank=self.dist.rank, training=True, x_t=x_t, t=t,
            prediction=self.objective.prediction,
        )  # fmt: skip
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
            pred = self.forward_model(x_t, t, text, mask, hooks=self.hooks, state=state)
            loss = self.objective.loss(pred.float(), target, x_t, t)
            images = batch.images.to(self.device, non_blocking=True) if batch.images is not None else None
            train_batch = TrainBatch(x0=x0, noise=noise, text=text, text_mask=mask, images_uint8=images)
            terms = protocol.collect_losses(self.components, train_batch, pred, state, STEP_LOG_KEYS)
        total = loss + sum(terms.values()) if terms else loss
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        distributed.all_reduce_grads([p for h in self.heads.values() for p in h.parameters()], self.dist)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        grad_norm = optim.clip_gradients(self.optimizer, params, self.track.optim.grad_clip)
        logged = {"loss_fm": loss.detach(), **{k: v.detach() for k, v in terms.items()}}
        return total.detach(), logged, grad_norm.detach()

    def _validate(self, done: int, last: bool, record: CheckpointMeta, clock: Clock, log: RunLog) -> None:
        """The validation loss after step ``done``, clock paused, every ``eval.val_loss.interval`` steps and last."""
        spec = self.track.eval.val_loss
        if done % spec.interval and not last:
            return
        with Paused(clock):
            v0 = time.perf_counter()
            val = self.data.validation(spec.samples)
            self.model.eval()
            state = StepState(step=-1, seed=self.opt.seed, training=False)

            def model_fn(x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
                    pred = self.model(x, t, text, mask, state=state).float()
                return self.objective.velocity(pred, x, t)

            with torch.no_grad():
                result = flow.validation_loss(
                    model_fn, val.x.to(self.device), val.text.to(self.device), val.text_mask.to(self.device),
                    timesteps=spec.timesteps, seed=spec.seed,
                    batch_size=self.local_batch,  # memory as in a training step; the value does not depend on it
                )  # fmt: skip
            self.model.train()
            record.times.validation_seconds += time.perf_counter() - v0
            record.val_loss_curve.append(CurvePoint(step=done, val_loss=result["overall"]))
            log.val_loss(done, result)

    def run(self) -> TrainSummary:
        """Train to the budget (or ``stop_after``), resuming if asked; ``diverged`` on a non-finite loss or norm,
        ``interrupted`` (``stop_signal`` set) on SIGTERM/SIGINT; out of memory and a full disk raise."""
        self.stop_signal: int | None = None
        loader = self.data.loader(
            batch_size=self.track.train.global_batch, seed=self.opt.seed, rank=self.dist.rank,
            world_size=self.dist.world_size, device=self.device, images=self.ctx.uses_images,
        )  # fmt: skip
        try:
            checkpoints = self.run_dir / "checkpoints"
            with advice.training(self.opt.seed, self.opt.resume, checkpoints), StopRequest() as self._stop:
                try:
                    return self._run(loader)
                except torch.OutOfMemoryError as exc:
                    first = (str(exc).strip().splitlines() or ["out of memory"])[0][:300]
                    raise OutOfMemory(
                        f"out of memory on {self.device} at the track's global batch "
                        f"{self.track.train.global_batch} ({self.local_batch} per process): {first}"
                    ) from None
                except OSError as exc:
                    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                        raise
                    raise WriteFailed(exc.filename or self.run_dir, exc.strerror, "the run stopped") from None
        finally:
            loader.close()

    def _run(self, loader: Any) -> TrainSummary:
        spec, d = self.track.train, self.dist
        self.run_dir.mkdir(parents=True, exist_ok=True)
        ckpts = Checkpointer(self.run_dir, self.track, self.code, self.parallel, loader)
        resume_from = ckpts.to_resume(self.opt.resume)
        # A resumed run warms up too, or its first timed step would pay for it; the restore replaces the rest.
        warmup_seconds = self._untimed_warmup(loader)
        record = CheckpointMeta(
            track=self.track.id, track_hash=self.track.content_hash, code=self.code, denoiser=self.track.model.config,
            text_dim=self.data.text_dim, prediction=self.objective.prediction, seed=self.opt.seed,
            world_size=d.world_size,
        )  # fmt: skip
        if resume_from is not None:
            record = ckpts.restore(resume_from, record, self.optimizer)
            self.scheduler = optim.schedule(self.optimizer, self.track, start=record.step)
        record.warmup_seconds += warmup_seconds
        self.model.train()
        clock, times = Clock(self.device, offset=record.clock_seconds), record.times
        budget = Budget(clock, d, spec.steps, spec.max_seconds, self.opt.stop_after, record.step, times.budget_spent)
        log = RunLog(self.run_dir / "train.jsonl", d.is_main, self.opt.progress)
        log.start(
            resume_from and resume_from.name, record.log_bytes, record.step, spec.steps, track=self.track.id,
            track_hash=self.track.content_hash, seed=self.opt.seed, world_size=d.world_size, device=str(self.device),
            kernels=self.kernels, components=[c.name for c in self.components], **self.log_header,
        )  # fmt: skip
        # A resumed run with no step left (a finished seed run again) reports its checkpoint's last loss.
        status, reason, diverged_at, loss = "ok", None, None, times.last_finite_loss
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        it = iter(loader)
        clock.start()
        # A step's time runs from the previous step's end: host work between steps counts, paused work does not.
        t_prev = clock.elapsed
        try:
            for step in range(record.step, budget.end):
                t0 = clock.elapsed
                batch = next(it)
                t_data = clock.elapsed
                if times.flops_per_step is None:  # at the grid the model sees (latent, on latent tracks)
                    hw, tokens = tuple(batch.x.shape[-2:]), self.track.data.text_max_tokens
                    times.flops_per_step = self.model.flops_per_step(spec.global_batch, hw, tokens)
                total, terms, grad_norm = self._step(step, batch)
                # One all-reduce for the loss and the stop flag: every rank stops after the same step.
                flag = torch.tensor(float(self._stop.requested), device=total.device)
                reduced = distributed.all_reduce(torch.stack([total.float(), flag]), d, "mean")
                lr = self.optimizer.param_groups[0]["lr"]
                loss, gn = optim.update(self.optimizer, self.scheduler, reduced[0], grad_norm)
                stopping = bool(reduced[1] > 0)
                if not (math.isfinite(loss) and math.isfinite(gn)):
                    status, diverged_at = "diverged", step
                    reason = f"non-finite {'loss' if not math.isfinite(loss) else 'gradient norm'} at step {step}"
                    break
                t1 = clock.elapsed
                step_s, t_prev = t1 - t_prev, t1
                times.step_seconds.append(step_s)
                times.data_seconds += t_data - t0
                times.last_finite_loss, done = loss, step + 1
                record.step = done
                log.step(terms, step=step, loss=loss, lr=lr, grad_norm=gn, step_s=step_s, clock_s=t1)
                last = budget.last(done)
                self._validate(done, last, record, clock, log)
                ckpts.after(done, last, stopping or done == budget.end, record, self.optimizer, budget, log)
                log.progress(done, loss, median_speed(times.step_seconds[-SPEED_WINDOW:]))
                if stopping:
                    status, reason = "interrupted", f"{self._stop.honour()} after {done} steps"
                    self.stop_signal = self._stop.signum
                    break
                if done >= budget.end:
                    break
        finally:
            clock.pause()
            log.close()
        summary = self._summary(record, budget, status, reason, diverged_at, loss)
        log.end(summary)
        return summary

    def _summary(self, record: CheckpointMeta, budget: Budget, status: str, reason: str | None,
                 diverged_at: int | None, loss: float | None) -> TrainSummary:  # fmt: skip
        times, cuda = record.times, self.device.type == "cuda"
        speed = median_speed(times.step_seconds)
        card = torch.cuda.get_device_name(self.device) if cuda else None
        return TrainSummary(
            status=status, steps=record.step, final_loss=loss, last_finite_loss=times.last_finite_loss,
            diverged_at=diverged_at, reason=reason, clock_seconds=budget.run_clock(),
            warmup_seconds=record.warmup_seconds, checkpoint_seconds=times.checkpoint_seconds,
            validation_seconds=times.validation_seconds, data_seconds=times.data_seconds, batches_per_second=speed,
            images_per_second=speed * self.track.train.global_batch if speed else None,
            flops_per_step=times.flops_per_step or 0,
            mfu=model_flops_utilisation(times.flops_per_step, speed, card, self.dist.world_size),
            peak_memory_bytes=torch.cuda.max_memory_allocated(self.device) if cuda else None,
            kernels=self.kernels, world_size=self.dist.world_size, eval_checkpoints=record.eval_checkpoints,
            val_loss_curve=record.val_loss_curve,
            teachers={name: str(getattr(m, "id", type(m).__name__)) for name, m in self.ctx.frozen.items()},
        )  # fmt: skip

    def _untimed_warmup(self, loader: Any) -> float:
        """Run the warmup steps (compilation, allocator, caches), then undo everything they did."""
        n = self.track.train.untimed_warmup_steps
        if n == 0:
            return 0.0
        t0 = time.perf_counter()
        loader_state = loader.state_dict()
        it = iter(loader)
        for step in range(n):
            self._step(step, next(it))
            self.optimizer.step()
            self.scheduler.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.parallel.load_model_state(self.initial_state["model"])
        for name, head in self.heads.items():
            head.load_state_dict(self.initial_state["heads"][name])
        self._new_optimizer()
        # Its gradients too: a resume's FSDP optimizer-state load skips building state if gradients are there.
        self.optimizer.zero_grad(set_to_none=True)
        loader.load_state_dict(loader_state)
        return time.perf_counter() - t0
