"""The trainer's checkpoints: when one is due, and the run's state (weights, optimizer, RNG streams, loader)
into and out of the files ``speedrun.checkpoint`` reads and writes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from speedrun import checkpoint, distributed
from speedrun.checkpoint import COMPONENT_PREFIX
from speedrun.clock import Budget, Paused
from speedrun.errors import SpeedrunError
from speedrun.parallel import Parallel
from speedrun.provenance import code_changes
from speedrun.results import CheckpointMeta
from speedrun.runlog import RunLog
from speedrun.tracks import Track

# The fields of a checkpoint's meta that say where the run stood; a resume continues from them.
RUN_STATE = ("step", "clock_seconds", "warmup_seconds", "val_loss_curve", "eval_checkpoints", "times", "log_bytes")
ANEW = "start over with --no-resume"


class Checkpointer:
    """The checkpoints of one run: when one is due, and the run's state in and out."""

    def __init__(self, run_dir: Path, track: Track, code: dict[str, Any], parallel: Parallel, loader: Any) -> None:
        self.root, self.track, self.code = run_dir / "checkpoints", track, code
        self.parallel, self.dist, self.loader = parallel, parallel.dist, loader

    def to_resume(self, resume: bool) -> Path | None:
        """The checkpoint to resume from (None: start at step 0); a run started over deletes the old ones."""
        if resume:
            return checkpoint.latest_checkpoint(self.root)
        if self.dist.is_main:  # for a process of its own; under torchrun the launcher has already done it
            checkpoint.discard_checkpoints(self.root)
        return None

    def after(self, done: int, last: bool, final: bool, record: CheckpointMeta, optimizer: torch.optim.Optimizer,
              budget: Budget, log: RunLog) -> None:  # fmt: skip
        """Checkpoint step ``done`` (clock paused) if due: every ``checkpoint_every``, evaluation and ``final`` step."""
        evaluated = done % self.track.eval.interval == 0 or last
        if not (evaluated or final or done % self.track.train.checkpoint_every == 0):
            return
        with Paused(budget.clock):
            c0 = time.perf_counter()
            if evaluated:
                record.eval_checkpoints.append(f"step-{done:08d}")
            record.times.budget_spent = budget.spent_at == done
            # The log as of this checkpoint: a resume truncates it back to here.
            record.clock_seconds, record.log_bytes = budget.run_clock(), log.checkpoint()
            self.save(record, optimizer)
            record.times.checkpoint_seconds += time.perf_counter() - c0

    def save(self, record: CheckpointMeta, optimizer: torch.optim.Optimizer) -> None:
        """Write checkpoint ``record.step`` and point ``latest`` at it (rank 0; a collective under FSDP)."""
        model_state, optim_state = self.parallel.model_state(), self.parallel.optim_state(optimizer)
        if self.dist.is_main:
            device, heads = self.dist.device, self.parallel.heads.items()
            rng = {"torch": torch.get_rng_state()}
            if device.type == "cuda":
                rng["cuda"] = torch.cuda.get_rng_state(device)
            record.loader = self.loader.state_dict()
            heads_state = {f"{COMPONENT_PREFIX}{name}.{k}": v for name, h in heads for k, v in h.state_dict().items()}
            checkpoint.write_checkpoint(self.root, record, {**model_state, **heads_state}, optim_state, rng)
        distributed.barrier(self.dist)

    def restore(self, path: Path, record: CheckpointMeta, optimizer: torch.optim.Optimizer) -> CheckpointMeta:
        """Load checkpoint ``path`` into the run's state; returns ``record`` continued from its step."""
        device = self.dist.device
        meta, tensors, optim_state, rng = checkpoint.load_checkpoint(path, device)
        if meta.track_hash != self.track.content_hash:
            raise SpeedrunError(f"{path}: written for another version of track '{self.track.id}'; {ANEW}")
        if changed := code_changes(meta.code, self.code):  # a run's steps must all come from the code its results name
            raise SpeedrunError(f"{path}: written by other code ({'; '.join(map(str, changed))}); restore it or {ANEW}")
        if meta.world_size != self.dist.world_size:
            raise SpeedrunError(f"{path}: written by {meta.world_size} processes, resuming with "
                                f"{self.dist.world_size}; resume with the same --nproc")
        heads: dict[str, dict[str, torch.Tensor]] = {name: {} for name in self.parallel.heads}
        for key in [k for k in tensors if k.startswith(COMPONENT_PREFIX)]:
            name, _, rest = key[len(COMPONENT_PREFIX) :].partition(".")
            heads.setdefault(name, {})[rest] = tensors.pop(key)
        self.parallel.load_model_state(tensors)
        for name, head in self.parallel.heads.items():
            head.load_state_dict(heads[name], strict=True)
        self.parallel.load_optim_state(optimizer, optim_state)
        self.loader.load_state_dict(meta.loader)
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], device)
        return record.model_copy(update={k: getattr(meta, k) for k in RUN_STATE})
