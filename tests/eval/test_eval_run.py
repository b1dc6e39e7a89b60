"""The evaluator end to end: strict loading, batch- and process-count independence, outputs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from launch_helpers import free_port
from safetensors.torch import load_file, save_file

from speedrun.checkpoint import load_denoiser_strict, read_meta
from speedrun.data.source import TrainData
from speedrun.errors import SpeedrunError
from speedrun.eval.run import check_out, evaluate_checkpoint, resolve_checkpoint, sample_noise, write_grid
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
    assert small["metrics"].keys() == {"fid", "cmmd", "dino_mmd", "val_loss", "prompt_adherence"}
    for name, value in small["metrics"].items():
        assert value == pytest.approx(large["metrics"][name], rel=1e-5, abs=1e-6), name
    assert small["samples"] == 32 and small["protocol_hash"] == large["protocol_hash"]
    assert small["model_sha256"] == sha256_file(checkpoint / "model.safetensors")
    grid = tmp_path / small["grid"]
    assert grid.is_file() and grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Written through temporary files that are renamed into place: none is left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b32.json", "b32.png", "b5.json", "b5.png"]


@pytest.mark.slow
def test_two_process_eval_equals_one_process(checkpoint, smoke_data_root, tmp_path):
    one = _evaluate(checkpoint, smoke_data_root, tmp_path / "one.json", batch_size=16)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}",
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


def test_a_checkpoint_whose_meta_cannot_be_read_is_one_message(checkpoint, tmp_path):
    dest = tmp_path / "ck"
    shutil.copytree(checkpoint, dest)
    (dest / "meta.json").unlink()
    (dest / "meta.json").mkdir()
    with pytest.raises(SpeedrunError, match=r"meta.json: cannot read it \(Is a directory\); fix that, or delete"):
        read_meta(dest)


def test_eval_refuses_a_checkpoint_of_another_track(checkpoint, smoke_data_root, tmp_path):
    with pytest.raises(SpeedrunError, match="trained on track 'smoke', not 'tiny'"):
        evaluate_checkpoint(checkpoint, "tiny", out=tmp_path / "x.json", device="cpu", data_dir=smoke_data_root)


@pytest.fixture
def no_heavy_work(monkeypatch):
    """Fails the test if evaluation gets as far as the device, the model or sampling: argument
    errors must come before minutes of work."""

    def forbidden(*args, **kwargs):
        raise AssertionError("heavy work started before the error")

    from speedrun import distributed
    from speedrun.eval import run

    for name in ("build_model", "load_denoiser_strict", "generate_all"):
        monkeypatch.setattr(run, name, forbidden)
    monkeypatch.setattr(distributed, "setup", forbidden)


def test_a_checkpoints_folder_or_its_latest_file_stands_for_the_checkpoint_latest_names(
    checkpoint, smoke_data_root, tmp_path, no_heavy_work
):
    # The track mismatch is raised after resolution and names the checkpoint evaluated.
    for given in (checkpoint.parent, checkpoint.parent / "latest"):
        with pytest.raises(SpeedrunError, match=f"{re.escape(str(checkpoint))}: trained on track 'smoke', not 'tiny'"):
            evaluate_checkpoint(given, "tiny", out=tmp_path / "x.json", device="cpu", data_dir=smoke_data_root)


def test_latest_is_followed_to_the_step_it_names(tmp_path):
    root = tmp_path / "checkpoints"
    for step in ("step-00000010", "step-00000020"):
        (root / step).mkdir(parents=True)
        (root / step / "meta.json").write_text("{}")
    (root / "latest").write_text("step-00000010\n")
    assert resolve_checkpoint(root) == root / "step-00000010"
    assert resolve_checkpoint(root / "step-00000020") == root / "step-00000020"


@pytest.mark.parametrize("pid", [1, 4194304])
def test_an_out_name_that_fits_any_pid_passes(tmp_path, monkeypatch, pid):
    monkeypatch.setattr(os, "getpid", lambda: pid)
    check_out(tmp_path / ("m" * 237 + ".json"))  # 242 bytes: ".<name>.tmp-4194304" is 255
    with pytest.raises(SpeedrunError, match="shorten it by 1 bytes"):
        check_out(tmp_path / ("m" * 238 + ".json"))


def test_a_checkpoint_path_too_long_is_one_message(tmp_path, python314_path_checks):
    path = tmp_path / ("a" * 300) / "checkpoints"
    with pytest.raises(SpeedrunError) as info:
        resolve_checkpoint(path)
    assert str(info.value) == f"{path}: cannot look for a checkpoint there (File name too long)"


@pytest.mark.parametrize("layout", ["missing", "run folder", "empty folder", "latest names nothing"])
def test_anything_else_is_refused_with_what_was_expected(tmp_path, layout):
    path = tmp_path / "given"
    if layout == "run folder":
        (path / "checkpoints" / "step-00000010").mkdir(parents=True)
    elif layout == "empty folder":
        path.mkdir()
    elif layout == "latest names nothing":
        path.mkdir()
        (path / "latest").write_text("step-00000010\n")
    expected = "names no existing checkpoint" if layout == "latest names nothing" else "expected a checkpoint directory"
    with pytest.raises(SpeedrunError, match=f"{re.escape(str(path))}.*{expected}"):
        resolve_checkpoint(path)


@pytest.mark.parametrize(
    "make, out, message",
    [
        (lambda d: (d / "m.json").mkdir(), "m.json", "m.json is a directory"),
        (lambda d: (d / "m.png").mkdir(), "m.json", "m.png is a directory"),
        (lambda d: None, "m.png", "must not end in .png"),
        (lambda d: (d / "f").write_text(""), "f/m.json", "f is a file"),
        (lambda d: (d / "f").write_text(""), "f/sub/m.json", "f is a file"),
        # 250 bytes is a legal name, but not its writer's temporary ".<name>.tmp-<pid>" beside it
        # 250 bytes + ".", ".tmp-" and a 7-digit pid (the most Linux gives) is 263: 8 too many, whatever this pid
        (lambda d: None, "m" * 245 + ".json", "the file name m+.json is too long; shorten it by 8 bytes"),
        (lambda d: None, "a" * 300 + "/m.json", "a+ cannot be used \\(File name too long\\), so"),
        (lambda d: None, "new/" + "a" * 300 + "/m.json", "a+ cannot be used \\(File name too long\\), so"),
    ],
)
def test_unwritable_out_is_refused_before_evaluating(
    checkpoint, smoke_data_root, tmp_path, no_heavy_work, make, out, message
):
    make(tmp_path)
    with pytest.raises(SpeedrunError, match=f"--out {re.escape(str(tmp_path / out))}: .*{message}"):
        evaluate_checkpoint(checkpoint, "smoke", out=tmp_path / out, device="cpu", data_dir=smoke_data_root)


def test_out_in_a_read_only_folder_is_refused_before_evaluating(
    checkpoint, smoke_data_root, tmp_path, no_heavy_work, read_only
):
    read_only(tmp_path)
    out = tmp_path / "sub" / "m.json"
    message = f"--out {out}: {tmp_path} cannot be written (permission denied), so {out} cannot be written"
    with pytest.raises(SpeedrunError, match=re.escape(message)):
        evaluate_checkpoint(checkpoint, "smoke", out=out, device="cpu", data_dir=smoke_data_root)


def test_unprepared_data_hint_names_the_data_dir_in_use(checkpoint, tmp_path, monkeypatch, no_heavy_work):
    monkeypatch.setenv("SPEEDRUN_DATA_DIR", str(tmp_path / "default"))
    custom = tmp_path / "my data"
    with pytest.raises(SpeedrunError) as info:
        evaluate_checkpoint(checkpoint, "smoke", out=tmp_path / "m.json", data_dir=custom)
    assert f"`speedrun prepare --track smoke --data-dir '{custom}'`" in str(info.value)
    # The default folder needs no flag: `speedrun prepare` looks there itself.
    with pytest.raises(SpeedrunError) as info:
        evaluate_checkpoint(checkpoint, "smoke", out=tmp_path / "m.json")
    assert "`speedrun prepare --track smoke`" in str(info.value)


def test_grid_is_written_atomically(tmp_path, monkeypatch):
    import matplotlib.figure

    path = tmp_path / "grid.png"
    images = np.zeros((2, 8, 8, 3), np.uint8)
    write_grid(images, ["a cat", "a dog"], path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    def disk_full(self, handle, **kwargs):
        handle.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", disk_full)
    before = path.read_bytes()
    with pytest.raises(SpeedrunError, match="No space left"):
        write_grid(images, ["a cat", "a dog"], path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]


def test_grid_captions_are_wrapped_whole(tmp_path):
    """No prompt is cut: a caption's every wrapped line makes its row taller (the grid once kept three)."""
    from PIL import Image

    long = " ".join(["word"] * 60)  # 10 lines of 26 characters
    for name, captions in (("short", ["a cat", "a dog"]), ("long", ["a cat", long])):
        write_grid(np.zeros((2, 8, 8, 3), np.uint8), captions, tmp_path / f"{name}.png")
    with Image.open(tmp_path / "short.png") as short, Image.open(tmp_path / "long.png") as tall:
        assert tall.width == short.width and tall.height - short.height > 8 * 11  # 8 pt lines: 11 px at 100 dpi


class _Images:
    """A reference split of uint8 images (``images(index)``, ``len``), as the evaluator reads one."""

    def __init__(self, images: np.ndarray) -> None:
        self.x = images

    def __len__(self) -> int:
        return len(self.x)

    def images(self, index: np.ndarray) -> np.ndarray:
        return self.x[index]


@pytest.mark.parametrize("n_gen, n_ref", [(8, 100), (100, 8)])
def test_fid_with_one_side_fewer_samples_than_dimensions(track_variant, tmp_path, n_gen, n_ref):
    """Uneven counts (here around the random-init Inception's 64 dimensions) use the exact FD; the
    features of the small side must be kept whichever side it is. Checked against scipy's sqrtm."""
    import scipy.linalg

    from speedrun.eval.features import get_extractor
    from speedrun.eval.scores import EvalInputs, feature_distance

    track = track_variant(eval={"metrics": ["fid"]})
    rng = np.random.default_rng(0)
    gen = rng.integers(0, 256, (n_gen, 32, 32, 3), dtype=np.uint8)
    ref = rng.integers(0, 256, (n_ref, 32, 32, 3), dtype=np.uint8)
    report = {k: {} for k in ("metrics", "unavailable", "reference_stats_sha256", "extractor_weights", "seconds")}
    inputs = EvalInputs(
        track=track, images=gen, captions=[], reference=_Images(ref), reference_hash="test-images", sampler=None,
        data=None, device=torch.device("cpu"), cache=tmp_path, protocol_hash="test",
    )  # fmt: skip
    feature_distance(inputs, report, "fid")

    extractor = get_extractor("fid", device=torch.device("cpu"), random_init=True, batch_size=track.eval.batch_size)
    a, b = (extractor(x).astype(np.float64) for x in (gen, ref))
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    cross = scipy.linalg.sqrtm(s_a @ s_b)
    expected = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(cross).real
    assert report["metrics"]["fid"] == pytest.approx(expected, rel=1e-6)


def test_a_metric_whose_weights_are_missing_is_reported_unavailable_with_why(track_variant, tmp_path, monkeypatch):
    """An evaluation without CLIP's weights here still ends: CMMD is None, with the reason, and neither reference
    statistics nor extractor weights are recorded for it."""
    import huggingface_hub.constants

    from speedrun.eval.scores import EvalInputs, feature_distance

    monkeypatch.setenv("SPEEDRUN_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    track = track_variant(eval={"metrics": ["fid", "cmmd"], "extractors": "pretrained"})
    images = np.zeros((4, 32, 32, 3), np.uint8)
    report = {k: {} for k in ("metrics", "unavailable", "reference_stats_sha256", "extractor_weights", "seconds")}
    inputs = EvalInputs(
        track=track, images=images, captions=[], reference=_Images(images), reference_hash="test-images",
        sampler=None, data=None, device=torch.device("cpu"), cache=tmp_path, protocol_hash="test",
    )  # fmt: skip
    feature_distance(inputs, report, "cmmd")
    assert report["metrics"] == {"cmmd": None}
    assert report["unavailable"]["cmmd"].startswith("metric unavailable: cmmd needs openai/clip-vit-large-patch14-336")
    assert not report["reference_stats_sha256"] and not report["extractor_weights"]
