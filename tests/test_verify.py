"""``speedrun verify``: digests, provenance staleness, track versions, seed rule, no submission imports."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from model_helpers import reference_attention
from results_helpers import seal
from torch.utils.flop_counter import FlopCounterMode

import speedrun.verify as verify_mod
from speedrun.data.shards import MANIFEST_NAME
from speedrun.data.source import dataset_dir
from speedrun.kernels import dispatch
from speedrun.model import build_model
from speedrun.tracks import TRACKS_DIR, load_track
from speedrun.verify import Problem, flops_per_step_of, verify_paths

MANIFEST = """\
name = "alpha"
authors = ["A. Tester"]
tracks = ["smoke", "tiny"]
description = "A fixture submission."
components = []
"""


class Repo:
    """A fake repository: the real tracks, one submission ``alpha``, an empty data dir."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tracks = root / "tracks"
        self.data = root / "data"
        self.sub = root / "submissions" / "alpha"
        shutil.copytree(TRACKS_DIR, self.tracks)
        self.sub.mkdir(parents=True)
        self.data.mkdir()
        (self.sub / "submission.toml").write_text(MANIFEST)
        (self.sub / "NOTES.md").write_text("Why it works.\n")
        self.notes: list[str] = []

    def seal(self, track_id: str = "smoke", seed: int = 0, **fields) -> Path:
        return seal(self.sub, track_id, seed, tracks_dir=self.tracks, data_dir=self.data, **fields)

    def verify(self, paths: list[Path] | None = None, **kw) -> list[Problem]:
        return verify_paths(paths or [], repo_root=self.root, data_dir=self.data, info=self.notes.append, **kw).problems


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo(tmp_path / "repo")


def fields(problems: list[Problem]) -> list[str]:
    return [p.field for p in problems]


def test_fresh_results_pass_and_unprepared_data_is_a_note(repo: Repo) -> None:
    repo.seal("smoke", 0)
    assert repo.verify() == []
    assert repo.notes == ["cannot check the dataset manifest of track 'smoke': data not prepared"]


def test_verify_says_how_much_it_read(repo: Repo) -> None:
    """"No problems" is only worth as much as what was read: the tracks, submissions and results files."""
    repo.seal("smoke", 0)
    found = verify_paths([], repo_root=repo.root, data_dir=repo.data, info=repo.notes.append)
    assert (found.problems, found.tracks, found.submissions, found.results) == ([], 3, 1, 1)
    assert verify_paths([repo.sub / "NOTES.md"], repo_root=repo.root, info=repo.notes.append).results == 0


def test_results_from_other_prepared_data_are_stale(repo: Repo) -> None:
    manifest = dataset_dir(load_track("smoke", repo.tracks), repo.data) / MANIFEST_NAME
    manifest.parent.mkdir(parents=True)
    manifest.write_text('{"shards": ["a"]}')
    repo.seal()
    assert repo.verify() == [] and repo.notes == []
    manifest.write_text('{"shards": ["b"]}')
    problems = repo.verify()
    assert [p.field for p in problems] == ["provenance.dataset_manifest_sha256", "seeds"]
    assert "another kind of machine" in problems[0].message and "--seed 0 --no-resume" in problems[0].message


@pytest.mark.parametrize(
    "edit",
    [
        ("metrics", "fid", 1.0),
        ("seed", None, 7),
        ("status", None, "diverged"),
        ("speed", "batches_per_second", 99.0),
        ("timing", "gpu_hours", 0.5),
        ("provenance", "harness_sha256", "0" * 64),
        ("created_at", None, "2030-01-01T00:00:00+00:00"),
        ("digest", None, "f" * 64),
    ],
    ids=lambda e: ".".join(str(p) for p in e[:2] if p),
)
def test_any_edited_field_fails_the_digest(repo: Repo, edit: tuple) -> None:
    path = repo.seal()
    data = json.loads(path.read_text())
    key, sub, value = edit
    if sub is None:
        data[key] = value
    else:
        data[key][sub] = value
    path.write_text(json.dumps(data, indent=2))
    problems = repo.verify()
    assert fields(problems) == ["digest", "seeds"]  # and the edited seed no longer counts
    assert problems[0].file == "submissions/alpha/results/smoke/seed0.json"
    assert "edited" in problems[0].message
    assert problems[0].message.endswith(RERUN_SMOKE_SEED0)


# `speedrun run` skips or refuses a seed whose results file exists, and resumes (or refuses) the old
# run's checkpoint: the remedy verify gives must move the file and start over, or it does not work.
RERUN_SMOKE_SEED0 = (
    "to re-run it, move submissions/alpha/results/smoke/seed0.json out of the submission folder, "
    "then run `speedrun run submissions/alpha --track smoke --seed 0 --no-resume`"
)


def test_an_unparseable_results_file_is_described_then_remedied(repo: Repo) -> None:
    path = repo.seal()
    path.write_text("{not json")
    problems = repo.verify()
    assert fields(problems) == ["(file)", "seeds"]
    message = problems[0].message
    assert "not valid JSON" in message and message.endswith(RERUN_SMOKE_SEED0)
    assert message.count("re-run") == 1  # results.py describes; the one remedy is verify's


@pytest.mark.parametrize("change", ["edited", "added", "removed"])
def test_a_submission_file_changed_after_the_run_makes_it_stale(repo: Repo, change: str) -> None:
    repo.seal()
    if change == "edited":
        (repo.sub / "NOTES.md").write_text("Why it works, revised.\n")
        name = "NOTES.md"
    elif change == "added":
        (repo.sub / "helper.py").write_text("X = 1\n")
        name = "helper.py"
    else:
        (repo.sub / "NOTES.md").unlink()
        name = "NOTES.md"
    problems = repo.verify()
    stale = [p for p in problems if p.field == "provenance.submission_files"]
    said = {"edited": "changed", "added": "was added", "removed": "was removed"}[change]
    assert len(stale) == 1 and f"'{name}' {said}" in stale[0].message
    assert stale[0].message.endswith(RERUN_SMOKE_SEED0)
    # A stale result no longer counts toward the entry, so the seed rule fails too.
    assert fields(problems) == ["provenance.submission_files", "seeds"]


def test_editor_and_file_browser_litter_leaves_the_result_fresh(repo: Repo) -> None:
    # Nothing a run reads: a swap file coming or going must not make a result stale.
    repo.seal()
    litter = [".DS_Store", ".components.py.swp", "NOTES.md~", ".#NOTES.md", "#NOTES.md#", "._NOTES.md", "Thumbs.db"]
    for name in litter:
        (repo.sub / name).write_text("editor state\n")
    (repo.sub / ".ipynb_checkpoints").mkdir()
    (repo.sub / ".ipynb_checkpoints" / "scratch.py").write_text("X = 1\n")
    assert repo.verify() == []
    # A hidden file that is not litter (a run may read it) still counts.
    (repo.sub / ".settings.json").write_text("{}\n")
    stale = [p for p in repo.verify() if p.field == "provenance.submission_files"]
    assert len(stale) == 1 and "'.settings.json' was added" in stale[0].message


def test_an_edited_manifest_makes_the_run_stale(repo: Repo) -> None:
    repo.seal()
    (repo.sub / "submission.toml").write_text(MANIFEST + "# a comment\n")
    assert "provenance.manifest_sha256" in fields(repo.verify())


def test_a_result_for_an_older_track_version_is_rejected(repo: Repo) -> None:
    repo.seal()
    smoke = repo.tracks / "smoke.toml"
    smoke.write_text(smoke.read_text().replace("version = 1", "version = 2", 1))
    problems = [p for p in repo.verify() if p.field == "track_version"]
    assert len(problems) == 1
    assert "version 1" in problems[0].message and "version 2" in problems[0].message


def test_a_track_edited_without_a_version_bump_is_detected(repo: Repo) -> None:
    repo.seal()
    smoke = repo.tracks / "smoke.toml"
    smoke.write_text(smoke.read_text().replace("cfg_scale = 3.5", "cfg_scale = 5.0"))
    problems = [p for p in repo.verify() if p.field == "provenance.track_hash"]
    assert len(problems) == 1
    assert "bump its version" in problems[0].message and "--no-resume" in problems[0].message


def test_harness_change_makes_results_stale_and_names_speedrun(repo: Repo, monkeypatch) -> None:
    repo.seal()
    monkeypatch.setattr(verify_mod, "harness_sha256", lambda: "e" * 64)
    problems = [p for p in repo.verify() if p.field == "provenance.harness_sha256"]
    assert len(problems) == 1 and "speedrun/" in problems[0].message
    assert problems[0].message.endswith(f"maintainers: {RERUN_SMOKE_SEED0}")


def test_verify_never_imports_submission_code(repo: Repo) -> None:
    # Other tests legitimately load submission modules; only new ones would be verify's doing.
    before = {m for m in sys.modules if m.startswith("speedrun_submission_")}
    marker = repo.root / "imported"
    (repo.sub / "components.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('x')\n"
        "raise SystemExit('components.py must not be imported by verify')\n\n"
        "from speedrun.components import Component\n\nclass Evil(Component):\n    name = 'evil'\n"
    )
    (repo.sub / "submission.toml").write_text(MANIFEST.replace("components = []", '[[components]]\nname = "evil"'))
    repo.seal()
    assert repo.verify() == []
    assert not marker.exists()
    assert {m for m in sys.modules if m.startswith("speedrun_submission_")} == before


def test_entry_needs_the_tracks_seed_count(repo: Repo) -> None:
    n = load_track("tiny").rules.seeds_required
    for seed in range(n - 1):
        repo.seal("tiny", seed)
    problems = repo.verify()
    assert fields(problems) == ["seeds"]
    assert problems[0].file == "submissions/alpha/results/tiny"
    assert problems[0].message == (
        f"{n - 1} valid ok seed(s) {list(range(n - 1))} on track 'tiny'; an entry needs {n}, 1 more to run: "
        f"`speedrun run submissions/alpha --track tiny --seeds {n}`"
    )
    repo.seal("tiny", n - 1)
    assert repo.verify() == []


def test_entry_counts_failing_results_files_as_not_run(repo: Repo) -> None:
    n = load_track("tiny").rules.seeds_required
    for seed in (1, 2):
        repo.seal("tiny", seed)
    (repo.sub / "NOTES.md").write_text("Revised.\n")  # both are stale now...
    repo.seal("tiny", 0, status="diverged", failure={"step": 3, "reason": "nan", "last_finite_loss": 1.0})
    problems = repo.verify()  # ...but seed 0, sealed again: a valid diverged run, which `--seeds` skips
    assert fields(problems) == ["provenance.submission_files"] * 2 + ["seeds"]
    assert problems[-1].message == (
        f"0 valid ok seed(s) [] on track 'tiny'; an entry needs {n}, {n} more to run; 2 results file(s) here fail "
        "the checks above and count as not run (seed1.json, seed2.json): move them out of the submission folder, "
        f"then `speedrun run submissions/alpha --track tiny --seeds {n + 1} --no-resume`"
    )


def test_entry_seeds_run_from_0_without_a_gap(repo: Repo) -> None:
    n = load_track("tiny").rules.seeds_required
    seeds = [s for s in range(n + 2) if s not in (1, 4)]  # enough ok seeds for tiny, but 1 and 4 left out
    for seed in seeds:
        repo.seal("tiny", seed)
    problems = repo.verify()
    assert fields(problems) == ["seeds"] and problems[0].file == "submissions/alpha/results/tiny"
    assert problems[0].message.startswith(f"seed(s) [1, 4] missing among {seeds}: an entry's seeds are 0, 1, 2")
    repo.seal("tiny", 1)
    repo.seal("tiny", 4, status="diverged", failure={"step": 3, "reason": "nan", "last_finite_loss": 1.0})
    assert repo.verify() == []  # the diverged seed stays: leaving it out is what the rule forbids


def machine(
    cpu: str, cards: list[str] | None = None, cpu_count: int = 2, driver: str | None = None, processes: int = 1
) -> dict:
    """The ``hardware`` record of a run on ``cards`` (CUDA), or on the CPU ``cpu`` alone, in ``processes``."""
    device = {"device_type": "cuda", "device_names": cards} if cards else {"device_type": "cpu", "device_names": [cpu]}
    return {**device, "device_count": processes, "driver": driver, "cpu": cpu, "cpu_count": cpu_count}


PAIRED = "an entry's seeds are compared with the baseline's seed by seed, so"


def test_entry_seeds_on_different_hardware(repo: Repo) -> None:
    intel, amd = "Intel Xeon (x86_64)", "AMD EPYC (x86_64)"
    n = load_track("tiny").rules.seeds_required
    # The core count and the driver differ between machines of one model: not a problem.
    for seed in range(n):
        repo.seal("tiny", seed, hardware=machine(intel, cpu_count=2 + seed, driver=str(seed)))
    assert repo.verify() == []
    repo.seal("tiny", 2, hardware=machine(amd))
    problems = repo.verify()
    assert [(p.file, p.field) for p in problems] == [("submissions/alpha/results/tiny", "hardware")]
    others = "".join(f", {s}" for s in range(3, n))
    assert problems[0].message == (
        f"seeds scored on different hardware: seed 0, 1{others} on '{intel}', seed 2 on '{amd}'; "
        f"{PAIRED} run them all on one machine model"
    )
    # The same CPU, other cards: cards with no known peak FLOP/s, so that the recorded mfu None stays right.
    timing = {"train_clock_s": 5.0, "warmup_s": 1.0, "data_s": 0.5, "checkpoint_s": 0.1, "validation_s": 0.2,
              "eval_s": 2.0, "wall_s": 9.0, "gpu_hours": 5.0 / 3600}  # fmt: skip
    rtx4090, rtx3090 = "NVIDIA GeForce RTX 4090", "NVIDIA GeForce RTX 3090"
    for seed in range(n):
        repo.seal("tiny", seed, hardware=machine(intel, [rtx4090, rtx4090] if seed else [rtx3090]), timing=timing)
    problems = repo.verify()
    assert fields(problems) == ["hardware"]
    assert problems[0].message == (
        f"seeds scored on different hardware: seed 0 on '{rtx3090}' (cuda) with CPU '{intel}', "
        f"seed 1, 2{others} on '2 x {rtx4090}' (cuda) with CPU '{intel}'; {PAIRED} run them all on one machine model"
    )


def test_entry_seeds_run_in_more_processes_than_devices_are_another_setup(repo: Repo) -> None:
    """Two processes on one CPU (torchrun) split the arithmetic otherwise than one: like another machine model."""
    intel = "Intel Xeon (x86_64)"
    n = load_track("tiny").rules.seeds_required
    for seed in range(n):
        repo.seal("tiny", seed, hardware=machine(intel, processes=2 if seed == 1 else 1), world_size=1 + (seed == 1))
    others = "".join(f", {s}" for s in range(2, n))
    assert [p.message for p in repo.verify()] == [
        f"seeds scored on different hardware: seed 0{others} on '{intel}', seed 1 on '{intel}', 2 processes; "
        f"{PAIRED} run them all on one machine model"
    ]


def test_entry_seeds_run_with_different_torch_builds(repo: Repo) -> None:
    n = load_track("tiny").rules.seeds_required
    for seed in range(n):
        software = {"python": "3.11", "torch": "2.15.0" if seed == 2 else "2.14.1", "triton": None, "cuda": None,
                    "packages_sha256": "0" * 64}  # fmt: skip
        repo.seal("tiny", seed, software=software)
    others = "".join(f", {s}" for s in range(3, n))
    problems = repo.verify()
    assert [(p.field, p.message) for p in problems] == [("software.torch", (
        f"seeds run with different torch builds: seed 0, 1{others} with torch 2.14.1, seed 2 with torch 2.15.0; "
        f"{PAIRED} run them all with one"
    ))]  # fmt: skip


def test_entry_seeds_scored_with_different_evaluator_weights(repo: Repo) -> None:
    pinned, other = "1a2b3c4d5e6f" + "0" * 52, "9f8e7d6c5b4a" + "0" * 52
    n = load_track("tiny").rules.seeds_required
    for seed in range(n):
        repo.seal("tiny", seed, provenance={"extractor_weights": {"inception-v3": pinned, "dinov2": other}})
    # A seed that stopped before its first evaluation records no weights: nothing to compare.
    diverged = {"status": "diverged", "failure": {"step": 3, "reason": "nan", "last_finite_loss": 1.0}}
    repo.seal("tiny", n, **diverged)
    assert repo.verify() == []
    repo.seal("tiny", 1, provenance={"extractor_weights": {"inception-v3": other, "dinov2": other}})
    problems = repo.verify()
    assert [(p.file, p.field) for p in problems] == [("submissions/alpha/results/tiny", "provenance.extractor_weights")]
    others = "".join(f", {s}" for s in range(2, n))
    assert problems[0].message == (
        f"seeds scored with different evaluator weights: for 'inception-v3', seed 0{others} with 1a2b3c4d5e6f, "
        f"seed 1 with 9f8e7d6c5b4a; {PAIRED} score them all with the same weights"
    )


def test_entry_seeds_trained_with_different_teachers(repo: Repo) -> None:
    dinov2 = {"repa-teacher": "vit_base_patch14_reg4_dinov2"}
    n = load_track("tiny").rules.seeds_required
    for seed in range(n):
        repo.seal("tiny", seed, provenance={"teachers": dinov2})
    assert repo.verify() == []
    repo.seal("tiny", 0, provenance={"teachers": {"repa-teacher": "random-init:vit_base_patch14_reg4_dinov2"}})
    repo.seal("tiny", 2, provenance={"teachers": {}})
    problems = repo.verify()
    assert [(p.file, p.field) for p in problems] == [("submissions/alpha/results/tiny", "provenance.teachers")]
    others = "".join(f", {s}" for s in range(3, n))
    assert problems[0].message == (
        "seeds trained with different teachers: seed 0 with repa-teacher 'random-init:vit_base_patch14_reg4_dinov2', "
        f"seed 1{others} with repa-teacher 'vit_base_patch14_reg4_dinov2', seed 2 with no teacher; "
        f"{PAIRED} train them all with the same teachers"
    )


def test_links_and_hidden_folders_with_results_are_not_submissions(repo: Repo) -> None:
    """The leaderboard ignores both (test_leaderboard.py), so verify must say so instead of passing."""
    repo.seal("smoke", 0)
    subs = repo.root / "submissions"
    (subs / "alpha-again").symlink_to(repo.sub, target_is_directory=True)
    shutil.copytree(repo.sub, subs / ".hidden")
    (subs / ".cache").mkdir()  # hidden, no results: not a problem
    problems = repo.verify()
    assert [(p.file, p.field) for p in problems] == [
        ("submissions/.hidden", "(path)"),
        ("submissions/alpha-again", "(path)"),
    ]
    assert problems[0].message == "a hidden folder holding results: neither verified nor ranked; remove it"
    assert problems[1].message.startswith(f"a symbolic link (to {repo.sub}), not a submission folder")


def test_a_folder_without_a_manifest_is_named(repo: Repo) -> None:
    """A folder under submissions/ that is no entry (a forgotten or misnamed manifest) is a problem; a file is not."""
    repo.seal("smoke", 0)
    (repo.root / "submissions" / "drafts").mkdir()
    (repo.root / "submissions" / "NOTES.md").write_text("not an entry\n")
    problems = repo.verify()
    assert [(p.file, p.field, p.message) for p in problems] == [
        ("submissions/drafts", "submission.toml", "no submission.toml here")
    ]


def test_a_result_must_sit_at_its_own_path(repo: Repo) -> None:
    path = repo.seal("smoke", 1)
    path.rename(path.with_name("seed0.json"))
    assert fields(repo.verify()) == ["run_id", "seeds"]


def test_invalid_manifest_and_track_name_file_and_field(repo: Repo) -> None:
    (repo.sub / "submission.toml").write_text(MANIFEST + 'colour = "blue"\n')
    tiny = repo.tracks / "tiny.toml"
    tiny.write_text(tiny.read_text().replace("cfg_scale = ", "cfg_scale = -", 1))
    found = {(p.file, p.field) for p in repo.verify()}
    assert ("tracks/tiny.toml", "eval.cfg_scale") in found
    assert ("submissions/alpha/submission.toml", "colour") in found


# The evaluation a smoke results file ends with (``seal``'s), to repeat out of order.
EVAL = {
    "step": 20,
    "metrics": {"fid": 10.0, "cmmd": 0.2, "dino_mmd": 0.3, "val_loss": 0.5, "prompt_adherence": None},
    "unavailable": {},
    "samples": 32,
}


@pytest.mark.parametrize(
    "change, field",
    [
        ({"metrics": {"fid": 3.0, "cmmd": 0.2, "dino_mmd": 0.3, "val_loss": 0.5, "prompt_adherence": None}}, "metrics"),
        ({"steps": 10}, "steps"),
        ({"timing": {"train_clock_s": 5.0, "warmup_s": 1.0, "data_s": 0.5, "checkpoint_s": 0.1,
                     "validation_s": 0.2, "eval_s": 2.0, "wall_s": 9.0, "gpu_hours": 1.0}}, "timing.gpu_hours"),
        ({"status": "diverged"}, "failure"),
        ({"failure": {"step": 3, "reason": "diverged"}}, "failure"),
        ({"evals": [EVAL, EVAL]}, "evals"),
        ({"val_loss_curve": [{"step": 20.0, "val_loss": 0.5}, {"step": 10.0, "val_loss": 0.7}]}, "val_loss_curve"),
        ({"speed": {"batches_per_second": 4.0, "images_per_second": 4.0, "flops_per_step": 1, "mfu": None,
                    "peak_memory_bytes": None}}, "speed.images_per_second"),
    ],
    ids=["metrics", "steps", "gpu_hours", "failure", "ok-with-failure", "evals-order", "curve-order", "images/s"],
)  # fmt: skip
def test_derived_fields_are_recomputed(repo: Repo, change: dict, field: str) -> None:
    repo.seal(**change)
    assert field in fields(repo.verify())


def test_results_for_a_track_the_manifest_no_longer_targets_are_named(repo: Repo) -> None:
    repo.seal("smoke")
    manifest = repo.sub / "submission.toml"
    manifest.write_text(manifest.read_text().replace('tracks = ["smoke", "tiny"]', 'tracks = ["tiny"]'))
    found = {(p.field, p.message) for p in repo.verify()}
    assert ("tracks", "results for track 'smoke', which submission.toml does not target") in found


def test_a_results_file_moved_to_another_tracks_folder_is_named(repo: Repo) -> None:
    path = repo.seal("smoke")
    moved = path.parents[1] / "tiny" / path.name
    moved.parent.mkdir()
    path.rename(moved)
    found = {(p.file, p.field, p.message) for p in repo.verify()}
    assert (moved.relative_to(repo.root).as_posix(), "track", "is 'smoke' but the file lies in results/tiny/") in found


def test_results_for_a_track_that_does_not_exist_are_named(repo: Repo) -> None:
    path = repo.seal("smoke")
    (repo.tracks / "smoke.toml").unlink()  # a track renamed or removed after the run
    [problem] = [p for p in repo.verify() if p.field == "track"]
    assert problem.file == path.relative_to(repo.root).as_posix()
    assert problem.message.startswith("no valid track 'smoke' in tracks (a track file of one's own is named with")


def cuda_record(mfu: float | None, card: str = "NVIDIA H100 80GB HBM3") -> dict:
    """The fields of a one-card CUDA run at 4 batches/s of 1e12 FLOPs, with ``mfu`` as recorded."""
    return {
        "speed": {"batches_per_second": 4.0, "images_per_second": 32.0, "flops_per_step": 10**12, "mfu": mfu,
                  "peak_memory_bytes": 1 << 30},
        "timing": {"train_clock_s": 5.0, "warmup_s": 1.0, "data_s": 0.5, "checkpoint_s": 0.1, "validation_s": 0.2,
                   "eval_s": 2.0, "wall_s": 9.0, "gpu_hours": 5.0 / 3600},
        "hardware": {"device_type": "cuda", "device_names": [card], "device_count": 1, "driver": "1",
                     "cpu": "x86_64", "cpu_count": 2},
    }  # fmt: skip


@pytest.mark.parametrize(
    "record, problem",
    [
        (cuda_record(4e12 / 989e12), False),
        (cuda_record(4e12 / 756e12, card="NVIDIA H100 PCIe"), False),
        (cuda_record(None, card="NVIDIA GeForce RTX 4090"), False),
        (cuda_record(0.5), True),
        (cuda_record(None), True),
        (cuda_record(4e12 / 989e12, card="NVIDIA GeForce RTX 4090"), True),
        ({"speed": {"batches_per_second": 4.0, "images_per_second": 32.0, "flops_per_step": 10**12, "mfu": 0.3,
                    "peak_memory_bytes": None}}, True),
    ],
    ids=["h100", "h100-pcie", "unknown-card", "wrong", "missing", "unknown-card-with-mfu", "cpu-with-mfu"],
)  # fmt: skip
def test_mfu_is_recomputed_from_flops_speed_and_the_cards_peak(repo: Repo, record: dict, problem: bool) -> None:
    # 4 batches/s x 1e12 FLOPs on one H100 SXM (989e12 FLOP/s dense bf16), or PCIe (756e12).
    repo.seal(**record)
    assert ("speed.mfu" in fields(repo.verify())) == problem


def test_a_record_naming_no_device_is_a_problem_not_a_crash(repo: Repo) -> None:
    path = repo.seal(**cuda_record(None))
    data = json.loads(path.read_text())
    data["hardware"]["device_names"] = []
    path.write_text(json.dumps(data))
    problems = repo.verify()
    assert fields(problems)[0] == "hardware.device_names"
    assert "at least 1 item" in problems[0].message


@pytest.mark.parametrize(("clock_s", "problem"), [(5.0, False), (3.0, True)])
def test_an_ok_run_short_of_its_steps_must_have_spent_its_timed_budget(repo: Repo, clock_s, problem) -> None:
    """On a track with train.max_seconds = 4, a run may stop after 10 of its 20 steps only once its
    clock (the slowest rank's) has passed 4 s."""
    smoke = repo.tracks / "smoke.toml"
    smoke.write_text(smoke.read_text().replace("[train]\n", "[train]\nmax_seconds = 4.0\n", 1))
    timing = {"train_clock_s": clock_s, "warmup_s": 1.0, "data_s": 0.5, "checkpoint_s": 0.1, "validation_s": 0.2,
              "eval_s": 2.0, "wall_s": 9.0, "gpu_hours": 0.0}  # fmt: skip
    repo.seal(steps=10, timing=timing)
    found = [p for p in repo.verify() if p.field == "steps"]
    assert bool(found) == problem
    if problem:
        assert "stopped after 10 steps and 3.0 s" in found[0].message and "4.0 clock seconds" in found[0].message


def test_explicit_paths(repo: Repo) -> None:
    path = repo.seal("tiny", 0)
    # One results file: its own checks only, the three-seed entry rule is for whole submissions.
    assert repo.verify([path]) == []
    assert fields(repo.verify([repo.sub])) == ["seeds"]
    assert fields(repo.verify([repo.root / "nowhere.txt"])) == ["(path)"]


def test_flops_per_step_is_3x_the_counted_forward_at_the_tracks_shapes(monkeypatch) -> None:
    """What verify expects is torch's FLOP count of one forward at the track's global batch, image
    size, MiniLM width (384) and text length, times 3 (forward and backward)."""
    monkeypatch.setattr(dispatch, "attention", reference_attention)  # the fused CPU kernel is not counted
    track = load_track("smoke")
    batch, side, length = track.train.global_batch, track.data.image_size, track.data.text_max_tokens
    model = build_model(track.model.config, text_dim=384)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.randn(batch, 3, side, side), torch.rand(batch), torch.randn(batch, length, 384),
              torch.ones(batch, length, dtype=torch.bool))
    assert flops_per_step_of(track) == 3 * counter.get_total_flops()


@pytest.mark.parametrize(
    "steps, recorded, problem",
    [(None, "counted", False), (None, "double", True), (None, "zero", True), (0, "zero", False), (0, "double", True)],
    ids=["counted", "other", "none", "before-the-first-batch", "other-before-the-first-batch"],
)
def test_flops_per_step_is_recomputed(repo: Repo, steps: int | None, recorded: str, problem: bool) -> None:
    """MFU scales with flops_per_step, so a count other than the model's is a problem; a run that
    stopped before its first batch counted nothing."""
    track = load_track("smoke", repo.tracks)
    expected = flops_per_step_of(track)
    flops = {"counted": expected, "double": 2 * expected, "zero": 0}[recorded]
    change = {"speed": {"batches_per_second": 4.0, "images_per_second": 4.0 * track.train.global_batch,
                        "flops_per_step": flops, "mfu": None, "peak_memory_bytes": None}}
    if steps is not None:
        change |= {"steps": steps, "status": "failed", "failure": {"step": 0, "reason": "x", "last_finite_loss": None}}
    repo.seal(**change)
    found = [p.message for p in repo.verify() if p.field == "speed.flops_per_step"]
    message = (
        f"is {flops}; model 'smoke' at the track's global batch 8, on a 32 x 32 grid (pixels of 32 x 32 images) with "
        f"32 text tokens, does {expected} FLOPs per step (3 x forward matmul FLOPs)"
    )
    assert found == ([message] if problem else []), found
