"""The loader: seeded order, exact resume, rank partition, pixel mapping."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from speedrun.data.loader import Loader, from_uint8, load_batch, to_uint8
from speedrun.errors import SpeedrunError


def _indices(loader: Loader, batches: int) -> list[list[int]]:
    return [next(loader).index.tolist() for _ in range(batches)]


def test_order_depends_on_seed_only(prepared):
    train = prepared.split("train")
    assert _indices(Loader(train, 20, seed=1), 3) == _indices(Loader(train, 20, seed=1), 3)
    assert _indices(Loader(train, 20, seed=1), 3) != _indices(Loader(train, 20, seed=2), 3)
    expected = np.random.Generator(np.random.PCG64([1, 0])).permutation(len(train))[:20]
    assert _indices(Loader(train, 20, seed=1), 1)[0] == expected.tolist()


def test_each_epoch_is_a_permutation_and_batches_cross_epochs(prepared):
    train = prepared.split("train")
    loader = Loader(train, 40, seed=3)
    seen = list(itertools.chain.from_iterable(_indices(loader, 15)))  # 600 examples = 2 epochs of 300
    assert sorted(seen[:300]) == list(range(300)) and sorted(seen[300:]) == list(range(300))
    assert seen[:300] != seen[300:]
    assert loader.position == 600


def test_resume_is_exact(prepared):
    train = prepared.split("train")
    loader = Loader(train, 24, seed=5)
    for _ in range(13):  # crosses an epoch boundary at 300
        next(loader)
    state = loader.state_dict()
    expected = [next(loader) for _ in range(3)]
    resumed = Loader(train, 24, seed=5)
    resumed.load_state_dict(state)
    for want in expected:
        got = next(resumed)
        assert torch.equal(got.index, want.index)
        assert torch.equal(got.x, want.x) and torch.equal(got.text, want.text)
        assert torch.equal(got.text_mask, want.text_mask)
    assert (
        Loader(train, 24, seed=5, position=state["position"]).indices(state["position"], 24).tolist()
        == expected[0].index.tolist()
    )


def test_ranks_partition_each_global_batch(prepared):
    train = prepared.split("train")
    single = Loader(train, 16, seed=7)
    ranks = [Loader(train, 16, seed=7, rank=r, world_size=2) for r in range(2)]
    for _ in range(25):
        whole = next(single)
        parts = [next(r) for r in ranks]
        assert all(p.index.shape == (8,) for p in parts)
        assert torch.equal(torch.cat([p.index for p in parts]), whole.index)
        assert torch.equal(torch.cat([p.x for p in parts]), whole.x)
    assert ranks[0].position == ranks[1].position == single.position


def test_batches_are_in_model_space(prepared):
    train = prepared.split("train")
    batch = load_batch(train, np.array([3, 1, 4]))
    assert batch.x.dtype == torch.float32 and batch.x.shape == (3, 3, 32, 32)
    assert batch.text.dtype == torch.float32 and batch.text.shape == (3, 32, 8)
    assert batch.text_mask.dtype == torch.bool and batch.index.dtype == torch.int64
    images = train.images(np.array([3, 1, 4]))
    assert torch.equal(batch.x, from_uint8(images))
    assert torch.equal(to_uint8(batch.x), torch.from_numpy(images))
    assert (batch.text[~batch.text_mask] == 0).all()


def test_uint8_conversion_rounds_and_clamps_once():
    values = torch.arange(256, dtype=torch.uint8).reshape(1, 16, 16, 1).expand(1, 16, 16, 3)
    assert torch.equal(to_uint8(from_uint8(values)), values)
    x = torch.tensor([-2.0, -1.0, -0.99, 0.0, 0.999, 1.0, 3.0]).reshape(1, 1, 1, 7).expand(1, 3, 1, 7)
    assert to_uint8(x)[0, 0, :, 0].tolist() == [0, 0, 1, 128, 255, 255, 255]


def test_bad_configuration_is_an_error(prepared):
    train = prepared.split("train")
    with pytest.raises(SpeedrunError, match="multiple of the world size"):
        Loader(train, 10, seed=0, world_size=4)
    loader = Loader(train, 10, seed=0)
    with pytest.raises(SpeedrunError, match="seed=1"):
        loader.load_state_dict({**loader.state_dict(), "seed": 1})


def _same_batches(got, want) -> bool:
    fields = ("index", "x", "text", "text_mask")
    return all(torch.equal(getattr(got, f), getattr(want, f)) for f in fields)


def test_prefetch_yields_the_plain_loaders_batches_across_ranks_and_epochs(prepared):
    train = prepared.split("train")
    for rank in range(2):
        plain = Loader(train, 48, seed=4, rank=rank, world_size=2)
        ahead = Loader(train, 48, seed=4, rank=rank, world_size=2, prefetch=True)
        for _ in range(8):  # 384 examples: crosses the epoch boundary at 300
            assert _same_batches(next(ahead), next(plain))
            # The position counts batches handed out, not the one being read ahead.
            assert ahead.state_dict() == plain.state_dict()
        ahead.close()


def test_prefetch_after_a_rewind_reads_the_rewound_position(prepared):
    """load_state_dict (the trainer's untimed warmup, a resume) drops the batch read ahead."""
    train = prepared.split("train")
    loader = Loader(train, 24, seed=5, prefetch=True)
    start = loader.state_dict()
    first = [next(loader) for _ in range(3)]
    loader.load_state_dict(start)
    assert all(_same_batches(next(loader), want) for want in first)
    later = Loader(train, 24, seed=5)
    later.load_state_dict({**start, "position": 240})
    loader.load_state_dict({**start, "position": 240})
    assert _same_batches(next(loader), next(later))
    loader.close()


def test_close_stops_the_prefetch_thread_and_the_loader_still_reads(prepared):
    import threading

    def readers() -> int:
        return sum(t.name.startswith("speedrun-loader") for t in threading.enumerate())

    train = prepared.split("train")
    before = readers()
    loader = Loader(train, 16, seed=2, prefetch=True)
    next(loader)
    assert readers() == before + 1
    loader.close()
    assert readers() == before
    plain = Loader(train, 16, seed=2, position=16)
    assert _same_batches(next(loader), next(plain))


def test_prefetch_reports_a_read_error_on_the_batch_that_needs_it(prepared, monkeypatch):
    train = prepared.split("train")
    gather, calls = train.gather, []

    def second_read_fails(indices):
        calls.append(1)
        if len(calls) == 2:
            raise SpeedrunError("shard 0: checksum mismatch")
        return gather(indices)

    monkeypatch.setattr(train, "gather", second_read_fails)
    loader = Loader(train, 16, seed=2, prefetch=True)
    next(loader)  # its own read succeeds; the read ahead for the next batch fails in the background
    with pytest.raises(SpeedrunError, match="shard 0: checksum mismatch"):
        next(loader)
    loader.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinning and device placement need CUDA")
def test_prefetch_on_cuda_pins_from_the_loaders_device_and_matches_the_plain_loader(prepared):
    train = prepared.split("train")
    device = torch.device("cuda", torch.cuda.device_count() - 1)
    loader = Loader(train, 16, seed=2, device=device, prefetch=True)
    plain = Loader(train, 16, seed=2)
    for _ in range(3):
        got, want = next(loader), next(plain)
        assert got.x.device == device and got.text.dtype == torch.float32
        assert _same_batches(type(got)(**{f: getattr(got, f).cpu() for f in ("x", "text", "text_mask", "index")}), want)
    assert loader._worker.submit(torch.cuda.current_device).result() == device.index
    loader.close()
    unindexed = Loader(train, 16, seed=2, device="cuda", prefetch=True)  # the current device
    assert next(unindexed).x.device == torch.device("cuda", torch.cuda.current_device())
    unindexed.close()
