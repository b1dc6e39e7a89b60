"""``speedrun verify``: rule, provenance and recompute checks of manifests, tracks and results files.

No submission code runs. A results file counts when it is a regular file
within the size cap, matches its schema and digest, its provenance matches the repository now, its derived
numbers recompute, it lies where its content says and a signature beside it, if any, holds; an entry's ok
seeds are at least ``rules.seeds_required``, 0, 1, 2, ... no gap, all made with the same evaluator weights
and teachers on one machine model. The leaderboard shows only what this accepts.
"""

from __future__ import annotations

import math
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from itertools import chain
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel, ConfigDict, Field

from speedrun.devices import model_flops_utilisation
from speedrun.errors import SpeedrunError
from speedrun.paths import data_root
from speedrun.provenance import code_changes, code_record, harness_sha256
from speedrun.results import Hardware, RunResult, identity_problems, load_result, missing_seeds
from speedrun.submission import MANIFEST, Submission, discover_submissions, load_submission
from speedrun.tracks import REPO_ROOT, Track, load_track_file
from speedrun.trust import KEYS_FILE, load_trust, sign, signer

BASELINE = "baseline"  # the submission every entry is compared with
_FIELD = re.compile(r"field '([^']+)'")
_SEED_FILE = re.compile(r"seed(\d+)")


class Problem(BaseModel):
    """One reason a file does not count: the file, the field at fault, and what to do."""

    model_config = ConfigDict(frozen=True)

    file: str
    field: str
    message: str


class Accepted(BaseModel):
    """A results file with no problem, and the reproduction key that signed it (None: self-reported)."""

    model_config = ConfigDict(frozen=True)

    path: Path
    result: RunResult
    signed_by: str | None


class Verification(BaseModel):
    """What ``verify_paths`` found, and how much it read (so that "no problems" says of what)."""

    problems: list[Problem]
    accepted: list[Accepted]
    rejected: dict[str, str] = Field(description="An entry's results/<track> folder -> its first problem's field.")
    submissions: int
    results: int
    tracks: int

    @property
    def reproduced(self) -> int:
        return sum(a.signed_by is not None for a in self.accepted)


def verify_paths(
    paths: Iterable[Path],
    repo_root: Path = REPO_ROOT,
    data_dir: Path | None = None,
    info: Callable[[str], None] = lambda message: print(f"note: {message}", file=sys.stderr),
    unsigned_ok: bool = False,
    local_data: bool = True,
    tracks: Iterable[Track] = (),
) -> Verification:
    """Every problem of the tracks and of the given submission folders, manifests or results files (none:
    every submission), besides the tracks folder's on ``tracks`` (track files of one's own, from ``load_track``);
    ``info`` receives notes on checks that could not run, which are not problems.
    ``unsigned_ok``: accept unsigned results on the tracks the reproduction re-runs (what it checks before
    signing them). ``local_data``: compare results with this machine's prepared data (the leaderboard does
    not, so that it depends on the repository alone)."""
    verifier = _Verifier(Path(repo_root), data_dir, info, unsigned_ok=unsigned_ok, local_data=local_data)
    problems = verifier.check_tracks()
    verifier.tracks |= {t.id: t for t in tracks}
    targets = _targets([Path(p) for p in paths], verifier.repo_root, problems)
    for folder, (files, whole) in sorted(targets.items()):
        problems += verifier.check_submission(folder, files, whole)
    return Verification(
        problems=problems, accepted=verifier.accepted, rejected=verifier.rejected, submissions=len(targets),
        results=sum(len(files) for files, _ in targets.values()), tracks=len(verifier.tracks),
    )  # fmt: skip


def sign_entry(
    folder: Path, track: str, key: Ed25519PrivateKey, repo_root: Path = REPO_ROOT,
    report: Callable[[str], None] = print,
) -> list[Path]:
    """Sign the results of one entry on ``track`` (what the reproduction does after re-running it): each
    problem verify finds in the entry is reported, and any makes it sign nothing. Returns the signatures."""
    found = verify_paths([folder], repo_root=repo_root, unsigned_ok=True)
    for p in found.problems:
        report(f"{p.file}: {p.field}: {p.message}")
    if found.problems:
        raise SpeedrunError(f"{folder}: verify found {len(found.problems)} problem(s); nothing signed")
    chosen = [a for a in found.accepted if a.result.track == track]
    if not chosen:
        raise SpeedrunError(f"{folder}: no results for track '{track}' to sign")
    keys = load_trust(repo_root).keys
    return [sign(a.path, a.result, key, keys) for a in chosen]


def _targets(paths: list[Path], repo_root: Path, problems: list[Problem]) -> dict[Path, tuple[list[Path], bool]]:
    """Submission folder -> (results files to check, whether the whole submission was asked for)."""
    if not paths:
        root = repo_root / "submissions"
        folders = discover_submissions(root)
        for d in sorted(root.iterdir()) if root.is_dir() else []:
            if d in folders or not d.is_dir():
                continue
            if d.is_symlink():
                field = "(path)"
                message = (
                    f"a symbolic link (to {d.readlink()}), not a submission folder: neither verified nor ranked, "
                    "as a link would enter the results it reaches a second time; remove it"
                )
            elif not d.name.startswith("."):
                field, message = MANIFEST, f"no {MANIFEST} here"
            elif (d / "results").exists():
                field, message = "(path)", "a hidden folder holding results: neither verified nor ranked; remove it"
            else:
                continue
            # _rel would resolve a link: name the entry itself
            problems.append(Problem(file=d.relative_to(repo_root).as_posix(), field=field, message=message))
        return {f: (sorted(f.glob("results/*/*.json")), True) for f in folders}
    targets: dict[Path, tuple[list[Path], bool]] = {}
    for p in paths:
        folder = p.parent if p.name == MANIFEST else p
        if folder.is_dir() and (folder / MANIFEST).is_file():
            targets[folder] = (sorted(folder.glob("results/*/*.json")), True)
        elif p.is_file() and p.suffix == ".json" and p.parent.parent.name == "results":
            files, whole = targets.setdefault(p.parents[2], ([], False))
            if not whole and p not in files:
                files.append(p)
        else:
            message = "not a submission folder nor a results file submissions/<name>/results/<track>/<run>.json"
            problems.append(Problem(file=str(p), field="(path)", message=message))
    return targets


def _rel(path: Path, repo_root: Path) -> str:
    """``path`` below ``repo_root``, its folders resolved but not its own name (a link is named as itself)."""
    try:
        return (path.parent.resolve() / path.name).relative_to(repo_root.resolve()).as_posix()
    except ValueError:
        return str(path)


def _field_of(exc: SpeedrunError) -> str:
    """The first field a harness error message names, else ``(file)``."""
    return m.group(1) if (m := _FIELD.search(str(exc))) else "(file)"


def model_grid_side(track: Track) -> int:
    """The side of the square grid the model sees: the image, or the Flux VAE's latents."""
    from speedrun.data.vae import FLUX_DOWNSAMPLE

    data = track.data
    return data.image_size if data.representation == "pixels" else data.image_size // FLUX_DOWNSAMPLE


def flops_per_step_of(track: Track) -> int:
    """The ``flops_per_step`` the trainer records on ``track``, computed from the track alone."""
    import torch

    from speedrun.data.text import text_encoder_class
    from speedrun.model import build_model

    side = model_grid_side(track)
    with torch.device("meta"):  # the count needs the config only, not 1.2B parameters' memory
        model = build_model(track.model.config, text_dim=text_encoder_class(track.data.text_encoder).dim)
    return model.flops_per_step(track.train.global_batch, (side, side), track.data.text_max_tokens)


def _by_seed(results: list[RunResult], label: Callable[[RunResult], str | None], how: str) -> str | None:
    """'seed 0, 1 <how> A, seed 2 <how> B' when ``label`` takes more than one value over ``results``, else
    None; a result whose label is None (nothing recorded) is left out."""
    groups: defaultdict[str, list[int]] = defaultdict(list)
    for r in sorted(results, key=lambda r: r.seed):
        if (value := label(r)) is not None:
            groups[value].append(r.seed)
    if len(groups) < 2:
        return None
    return ", ".join(f"seed {', '.join(map(str, seeds))} {how} {value}" for value, seeds in groups.items())


def machine_model(h: Hardware) -> str:
    """The machine model, devices and CPU, and the processes where they outnumber the devices named (a CPU run
    under torchrun, several nodes), as they split the arithmetic; not cpu_count or driver, which vary between
    machines of one model."""
    processes = f", {h.device_count} processes" if h.device_count > len(h.device_names) else ""
    if h.device_type == "cpu" and set(h.device_names) == {h.cpu}:
        return f"'{h.cpu}'{processes}"
    devices = " + ".join(f"{n} x {name}" if n > 1 else name for name, n in sorted(Counter(h.device_names).items()))
    return f"'{devices}' ({h.device_type}) with CPU '{h.cpu}'{processes}"


def setup(h: Hardware, torch_version: str) -> str:
    """What a seed's numbers depend on besides the recipe and the seed: the machine model and the torch build.
    Seeds pair only within one setup: across two, a seed's scores move about as much as a change of seed."""
    return f"{machine_model(h)}, torch {torch_version}"


def _mixed_setups(results: list[RunResult]) -> Iterable[tuple[str, str]]:
    """An entry's seeds must share evaluator weights, teachers, machine model and torch build: the leaderboard
    pairs each seed with the baseline's same seed, so a difference between them must come from the recipe alone."""
    paired = "an entry's seeds are compared with the baseline's seed by seed, so"
    split = []
    for extractor in sorted({e for r in results for e in r.provenance.extractor_weights}):
        # Among the seeds that used it: a run that stopped before its first evaluation records none.
        weights = lambda r: r.provenance.extractor_weights.get(extractor, "")[:12] or None
        if seeds := _by_seed(results, weights, "with"):
            split.append(f"for '{extractor}', {seeds}")
    if split:
        message = (
            f"seeds scored with different evaluator weights: {'; '.join(split)}; "
            f"{paired} score them all with the same weights"
        )
        yield "provenance.extractor_weights", message
    teachers = lambda r: " and ".join(f"{m} '{t}'" for m, t in sorted(r.provenance.teachers.items())) or "no teacher"
    if seeds := _by_seed(results, teachers, "with"):
        message = f"seeds trained with different teachers: {seeds}; {paired} train them all with the same teachers"
        yield "provenance.teachers", message
    if seeds := _by_seed(results, lambda r: machine_model(r.hardware), "on"):
        yield "hardware", f"seeds scored on different hardware: {seeds}; {paired} run them all on one machine model"
    if seeds := _by_seed(results, lambda r: r.software.torch, "with torch"):
        yield "software.torch", f"seeds run with different torch builds: {seeds}; {paired} run them all with one"


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)


class _Verifier:
    """Holds what every check compares against, computed once per ``verify_paths`` call."""

    def __init__(
        self, repo_root: Path, data_dir: Path | None, info: Callable[[str], None], *, unsigned_ok: bool,
        local_data: bool,
    ) -> None:
        self.repo_root = repo_root
        self.tracks_dir = repo_root / "tracks"
        self.data_dir = data_dir
        self.info = info
        self.harness = harness_sha256()
        self.trust = load_trust(repo_root)
        self.tracks: dict[str, Track] = {}
        self.accepted: list[Accepted] = []
        self.rejected: dict[str, str] = {}
        self.unsigned_ok, self.local_data = unsigned_ok, local_data
        self._noted: set[str] = set()

    def problem(self, path: Path, field: str, message: str) -> Problem:
        return Problem(file=_rel(path, self.repo_root), field=field, message=message)

    def note(self, message: str) -> None:
        if message not in self._noted:
            self._noted.add(message)
            self.info(message)

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
        valid: dict[str, list[RunResult]] = {p.parent.name: [] for p in files}
        failing: defaultdict[str, list[Path]] = defaultdict(list)
        for path in files:
            result, found = self.check_result(path, folder, sub, code)
            problems += found
            if result is not None and not found:
                valid[path.parent.name].append(result)
            else:
                failing[path.parent.name].append(path)
        for track_id, results in sorted(valid.items()) if whole else []:
            found = [self.problem(folder / "results" / track_id, f, m) for f, m in self.check_entry(
                folder, track_id, results, failing[track_id], sub
            )]  # fmt: skip
            problems += found
            if found:
                self.rejected[found[0].file] = found[0].field
        return problems

    def check_entry(
        self, folder: Path, track_id: str, results: list[RunResult], failing: list[Path], sub: Submission | None
    ) -> Iterable[tuple[str, str]]:
        """The leaderboard-entry rule for one submission on one track, given its valid and failing files."""
        track = self.tracks.get(track_id)
        # Any submission may race on a track file of one's own; on a track of the folder, those that target it.
        if sub is not None and track_id not in sub.manifest.tracks and (track is None or track.file is None):
            yield "tracks", f"results for track '{track_id}', which {MANIFEST} does not target"
            return
        if track is None:
            return  # the unknown track is already reported on each of its results files
        run = f"speedrun run {_rel(folder, self.repo_root)} --track {track.ref}"
        have = sorted(r.seed for r in results if r.status == "ok")
        need, finished = track.rules.seeds_required, {r.seed for r in results}
        if len(have) < need:
            # `--seeds M` skips seeds with a valid file (a diverged one adds no ok seed) and refuses a failing
            # one: M is the (need - have)-th seed without a valid file, plus one; failing files must move away.
            upto = [s for s in range(need + len(finished)) if s not in finished][need - len(have) - 1] + 1
            lack = (
                f"{len(have)} valid ok seed(s) {have} on track '{track_id}'; an entry needs {need}, {need - len(have)}"
            )
            if not failing:
                yield "seeds", f"{lack} more to run: `{run} --seeds {upto}`"
            else:
                message = (
                    f"{lack} more to run; {len(failing)} results file(s) here fail the checks above and count as not "
                    f"run ({', '.join(p.name for p in sorted(failing))}): move them out of the submission folder, "
                    f"then `{run} --seeds {upto} --no-resume`"
                )
                yield "seeds", message
        present = finished | {int(m.group(1)) for p in failing if (m := _SEED_FILE.fullmatch(p.stem))}
        if missing := missing_seeds(present):
            message = (
                f"seed(s) {missing} missing among {sorted(present)}: an entry's seeds are 0, 1, 2, ... with none "
                f"left out, so that it cannot keep only its best runs; run each (`{run} --seed <N>`)"
            )
            yield "seeds", message
        yield from _mixed_setups(results)

    def check_result(
        self, path: Path, folder: Path, sub: Submission | None, code: dict[str, Any]
    ) -> tuple[RunResult | None, list[Problem]]:
        """Schema, digest, identity, provenance and recomputed fields of one results file; ``code`` is the
        folder's ``code_record`` now."""
        rerun_hint = self.rerun_hint(path, folder)
        try:
            result = load_result(path)
        except SpeedrunError as exc:
            return None, [self.problem(path, _field_of(exc), f"{exc}; {rerun_hint}")]
        found: Iterable[tuple[str, str]] = identity_problems(path, folder, result)
        track = self.tracks.get(result.track)
        if track is None:
            own = "a track file of one's own is named with --track path/to/track.toml"
            found = [*found, ("track", f"no valid track '{result.track}' in tracks ({own})")]
        else:
            # The effective track (overrides applied), unless the manifest's problem is reported instead.
            targets = sub and (track.file or result.track in sub.manifest.tracks)
            effective = sub.track(track.ref, self.tracks_dir) if targets else None
            found = chain(
                found,
                self._provenance(result, folder, code, track, rerun_hint),
                self._effective(result, effective, rerun_hint),
                self._recompute(result, track),
            )
        problems = [self.problem(path, f, m) for f, m in found]
        if not problems:
            try:
                signed_by = signer(path, result.digest, self.trust.keys)
            except SpeedrunError as exc:
                return result, [self.problem(path, "signature", f"{exc}; restore both files, or reproduce the entry")]
            if signed_by is None and result.track in self.trust.reproduces and not self.unsigned_ok:
                message = (
                    f"self-reported: on track '{result.track}' a result counts only once the maintainers' "
                    f"reproduction has signed it ({KEYS_FILE}); leave results out of the pull request, or ask a "
                    f"maintainer to run `speedrun reproduce {_rel(folder, self.repo_root)} --track {result.track}`"
                )
                return result, [self.problem(path, "signature", message)]
            self.accepted.append(Accepted(path=path, result=result, signed_by=signed_by))
        return result, problems

    def rerun_hint(self, path: Path, folder: Path) -> str:
        """How to replace ``path`` by a fresh run of its seed (``--no-resume``: else its checkpoint resumes)."""
        move = f"move {_rel(path, self.repo_root)} out of the submission folder"
        seed = _SEED_FILE.fullmatch(path.stem)
        if seed is None:
            return move  # its name is no seed's (a problem of its own); `speedrun run` never reads it
        track = self.tracks.get(path.parent.name)
        return (
            f"to re-run it, {move}, then run `speedrun run {_rel(folder, self.repo_root)} "
            f"--track {track.ref if track else path.parent.name} --seed {seed.group(1)} --no-resume`"
        )

    def _provenance(
        self, r: RunResult, folder: Path, code: dict[str, Any], track: Track, rerun_hint: str
    ) -> Iterable[tuple[str, str]]:
        p = r.provenance
        if (folder / MANIFEST).is_file() and code["submission_files"].get(MANIFEST) != p.manifest_sha256:
            yield "provenance.manifest_sha256", f"{MANIFEST} changed after this run; {rerun_hint}"
        for change in code_changes(p.code, code):
            if change.file is None:
                message = (
                    "the harness code that trains and evaluates (speedrun/) changed since this run, so its numbers "
                    f"came from different code (recorded {p.harness_sha256[:12]}, now {self.harness[:12]}); "
                    f"maintainers: {rerun_hint}"
                )
                yield "provenance.harness_sha256", message
            elif change.file != MANIFEST:  # submission.toml has its own check above
                how = "changed" if change.how == "changed" else f"was {change.how}"
                message = f"submission file '{change.file}' {how} after this run; {rerun_hint}"
                yield "provenance.submission_files", message
        if r.track_version != track.version:
            message = (
                f"result is for track '{track.id}' version {r.track_version}, the track is now version "
                f"{track.version}: results of another track version do not count; {rerun_hint}"
            )
            yield "track_version", message
        elif p.track_hash != track.content_hash:
            message = (
                f"track '{track.id}' v{track.version} changed since this run without a version bump "
                f"(recorded {p.track_hash[:12]}, now {track.content_hash[:12]}); maintainers: restore the "
                f"track file, or bump its version and re-run every result of the track; {rerun_hint}"
            )
            yield "provenance.track_hash", message

    def _prepared_data(self, r: RunResult, track: Track, rerun_hint: str) -> Iterable[tuple[str, str]]:
        from speedrun.data.source import dataset_manifest_sha256

        try:
            current = dataset_manifest_sha256(track, data_root(self.data_dir))
        except (SpeedrunError, OSError):
            current = None
        recorded = r.provenance.dataset_manifest_sha256
        if current is None:
            self.note(f"cannot check the dataset manifest of track '{track.id}': data not prepared")
        elif recorded != current:
            message = (
                f"the prepared data of track '{r.track}' differs from the data this run trained on "
                f"(recorded {str(recorded)[:12]}, local {current[:12]}): the data folder may be another one "
                "(--data-dir, $SPEEDRUN_DATA_DIR), or prepared on another kind of machine by a text encoder that "
                "computes below float64 (its embeddings round differently between CPU models, and between CPU "
                f"and GPU); verify where the run was made, or {rerun_hint}"
            )
            yield "provenance.dataset_manifest_sha256", message

    def _effective(self, r: RunResult, track: Track | None, rerun_hint: str) -> Iterable[tuple[str, str]]:
        """Against the effective track: the prepared data (if prepared here, and ``local_data``), ``flops_per_step``."""
        if track is None:
            return
        if self.local_data:
            yield from self._prepared_data(r, track, rerun_hint)
        try:
            expected = flops_per_step_of(track)
        except SpeedrunError as exc:  # an unknown model config or text encoder
            self.note(f"cannot check flops_per_step on track '{track.id}': {exc}")
            return
        # The trainer counts them at its first batch: a run that stopped before one has none.
        if r.speed.flops_per_step == expected or (r.steps == 0 and r.speed.flops_per_step == 0):
            return
        side, data = model_grid_side(track), track.data
        message = (
            f"is {r.speed.flops_per_step}; model '{track.model.config}' at the track's global batch "
            f"{track.train.global_batch}, on a {side} x {side} grid ({data.representation} of "
            f"{data.image_size} x {data.image_size} images) with {data.text_max_tokens} text "
            f"tokens, does {expected} FLOPs per step (3 x forward matmul FLOPs)"
        )
        yield "speed.flops_per_step", message

    def _recompute(self, r: RunResult, track: Track) -> Iterable[tuple[str, str]]:
        """Fields derived from other fields of the same file must agree with them."""
        steps = track.train.steps
        if r.status == "ok":
            if r.failure is not None:
                yield "failure", "an ok run records a failure"
            budget = track.train.max_seconds
            if budget is None and r.steps != steps:
                yield "steps", f"an ok run completes the budget of {steps} steps, this one has {r.steps}"
            elif budget is not None and r.steps < steps and r.timing.train_clock_s < budget:
                message = (
                    f"an ok run completes the budget of {steps} steps or of {budget} clock seconds, "
                    f"this one stopped after {r.steps} steps and {r.timing.train_clock_s} s"
                )
                yield "steps", message
            if missing := [m for m in track.eval.metrics if m not in r.metrics and m not in r.unavailable]:
                yield "metrics", f"track metric(s) {missing} neither reported nor explained in 'unavailable'"
            if r.evals and r.metrics != r.evals[-1].metrics:
                yield "metrics", "differ from the last evaluation's metrics"
        elif r.failure is None:
            yield "failure", f"a {r.status} run must say why in 'failure'"
        if r.steps > steps:
            yield "steps", f"{r.steps} steps exceed the track budget of {steps}"
        evals = [e.step for e in r.evals]
        if evals != sorted(set(evals)):
            yield "evals", "evaluations are not in strictly increasing step order"
        curve = [point.step for point in r.val_loss_curve]
        if curve != sorted(set(curve)):
            yield "val_loss_curve", "validations are not in strictly increasing step order"
        bps, ips, batch = r.speed.batches_per_second, r.speed.images_per_second, track.train.global_batch
        if bps is not None and ips is not None and not _close(ips, bps * batch):
            yield "speed.images_per_second", f"is {ips}, batches/s x global batch is {bps * batch}"
        card = r.hardware.device_names[0] if r.hardware.device_type == "cuda" else None
        mfu = model_flops_utilisation(r.speed.flops_per_step, bps, card, r.world_size)
        if (mfu is None) != (r.speed.mfu is None) or (mfu is not None and not _close(r.speed.mfu, mfu)):
            of = f"{r.world_size} x {card}" if card else "no card (a CPU run)"
            yield "speed.mfu", f"is {r.speed.mfu}; flops/step x batches/s over the peak FLOP/s of {of} is {mfu}"
        gpu_hours = r.timing.train_clock_s * r.world_size / 3600 if r.hardware.device_type == "cuda" else 0.0
        if not _close(r.timing.gpu_hours, gpu_hours):
            yield "timing.gpu_hours", f"is {r.timing.gpu_hours}, train clock x devices / 3600 is {gpu_hours}"
