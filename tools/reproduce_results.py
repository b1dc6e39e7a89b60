"""Re-run committed results and check that their scores did not move; optionally put the new ones in place.

A maintainers' tool. An edit to the harness code that trains and evaluates (``harness_files`` in
``speedrun/provenance.py``) changes the harness hash, and ``speedrun verify`` then calls every committed
result stale until each seed is run again. This re-runs them, one seed after another, seed 0 of every entry
first (speeds are measured, so nothing else should run meanwhile), each from a copy of its submission folder
in a work folder, so the committed results stay untouched while it works and after a failure. Each new result
is compared with the committed one:

* scores: status, failure, steps, metrics, unavailable, evals and the validation-loss curve must be
  equal exactly (the tiny track is bit-reproducible on one machine), and so must the sample grid's
  bytes;
* speed (batches/s) and the hardware are printed, not compared.

    python tools/reproduce_results.py --track tiny                      # check only
    python tools/reproduce_results.py --track tiny --submission baseline --seed 0
    python tools/reproduce_results.py --track tiny --replace --only-stale

With ``--replace``, each seed whose scores matched (or any, with ``--allow-changes``) takes its new results
file and grid as soon as it has run; the committed ones are kept in ``<work>/committed/``. An interrupted
regeneration is continued with ``--only-stale``, which skips seeds whose result already names the current code
and track. Then sign them (``speedrun sign``, each entry and track: the replaced results are unsigned), run
``speedrun leaderboard --md`` and ``speedrun verify``. Exit status: 0 when every score matched, 1 when one
differs, 2 for bad arguments or a failed run (the seeds replaced before it stay replaced).

``--replace`` refuses to run on another CPU model than the one that made the committed results, because a
replaced seed carries this machine's speed and the leaderboard pairs seeds only within one setup. Scores may move
as well: between an Intel Xeon and an AMD EPYC the same code moved the tiny track's per-seed FIDs by -13 to +43,
like a change of seed, while two Xeon models gave identical scores at a third of the speed (BENCHMARKS.md).
A regeneration on another model therefore needs ``--allow-changes`` and every seed of the track.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCORE_FIELDS = ("status", "failure", "steps", "metrics", "unavailable", "evals", "val_loss_curve")


class ToolError(Exception):
    """A mistake in the arguments or a failed run: printed as one line, exit status 2."""


@dataclass(frozen=True, kw_only=True)
class Target:
    """One committed seed: ``submissions/<name>/results/<track>/seed<seed>.json`` and its grid."""

    submission: Path
    track: str
    seed: int

    @property
    def result(self) -> Path:
        return self.submission / "results" / self.track / f"seed{self.seed}.json"

    @property
    def grid(self) -> Path:
        return self.result.with_suffix(".png")

    def __str__(self) -> str:
        return f"{self.submission.name} seed {self.seed}"


def find_targets(root: Path, track: str, names: list[str], seeds: list[int]) -> list[Target]:
    """Committed seeds of ``track``, restricted to the named submissions and seeds when given."""
    subs = root / "submissions"
    for name in names:
        if not (subs / name / "submission.toml").is_file():
            raise ToolError(f"--submission {name}: no {subs / name / 'submission.toml'}")
    targets = []
    for folder in sorted(p for p in subs.iterdir() if (p / "submission.toml").is_file()):
        if names and folder.name not in names:
            continue
        for path in sorted((folder / "results" / track).glob("seed*.json")):
            seed = path.stem.removeprefix("seed")
            if seed.isdigit() and (not seeds or int(seed) in seeds):
                targets.append(Target(submission=folder, track=track, seed=int(seed)))
    if not targets:
        raise ToolError(f"no committed results of track '{track}' match (looked in {subs}/*/results/{track}/)")
    # Seed 0 of every entry, then seed 1, ...: the machine's speed drifts by ~10% over hours, and interleaving
    # spreads that drift over every entry instead of making one entry's seeds all fast and another's all slow.
    return sorted(targets, key=lambda t: (t.seed, t.submission.name))


def is_current(target: Target) -> bool:
    """Whether the committed result is intact and names the code now on disk and the track's current content."""
    from speedrun.errors import SpeedrunError
    from speedrun.provenance import code_changes, code_record
    from speedrun.results import load_result
    from speedrun.tracks import load_track

    try:
        result = load_result(target.result)
    except SpeedrunError:
        return False  # damaged or edited: run it again
    code = code_record(target.submission)
    return not code_changes(result.provenance.code, code) and result.provenance.track_hash == load_track(
        target.track
    ).content_hash


def score_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The score fields that differ between two results files' contents, each named with both values."""
    return [
        f"{field}: {json.dumps(old.get(field))} -> {json.dumps(new.get(field))}"
        for field in SCORE_FIELDS
        if old.get(field) != new.get(field)
    ]


def _speed(result: dict[str, Any]) -> float | None:
    return (result.get("speed") or {}).get("batches_per_second")


def _machine(result: dict[str, Any]) -> str:
    hardware = result.get("hardware") or {}
    return ", ".join(hardware.get("device_names") or []) or "?"


def refuse_other_cpus(targets: list[Target]) -> None:
    """Refuse, before any run, to replace results that another CPU model made: none would be replaced."""
    from speedrun.provenance import cpu_model

    here, others = cpu_model(), set()
    for target in targets:
        hardware = json.loads(target.result.read_text()).get("hardware") or {}
        if hardware.get("device_type") == "cpu" and hardware.get("cpu", here) != here:
            others.add(hardware["cpu"])
    if others:
        raise ToolError(
            f"committed results were made on {' and '.join(sorted(others))}, and this machine is {here}: a "
            "replaced seed would carry this machine's speed, and scores may move too, while the leaderboard pairs "
            "seeds only within one CPU model; run it on that model, or add --allow-changes to replace them all "
            "with this machine's"
        )


def reproduce(target: Target, work: Path, env: dict[str, str]) -> Path:
    """Run ``target`` again from a copy of its submission folder; the new results file's path."""
    copy = work / "submissions" / target.submission.name
    if not copy.exists():
        shutil.copytree(target.submission, copy, ignore=shutil.ignore_patterns("results", "__pycache__"))
    log = work / "logs" / f"{target.submission.name}-{target.track}-seed{target.seed}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "speedrun.cli", "run", str(copy), "--track", target.track,
        "--seed", str(target.seed), "--runs-dir", str(work / "runs"),
    ]  # fmt: skip
    with open(log, "w") as out:
        rc = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    new = copy / "results" / target.track / f"seed{target.seed}.json"
    if rc != 0 or not new.is_file():
        raise ToolError(f"{target}: `speedrun run` failed (exit {rc}); its output is in {log}")
    return new


def compare(target: Target, new_path: Path) -> tuple[list[str], str]:
    """(differences in scores or grid, one line of speed and machines) of a new result against the committed one."""
    old, new = json.loads(target.result.read_text()), json.loads(new_path.read_text())
    diffs = score_differences(old, new)
    new_grid = new_path.with_suffix(".png")
    if target.grid.is_file() != new_grid.is_file():
        diffs.append(f"sample grid: {'present' if target.grid.is_file() else 'absent'} -> "
                     f"{'present' if new_grid.is_file() else 'absent'}")  # fmt: skip
    elif target.grid.is_file() and target.grid.read_bytes() != new_grid.read_bytes():
        diffs.append("sample grid: the PNG bytes differ")
    before, after = _speed(old), _speed(new)
    ratio = f" ({after / before:.2f}x)" if before and after else ""
    speed = f"{before or 0:.3f} -> {after or 0:.3f} batches/s{ratio}; {_machine(old)} -> {_machine(new)}"
    return diffs, speed


def replace(target: Target, new_path: Path, work: Path) -> None:
    """Keep the committed results file and grid in ``work/committed/`` and put the new ones in place."""
    from speedrun.fileio import atomic_write_bytes
    from speedrun.trust import signature_path

    kept = work / "committed" / target.submission.name / target.track
    kept.mkdir(parents=True, exist_ok=True)
    for old, new in ((target.result, new_path), (target.grid, new_path.with_suffix(".png"))):
        if old.is_file():
            shutil.copy2(old, kept / old.name)
        if new.is_file():
            atomic_write_bytes(old, new.read_bytes())  # the committed file is never half-written
        elif old.is_file():
            old.unlink()
    # The new result is unsigned until signed again: the old one's signature is kept, not left beside it.
    if (signature := signature_path(target.result)).is_file():
        shutil.copy2(signature, kept / signature.name)
        signature.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--track", default="tiny", help="track whose committed results are re-run (default: tiny)")
    parser.add_argument("--submission", action="append", default=[], metavar="NAME", help="only this one (repeatable)")
    parser.add_argument("--seed", action="append", default=[], type=int, metavar="N", help="only seed N (repeatable)")
    parser.add_argument("--work", type=Path, help="work folder (default: runs/reproduce-<UTC time> in the checkout)")
    parser.add_argument("--replace", action="store_true", help="put each new result in place once it has run")
    parser.add_argument("--allow-changes", action="store_true", help="with --replace: also when scores differ")
    parser.add_argument("--only-stale", action="store_true", help="skip seeds whose result names the current code")
    parser.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        if args.allow_changes and not args.replace:
            raise ToolError("--allow-changes only makes sense with --replace")
        targets = find_targets(args.root, args.track, args.submission, args.seed)
        skipped = [t for t in targets if args.only_stale and is_current(t)]
        targets = [t for t in targets if t not in skipped]
        if args.replace and not args.allow_changes:
            refuse_other_cpus(targets)
        work = args.work or args.root / "runs" / time.strftime("reproduce-%Y%m%dT%H%M%SZ", time.gmtime())
        if work.exists() and any(work.iterdir()):
            raise ToolError(f"--work {work}: not empty; name a new folder")
        work.mkdir(parents=True, exist_ok=True)
        print(f"{len(targets)} seeds of track '{args.track}', one after another; work folder {work}", flush=True)
        for target in skipped:
            print(f"{target}: current, skipped", flush=True)
        env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
        changed = []
        for target in targets:
            t0 = time.perf_counter()
            new = reproduce(target, work, env)
            diffs, speed = compare(target, new)
            verdict = "scores identical" if not diffs else f"{len(diffs)} DIFFER"
            placed = args.replace and (not diffs or args.allow_changes)
            if placed:
                replace(target, new, work)
            print(f"{target}: {verdict}{'; replaced' if placed else ''}; {speed}; {time.perf_counter() - t0:.0f} s",
                  flush=True)  # fmt: skip
            for diff in diffs:
                print(f"    {diff}")
            if diffs:
                changed.append(target)
    except ToolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.replace:
        print(f"replaced results are kept in {work / 'committed'}; next: speedrun leaderboard --md && speedrun verify")
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())
