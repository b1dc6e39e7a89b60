"""distributed.all_reduce: the mean and the largest value over ranks, in a new tensor."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from speedrun import distributed
from speedrun.distributed import Dist

CPU = torch.device("cpu")


def test_one_process_returns_the_value_itself() -> None:
    d = Dist(rank=0, local_rank=0, world_size=1, device=CPU)
    value = torch.tensor([1.5, -2.0])
    assert distributed.all_reduce(value, d, "mean") is value
    assert distributed.all_reduce(value, d, "max") is value


def _rank(rank: int, init: str, results: dict) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        d = Dist(rank=rank, local_rank=rank, world_size=2, device=CPU)
        mine = torch.tensor([1.0, 10.0]) if rank == 0 else torch.tensor([4.0, -2.0])
        before = mine.clone()
        mean = distributed.all_reduce(mine, d, "mean")
        largest = distributed.all_reduce(mine, d, "max")
        results[rank] = (mean.tolist(), largest.tolist(), torch.equal(mine, before))
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_agree_on_the_mean_and_the_largest(tmp_path) -> None:
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_rank, args=(f"file://{tmp_path / 'rendezvous'}", results), nprocs=2, join=True)
        got = dict(results)
    for rank in (0, 1):
        mean, largest, untouched = got[rank]
        assert mean == [2.5, 4.0] and largest == [4.0, 10.0] and untouched
