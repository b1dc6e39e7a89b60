"""Racing on one's own captioned images: the README's "Race on your own images" run as written (in a temporary
folder holding copies of the entries it runs), and how a track file of one's own meets the submissions."""

from __future__ import annotations

import io
import re
import shlex
import shutil
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from speedrun.cli import app
from speedrun.errors import SpeedrunError
from speedrun.leaderboard import SELF_REPORTED, leaderboard_command
from speedrun.results import load_result
from speedrun.submission import load_submission
from speedrun.tracks import REPO_ROOT, TRACKS_DIR

SECTION = (REPO_ROOT / "README.md").read_text().split("## Race on your own images\n", 1)[1].split("\n## ", 1)[0]


def heredoc(command: str) -> str:
    """The body of the README section's ``<command> <<'EOF'`` here-document."""
    return re.search(rf"^{re.escape(command)} <<'EOF'\n(.*?)\nEOF$", SECTION, re.S | re.M).group(1)


@pytest.fixture
def own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The README's folder of images and its track file, made in ``tmp_path`` (the current folder)."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    monkeypatch.chdir(tmp_path)
    exec(heredoc("python -"), {})
    (tmp_path / "my-images.toml").write_text(heredoc("cat > my-images.toml"))
    return tmp_path


@pytest.mark.slow
def test_the_readme_races_entries_on_a_folder_of_ones_own(own: Path) -> None:
    commands = [shlex.split(line)[1:] for line in SECTION.splitlines() if line.startswith("speedrun ")]
    assert [c[0] for c in commands] == ["prepare", "run", "run", "verify", "leaderboard"]
    assert len(list((own / "my-images").glob("*.png"))) == 48
    for args in commands:
        if args[0] == "run":  # results/ is written beside the manifest: a copy, not the checkout's entry
            shutil.copytree(REPO_ROOT / args[1], own / args[1], ignore=shutil.ignore_patterns("results"))
        if args[0] == "leaderboard":  # of the results in this folder, not the checkout's
            shutil.copytree(TRACKS_DIR, own / "tracks")
            out = io.StringIO()
            assert leaderboard_command(track=args[2], console=Console(file=out, width=300), repo_root=own) == 0
            board = out.getvalue()
            # Ranked as they are: a track of one's own has nobody else's reproduction to wait for.
            assert "skipped" not in board and "run by you" in board and SELF_REPORTED not in board, board
            assert all(re.search(rf"\b{entry}\b.*\bok\b", board) for entry in ("baseline", "xpred")), board
            continue
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, (args, result.output)
    for entry in ("baseline", "xpred"):
        result = load_result(own / "submissions" / entry / "results" / "my-images" / "seed0.json")
        assert result.status == "ok" and result.steps == 20 and result.track == "my-images"
        assert set(result.metrics) == {"fid", "val_loss"} and result.metrics["fid"] is not None


def test_any_entry_races_on_a_track_file_its_overrides_and_components_allow(own: Path) -> None:
    track_file = str(own / "my-images.toml")
    track = load_submission(REPO_ROOT / "submissions" / "xpred").track(track_file)
    assert (track.id, track.file, track.ref) == ("my-images", own / "my-images.toml", track_file)
    with pytest.raises(SpeedrunError, match=r"teacher 'shapes-encoder' is trained by prepare .* 'my-images' has none"):
        load_submission(REPO_ROOT / "submissions" / "repa-shapes").track(track_file)


def test_the_leaderboard_readme_is_never_written_with_a_track_file(own: Path) -> None:
    for flags in ({"md": True}, {"check": True}):
        with pytest.raises(SpeedrunError, match="ranks the repository's tracks, not .*my-images.toml"):
            leaderboard_command(track="my-images.toml", repo_root=own, **flags)
