"""``speedrun verify``: rule, provenance and recompute checks of manifests, tracks and results files.

Nothing here imports or runs submission code (``--rerun`` excepted, which is opt-in). A results file
counts only when all of these hold:

* it matches the schema and its digest (it was not edited after the run);
* its provenance matches the repository now: ``submission.toml``, every other file of the submission
  folder (a changed, added or removed file makes it stale), the harness source tree ``speedrun/``,
  the base track's version and content hash, and the prepared dataset manifest when the data is
  present locally;
* its derived numbers recompute from its own fields (final metrics = last evaluation, images/s,
  GPU-hours, an ok run completed its step budget);
* it names the submission, track and seed its path says.

Per submission and track with at least one results file, the valid ``ok`` seeds must be distinct and
at least the track's ``rules.seeds_required`` (a leaderboard entry), and the seeds of its results files
must run 0, 1, 2, ... without a gap (no seed left out to keep only the best runs). Only real, visible
folders under ``submissions/`` are submissions: a symbolic link or a hidden folder holding results is
a problem (the leaderboard ignores both).
"""

from __future__ import annotations

import math
import re
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from speedrun.data.source import dataset_manifest_sha256
from speedrun.devices import model_flops_utilisation
from speedrun.errors import SpeedrunError
from speedrun.paths import data_root
from speedrun.results import (
    CodeChange,
    RunResult,
    code_changes,
    code_record,
    harness_sha256,
    identity_problems,
    load_result,
    missing_seeds,
)
from speedrun.submission import MANIFEST, Submission, discover_submissions, load_submission
from speedrun.tracks import REPO_ROOT, Track, canonical_hash, load_track_file

RERUN_TRACK = "smoke"
# A re-run on other hardware or software is not bit-identical; it only has to land near the record.
RERUN_REL_TOL = 0.1
RERUN_ABS_TOL = 1e-3
_FIELD = re.compile(r"field '([^']+)'")
_SEED_FILE = re.compile(r"seed(\d+)")


class Problem(BaseModel):
    """One reason a file does not count: the file, the field at fault, and what to do."""

    model_config = ConfigDict(frozen=True)

    file: str
    field: str
    message: str


def _print_info(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


def verify_paths(
    paths: Iterable[Path],
    rerun: bool = False,
    repo_root: Path = REPO_ROOT,
    data_dir: Path | None = None,
    info: Callable[[str], None] = _print_info,
) -> list[Problem]:
    """Verify tracks, submissions and results files; return every problem found (empty: all good).

    Args:
        paths: submission folders, their ``submission.toml`` or results files; empty means every
            submission under ``<repo_root>/submissions``. Tracks are always all checked.
        rerun: also re-run each submission on the smoke track (imports its code) and compare.
        repo_root: the repository whose ``tracks/`` and ``submissions/`` are checked (the harness
            hash compared against is always that of the running ``speedrun`` package).
        data_dir: prepared data root for the dataset-manifest check (default ``speedrun.paths``).
        info: receives notes about checks that could not run (e.g. data not prepared); these are
            not problems.
    """
    verifier = _Verifier(Path(repo_root), data_dir, info)
    problems = verifier.check_tracks()
    targets, path_problems = _targets([Path(p) for p in paths], verifier.repo_root)
    problems += path_problems
    for folder, (files, whole) in sorted(targets.items()):
        problems += verifier.check_submission(folder, files, whole)
        if rerun:
            problems += verifier.rerun(folder)
    return problems


def _targets(paths: list[Path], repo_root: Path) -> tuple[dict[Path, tuple[list[Path], bool]], list[Problem]]:
    """Submission folder -> (results files to check, whether the whole submission was asked for)."""
    problems: list[Problem] = []
    if not paths:
        root = repo_root / "submissions"
        folders = discover_submissions(root)
        for d in sorted(root.iterdir()) if root.is_dir() else []:
            if d in folders or not d.is_dir():
                continue
            # _rel would resolve the link: name the entry itself.
            where = d.relative_to(repo_root).as_posix()
            if d.is_symlink():
                message = (
                    f"a symbolic link (to {d.readlink()}), not a submission folder: neither verified nor ranked, "
                    "as a link would enter the results it reaches a second time; remove it"
                )
                problems.append(Problem(file=where, field="(path)", message=message))
            elif d.name.startswith("."):
                if (d / "results").exists():
                    message = "a hidden folder holding results: neither verified nor ranked; remove it"
                    problems.append(Problem(file=where, field="(path)", message=message))
            else:
                problems.append(Problem(file=where, field=MANIFEST, message=f"no {MANIFEST} here"))
        return {f: (_results_files(f), True) for f in folders}, problems
    targets: dict[Path, tuple[list[Path], bool]] = {}
    for p in paths:
        folder = p.parent if p.name == MANIFEST else p
        if folder.is_dir() and (folder / MANIFEST).is_file():
            targets[folder] = (_results_files(folder), True)
        elif p.is_file() and p.suffix == ".json" and p.parent.parent.name == "results":
            folder = p.parents[2]
            files, whole = targets.get(folder, ([], False))
            if not whole and p not in files:
                files.append(p)
            targets[folder] = (files, whole)
        else:
            problems.append(
                Problem(
                    file=str(p),
                    field="(path)",
                    message="not a submission folder nor a results file submissions/<name>/results/<track>/<run>.json",
                )
            )
    return targets, problems


def _results_files(folder: Path) -> list[Path]:
    return sorted((folder / "results").glob("*/*.json"))


def _rel(path: Path, repo_root: Path) -> str:
    try:
        return path.resolve().relative_to(repo_root.resolve()).as_posix()
    except ValueError:
        return str(path)


def _field_of(exc: SpeedrunError) -> str:
    """The first field a harness error message names, else ``(file)``."""
    m = _FIELD.search(str(exc))
    return m.group(1) if m else "(file)"


def model_grid_side(track: Track) -> int:
    """The side of the square grid the model sees on ``track``: the image, or the Flux VAE's latents."""
    from speedrun.data.vae import FLUX_DOWNSAMPLE

    data = track.data
    return data.image_size if data.representation == "pixels" else data.image_size // FLUX_DOWNSAMPLE


def flops_per_step_of(track: Track) -> int:
    """The ``flops_per_step`` the trainer records on ``track``, from the track alone: its model at the
    text encoder's width, on ``model_grid_side``, at the global batch and ``text_max_tokens``."""
    import torch

    from speedrun.data.text import text_encoder_class
    from speedrun.model import build_model

    side = model_grid_side(track)
    with torch.device("meta"):  # the count needs the config only, not 1.2B parameters' memory
        model = build_model(track.model.config, text_dim=text_encoder_class(track.data.text_encoder).dim)
    return model.flops_per_step(track.train.global_batch, (side, side), track.data.text_max_tokens)


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)


class _Verifier:
    """Holds what every check compares against, computed once per ``verify_paths`` call."""

    def __init__(self, repo_root: Path, data_dir: Path | None, info: Callable[[str], None]) -> None:
        self.repo_root = repo_root
        self.tracks_dir = repo_root / "tracks"
        self.data_dir = data_dir
        self.info = info
        self.harness = harness_sha256()
        self.tracks: dict[str, Track] = {}
        self._datasets: dict[str, str | None] = {}
        self._flops_counts: dict[str, int | None] = {}
        self._noted: set[str] = set()

    def problem(self, path: Path, field: str, message: str) -> Problem:
        return Problem(file=_rel(path, self.repo_root), field=field, message=message)

    def note(self, message: str) -> None:
        if message not in self._noted:
            self._noted.add(message)
            self.info(message)

    # ------------------------------------------------------------------ tracks and submissions
    def check_tracks(self) -> list[Problem]:
        problems = []
        for path in sorted(self.tracks_dir.glob("*.toml")):
            try:
                self.tracks[path.stem] = load_track_file(path)
            except SpeedrunError as exc:
                problems.append(self.problem(path, _field_of(exc), str(exc)))
        return problems

    def check_submission(self, folder: Path, files: list[Path], whole: bool) -> list[Problem]:
        """Manifest, each results file, and (for a whole submission) the per-track seed rule."""
        problems: list[Problem] = []
        sub: Submission | None = None
        try:
            sub = load_submission(folder, self.tracks_dir)
        except SpeedrunError as exc:
            problems.append(self.problem(folder / MANIFEST, _field_of(exc), str(exc)))
        code = code_record(folder, self.harness)
        valid: dict[str, list[RunResult]] = {}
        failing: dict[str, list[Path]] = {}
        for path in files:
            result, found = self.check_result(path, folder, sub, code)
            problems += found
            valid.setdefault(path.parent.name, [])
            if result is not None and not found:
                valid[path.parent.name].append(result)
            else:
                failing.setdefault(path.parent.name, []).append(path)
        if whole:
            for track_id, results in sorted(valid.items()):
                problems += self.check_entry(folder, track_id, results, failing.get(track_id, []), sub)
        return problems

    def check_entry(
        self, folder: Path, track_id: str, results: list[RunResult], failing: list[Path], sub: Submission | None
    ) -> list[Problem]:
        """The leaderboard-entry rule for one submission on one track that has results.

        ``results`` are the track's valid results, ``failing`` its results files that fail a check.
        """
        where = folder / "results" / track_id
        if sub is not None and track_id not in sub.manifest.tracks:
            return [self.problem(where, "tracks", f"results for track '{track_id}', which {MANIFEST} does not target")]
        track = self.tracks.get(track_id)
        if track is None:
            return []  # the unknown track is already reported on each of its results files
        seeds = [r.seed for r in results if r.status == "ok"]
        problems = []
        repeated = sorted(s for s, c in Counter(seeds).items() if c > 1)
        if repeated:
            problems.append(self.problem(where, "seed", f"seed(s) {repeated} used by more than one run"))
        need, have = track.rules.seeds_required, sorted(set(seeds))
        if len(have) < need:
            message = self._seeds_message(folder, track_id, need, have, results, failing)
            problems.append(self.problem(where, "seeds", message))
        present = {r.seed for r in results} | {int(m.group(1)) for p in failing if (m := _SEED_FILE.fullmatch(p.stem))}
        if missing := missing_seeds(present):
            command = f"speedrun run {_rel(folder, self.repo_root)} --track {track_id} --seed <N>"
            problems.append(
                self.problem(
                    where,
                    "seeds",
                    f"seed(s) {missing} missing among {sorted(present)}: an entry's seeds are 0, 1, 2, ... with none "
                    f"left out, so that it cannot keep only its best runs; run each (`{command}`)",
                )
            )
        return problems

    def _seeds_message(
        self, folder: Path, track_id: str, need: int, have: list[int], results: list[RunResult], failing: list[Path]
    ) -> str:
        """What the entry lacks, and the ``speedrun run --seeds M`` that supplies it.

        ``--seeds M`` runs seeds 0..M-1 but skips a seed with a valid results file (a diverged or
        failed one too, which adds no ok seed) and refuses one whose file fails a check; M counts the
        former out, and the latter must be moved away first.
        """
        finished = {r.seed for r in results}
        count, upto = len(have), 0
        while count < need:
            count += upto not in finished
            upto += 1
        message = (
            f"{len(have)} valid ok seed(s) {have} on track '{track_id}'; an entry needs {need}, "
            f"{need - len(have)} more to run"
        )
        command = f"speedrun run {_rel(folder, self.repo_root)} --track {track_id} --seeds {upto}"
        if not failing:
            return f"{message}: `{command}`"
        names = ", ".join(p.name for p in sorted(failing))
        return (
            f"{message}; {len(failing)} results file(s) here fail the checks above and count as not run ({names}): "
            f"move them out of the submission folder, then `{command} --no-resume`"
        )

    # ------------------------------------------------------------------ one results file
    def check_result(
        self, path: Path, folder: Path, sub: Submission | None, code: dict[str, Any]
    ) -> tuple[RunResult | None, list[Problem]]:
        """Schema, digest, identity, provenance and recomputed fields of one results file.

        ``code`` is the folder's ``code_record`` now.
        """
        try:
            result = load_result(path)
        except SpeedrunError as exc:
            return None, [self.problem(path, _field_of(exc), f"{exc}; {self.rerun_hint(path, folder)}")]
        problems = [self.problem(path, f, m) for f, m in identity_problems(path, folder, result)]
        track = self.tracks.get(result.track)
        if track is None:
            where = _rel(self.tracks_dir, self.repo_root)
            problems.append(self.problem(path, "track", f"no valid track '{result.track}' in {where}"))
            return result, problems
        rerun_hint = self.rerun_hint(path, folder)
        for field, message in [
            *self._provenance(result, folder, code, track, rerun_hint),
            *self._dataset(result, sub, rerun_hint),
            *self._flops(result, sub),
            *self._recompute(result, track),
        ]:
            problems.append(self.problem(path, field, message))
        return result, problems

    def rerun_hint(self, path: Path, folder: Path) -> str:
        """How to replace the results file ``path`` with a fresh run of the seed its path names.

        ``speedrun run`` skips or refuses a seed whose results file exists, so the file goes first
        (out of the folder: anywhere else inside it would be a new submission file); ``--no-resume``
        because the old run's checkpoint would be resumed, or refused as written by other code.
        """
        move = f"move {_rel(path, self.repo_root)} out of the submission folder"
        seed = _SEED_FILE.fullmatch(path.stem)
        if seed is None:
            return move  # its name is no seed's (a problem of its own); `speedrun run` never reads it
        return (
            f"to re-run it, {move}, then run `speedrun run {_rel(folder, self.repo_root)} "
            f"--track {path.parent.name} --seed {seed.group(1)} --no-resume`"
        )

    def _provenance(
        self, r: RunResult, folder: Path, code: dict[str, Any], track: Track, rerun_hint: str
    ) -> Iterable[tuple[str, str]]:
        p = r.provenance
        manifest = folder / MANIFEST
        if manifest.is_file() and code["submission_files"].get(MANIFEST) != p.manifest_sha256:
            yield "provenance.manifest_sha256", f"{MANIFEST} changed after this run; {rerun_hint}"
        for change in code_changes(p.code, code):
            # submission.toml has its own check above (provenance.manifest_sha256); not reported twice.
            if change.file != MANIFEST:
                yield self._code_problem(change, p.harness_sha256, rerun_hint)
        if r.track_version != track.version:
            yield (
                "track_version",
                f"result is for track '{track.id}' version {r.track_version}, the track is now version "
                f"{track.version}: results of another track version do not count; {rerun_hint}",
            )
        elif p.track_hash != track.content_hash:
            yield (
                "provenance.track_hash",
                f"track '{track.id}' v{track.version} changed since this run without a version bump "
                f"(recorded {p.track_hash[:12]}, now {track.content_hash[:12]}); maintainers: restore the "
                f"track file, or bump its version and re-run every result of the track; {rerun_hint}",
            )

    def _code_problem(self, change: CodeChange, recorded_harness: str, rerun_hint: str) -> tuple[str, str]:
        """The (field, message) of one change to the code since the run (see ``results.code_changes``)."""
        if change.file is None:
            return (
                "provenance.harness_sha256",
                "the harness source tree speedrun/ changed since this run, so its numbers came from different "
                f"code (recorded {recorded_harness[:12]}, now {self.harness[:12]}); maintainers: {rerun_hint}",
            )
        how = "changed" if change.how == "changed" else f"was {change.how}"
        return "provenance.submission_files", f"submission file '{change.file}' {how} after this run; {rerun_hint}"

    def _dataset(self, r: RunResult, sub: Submission | None, rerun_hint: str) -> Iterable[tuple[str, str]]:
        if sub is None or r.track not in sub.manifest.tracks:
            return  # the manifest problem is reported; the effective track cannot be built
        current = self._dataset_hash(sub.track(r.track, self.tracks_dir))
        if current is not None and r.provenance.dataset_manifest_sha256 != current:
            yield (
                "provenance.dataset_manifest_sha256",
                f"the prepared data of track '{r.track}' differs from the data this run trained on "
                f"(recorded {str(r.provenance.dataset_manifest_sha256)[:12]}, local {current[:12]}): the data "
                "folder may be another one (--data-dir, $SPEEDRUN_DATA_DIR), or prepared on another kind of machine "
                "by a text encoder that computes below float64 (its embeddings round differently between CPU "
                f"models, and between CPU and GPU); verify where the run was made, or {rerun_hint}",
            )

    def _dataset_hash(self, track: Track) -> str | None:
        """The local prepared-data manifest hash, or None (with a note) when it cannot be computed."""
        key = track.content_hash
        if key not in self._datasets:
            try:
                self._datasets[key] = dataset_manifest_sha256(track, data_root(self.data_dir))
            except (SpeedrunError, OSError):
                self._datasets[key] = None
            if self._datasets[key] is None:
                self.note(f"cannot check the dataset manifest of track '{track.id}': data not prepared")
        return self._datasets[key]

    def _flops(self, r: RunResult, sub: Submission | None) -> Iterable[tuple[str, str]]:
        """``flops_per_step``, which MFU scales, is the model's count at the track's shapes."""
        if sub is None or r.track not in sub.manifest.tracks:
            return  # the manifest problem is reported; the effective track cannot be built
        track = sub.track(r.track, self.tracks_dir)
        key = canonical_hash(track.model_dump(mode="json"))
        if key not in self._flops_counts:
            try:
                self._flops_counts[key] = flops_per_step_of(track)
            except SpeedrunError as exc:  # an unknown model config or text encoder
                self._flops_counts[key] = None
                self.note(f"cannot check flops_per_step on track '{track.id}': {exc}")
        expected = self._flops_counts[key]
        # The trainer counts them at its first batch: a run that stopped before one has none.
        if expected is None or r.speed.flops_per_step == expected or (r.steps == 0 and r.speed.flops_per_step == 0):
            return
        side = model_grid_side(track)
        yield (
            "speed.flops_per_step",
            f"is {r.speed.flops_per_step}; model '{track.model.config}' at the track's global batch "
            f"{track.train.global_batch}, on a {side} x {side} grid ({track.data.representation} of "
            f"{track.data.image_size} x {track.data.image_size} images) with {track.data.text_max_tokens} text "
            f"tokens, does {expected} FLOPs per step (3 x forward matmul FLOPs)",
        )

    def _recompute(self, r: RunResult, track: Track) -> Iterable[tuple[str, str]]:
        """Fields derived from other fields of the same file must agree with them."""
        if r.status == "ok":
            if r.failure is not None:
                yield "failure", "an ok run records a failure"
            budget = track.train.max_seconds
            if budget is None and r.steps != track.train.steps:
                yield "steps", f"an ok run completes the budget of {track.train.steps} steps, this one has {r.steps}"
            elif budget is not None and r.steps < track.train.steps and r.timing.train_clock_s < budget:
                yield (
                    "steps",
                    f"an ok run completes the budget of {track.train.steps} steps or of {budget} clock seconds, "
                    f"this one stopped after {r.steps} steps and {r.timing.train_clock_s} s",
                )
            missing = [m for m in track.eval.metrics if m not in r.metrics and m not in r.unavailable]
            if missing:
                yield "metrics", f"track metric(s) {missing} neither reported nor explained in 'unavailable'"
            if r.evals and r.metrics != r.evals[-1].metrics:
                yield "metrics", "differ from the last evaluation's metrics"
        elif r.failure is None:
            yield "failure", f"a {r.status} run must say why in 'failure'"
        if r.steps > track.train.steps:
            yield "steps", f"{r.steps} steps exceed the track budget of {track.train.steps}"
        steps = [e.step for e in r.evals]
        if steps != sorted(set(steps)):
            yield "evals", "evaluations are not in strictly increasing step order"
        curve = [point.get("step") for point in r.val_loss_curve]
        if curve != sorted(set(curve)):
            yield "val_loss_curve", "points are not in strictly increasing step order"
        bps, ips = r.speed.batches_per_second, r.speed.images_per_second
        if bps is not None and ips is not None and not _close(ips, bps * track.train.global_batch):
            yield "speed.images_per_second", f"is {ips}, batches/s x global batch is {bps * track.train.global_batch}"
        card = r.hardware.device_names[0] if r.hardware.device_type == "cuda" else None
        mfu = model_flops_utilisation(r.speed.flops_per_step, bps, card, r.world_size)
        if (mfu is None) != (r.speed.mfu is None) or (mfu is not None and not _close(r.speed.mfu, mfu)):
            of = f"{r.world_size} x {card}" if card else "no card (a CPU run)"
            yield "speed.mfu", f"is {r.speed.mfu}; flops/step x batches/s over the peak FLOP/s of {of} is {mfu}"
        gpu_hours = r.timing.train_clock_s * r.world_size / 3600 if r.hardware.device_type == "cuda" else 0.0
        if not _close(r.timing.gpu_hours, gpu_hours):
            yield "timing.gpu_hours", f"is {r.timing.gpu_hours}, train clock x devices / 3600 is {gpu_hours}"

    # ------------------------------------------------------------------ --rerun
    def rerun(self, folder: Path) -> list[Problem]:
        """Re-run seed 0 on the smoke track from a copy of the folder; compare with its smoke result.

        Imports the submission's code (in the training process), so it is opt-in. The copy and its
        runs live in a temporary directory; the repository is not written.
        """
        from rich.console import Console

        from speedrun.run import RunOptions, run_submission

        try:
            sub = load_submission(folder, self.tracks_dir)
        except SpeedrunError:
            return []  # reported by check_submission
        if RERUN_TRACK not in sub.manifest.tracks:
            self.note(f"{_rel(folder, self.repo_root)}: not re-run, it does not target the {RERUN_TRACK} track")
            return []
        recorded_path = folder / "results" / RERUN_TRACK / "seed0.json"
        with tempfile.TemporaryDirectory(prefix="speedrun-rerun-") as tmp:
            copy = Path(tmp) / folder.resolve().name
            top = folder.resolve()
            shutil.copytree(
                top,
                copy,
                ignore=lambda d, names: [n for n in names if n == "__pycache__" or (Path(d) == top and n == "results")],
            )
            options = RunOptions(
                track=RERUN_TRACK, seeds=1, data_dir=self.data_dir, runs_dir=Path(tmp) / "runs", progress=False
            )
            try:
                written = run_submission(copy, options, console=Console(stderr=True))
                if not written:
                    raise SpeedrunError("it wrote no results file")
                fresh = load_result(written[0])
            except SpeedrunError as exc:
                return [self.problem(folder, "rerun", f"re-running seed 0 on {RERUN_TRACK} failed: {exc}")]
        if not recorded_path.is_file():
            self.note(f"{_rel(folder, self.repo_root)}: re-ran on {RERUN_TRACK} ({fresh.status}), no recorded result")
            return []
        try:
            recorded = load_result(recorded_path)
        except SpeedrunError:
            return []  # reported by check_result
        return [self.problem(recorded_path, f, m) for f, m in _compare_rerun(recorded, fresh)]


def _compare_rerun(recorded: RunResult, fresh: RunResult) -> Iterable[tuple[str, str]]:
    if recorded.status != fresh.status:
        yield "status", f"recorded '{recorded.status}', the re-run ended '{fresh.status}'"
        return
    pairs = {
        "val_loss_curve": (
            recorded.val_loss_curve[-1].get("val_loss") if recorded.val_loss_curve else None,
            fresh.val_loss_curve[-1].get("val_loss") if fresh.val_loss_curve else None,
        )
    }
    pairs.update({f"metrics.{m}": (v, fresh.metrics.get(m)) for m, v in sorted(recorded.metrics.items())})
    for field, (old, new) in pairs.items():
        if old is None or new is None:
            continue
        if not math.isclose(old, new, rel_tol=RERUN_REL_TOL, abs_tol=RERUN_ABS_TOL):
            yield field, f"recorded final {old:.6g}, the re-run gives {new:.6g} (tolerance {RERUN_REL_TOL:.0%})"
