"""The fixed reference trainer every submission runs on.

Read top to bottom: build (model, components, objective, optimizer), an untimed warmup that is then
undone, the timed loop (clock, logging, validation loss, checkpoints, divergence), and the summary.
The trainer knows components only through ``speedrun.components.Component``; it never names a
technique.
"""

from __future__ import annotations

import copy
import errno
import json
import math
import os
import platform
import reprlib
import signal
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from speedrun import distributed
from speedrun.checkpoint import (
    discard_checkpoints,
    latest_checkpoint,
    load_training_state,
    rerun_advice,
    resume_advice,
    save_checkpoint,
    split_component_tensors,
)
from speedrun.clock import Clock, Paused
from speedrun.components.base import Component, ComponentContext, TrainBatch
from speedrun.devices import ParallelMode, model_flops_utilisation
from speedrun.errors import SpeedrunError
from speedrun.flow import Objective, RectifiedFlowObjective, apply_caption_dropout, caption_drop_mask, validation_loss
from speedrun.kernels import dispatch
from speedrun.model import build_model
from speedrun.results import code_changes
from speedrun.state import BlockHook, StepState
from speedrun.tracks import Track

# Windows of this many timed steps give one batches/s reading; the reported figure is their median,
# which ignores the first window (allocator and cache warm-up) when there are at least three.
SPEED_WINDOW = 20
# Keys of a training-log step line other than the components' loss terms ("event" marks the lines
# that are not steps): a term under one of these names would overwrite the trainer's value.
STEP_LOG_KEYS = frozenset({"step", "loss", "lr", "grad_norm", "step_s", "clock_s", "loss_fm", "event"})
# ``StepState.records`` key holding (who routed, full token count) while image tokens are routed, so
# the hook that ends the routing, or the end of the last block, can be checked against the full count.
ROUTING = "speedrun:routing"


@dataclass(frozen=True, kw_only=True)
class TrainOptions:
    """Run-level settings; everything that decides the score comes from the Track instead."""

    run_dir: Path
    seed: int
    device: str | None = None
    resume: bool = True
    progress: bool = True
    stop_after: int | None = None
    """Stop (with a checkpoint) after this step; for tests of resume. None: run the budget."""
    parallel: ParallelMode = "auto"
    """How several processes share the work: "auto" = FSDP2 for prx-1.2b, DDP otherwise."""


@dataclass
class TrainSummary:
    status: str
    steps: int
    final_loss: float | None
    last_finite_loss: float | None
    diverged_at: int | None
    reason: str | None
    clock_seconds: float
    warmup_seconds: float
    checkpoint_seconds: float
    validation_seconds: float
    data_seconds: float
    batches_per_second: float | None
    images_per_second: float | None
    flops_per_step: int
    mfu: float | None
    peak_memory_bytes: int | None
    kernels: str
    world_size: int
    eval_checkpoints: list[str] = field(default_factory=list)
    val_loss_curve: list[dict[str, float]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def lr_lambda(warmup_steps: int) -> Callable[[int], float]:
    """Linear warmup from 1/warmup to 1 over ``warmup_steps``, then constant."""
    return lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


def build_optimizer(track: Track, params: list[nn.Parameter], device: torch.device) -> torch.optim.Optimizer:
    """The track's AdamW. On CUDA it is torch's fused single-kernel implementation: the same update,
    and at prx-1.2b on one H100 it took the optimizer from 36 to 18 ms of a 138 ms step (BENCHMARKS.md,
    2026-11-27). Elsewhere it is torch's default, so CPU results do not change with it."""
    o = track.optim
    fused = True if device.type == "cuda" else None
    # Under FSDP the denoiser's parameters are sharded DTensors and component heads plain tensors; the
    # fused update takes one kind per call, and it is called once per group. Otherwise one group.
    groups = [{"params": kind} for kind in _by_kind(params) if kind]
    return torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay, fused=fused)


def _by_kind(tensors: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(DTensors, plain tensors) of ``tensors``, in their order: torch's multi-tensor kernels (norms,
    scaling, fused updates) refuse a list that mixes the two."""
    sharded = [t for t in tensors if hasattr(t, "full_tensor")]
    return sharded, [t for t in tensors if not hasattr(t, "full_tensor")]


def updates_in_kernel(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` applies the gradient clip and the skip of a non-finite step inside its own
    update kernel. Torch's fused AdamW does, through the two attributes AMP's GradScaler sets:
    ``grad_scale`` (a divisor of every gradient) and ``found_inf`` (1.0 skips the update and its step
    count)."""
    return bool(optimizer.param_groups[0].get("fused"))


def clip_gradients(optimizer: torch.optim.Optimizer, params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Clip the gradients of ``params`` to global L2 norm ``max_norm`` and return the norm before
    clipping (a plain tensor on the gradients' device, also under FSDP).

    torch's rule (``clip_grad_norm_``): gradients times ``min(1, max_norm / (norm + 1e-6))``. An
    optimizer that :func:`updates_in_kernel` gets the reciprocal as its ``grad_scale`` and divides
    while its update reads every gradient anyway: no pass of the clip's own over them (at prx-1.2b
    that pass reads and writes 4.7 GB of fp32 per step). Others are scaled in place.
    """
    with_grad = [p for p in params if p.grad is not None]
    kinds = [kind for kind in _by_kind(with_grad) if kind]
    # One norm per kind (FSDP's sharded DTensors, plain heads), combined as the L2 norm of the two.
    norms = [_full(torch.nn.utils.get_total_norm([p.grad for p in kind])) for kind in kinds]
    norm = norms[0] if len(norms) == 1 else torch.linalg.vector_norm(torch.stack(norms))
    if updates_in_kernel(optimizer):
        optimizer.grad_scale = torch.clamp(max_norm / (norm + 1e-6), max=1.0).reciprocal()
    else:
        for kind in kinds:
            torch.nn.utils.clip_grads_with_norm_(kind, max_norm, norm)
    return norm


def _full(norm: torch.Tensor) -> torch.Tensor:
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # a DTensor under FSDP


def check_optimizer_coverage(optimizer: torch.optim.Optimizer, modules: list[nn.Module]) -> None:
    """Every trainable parameter of the denoiser and heads is in the optimizer exactly once."""
    in_optim = [p for g in optimizer.param_groups for p in g["params"]]
    ids = [id(p) for p in in_optim]
    if len(ids) != len(set(ids)):
        raise RuntimeError("a parameter appears twice in the optimizer")
    expected = {id(p) for m in modules for p in m.parameters() if p.requires_grad}
    if set(ids) != expected:
        raise RuntimeError(
            f"optimizer covers {len(set(ids) & expected)} of {len(expected)} trainable parameters "
            f"and {len(set(ids) - expected)} foreign ones"
        )


def check_fp32_master(modules: list[nn.Module]) -> None:
    """Master weights stay fp32 under autocast (bf16-stored weights cost +3.7 FID in PRX)."""
    bad = [n for m in modules for n, p in m.named_parameters() if p.dtype != torch.float32]
    if bad:
        raise RuntimeError(f"master weights must be fp32; found other dtypes in {bad[:5]}")


def component_label(comp: Component) -> str:
    return f"component '{comp.name}' ({type(comp).__qualname__})"


def collect_hooks(components: list[Component], depth: int | None = None) -> dict[int, list[tuple[Any, Any]]]:
    """Hooks on the same block compose in manifest order.

    What each ``hooks()`` returns is checked once here, and every hook is wrapped by ``checked_hook``.
    With ``depth`` (the denoiser's block count) block indices must lie below it, and a last hook on
    the last block refuses image tokens that a routing hook never brought back; without it the
    denoiser still refuses them, but cannot name the component.
    """
    hooks: dict[int, list[tuple[Any, Any]]] = {}
    for comp in components:
        who = component_label(comp)
        table = comp.hooks()
        if not isinstance(table, dict):
            raise SpeedrunError(
                f"{who}: hooks() must return a dict {{block_index: (before, after)}}, got {type(table).__name__}"
            )
        for index, pair in table.items():
            # bool is an int, and a negative or too large index would match no block: the hook never runs
            in_range = isinstance(index, int) and not isinstance(index, bool) and index >= 0
            if not in_range or (depth is not None and index >= depth):
                blocks = f" of the denoiser's {depth} blocks (0..{depth - 1})" if depth is not None else " (0-based)"
                raise SpeedrunError(f"{who}: hooks() key {reprlib.repr(index)} is not a block index{blocks}")
            if not (isinstance(pair, tuple) and len(pair) == 2):
                raise SpeedrunError(
                    f"{who}: hooks()[{index}] must be a (before, after) pair of hooks or None, got {reprlib.repr(pair)}"
                )
            checked = []
            for position, hook in zip(("before", "after"), pair):
                if hook is not None and not callable(hook):
                    raise SpeedrunError(
                        f"{who}: hooks()[{index}] {position} hook is not callable (got {type(hook).__name__})"
                    )
                where = f"{who}, {position} hook of block index {index}"
                checked.append(None if hook is None else checked_hook(hook, where))
            hooks.setdefault(index, []).append(tuple(checked))
    if hooks and depth is not None:
        hooks.setdefault(depth - 1, []).append((None, all_tokens_back))
    return hooks


def checked_hook(hook: BlockHook, who: str) -> BlockHook:
    """``hook`` whose output must be what the contract promises: a tensor of the input's dtype and
    device, shaped (B, N, hidden) as the input, where N is the kept count while ``state.token_index``
    is set and, once it is cleared again, every image token. Metadata comparisons only: no sync."""

    def run(tokens: torch.Tensor, state: StepState) -> torch.Tensor:
        was_routed = state.token_index is not None
        out = hook(tokens, state)
        index = state.token_index
        if index is not None:
            if not was_routed:  # the tokens had their full count until this hook
                state.records[ROUTING] = (who, tokens.shape[1])
            count = index.shape[1]
        else:
            count = state.records.pop(ROUTING)[1] if was_routed else tokens.shape[1]
        if not isinstance(out, torch.Tensor):
            raise SpeedrunError(f"{who} returned {type(out).__name__}, not a tensor of image tokens")
        expected = (tokens.shape[0], count, tokens.shape[2])
        if out.shape != expected:
            if index is not None:
                rule = f"state.token_index keeps {count} tokens"
            elif was_routed:
                rule = f"routing ended (state.token_index None): every one of the {count} image tokens must come back"
            else:
                rule = "a hook that does not route keeps the input's shape"
            raise SpeedrunError(f"{who} returned tokens of shape {tuple(out.shape)}, expected {expected}; {rule}")
        if out.dtype != tokens.dtype or out.device != tokens.device:
            raise SpeedrunError(
                f"{who} returned {out.dtype} tokens on {out.device}, expected {tokens.dtype} on {tokens.device} "
                "(the input's)"
            )
        return out

    return run


def all_tokens_back(tokens: torch.Tensor, state: StepState) -> torch.Tensor:
    """Runs after every other hook of the last block: refuses tokens still routed there."""
    if state.token_index is not None:
        who, count = state.records[ROUTING]
        raise SpeedrunError(
            f"{who} routed the image tokens (kept {state.token_index.shape[1]} of {count}) and no hook brought "
            "every token back by the end of the last block"
        )
    return tokens


def choose_objective(track: Track, components: list[Component]) -> Objective:
    replacing = [(c.name, c.objective()) for c in components]
    replacing = [(n, o) for n, o in replacing if o is not None]
    if len(replacing) > 1:
        raise SpeedrunError(f"components {[n for n, _ in replacing]} each replace the objective; at most one may")
    return replacing[0][1] if replacing else RectifiedFlowObjective(track.train.timesteps)


def median_speed(step_seconds: list[float]) -> float | None:
    """Median batches/s over consecutive windows of SPEED_WINDOW steps (first window dropped if ≥3)."""
    windows = [step_seconds[i : i + SPEED_WINDOW] for i in range(0, len(step_seconds), SPEED_WINDOW)]
    windows = [w for w in windows if len(w) == SPEED_WINDOW] or ([step_seconds] if step_seconds else [])
    if len(windows) >= 3:
        windows = windows[1:]
    rates = [len(w) / sum(w) for w in windows if sum(w) > 0]
    return statistics.median(rates) if rates else None


class StopRequest:
    """SIGTERM and SIGINT ask the trainer to stop at the end of the current step, with a checkpoint.

    Handlers are installed only in the main thread and never for a signal the process ignores
    (``nohup``, background jobs). A signal restores its previous handler, so a second Ctrl-C
    interrupts at once (KeyboardInterrupt), while torchrun's SIGTERM after a Ctrl-C still waits for
    the checkpoint. A signal that arrives when the loop can no longer act on it (after the last
    step) is re-delivered on exit.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self.handled = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                if signal.getsignal(s) is not signal.SIG_IGN:
                    self._previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = self.signum or signum
        self._restore([signum])

    def _restore(self, signums: Any = None) -> None:
        for s in list(self._previous if signums is None else signums):
            previous = self._previous.pop(s)
            signal.signal(s, signal.SIG_DFL if previous is None else previous)  # None: set outside Python

    def __exit__(self, *exc: Any) -> None:
        self._restore()
        if self.signum is not None and not self.handled and exc[0] is None:
            signal.raise_signal(self.signum)

    @property
    def requested(self) -> bool:
        return self.signum is not None


class Trainer:
    """One seed of one submission on one track. ``run()`` returns a ``TrainSummary``."""

    def __init__(
        self,
        track: Track,
        data: Any,
        components: list[Component],
        options: TrainOptions,
        log_header: dict[str, Any] | None = None,
        code: dict[str, Any] | None = None,
    ) -> None:
        """``code`` identifies the code that trains (harness and submission file hashes): it is written
        into every checkpoint, and a resume refuses a checkpoint written by other code, since the
        run's results name one version of the code for all its steps."""
        self.track = track
        self.data = data
        self.components = components
        self.opt = options
        self.dist = distributed.setup(options.device)
        self.device = self.dist.device
        self.run_dir = options.run_dir
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.log_header = log_header or {}
        self.code = code or {}
        if track.train.global_batch % self.dist.world_size:
            raise SpeedrunError(
                f"track '{track.id}': global batch {track.train.global_batch} does not divide "
                f"over {self.dist.world_size} processes"
            )
        self.local_batch = track.train.global_batch // self.dist.world_size
        self.autocast = self.device.type == "cuda" and track.train.precision == "bf16"
        self._build()

    # ---------------------------------------------------------------- build
    def _build(self) -> None:
        torch.manual_seed(self.opt.seed)  # identical init on every rank
        self.model = build_model(self.track.model.config, text_dim=self.data.text_dim).to(self.device)
        _, height, width = self.data.x_shape
        patch = self.model.config.patch_size
        self.ctx = ComponentContext(
            model=self.model,
            track=self.track,
            device=self.device,
            seed=self.opt.seed,
            token_grid=(height // patch, width // patch),
            images_available=self.data.train_images,
        )
        for comp in self.components:
            comp.setup(self.ctx)
        self.heads: dict[str, nn.Module] = self.ctx.trainable
        self.hooks = collect_hooks(self.components, self.model.config.depth)
        self.objective = choose_objective(self.track, self.components)
        check_fp32_master([self.model, *self.heads.values()])
        self.initial_state = {
            "model": copy.deepcopy(self.model.state_dict()),
            "heads": {n: copy.deepcopy(h.state_dict()) for n, h in self.heads.items()},
        }
        self.parallel = self._parallel_mode()
        if self.parallel == "fsdp":
            # FSDP2: each block is one communication unit; parameters become sharded DTensors.
            from torch.distributed.fsdp import fully_shard

            for block in self.model.blocks:
                fully_shard(block)
            fully_shard(self.model)
        self.forward_model: nn.Module = self.model
        if self.track.train.compile and self.device.type == "cuda":
            self.forward_model = torch.compile(self.model)
        if self.parallel == "ddp":
            self.forward_model = nn.parallel.DistributedDataParallel(
                self.forward_model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self._new_optimizer()
        self.null_text, self.null_mask = (t.to(self.device) for t in self.data.null_embedding())
        self.kernels = dispatch.active_backend(self.device, self.model.config.head_dim)

    def _parallel_mode(self) -> str:
        if not self.dist.enabled:
            return "single"
        if self.opt.parallel == "auto":
            return "fsdp" if self.track.model.config == "prx-1.2b" else "ddp"
        return self.opt.parallel

    def _model_state(self) -> dict[str, torch.Tensor]:
        """Full (unsharded) denoiser weights on CPU; a collective under FSDP (call on every rank)."""
        if self.parallel == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return self.model.state_dict()

    def _load_model_state(self, state: dict[str, torch.Tensor]) -> None:
        if self.parallel == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            set_model_state_dict(self.model, state, options=StateDictOptions(full_state_dict=True, strict=True))
        else:
            self.model.load_state_dict(state, strict=True)

    def _optim_state(self) -> dict[str, Any]:
        if self.parallel == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            return get_optimizer_state_dict(
                self._optimized(), self.optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
            )
        return self.optimizer.state_dict()

    def _optimized(self) -> nn.Module:
        """One module over every parameter the optimizer updates: FSDP's optimizer state dicts are keyed by
        parameter names, and component heads are not inside the denoiser."""
        return nn.ModuleDict({"model": self.model, "heads": nn.ModuleList(self.heads.values())})

    def _load_optim_state(self, state: dict[str, Any]) -> None:
        # A saved state carries its optimizer's implementation flags and load_state_dict restores them,
        # so a checkpoint from before fused AdamW would resume on CUDA with the slower foreach kernel.
        # The device's choice (build_optimizer) wins: the update is the same either way.
        for saved, current in zip(state["param_groups"], self.optimizer.param_groups):
            for flag in ("fused", "foreach"):
                saved[flag] = current[flag]
        if self.parallel == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(
                self._optimized(), self.optimizer, state, options=StateDictOptions(full_state_dict=True)
            )
        else:
            self.optimizer.load_state_dict(state)

    def _new_optimizer(self) -> None:
        params = [p for m in (self.model, *self.heads.values()) for p in m.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.track, params, self.device)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(self.track.optim.warmup_steps))
        check_optimizer_coverage(self.optimizer, [self.model, *self.heads.values()])

    def _reset_after_warmup(self) -> None:
        """Warmup buys nothing: restore the initial weights and start a fresh optimizer."""
        self._load_model_state(self.initial_state["model"])
        for name, head in self.heads.items():
            head.load_state_dict(self.initial_state["heads"][name])
        self._new_optimizer()
        # The last warmup step's gradients too: a resume's FSDP optimizer-state load builds its
        # state with a step over gradient-less parameters, and skips that if gradients are there.
        self.optimizer.zero_grad(set_to_none=True)

    def _generator(self) -> torch.Generator:
        """Training randomness (noise, timesteps, caption dropout) of the global batch, from the seed.

        On the run's device: drawing on the host would add CPU work and three pageable copies (each
        waiting for the GPU) to every step's prologue, while the GPU idles after the clock's read.
        A CUDA stream therefore differs from a CPU one of the same seed (and may between GPU models,
        whose launch grids differ), and a run resumes on the device kind it started on.
        """
        g = torch.Generator(device=self.device)
        g.manual_seed(self.opt.seed)
        return g

    # ---------------------------------------------------------------- one step
    def _step(
        self, step: int, batch: Any, gen: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        x0 = batch.x.to(self.device, non_blocking=True)
        text = batch.text.to(self.device, non_blocking=True)
        mask = batch.text_mask.to(self.device, non_blocking=True)
        # Randomness is drawn for the whole global batch from one generator seeded by the run seed,
        # and each rank takes its slice: N processes see exactly what 1 process sees.
        g = self.track.train.global_batch
        rows = slice(self.dist.rank * self.local_batch, (self.dist.rank + 1) * self.local_batch)
        noise = torch.randn((g, *x0.shape[1:]), generator=gen, device=gen.device)[rows]
        t = self.objective.sample_t(g, gen, self.device)[rows]
        drop = caption_drop_mask(g, self.track.train.caption_dropout, gen)[rows]
        text, mask = apply_caption_dropout(text, mask, self.null_text, self.null_mask, drop)
        x_t, target = self.objective.input_and_target(x0, noise, t)
        state = StepState(
            step=step,
            seed=self.opt.seed,
            rank=self.dist.rank,
            training=True,
            x_t=x_t,
            t=t,
            prediction=self.objective.prediction,
        )
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
            pred = self.forward_model(x_t, t, text, mask, hooks=self.hooks, state=state)
            loss = self.objective.loss(pred.float(), target, x_t, t)
            images = batch.images.to(self.device, non_blocking=True) if batch.images is not None else None
            train_batch = TrainBatch(x0=x0, noise=noise, text=text, text_mask=mask, images_uint8=images)
            terms: dict[str, torch.Tensor] = {}
            for comp in self.components:
                for name, value in comp.losses(train_batch, pred, state).items():
                    if not isinstance(name, str) or name in STEP_LOG_KEYS:
                        raise SpeedrunError(
                            f"{component_label(comp)}: loss term {reprlib.repr(name)} cannot name a column of the "
                            f"training log: names are strings other than the trainer's own {sorted(STEP_LOG_KEYS)}"
                        )
                    if name in terms:
                        raise SpeedrunError(f"component '{comp.name}' returns loss term '{name}' twice")
                    terms[name] = value.float()
        total = loss + sum(terms.values()) if terms else loss
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        distributed.all_reduce_grads([p for h in self.heads.values() for p in h.parameters()], self.dist)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        grad_norm = clip_gradients(self.optimizer, params, self.track.optim.grad_clip)
        logged = {"loss_fm": loss.detach(), **{k: v.detach() for k, v in terms.items()}}
        return total.detach(), logged, grad_norm.detach()

    # ---------------------------------------------------------------- validation loss
    def _validation_loss(self) -> dict[str, Any]:
        spec = self.track.eval.val_loss
        val = self.data.validation(spec.samples)
        self.model.eval()
        state = StepState(step=-1, seed=self.opt.seed, training=False)

        def model_fn(x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
                pred = self.model(x, t, text, mask, state=state).float()
            return self.objective.velocity(pred, x, t)

        with torch.no_grad():
            result = validation_loss(
                model_fn,
                val.x.to(self.device),
                val.text.to(self.device),
                val.text_mask.to(self.device),
                timesteps=spec.timesteps,
                seed=spec.seed,
                batch_size=self.local_batch,  # memory as in a training step; the value does not depend on it
            )
        self.model.train()
        return result

    # ---------------------------------------------------------------- the run
    def run(self) -> TrainSummary:
        """Train to the budget (or ``stop_after``), resuming from the last checkpoint if asked.

        Stops early with status ``diverged`` on a non-finite loss or gradient norm, and with status
        ``interrupted`` (checkpoint written, ``stop_signal`` set) on SIGTERM/SIGINT. Out of memory
        and a full disk become a ``SpeedrunError`` naming the checkpoint the run can resume from.
        """
        self.stop_signal: int | None = None
        loader = self.data.loader(
            batch_size=self.track.train.global_batch,
            seed=self.opt.seed,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            device=self.device,
            images=self.ctx.uses_images,
        )
        try:
            with StopRequest() as self._stop:
                return self._run(loader)
        except torch.OutOfMemoryError as exc:
            first = (str(exc).strip().splitlines() or ["out of memory"])[0][:300]
            raise SpeedrunError(
                f"out of memory on {self.device} at the track's global batch {self.track.train.global_batch} "
                f"({self.local_batch} per process): {first}. The batch is fixed by the track: spread it over more "
                f"processes (--nproc) or use a device with more memory; {self._resume_words()}"
            ) from None
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise SpeedrunError(
                f"{exc.filename or self.run_dir}: cannot write ({exc.strerror}); free disk space, then "
                f"{self._resume_words()}"
            ) from None
        finally:
            loader.close()

    def _resume_words(self) -> str:
        return resume_advice(self.ckpt_dir, rerun_advice(self.opt.seed, self.opt.resume))

    def _run(self, loader: Any) -> TrainSummary:
        track, d = self.track, self.dist
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.run_dir / "train.jsonl"
        gen = self._generator()
        start_step, clock_offset, val_curve, eval_ckpts, times = 0, 0.0, [], [], {}
        resumed_from = None
        self._resume_log_bytes: int | None = None
        if not self.opt.resume and d.is_main:
            # For a process of its own; under torchrun the launcher has already done it (nothing left).
            discard_checkpoints(self.ckpt_dir)
        ckpt = latest_checkpoint(self.ckpt_dir) if self.opt.resume else None
        # A resumed run warms up too (compilation, allocator, caches), or its first timed step would
        # pay for them; the restore then replaces whatever the warmup left.
        warmup_seconds = self._untimed_warmup(loader, gen)
        if ckpt is not None:
            start_step, clock_offset, val_curve, eval_ckpts, times, earlier = self._restore(ckpt, loader, gen)
            warmup_seconds += earlier
            resumed_from = ckpt.name
        self.model.train()
        clock = Clock(self.device, offset=clock_offset)
        mode = "a" if resumed_from else "w"
        if resumed_from and d.is_main and log_path.is_file() and self._resume_log_bytes is not None:
            # Lines written after the checkpoint (possibly cut mid-line by a kill) describe steps
            # that are about to be re-run: drop them so the log reads as one uninterrupted run.
            with open(log_path, "r+b") as f:
                if f.seek(0, os.SEEK_END) > self._resume_log_bytes:
                    f.truncate(self._resume_log_bytes)
        log = open(log_path, mode) if d.is_main else None
        if log is not None:
            header = {
                "event": "start",
                "resumed_from": resumed_from,
                "start_step": start_step,
                "track": track.id,
                "track_hash": track.content_hash,
                "seed": self.opt.seed,
                "world_size": d.world_size,
                "device": str(self.device),
                "kernels": self.kernels,
                "python": sys.version.split()[0],
                "torch": torch.__version__,
                "platform": platform.platform(),
                "components": [c.name for c in self.components],
                **self.log_header,
            }
            log.write(json.dumps(header) + "\n")
            log.flush()
        step_seconds: list[float] = list(times.get("step_seconds", []))
        ckpt_seconds = float(times.get("checkpoint_seconds", 0.0))
        val_seconds = float(times.get("validation_seconds", 0.0))
        data_seconds = float(times.get("data_seconds", 0.0))
        last_finite = times.get("last_finite_loss")
        # A resumed run that has no step left to take (a finished seed run again, e.g. after its
        # evaluation failed) reports what the checkpoint says of its last step.
        status, reason, diverged_at, loss_value = "ok", None, None, last_finite
        end = track.train.steps if self.opt.stop_after is None else min(track.train.steps, self.opt.stop_after)
        budget_end = None  # the step after which the timed budget (train.max_seconds) ran out
        # The checkpoint of the step that spent the budget says so: its clock, read after that step's
        # decision, may have passed the budget without spending it, and then one more step is due.
        if track.train.max_seconds is not None and times.get("budget_spent"):
            end = budget_end = start_step
        progress = _progress(self.opt.progress and d.is_main, start_step, track.train.steps)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        it = iter(loader)
        flops_per_step: int | None = times.get("flops_per_step")
        clock.start()
        completed = start_step
        # A step's time is the clock's advance since the previous step ended, so the host work between
        # steps (the log line, the budget check, the progress bar) is charged to the speed figures as it
        # is to the clock; validation and checkpoints, paused, are not.
        t_prev = clock.elapsed
        try:
            for step in range(start_step, end):
                t0 = clock.elapsed
                batch = next(it)
                t_data = clock.elapsed
                if flops_per_step is None:
                    flops_per_step = self._flops_per_step(tuple(batch.x.shape[-2:]))
                total, terms, grad_norm = self._step(step, batch, gen)
                # One all-reduce carries the loss and "a stop signal arrived here", so every rank
                # agrees on the step after which it stops (signals reach ranks at different times).
                flag = torch.tensor(float(self._stop.requested), device=total.device)
                reduced = distributed.all_reduce(torch.stack([total.float(), flag]), d, "mean")
                lr = self.optimizer.param_groups[0]["lr"]
                in_kernel = updates_in_kernel(self.optimizer)
                if in_kernel:
                    # Queued right behind the backward: reading the loss first would leave the GPU idle
                    # while the host waited for it and then launched the update. The kernel skips
                    # itself on a non-finite loss or norm (the same on every rank: both are reduced),
                    # so a diverged step still changes no weight, moment or step count.
                    self.optimizer.found_inf = (~(reduced[0].isfinite() & grad_norm.isfinite())).float()
                    self.optimizer.step()
                loss_value, stopping = float(reduced[0]), bool(reduced[1] > 0)
                gn = float(grad_norm)
                if not (math.isfinite(loss_value) and math.isfinite(gn)):
                    status, diverged_at = "diverged", step
                    reason = f"non-finite {'loss' if not math.isfinite(loss_value) else 'gradient norm'} at step {step}"
                    self.optimizer.zero_grad(set_to_none=True)
                    break
                if not in_kernel:
                    self.optimizer.step()
                self.scheduler.step()
                t1 = clock.elapsed
                step_s, t_prev = t1 - t_prev, t1
                step_seconds.append(step_s)
                data_seconds += t_data - t0
                last_finite = loss_value
                completed = step + 1
                if log is not None:
                    record = {
                        "step": step,
                        "loss": loss_value,
                        "lr": lr,
                        "grad_norm": gn,
                        "step_s": step_s,
                        "clock_s": t1,
                        **{k: float(v) for k, v in terms.items()},
                    }
                    log.write(json.dumps(record) + "\n")
                done = step + 1
                # A timed budget ends the run after the step in which the run's clock (its slowest
                # rank's) passed it: one collective decision, so every rank stops at the same step.
                if track.train.max_seconds is not None and done < track.train.steps:
                    if self._run_clock(clock) >= track.train.max_seconds:
                        end = budget_end = done
                # The last step of the budget, in steps or seconds: validated, evaluated, checkpointed.
                last = done in (track.train.steps, budget_end)
                if done % track.eval.val_loss.interval == 0 or last:
                    with Paused(clock):
                        v0 = time.perf_counter()
                        val = self._validation_loss()
                        val_seconds += time.perf_counter() - v0
                        val_curve.append({"step": done, "val_loss": val["overall"]})
                        if log is not None:
                            log.write(json.dumps({"event": "val_loss", "step": done, **val}) + "\n")
                is_eval = done % track.eval.interval == 0 or last
                if done % track.train.checkpoint_every == 0 or is_eval or done == end or stopping:
                    with Paused(clock):
                        c0 = time.perf_counter()
                        times = {
                            "step_seconds": step_seconds,
                            "checkpoint_seconds": ckpt_seconds,
                            "validation_seconds": val_seconds,
                            "data_seconds": data_seconds,
                            "last_finite_loss": last_finite,
                            "flops_per_step": flops_per_step,
                            "budget_spent": budget_end == done,
                        }
                        if is_eval:
                            eval_ckpts.append(f"step-{done:08d}")
                        log_bytes = None
                        if log is not None:
                            # The log as of this checkpoint; a resume truncates it back to here.
                            log.flush()
                            log_bytes = os.fstat(log.fileno()).st_size
                        self._checkpoint(
                            done, self._run_clock(clock), loader, gen, val_curve, eval_ckpts, times, warmup_seconds,
                            log_bytes=log_bytes,
                        )
                        ckpt_seconds += time.perf_counter() - c0
                progress(done, loss_value, median_speed(step_seconds[-SPEED_WINDOW:]))
                if stopping:
                    self._stop.handled = True
                    self.stop_signal = self._stop.signum or signal.SIGTERM  # another rank's signal
                    status = "interrupted"
                    reason = f"stopped by {signal.Signals(self.stop_signal).name} after {done} steps"
                    break
                if done >= end:
                    break
        finally:
            clock.pause()
            if log is not None:
                log.close()
            progress(None, None, None)
        speed = median_speed(step_seconds)
        peak = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None
        card = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None
        summary = TrainSummary(
            status=status,
            steps=completed,
            final_loss=loss_value,
            last_finite_loss=last_finite,
            diverged_at=diverged_at,
            reason=reason,
            clock_seconds=self._run_clock(clock),
            warmup_seconds=warmup_seconds,
            checkpoint_seconds=ckpt_seconds,
            validation_seconds=val_seconds,
            data_seconds=data_seconds,
            batches_per_second=speed,
            images_per_second=speed * track.train.global_batch if speed else None,
            flops_per_step=flops_per_step or 0,
            mfu=model_flops_utilisation(flops_per_step, speed, card, d.world_size),
            peak_memory_bytes=peak,
            kernels=self.kernels,
            world_size=d.world_size,
            eval_checkpoints=eval_ckpts,
            val_loss_curve=val_curve,
        )
        if d.is_main:
            with open(log_path, "a") as f:
                f.write(json.dumps({"event": "end", **summary.to_json()}) + "\n")
        return summary

    def _run_clock(self, clock: Clock) -> float:
        """The run's clock in seconds: the largest of the ranks' clocks, as a run takes as long as its
        slowest rank (rank 0's starts last, after it alone writes the log header). A collective."""
        elapsed = torch.tensor(clock.elapsed, dtype=torch.float64, device=self.device)
        return float(distributed.all_reduce(elapsed, self.dist, "max"))

    def _flops_per_step(self, model_hw: tuple[int, int]) -> int:
        """The model's FLOPs for one global batch at the spatial size the model sees: the latent
        grid on latent tracks (32 x 32 for 256 x 256 Flux-VAE images), not the image size."""
        if not hasattr(self.model, "flops_per_step"):
            return 0
        return self.model.flops_per_step(self.track.train.global_batch, model_hw, self.track.data.text_max_tokens)

    def _untimed_warmup(self, loader: Any, gen: torch.Generator) -> float:
        """Run the warmup steps (compilation, allocator, caches), then undo everything they did."""
        n = self.track.train.untimed_warmup_steps
        if n == 0:
            return 0.0
        t0 = time.perf_counter()
        loader_state = loader.state_dict()
        gen_state = gen.get_state()
        it = iter(loader)
        for step in range(n):
            self._step(step, next(it), gen)
            self.optimizer.step()
            self.scheduler.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._reset_after_warmup()
        loader.load_state_dict(loader_state)
        gen.set_state(gen_state)
        return time.perf_counter() - t0

    def _checkpoint(
        self, step, clock_s, loader, gen, val_curve, eval_ckpts, times, warmup_seconds, log_bytes=None
    ) -> None:
        model_state, optim_state = self._model_state(), self._optim_state()
        if not self.dist.is_main:
            distributed.barrier(self.dist)
            return
        rng = {"torch": torch.get_rng_state(), "generator": gen.get_state(), "generator_device": gen.device.type}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        meta = {
            "track": self.track.id,
            "track_hash": self.track.content_hash,
            "code": self.code,
            "model_config": self.track.model.config,
            "text_dim": self.data.text_dim,
            "prediction": self.objective.prediction,
            "seed": self.opt.seed,
            "clock_seconds": clock_s,
            "warmup_seconds": warmup_seconds,
            "loader": loader.state_dict(),
            "world_size": self.dist.world_size,
            "val_loss_curve": val_curve,
            "eval_checkpoints": eval_ckpts,
            "times": times,
            "log_bytes": log_bytes,
        }
        rerun = rerun_advice(self.opt.seed, self.opt.resume)
        save_checkpoint(self.ckpt_dir, step, model_state, self.heads, optim_state, meta, rng, rerun=rerun)
        distributed.barrier(self.dist)

    def _restore(self, path: Path, loader: Any, gen: torch.Generator):
        tensors, optim_state, rng, meta = load_training_state(path, self.device)
        if meta.get("track_hash") != self.track.content_hash:
            raise SpeedrunError(
                f"{path}: written for another version of track '{self.track.id}'; "
                f"start over with --no-resume or delete {self.run_dir}"
            )
        changed = code_changes(meta.get("code", {}), self.code)
        if changed:
            raise SpeedrunError(
                f"{path}: written by other code ({'; '.join(map(str, changed))}), and a run's steps must all come "
                f"from the code its results name; restore that code to resume, or start over with --no-resume"
            )
        if meta.get("world_size") != self.dist.world_size:
            raise SpeedrunError(
                f"{path}: written by {meta.get('world_size')} processes, resuming with {self.dist.world_size}; "
                "resume with the same --nproc"
            )
        model_sd, head_sds = split_component_tensors(tensors)
        self._load_model_state(model_sd)
        for name, head in self.heads.items():
            head.load_state_dict(head_sds.get(name, {}), strict=True)
        self._load_optim_state(optim_state)
        step = int(meta["step"])
        self._resume_log_bytes = meta.get("log_bytes")
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(self.track.optim.warmup_steps), last_epoch=step - 1
        )
        loader.load_state_dict(meta["loader"])
        torch.set_rng_state(rng["torch"])
        restore_generator(gen, rng, path)
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        return (
            step,
            float(meta["clock_seconds"]),
            list(meta.get("val_loss_curve", [])),
            list(meta.get("eval_checkpoints", [])),
            dict(meta.get("times", {})),
            float(meta.get("warmup_seconds", 0.0)),
        )


def restore_generator(gen: torch.Generator, rng: dict[str, Any], path: Path) -> None:
    """Set the training generator from a checkpoint's ``rng.pt``, refusing one of another device kind.

    A CPU and a CUDA generator's states are different objects (a Mersenne Twister, a Philox seed and
    offset), so the stream cannot continue across device kinds.
    """
    saved = rng.get("generator_device", "cpu")
    if saved != gen.device.type:
        raise SpeedrunError(
            f"{path}: written by a run on {saved}, resumed on {gen.device.type}; a run's training randomness "
            f"is drawn on its device, so resume on {saved}, or start over with --no-resume"
        )
    gen.set_state(rng["generator"])


def _progress(enabled: bool, start: int, total: int) -> Callable[[int | None, float | None, float | None], None]:
    """A rich progress bar; call with step=None to close it."""
    if not enabled:
        return lambda *_: None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("[bold]train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
        transient=False,
    )
    task = bar.add_task("train", total=total, completed=start, info="")
    bar.start()

    def update(step: int | None, loss: float | None, speed: float | None) -> None:
        if step is None:
            bar.stop()
            return
        info = f"loss {loss:.4f}" if loss is not None else ""
        if speed:
            info += f"  {speed:.2f} batch/s"
        bar.update(task, completed=step, info=info)

    return update
