"""The one place that knows torch.distributed; a plain ``python`` process is rank 0 of 1, with no process group."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist

from speedrun.devices import DEVICES
from speedrun.errors import SpeedrunError


@dataclass(frozen=True)
class Dist:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: str | None = None) -> Dist:
    """Initialise the process group if launched by torchrun; pick the device for this rank."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    want = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if want not in DEVICES:
        raise SpeedrunError(f"device {want!r}: must be one of {', '.join(DEVICES)}")
    if want == "cuda" and not torch.cuda.is_available():
        raise SpeedrunError("--device cuda was asked for but no CUDA device is visible")
    dev = torch.device("cuda", local_rank) if want == "cuda" else torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and restart != "0":
            # torchrun's store outlives restarts: each attempt gets a key prefix, or it reads dead keys (torch#167288).
            host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
            store = dist.TCPStore(host, port, world_size, is_master=False)
            prefixed = dist.PrefixStore(f"speedrun-attempt-{restart}", store)
            dist.init_process_group(backend=backend, store=prefixed, rank=rank, world_size=world_size)
        else:
            dist.init_process_group(backend=backend)
    return Dist(rank=rank, local_rank=local_rank, world_size=world_size, device=dev)


def teardown() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def exit_if_launched(code: int) -> None:
    """Under torchrun, end this process now with ``code``, after the teardown. Interpreter finalisation
    would tear down FSDP's gloo threads, which aborts (SIGABRT) about one finished run in fifteen."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def all_reduce(value: torch.Tensor, d: Dist, op: Literal["mean", "max"]) -> torch.Tensor:
    """The mean or the largest of ``value`` over ranks, in a new tensor (``value`` for one process)."""
    if not d.enabled:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM if op == "mean" else dist.ReduceOp.MAX)
    return value / d.world_size if op == "mean" else value


def all_reduce_grads(params: list[torch.nn.Parameter], d: Dist) -> None:
    """Average gradients of parameters DDP does not own (component heads) across ranks."""
    if not d.enabled:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= d.world_size


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()
