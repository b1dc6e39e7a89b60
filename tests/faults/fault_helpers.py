"""Shared helpers of the fault tests: subprocess runs with injected faults, log and result comparison."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from speedrun.data.source import TrainData
from speedrun.tracks import Track, load_track
from speedrun.train import Trainer, TrainOptions

REPO = Path(__file__).resolve().parents[2]
INJECT = Path(__file__).resolve().parent / "inject"
BASELINE = REPO / "submissions" / "baseline"
# A test-only component: from step ``at`` on, poisons the loss with NaN or Inf, or (kind "grad")
# keeps the loss finite but makes every gradient NaN (d sqrt(z)/dz at z = 0 is inf, times 0).
POISON = '''
import torch

from speedrun.components import Component, Params


class PoisonParams(Params):
    at: int = 3
    kind: str = "nan"


class Poison(Component):
    name = "poison"
    Params = PoisonParams

    def losses(self, batch, prediction, state):
        zero = prediction.sum() * 0.0
        if state.step < self.params.at:
            return {}
        if self.params.kind == "grad":
            return {"poison": torch.sqrt(zero)}
        return {"poison": zero + float(self.params.kind)}
'''
# Fields of a results file that must not depend on whether the run was interrupted (timings,
# dates, wall clock and the digest over them legitimately differ).
STABLE_FIELDS = (
    "status", "failure", "steps", "metrics", "unavailable", "evals", "val_loss_curve",
    "world_size", "kernels", "track", "track_version", "seed", "submission", "provenance",
)


def copy_submission(dest_parent: Path, source: Path = BASELINE, name: str | None = None) -> Path:
    """A copy of a submission folder (without results) under ``dest_parent``; the repo stays clean."""
    dest = dest_parent / (name or source.name)
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("results", "__pycache__"))
    return dest


def write_submission(folder: Path, name: str, components: list[dict], code: str | None = None) -> Path:
    """A submission folder ``folder/name`` targeting the smoke track, with an optional components.py."""
    sub = folder / name
    sub.mkdir(parents=True)
    entries = "".join(
        f'\n[[components]]\nname = "{c["name"]}"\n'
        + "".join(f"params.{k} = {json.dumps(v)}\n" for k, v in c.get("params", {}).items())
        for c in components
    )
    (sub / "submission.toml").write_text(
        f'name = "{name}"\nauthors = ["fault tests"]\ntracks = ["smoke"]\ndescription = "fault injection"\n{entries}'
    )
    if code is not None:
        (sub / "components.py").write_text(code)
    return sub


def subprocess_env(cache_dir: Path, fault: str | None = None, **extra: str) -> dict[str, str]:
    """Environment of a harness subprocess: offline, one thread (bit-reproducible), fault hook on the path."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "SPEEDRUN_CACHE_DIR": str(cache_dir),
        "PYTHONPATH": os.pathsep.join(p for p in (str(INJECT), os.environ.get("PYTHONPATH", "")) if p),
        "COLUMNS": "400",
        **extra,
    }
    env.pop("SPEEDRUN_FAULT", None)
    if fault:
        env["SPEEDRUN_FAULT"] = fault
    return env


def speedrun_run_cmd(submission: Path, runs_dir: Path, data_dir: Path, seed: int = 0) -> list[str]:
    return [
        sys.executable, "-m", "speedrun.cli", "run", str(submission), "--track", "smoke", "--seed", str(seed),
        "--device", "cpu", "--runs-dir", str(runs_dir), "--data-dir", str(data_dir),
    ]


def run(cmd: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, check=False, capture_output=True, text=True, timeout=timeout)


def log_rows(run_dir: Path) -> tuple[list[tuple], list[tuple]]:
    """(step rows (step, loss, grad_norm, lr), validation rows (step, val loss)) of train.jsonl."""
    rows = [json.loads(line) for line in (run_dir / "train.jsonl").read_text().splitlines()]
    steps = [(r["step"], r["loss"], r["grad_norm"], r["lr"]) for r in rows if "event" not in r]
    vals = [(r["step"], r["overall"]) for r in rows if r.get("event") == "val_loss"]
    return steps, vals


def stable(result_path: Path) -> dict:
    data = json.loads(result_path.read_text())
    return {k: data[k] for k in STABLE_FIELDS}


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes), to prove nothing was overwritten."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def small_track(**train) -> Track:
    """The smoke track cut to 6 steps with a checkpoint every 2 (in-process tests)."""
    data = load_track("smoke").model_dump(mode="python")
    data["train"] = {**data["train"], "steps": 6, "checkpoint_every": 2, "untimed_warmup_steps": 1, **train}
    return Track.model_validate(data)


def train_in_process(track, data_root: Path, run_dir: Path, components=(), seed: int = 0, **opts):
    """(trainer, summary) of one in-process CPU run, as tests/test_train.py drives the trainer."""
    data = TrainData.open(track, data_root)
    options = TrainOptions(run_dir=run_dir, seed=seed, device="cpu", progress=False, **opts)
    trainer = Trainer(track, data, list(components), options)
    return trainer, trainer.run()


def flip_byte(path: Path, offset: int | None = None, mask: int = 0xFF) -> None:
    """XOR one byte (default: the middle one) with ``mask``, in place."""
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= mask
    path.write_bytes(bytes(data))


def truncate(path: Path, fraction: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def make_result(submission: str, track: str = "smoke", seed: int = 0, status: str = "ok", fid: float = 100.0):
    """A valid, sealed RunResult with made-up numbers (for leaderboard, verify and corruption tests)."""
    from speedrun.results import finalize

    ok = status == "ok"
    metrics = {"fid": fid, "val_loss": 0.5, "prompt_adherence": 0.1} if ok else {}
    return finalize(
        {
            "run_id": f"seed{seed}", "submission": submission, "track": track, "track_version": 1, "seed": seed,
            "status": status,
            "failure": None if ok else {"step": 3, "reason": "non-finite loss at step 3", "last_finite_loss": 1.2},
            "steps": 20 if ok else 3, "metrics": metrics, "unavailable": {},
            "evals": [{"step": 20, "metrics": metrics, "unavailable": {}, "samples": 32}] if ok else [],
            "val_loss_curve": [{"step": 10, "val_loss": 0.6}, {"step": 20, "val_loss": 0.5}] if ok else [],
            "speed": {"batches_per_second": 10.0, "images_per_second": 80.0, "flops_per_step": 1,
                      "mfu": None, "peak_memory_bytes": None},
            "timing": {"train_clock_s": 2.0, "warmup_s": 0.1, "data_s": 0.1, "checkpoint_s": 0.1,
                       "validation_s": 0.1, "eval_s": 1.0, "wall_s": 5.0, "gpu_hours": 0.0},
            "kernels": "torch", "world_size": 1,
            "hardware": {"device_type": "cpu", "device_names": ["x86_64"], "device_count": 1, "driver": None,
                         "cpu": "x86_64", "cpu_count": 2},
            "software": {"python": "3.11", "torch": "2", "triton": None, "cuda": None, "packages_sha256": "0" * 64},
            "provenance": {"manifest_sha256": "0" * 64, "submission_files": {}, "harness_sha256": "0" * 64,
                           "track_hash": "0" * 64, "overrides": {}, "dataset_manifest_sha256": None},
            "created_at": "2026-01-01T00:00:00+00:00",
        }
    )


def tmp_repo(root: Path) -> Path:
    """A repository skeleton (the real tracks/, an empty submissions/) for leaderboard and verify."""
    shutil.copytree(REPO / "tracks", root / "tracks")
    (root / "submissions").mkdir()
    return root
