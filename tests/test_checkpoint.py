"""checkpoint: a seed started over discards its old checkpoints, or says what stopped it; a write the
kernel refuses is one message and leaves no partial copy."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from speedrun.checkpoint import discard_checkpoints
from speedrun.errors import SpeedrunError


def test_discarding_removes_every_checkpoint_and_nothing_beside(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    (root / "step-00000002").mkdir(parents=True)
    (root / "step-00000002" / "meta.json").write_text("{}")
    (root / "latest").write_text("step-00000002\n")
    (tmp_path / "train.jsonl").write_text("{}\n")
    discard_checkpoints(root)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.jsonl"]
    discard_checkpoints(root)  # nothing there: nothing to do


def test_a_checkpoint_that_cannot_be_deleted_is_one_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "checkpoints"
    (root / "step-00000002").mkdir(parents=True)
    busy = root / "step-00000002" / "model.safetensors"

    def refused(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(busy))

    monkeypatch.setattr(shutil, "rmtree", refused)
    with pytest.raises(SpeedrunError) as info:
        discard_checkpoints(root)
    assert str(info.value) == (
        f"{busy}: cannot delete the old checkpoints to start the seed over (Permission denied); "
        f"delete {root} yourself, then run the same command again"
    )


def test_an_entry_vanishing_mid_delete_is_not_taken_for_nothing_to_delete(tmp_path: Path, monkeypatch) -> None:
    # rmtree raises FileNotFoundError for an inner entry another process removed; the rest may remain.
    root = tmp_path / "checkpoints"
    root.mkdir()
    (root / "latest").write_text("step-00000002\n")

    def vanished(path, *args, **kwargs):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(root / "step-00000002"))

    monkeypatch.setattr(shutil, "rmtree", vanished)
    with pytest.raises(SpeedrunError, match="step-00000002: cannot delete the old checkpoints"):
        discard_checkpoints(root)


# Bytes a file may grow to in the writing process: past meta.json and rng.pt, short of the large file.
FILE_SIZE_LIMIT = 1 << 16
WRITE_UNDER_THE_LIMIT = """
import resource, sys
from pathlib import Path
import torch
from speedrun.checkpoint import write_checkpoint
from speedrun.errors import SpeedrunError
from speedrun.results import CheckpointMeta

root, large, limit = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
big, small = torch.zeros(limit), torch.zeros(4)  # float32: 4 x limit bytes
meta = CheckpointMeta(step=2, track="smoke", track_hash="0", model_config="m", text_dim=4, seed=0, world_size=1)
tensors, optim_state = {"w": big if large == "model" else small}, {"m": big if large == "optimizer" else small}
# CPython ignores SIGXFSZ: a write past the limit fails with EFBIG instead of killing the process.
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    write_checkpoint(root, meta, tensors, optim_state, {"cpu": torch.get_rng_state()})
except SpeedrunError as exc:
    print(exc)
"""


@pytest.mark.parametrize("large", ["model", "optimizer"])  # written by safetensors, by torch.save
def test_a_checkpoint_past_the_file_size_limit_is_one_message_and_leaves_nothing(tmp_path: Path, large: str) -> None:
    root = tmp_path / "checkpoints"
    args = [sys.executable, "-c", WRITE_UNDER_THE_LIMIT, str(root), large, str(FILE_SIZE_LIMIT)]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=Path(__file__).parents[1], timeout=300)
    assert proc.returncode == 0, proc.stderr
    step = root / "step-00000002"
    assert proc.stdout == f"{step}: cannot write it (File too large); the partial copy was removed\n", proc.stdout
    assert list(root.iterdir()) == []  # no partial folder, no latest
