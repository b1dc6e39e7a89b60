"""Results files as ``speedrun run`` writes them (real hashes, so verify accepts them), and a reproduction
key to sign them with, for the tests of verify, the leaderboard and signing."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from speedrun.data.source import dataset_manifest_sha256
from speedrun.devices import model_flops_utilisation
from speedrun.fileio import sha256_file
from speedrun.provenance import harness_sha256, submission_file_hashes
from speedrun.results import finalize, load_result, write_result
from speedrun.tracks import load_track
from speedrun.trust import KEYS_FILE, key_id, load_trust, sign
from speedrun.verify import flops_per_step_of


def seal(
    folder: Path, track_id: str, seed: int, *, tracks_dir: Path, data_dir: Path, bps: float = 4.0,
    clock_s: float = 5.0, card: str | None = None, **fields,
) -> Path:
    """Write a results file for ``folder`` as ``speedrun run`` would, with the current real hashes; on one
    ``card`` (a GPU name) or a CPU, at ``bps`` batches/s for ``clock_s`` training seconds."""
    track = load_track(track_id, tracks_dir)
    flops = flops_per_step_of(track)
    fid = fields.pop("fid", 10.0 + seed)
    metrics = {"fid": fid, "cmmd": 0.2, "dino_mmd": 0.3, "val_loss": 0.5, "prompt_adherence": None}
    evals = [{"step": track.train.steps, "metrics": metrics, "unavailable": {}, "samples": track.eval.samples}]
    data = {
        "run_id": f"seed{seed}",
        "submission": folder.name,
        "track": track.id,
        "track_version": track.version,
        "seed": seed,
        "status": "ok",
        "failure": None,
        "steps": track.train.steps,
        "metrics": metrics,
        "unavailable": {"prompt_adherence": "no CLIP weights offline"},
        "evals": evals,
        "val_loss_curve": [{"step": 10, "val_loss": 0.7}, {"step": 20, "val_loss": 0.5}],
        "speed": {
            "batches_per_second": bps,
            "images_per_second": bps * track.train.global_batch,
            "flops_per_step": flops,
            "mfu": model_flops_utilisation(flops, bps, card, 1),
            "peak_memory_bytes": None,
        },
        "timing": {
            "train_clock_s": clock_s, "warmup_s": 1.0, "data_s": 0.5, "checkpoint_s": 0.1,
            "validation_s": 0.2, "eval_s": 2.0, "wall_s": clock_s + 4.0, "gpu_hours": clock_s / 3600 if card else 0.0,
        },
        "kernels": "torch",
        "world_size": 1,
        "hardware": {
            "device_type": "cuda" if card else "cpu", "device_names": [card or "x86_64"], "device_count": 1,
            "driver": None, "cpu": "x86_64", "cpu_count": 2,
        },
        "software": {"python": "3.11", "torch": "2", "triton": None, "cuda": None, "packages_sha256": "0" * 64},
        "provenance": {
            "manifest_sha256": sha256_file(folder / "submission.toml"),
            "submission_files": submission_file_hashes(folder),
            "harness_sha256": harness_sha256(),
            "track_hash": track.content_hash,
            "overrides": {},
            "dataset_manifest_sha256": dataset_manifest_sha256(track, data_dir),
        },
        "created_at": "2025-01-01T00:00:00+00:00",
    }
    data["provenance"] |= fields.pop("provenance", {})  # the given provenance fields, the real hashes for the rest
    data.update(fields)
    path = folder / "results" / track.id / f"seed{seed}.json"
    write_result(path, finalize(data))
    return path


KEY = Ed25519PrivateKey.generate()  # the reproduction's key in these tests


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def write_keys(root: Path, keys: dict[Ed25519PrivateKey, str], reproduces: tuple[str, ...] = ("smoke", "tiny")) -> None:
    """``keys/reproduction.toml`` under ``root`` listing each key with its status."""
    import base64

    lines = [f"reproduces = {list(reproduces)!r}".replace("'", '"'), ""]
    for key, status in keys.items():
        public = raw_public(key)
        lines += [
            "[[key]]", f'id = "{key_id(public)}"', f'public_key = "{base64.b64encode(public).decode()}"',
            'holder = "tests"', f'status = "{status}"', "",
        ]  # fmt: skip
    (root / KEYS_FILE).parent.mkdir(parents=True, exist_ok=True)
    (root / KEYS_FILE).write_text("\n".join(lines))


def sign_result(root: Path, path: Path, key: Ed25519PrivateKey = KEY) -> Path:
    """Sign the results file ``path`` as the reproduction would, with a key ``root``'s keys file lists active."""
    return sign(path, load_result(path), key, load_trust(root).keys)
