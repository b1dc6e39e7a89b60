"""The evaluator end to end: strict loading, batch- and process-count independence, outputs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from speedrun.checkpoint import load_denoiser_strict, read_meta
from speedrun.data.source import TrainData
from speedrun.errors import SpeedrunError
from speedrun.eval.run import evaluate_checkpoint, sample_noise
from speedrun.fileio import sha256_file
from speedrun.model import build_model
from speedrun.train import Trainer, TrainOptions

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def checkpoint(smoke_data_root, tmp_path_factory) -> Path:
    """A smoke checkpoint after a few steps (weights no longer at their zero init)."""
    from speedrun.tracks import load_track

    track = load_track("smoke")
    run_dir = tmp_path_factory.mktemp("run")
    options = TrainOptions(run_dir=run_dir, seed=0, device="cpu", progress=False, stop_after=10)
    Trainer(track, TrainData.open(track, smoke_data_root), [], options).run()
    return run_dir / "checkpoints" / "step-00000010"


def _evaluate(checkpoint: Path, data_root: Path, out: Path, batch_size: int) -> dict:
    evaluate_checkpoint(checkpoint, "smoke", out=out, device="cpu", data_dir=data_root, batch_size=batch_size)
    return json.loads(out.read_text())


def test_noise_depends_on_seed_and_index_only():
    a = sample_noise(42, 7, (3, 4, 4))
    assert torch.equal(a, sample_noise(42, 7, (3, 4, 4)))
    assert not torch.equal(a, sample_noise(42, 8, (3, 4, 4)))
    assert not torch.equal(a, sample_noise(43, 7, (3, 4, 4)))


def test_metrics_identical_for_two_batch_sizes(checkpoint, smoke_data_root, tmp_path):
    small = _evaluate(checkpoint, smoke_data_root, tmp_path / "b5.json", batch_size=5)
    large = _evaluate(checkpoint, smoke_data_root, tmp_path / "b32.json", batch_size=32)
    assert small["metrics"].keys() == {"fid", "val_loss", "prompt_adherence"}
    for name, value in small["metrics"].items():
        assert value == pytest.approx(large["metrics"][name], rel=1e-5, abs=1e-6), name
    assert small["samples"] == 32 and small["protocol_hash"] == large["protocol_hash"]
    assert small["model_sha256"] == sha256_file(checkpoint / "model.safetensors")
    grid = tmp_path / small["grid"]
    assert grid.is_file() and grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_two_process_eval_equals_one_process(checkpoint, smoke_data_root, tmp_path):
    one = _evaluate(checkpoint, smoke_data_root, tmp_path / "one.json", batch_size=16)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-port=29531",
         "-m", "speedrun.cli", "eval", str(checkpoint), "--track", "smoke", "--device", "cpu",
         "--data-dir", str(smoke_data_root), "--out", str(tmp_path / "two.json"), "--batch-size", "16"],
        env=env, capture_output=True, text=True, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((tmp_path / "two.json").read_text())
    for name, value in one["metrics"].items():
        assert two["metrics"][name] == pytest.approx(value, rel=1e-5, abs=1e-6), name


def _copy_with(checkpoint: Path, dest: Path, edit) -> Path:
    shutil.copytree(checkpoint, dest)
    tensors = load_file(str(dest / "model.safetensors"))
    meta = json.loads((dest / "meta.json").read_text())
    edit(tensors, meta)
    save_file(tensors, str(dest / "model.safetensors"))
    meta["files"]["model.safetensors"] = sha256_file(dest / "model.safetensors")
    (dest / "meta.json").write_text(json.dumps(meta))
    return dest


def fresh_model():
    return build_model("smoke", text_dim=384)


def test_declared_component_weights_are_dropped(checkpoint, tmp_path):
    def add_head(tensors, meta):
        tensors["components.repa.proj.weight"] = torch.zeros(2, 2)
        meta["component_keys"] = ["components.repa.proj.weight"]

    path = _copy_with(checkpoint, tmp_path / "ck", add_head)
    load_denoiser_strict(path, fresh_model())


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t, m: t.__setitem__("components.x.w", torch.zeros(1)), "not declared"),
        (lambda t, m: t.__setitem__("extra.weight", torch.zeros(1)), "unexpected \\['extra.weight'\\]"),
        (lambda t, m: t.pop(next(iter(sorted(t)))), "missing"),
        (lambda t, m: t.__setitem__(sorted(t)[-1], torch.zeros(1, 1, 1)), "wrong shape"),
    ],
)
def test_strict_loading_rejects_anything_else(checkpoint, tmp_path, edit, message):
    path = _copy_with(checkpoint, tmp_path / "ck", edit)
    with pytest.raises(SpeedrunError, match=message):
        load_denoiser_strict(path, fresh_model())


def test_corrupted_checkpoint_is_detected(checkpoint, tmp_path):
    dest = tmp_path / "ck"
    shutil.copytree(checkpoint, dest)
    data = bytearray((dest / "model.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (dest / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(SpeedrunError, match="model.safetensors: missing or corrupted"):
        read_meta(dest)


def test_eval_refuses_a_checkpoint_of_another_track(checkpoint, smoke_data_root, tmp_path):
    with pytest.raises(SpeedrunError, match="trained on track 'smoke', not 'tiny'"):
        evaluate_checkpoint(checkpoint, "tiny", out=tmp_path / "x.json", device="cpu", data_dir=smoke_data_root)
