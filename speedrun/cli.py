"""The ``speedrun`` command line: parses arguments and dispatches to the modules. A ``SpeedrunError`` prints
one paragraph and exits 2; an interrupted run exits 128 + the signal number (130 for Ctrl-C)."""

from __future__ import annotations

import functools
import json
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from speedrun import advice
from speedrun.devices import DEVICES
from speedrun.errors import SpeedrunError, TrainingInterrupted

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Race text-to-image training recipes fairly: run, evaluate, verify and rank submissions.",
)
console = Console()
err_console = Console(stderr=True)
USER_ERROR = 2
Device = Enum("Device", {d: d for d in DEVICES}, type=str)  # typer takes an option's choices from an Enum
DATA_DIR_HELP = "Prepared data (default: $SPEEDRUN_DATA_DIR, else the repository's data/)."
RUNS_DIR_HELP = "Checkpoints and logs (default: $SPEEDRUN_RUNS_DIR, else the repository's runs/)."
TRACK_HELP = "a track id, or the path of a track file of your own (ending in .toml)"


def _command(name: str) -> Callable[[Callable[..., Any]], Any]:
    """Register ``speedrun <name>``; a ``SpeedrunError`` becomes a one-paragraph message and exit code 2."""

    def register(fn: Callable[..., Any]) -> Any:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except SpeedrunError as exc:
                stopped = isinstance(exc, TrainingInterrupted)
                label = ("interrupted:", "bold yellow") if stopped else ("error:", "bold red")
                # Text, not a markup string: a message quoting user input such as "[/]" must print verbatim
                err_console.print(Text.assemble(label, f" {advice.explain(exc)}"), highlight=False, soft_wrap=True)
                raise typer.Exit(128 + exc.signum if stopped else USER_ERROR) from None
            except KeyboardInterrupt:
                err_console.print("interrupted")
                raise typer.Exit(130) from None

        return app.command(name)(wrapper)

    return register


@_command("tracks")
def tracks_cmd(as_json: bool = typer.Option(False, "--json", help="Print the tracks as JSON.")) -> None:
    """List the tracks with their budget, data, model and ranking."""
    from speedrun.tracks import all_tracks

    tracks = all_tracks()
    if as_json:
        print(json.dumps([{**t.model_dump(mode="json"), "content_hash": t.content_hash} for t in tracks], indent=2))
        return
    table = Table(title="Tracks")
    for col in ("id", "version", "data", "model", "steps x batch", "eval", "rank by", "seeds", "hash"):
        table.add_column(col, no_wrap=col in ("id", "model", "hash"))  # never cut at 80 columns (pipes)
    for t in tracks:
        table.add_row(
            t.id,
            str(t.version),
            f"{t.data.dataset} {t.data.image_size}px {t.data.representation}",
            t.model.config,
            f"{t.train.steps:,} x {t.train.global_batch}",
            f"{t.eval.samples:,} samples, {t.eval.sampler_steps} steps, cfg {t.eval.cfg_scale}",
            f"{t.ranking.metric} ({t.ranking.direction})",
            str(t.rules.seeds_required),
            t.content_hash[:12],
        )
    console.print(table)


@_command("validate")
def validate_cmd(
    paths: Optional[list[Path]] = typer.Argument(None, help="Submission folders (default: all in submissions/)."),
) -> None:
    """Validate submission manifests and the tracks they target; never runs submission code."""
    from speedrun.components.registry import declared_component_names
    from speedrun.submission import discover_submissions, load_submission
    from speedrun.tracks import REPO_ROOT, all_tracks

    all_tracks()
    failures = 0
    for p in paths or discover_submissions(REPO_ROOT / "submissions"):
        try:
            sub = load_submission(p)
        except SpeedrunError as exc:
            failures += 1
            err_console.print(Text.assemble(("invalid:", "red"), f" {exc}"), highlight=False, soft_wrap=True)
            continue
        line = Text.assemble(("ok", "green"), f" {sub.path} (tracks: {', '.join(sub.manifest.tracks)})")
        if sub.custom_components:
            custom = sorted(set(declared_component_names(sub.custom_components)))
            line.append(
                f"; custom component(s) {', '.join(custom)}: parameters checked when `speedrun run` imports them"
            )
        console.print(line, highlight=False, soft_wrap=True)
    if failures:
        raise typer.Exit(1)


@_command("schema")
def schema_cmd(out: Path = typer.Option(Path("schemas"), "--out", help="Folder for the JSON Schema files.")) -> None:
    """Write the JSON Schemas of the track, submission manifest and results file formats."""
    from speedrun.schemas import write_schemas

    for path in write_schemas(out):
        console.print(Text(f"wrote {path}"), highlight=False, soft_wrap=True)  # whole paths, even in pipes


@_command("prepare")
def prepare_cmd(
    track: str = typer.Option("tiny", "--track", "-t", help=f"Track whose data to prepare: {TRACK_HELP}."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
) -> None:
    """Prepare (or verify) a track's data: shards, text embeddings, evaluation reference."""
    from speedrun.data.prepare import prepare
    from speedrun.paths import data_root
    from speedrun.tracks import load_track

    root = prepare(load_track(track), data_root(data_dir))
    console.print(f"data ready: {root}")


@_command("run")
def run_cmd(
    submission: Path = typer.Argument(..., help="Submission folder, e.g. submissions/baseline."),
    track: Optional[str] = typer.Option(
        None, "--track", "-t", help=f"Track: {TRACK_HELP} (default: the manifest's first)."
    ),
    seeds: int = typer.Option(1, "--seeds", help="Number of seeds (0..N-1 unless --seed)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Run exactly this seed."),
    nproc: int = typer.Option(1, "--nproc", help="Processes per node (torchrun when > 1)."),
    nnodes: int = typer.Option(1, "--nnodes", help="Nodes (torchrun)."),
    node_rank: int = typer.Option(0, "--node-rank", help="This node's rank (torchrun)."),
    master_addr: str = typer.Option("127.0.0.1", "--master-addr", help="Rendezvous host (torchrun)."),
    master_port: int = typer.Option(29500, "--master-port", help="Rendezvous port (torchrun)."),
    parallel: str = typer.Option("auto", "--parallel", help="auto (FSDP2 for prx-1.2b, else DDP), ddp or fsdp."),
    device: Optional[str] = typer.Option(None, "--device", help="cuda or cpu (default: cuda when present)."),
    resume: bool = typer.Option(
        True,
        "--resume/--no-resume",
        help="Continue a killed seed from its checkpoint; --no-resume starts it over, deleting its checkpoints.",
    ),
    force: bool = typer.Option(
        False, "--force", help="Run finished seeds again from step 0, replacing their results files."
    ),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    runs_dir: Optional[Path] = typer.Option(None, "--runs-dir", help=RUNS_DIR_HELP),
) -> None:
    """Validate, prepare if needed, train, evaluate in a separate process, write results; a seed whose
    committed result was made on another machine runs here and is compared with it."""
    options = {k: v for k, v in locals().items() if k != "submission"}  # each named as RunOptions names it
    from speedrun.run import RunOptions, run_submission

    run_submission(submission, RunOptions(**options), console=console)


@_command("eval")
def eval_cmd(
    checkpoint: Path = typer.Argument(..., help="A checkpoint directory written by the trainer."),
    track: str = typer.Option(..., "--track", "-t", help=f"Track whose protocol to apply: {TRACK_HELP}."),
    out: Optional[Path] = typer.Option(None, "--out", help="Metrics JSON path (default: beside the checkpoint)."),
    device: Optional[Device] = typer.Option(None, "--device", help="cuda or cpu (default: cuda when present)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    batch_size: Optional[int] = typer.Option(
        None, "--batch-size", min=1, help="Sampling batch (does not change results)."
    ),
) -> None:
    """Evaluate a checkpoint with the track's fixed protocol (strict weight loading)."""
    from speedrun.eval.run import evaluate_checkpoint

    path = evaluate_checkpoint(
        checkpoint, track, out=out, device=device.value if device else None, data_dir=data_dir, batch_size=batch_size
    )
    console.print(f"metrics: {path}")


@_command("verify")
def verify_cmd(
    paths: Optional[list[Path]] = typer.Argument(None, help="Submissions or results files (default: all)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    tracks: Optional[list[str]] = typer.Option(
        None, "--track", "-t", help="A track file of your own whose results to check too (repeatable)."
    ),
) -> None:
    """Check manifests, tracks and results (schema, digest, provenance, seeds) without running submission code."""
    from speedrun.tracks import load_track
    from speedrun.verify import verify_paths

    found = verify_paths(paths or [], tracks=[load_track(t) for t in tracks or []])
    problems = found.problems
    if as_json:
        print(json.dumps([p.model_dump() for p in problems], indent=2))
    else:
        for p in problems:
            console.print(f"{p.file}: {p.field}: {p.message}", highlight=False, soft_wrap=True)
        read = (
            f"{found.tracks} track(s), {found.submissions} submission(s), {found.results} results file(s) "
            f"({found.reproduced} signed by the reproduction)"
        )
        console.print(f"[green]verify: no problems[/] in {read}" if not problems else f"verify: read {read}")
    if problems:
        raise typer.Exit(1)


@_command("reproduce")
def reproduce_cmd(
    submission: Path = typer.Argument(..., help="Submission folder, e.g. submissions/repa-shapes."),
    track: str = typer.Option(..., "--track", "-t", help="Track to reproduce the entry on."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    runs_dir: Optional[Path] = typer.Option(None, "--runs-dir", help=RUNS_DIR_HELP),
) -> None:
    """Run the track's required seeds from step 0 with this harness, replacing the entry's results files
    (the maintainers' reproduction; `speedrun sign` then signs what it wrote)."""
    from speedrun.run import reproduce

    reproduce(submission, track, data_dir=data_dir, runs_dir=runs_dir, console=console)


@_command("sign")
def sign_cmd(
    submission: Path = typer.Argument(..., help="Submission folder whose results to sign."),
    track: str = typer.Option(..., "--track", "-t", help="Sign the results of this track."),
    key_file: Optional[Path] = typer.Option(
        None, "--key-file", help="PEM private key (default: $SPEEDRUN_SIGNING_KEY)."
    ),
) -> None:
    """Verify an entry's results on a track and sign each with the reproduction's key (writes seed<N>.json.sig);
    refuses if verify finds any problem. Never runs submission code."""
    from speedrun.trust import private_key
    from speedrun.verify import sign_entry

    for path in sign_entry(submission, track, private_key(key_file), report=err_console.print):
        console.print(Text(f"signed {path}"), highlight=False)


@_command("keygen")
def keygen_cmd(
    out: Path = typer.Argument(..., help="Where to write the new private key (PEM; never over a file)."),
    holder: str = typer.Option(..., "--holder", help="Who will hold it, e.g. 'reproduce workflow, 2027'."),
) -> None:
    """Make a reproduction signing key; prints the entry that lists it in keys/reproduction.toml."""
    from speedrun.trust import KEYS_FILE, new_key

    entry = new_key(out, holder)
    console.print(  # never wrapped: the entry is pasted into a TOML file
        Text(f"wrote {out}; add this to {KEYS_FILE} (and mark the key it replaces retired):\n{entry}"), soft_wrap=True
    )


@_command("leaderboard")
def leaderboard_cmd(
    track: Optional[str] = typer.Option(None, "--track", "-t", help=f"Only this track: {TRACK_HELP}."),
    md: bool = typer.Option(False, "--md", help="Print Markdown and write leaderboard/README.md."),
    html: Optional[Path] = typer.Option(None, "--html", help="Write a self-contained HTML page into this folder."),
    check: bool = typer.Option(False, "--check", help="Fail if committed leaderboard files are stale."),
) -> None:
    """Rank every results file by its track's rule, with confidence intervals and p-values."""
    from speedrun.leaderboard import leaderboard_command

    if code := leaderboard_command(track=track, md=md, html=html, check=check, console=console):
        raise typer.Exit(code)


main = app  # the console script's entry point (pyproject.toml)

if __name__ == "__main__":
    app()
