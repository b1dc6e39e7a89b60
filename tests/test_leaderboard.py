"""``speedrun leaderboard``: statistics against scipy, ranking, status, drift check, HTML page."""

from __future__ import annotations

import io
import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from results_helpers import KEY, seal, sign_result, write_keys
from rich.console import Console
from scipy import ndimage, stats

from speedrun.errors import SpeedrunError
from speedrun.leaderboard import (
    HEADER,
    README,
    SELF_REPORTED,
    build_board,
    detectable_change,
    leaderboard_command,
    render_markdown,
)
from speedrun.paths import data_root
from speedrun.results import finalize, write_result
from speedrun.tracks import TRACKS_DIR, load_track

CHROMIUM = Path("/usr/bin/chromium")


SMOKE_SEEDS = 3  # the fixture's smoke track requires 3 seeds (the real one: 1), so that statistics exist
H100, H200 = "NVIDIA H100 80GB HBM3", "NVIDIA H200"
SOFTWARE = {"python": "3.11", "torch": "2", "triton": None, "cuda": None, "packages_sha256": "0" * 64}


def add_result(
    root: Path, name: str, seed: int, fid: float | None, *, track_id: str = "smoke", status: str = "ok",
    bps: float = 4.0, clock_s: float = 3600.0, signed: bool = True, evals: int = 2, card: str = H100, torch: str = "2",
) -> Path:
    """A results file verify accepts (real hashes; on one ``card``, with ``torch``), signed by the reproduction
    unless ``signed`` is False, with the last ``evals`` of its two evaluations; ``fid`` None: the metric was
    unavailable."""
    folder = root / "submissions" / name
    if not (folder / "submission.toml").exists():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "submission.toml").write_text(
            f'name = "{name}"\nauthors = ["T"]\ntracks = ["smoke", "tiny"]\ndescription = "x"\n'
        )
    track = load_track(track_id, root / "tracks")
    metrics = {"fid": fid, "val_loss": 0.4 + 0.01 * seed, "prompt_adherence": None if fid is None else 1 / fid}
    metrics = {k: metrics.get(k, 0.25) for k in track.eval.metrics}  # cmmd, dino_mmd: 0.25
    unavailable = {k: "not measured" for k, v in metrics.items() if v is None}
    steps = track.train.steps if status == "ok" else 7
    evals = [
        {"step": steps // 2, "metrics": {**metrics, "fid": None if fid is None else fid + 5}, "samples": 32},
        {"step": steps, "metrics": metrics, "unavailable": unavailable, "samples": 32},
    ][2 - evals :] if status == "ok" else []  # fmt: skip
    fields = {
        "status": status, "steps": steps, "metrics": metrics if status == "ok" else {}, "evals": evals,
        "unavailable": unavailable if status == "ok" else {},
        "failure": None if status == "ok" else {"step": 7, "reason": "non-finite loss at step 7"},
        "val_loss_curve": [{"step": 10, "val_loss": 0.6 + 0.01 * seed}, {"step": 20, "val_loss": 0.45}],
    }  # fmt: skip
    path = seal(
        folder, track_id, seed, tracks_dir=root / "tracks", data_dir=data_root(None), bps=bps, clock_s=clock_s,
        card=card, fid=fid, software=SOFTWARE | {"torch": torch}, **fields,
    )  # fmt: skip
    if signed:
        sign_result(root, path, KEY)
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(TRACKS_DIR, root / "tracks")
    smoke = root / "tracks" / "smoke.toml"
    smoke.write_text(smoke.read_text().replace("seeds_required = 1", f"seeds_required = {SMOKE_SEEDS}"))
    write_keys(root, {KEY: "active"})
    return root


FIDS = {"baseline": [12.0, 12.5, 14.0, 15.0], "alpha": [10.0, 11.0, 13.0], "solo": [9.0]}
BPS = {"baseline": [4.0, 4.2, 3.9, 4.1], "alpha": [5.0, 5.5, 5.2], "solo": [6.0]}


def fill(root: Path) -> Path:
    for name, fids in FIDS.items():
        for seed, (fid, bps) in enumerate(zip(fids, BPS[name])):
            add_result(root, name, seed, fid, bps=bps, clock_s=1800.0 * (seed + 1))
    return root


@pytest.fixture
def filled(root: Path) -> Path:
    return fill(root)


def row(table, name: str):
    return table.set_index("submission").loc[name]


def test_mean_ci_and_paired_p_equal_scipy(filled: Path) -> None:
    """Δ and p compare alpha's seeds 0-2 with the baseline's same seeds (its seed 3 has no partner)."""
    table = build_board(filled).tables["smoke"]
    for column, values in (("metric:fid", FIDS), ("batches_per_second", BPS)):
        a, b = np.array(values["alpha"]), np.array(values["baseline"][:3])
        r = row(table, "alpha")
        assert r[f"{column}:mean"] == pytest.approx(a.mean(), rel=1e-12)
        half = stats.t.ppf(0.975, len(a) - 1) * a.std(ddof=1) / math.sqrt(len(a))
        assert r[f"{column}:ci"] == pytest.approx(half, rel=1e-12)
        assert r[f"{column}:delta"] == pytest.approx((a - b).mean(), rel=1e-12)
        assert r[f"{column}:p"] == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-12)
        assert r[f"{column}:n"] == len(a)
    hours = np.array([0.5, 1.0, 1.5])
    assert row(table, "alpha")["gpu_hours:ci"] == pytest.approx(
        stats.t.ppf(0.975, 2) * hours.std(ddof=1) / math.sqrt(3), rel=1e-12
    )
    # One seed: no interval, no test; the baseline is not compared with itself.
    solo, base = row(table, "solo"), row(table, "baseline")
    assert math.isnan(solo["metric:fid:ci"]) and math.isnan(solo["metric:fid:p"])
    assert solo["metric:fid:delta"] == pytest.approx(9.0 - FIDS["baseline"][0])
    assert math.isnan(base["metric:fid:delta"])
    md = render_markdown(build_board(filled))
    solo_line = next(line for line in md.splitlines() if "[solo]" in line)
    assert "9 ± –" in solo_line and "(p –)" in solo_line


@pytest.mark.parametrize("metric, direction", [("fid", "min"), ("prompt_adherence", "max")])
def test_ranking_follows_the_metrics_direction(root: Path, metric: str, direction: str) -> None:
    """prompt_adherence is 1 / fid here: the highest adherence ranks first as the lowest fid does."""
    smoke = root / "tracks" / "smoke.toml"
    ranking = f'metric = "{metric}"\ndirection = "{direction}"'
    text = smoke.read_text().replace('metric = "fid"\ndirection = "min"', ranking)
    smoke.write_text(text)  # before the results, which record the track's hash
    table = build_board(fill(root)).tables["smoke"]
    assert table["submission"].tolist() == ["alpha", "baseline", "solo"]
    # In mean order, but no paired test separates them; solo has 1 of the 3 seeds required.
    assert table["rank"].tolist()[:2] == [1, 1] and math.isnan(table["rank"].iloc[2])


def test_only_a_significant_paired_difference_opens_a_rank(filled: Path) -> None:
    """'far' is the baseline plus 50 on each seed, give or take 0.1: paired p < 0.01 against the leader,
    so it ranks apart ('solo', one seed, is removed: nothing can be told apart from a single seed)."""
    shutil.rmtree(filled / "submissions" / "solo")
    for seed, fid in enumerate(FIDS["baseline"]):
        add_result(filled, "far", seed, fid + 50 + 0.1 * (-1) ** seed)
    table = build_board(filled).tables["smoke"]
    assert table["submission"].tolist() == ["alpha", "baseline", "far"]
    assert table["rank"].tolist() == [1, 1, 3]
    far = row(table, "far")
    assert far["metric:fid:p"] < 0.01 and far["metric:fid:delta"] == pytest.approx(50 + 0.1 / SMOKE_SEEDS)
    far_line = next(line for line in render_markdown(build_board(filled)).splitlines() if "[far]" in line)
    assert "| +50* (p " in far_line


@pytest.mark.parametrize("card, torch", [(H100, "2"), (H200, "2"), (H100, "2.1")])
def test_an_entry_pairs_with_the_baseline_only_in_its_setup(filled: Path, card: str, torch: str) -> None:
    """'near' is the baseline minus 5 on each seed, give or take 0.1. On the baseline's card and torch that is a
    starred difference and a rank of its own; on another card or torch its seeds do not pair with the baseline's
    (either moves a seed's scores like a change of seed): no Δ, no speedup, not ranked, and its differences do
    not enter the smallest change the track detects."""
    shutil.rmtree(filled / "submissions" / "solo")
    smoke = load_track("smoke", filled / "tracks")
    detectable = detectable_change(build_board(filled).frame, smoke)
    for seed, fid in enumerate(FIDS["baseline"][:SMOKE_SEEDS]):
        add_result(filled, "near", seed, fid - 5 + 0.1 * (-1) ** seed, bps=9.0, card=card, torch=torch)
    board = build_board(filled)
    table, near = board.tables["smoke"], row(board.tables["smoke"], "near")
    if (card, torch) == (H100, "2"):
        assert near["status"] == "ok" and near["rank"] == 1 and near["metric:fid:p"] < 0.01
        assert row(table, "alpha")["rank"] == 2 and near["speedup"].steps[0] > 1
        assert detectable_change(board.frame, smoke) != detectable
        return
    assert near["status"] == (
        f"not paired: made on '{card}' (cuda) with CPU 'x86_64', torch {torch}, "
        f"the baseline on '{H100}' (cuda) with CPU 'x86_64', torch 2"
    )
    assert math.isnan(near["rank"]) and near.isna()["speedup"]
    for q in ("metric:fid", "batches_per_second"):
        assert math.isnan(near[f"{q}:delta"]) and math.isnan(near[f"{q}:p"])
    assert near["metric:fid:n"] == SMOKE_SEEDS  # its own mean and interval stay
    assert table["rank"].tolist()[:2] == [1, 1] and table["submission"].tolist()[:2] == ["alpha", "baseline"]
    assert detectable_change(board.frame, smoke) == detectable
    line = next(line for line in render_markdown(board).splitlines() if "[near]" in line)
    assert line.split(" | ")[5:8] == ["–", "–", f"{near['metric:fid:mean']:.4g} ± {near['metric:fid:ci']:.2g}"]
    assert line.split(" | ")[8] == "–"
    out = io.StringIO()  # the terminal wraps the long status rather than leave it out
    leaderboard_command(track="smoke", console=Console(file=out, width=100), repo_root=filled)
    assert "not paired: made on" in out.getvalue() and max(map(len, out.getvalue().splitlines())) <= 100


def test_entries_made_on_two_machine_models_are_never_told_apart(root: Path) -> None:
    """With no baseline to pair with, 'far' (50 worse on every seed, give or take 0.1) ranks apart from 'alpha'
    on alpha's card, and shares its rank on another: a paired test across machine models is no evidence."""
    for card, ranks in ((H100, [1, 2]), (H200, [1, 1])):
        shutil.rmtree(root / "submissions", ignore_errors=True)
        for seed, fid in enumerate(FIDS["alpha"]):
            add_result(root, "alpha", seed, fid)
            add_result(root, "far", seed, fid + 50 + 0.1 * (-1) ** seed, card=card)
        table = build_board(root).tables["smoke"]
        assert table["submission"].tolist() == ["alpha", "far"] and table["rank"].tolist() == ranks, card


def test_diverged_and_incomplete_entries_are_listed_not_ranked(filled: Path) -> None:
    add_result(filled, "wild", 0, 1.0)  # the best fid of all, but seed 1 diverged
    add_result(filled, "wild", 1, None, status="diverged")
    tiny = load_track("tiny", filled / "tracks")
    add_result(filled, "few", 0, 5.0, track_id="tiny")  # tiny needs more seeds
    board = build_board(filled)
    smoke = board.tables["smoke"]
    assert smoke["submission"].tolist() == ["alpha", "baseline", "solo", "wild"]
    wild = row(smoke, "wild")
    assert math.isnan(wild["rank"]) and wild["status"] == "diverged (seed 1)" and wild["seeds"] == "2"
    few = row(board.tables["tiny"], "few")
    assert math.isnan(few["rank"]) and few["status"] == f"incomplete (1/{tiny.rules.seeds_required} seeds)"
    line = next(line for line in render_markdown(board).splitlines() if "[wild]" in line)
    assert line.startswith("| – | [wild](../submissions/wild/) | diverged (seed 1) | 2 |")


def test_an_entry_is_ranked_only_on_seeds_0_to_n_with_the_ranking_metric(filled: Path) -> None:
    tiny = load_track("tiny", filled / "tracks")
    need = tiny.rules.seeds_required
    for seed in range(need):  # every seed ok, but fid on one of them only (the others unavailable)
        add_result(filled, "sparse", seed, 50.0 if seed == 0 else None, track_id="tiny")
    for seed in range(need + 1):
        if seed != 1:  # seed 1 left out: the kept seeds could be the best of more runs
            add_result(filled, "picked", seed, 1.0, track_id="tiny")
    table = build_board(filled).tables["tiny"]
    assert row(table, "sparse")["status"] == f"fid on 1/{need} seeds"
    assert row(table, "picked")["status"] == "seed 1 missing"
    assert table["rank"].isna().all()


def test_only_what_verify_accepts_is_shown(filled: Path) -> None:
    """A hidden folder, a symbolic link to a submission and results files that name another submission or
    seed than their path are left out with verify's reasons, and an entry holding one is not ranked."""
    subs = filled / "submissions"
    shutil.copytree(subs / "alpha" / "results", subs / ".shadow" / "results")
    (subs / "alpha-again").symlink_to(subs / "alpha", target_is_directory=True)
    alpha, base = subs / "alpha" / "results" / "smoke", subs / "baseline" / "results" / "smoke"
    shutil.copy(alpha / "seed0.json", alpha / "seed7.json")
    shutil.copy(subs / "solo" / "results" / "smoke" / "seed0.json", base / "seed9.json")
    board = build_board(filled)
    table = board.tables["smoke"]
    assert table["submission"].tolist() == ["alpha", "baseline", "solo"] and table["rank"].isna().all()
    assert row(table, "alpha")["seeds"] == "3" and row(table, "alpha")["metric:fid:n"] == 3
    assert row(table, "alpha")["status"] == "rejected by verify (seeds)"
    for path, field in (
        ("submissions/.shadow", "(path)"), ("submissions/alpha-again", "(path)"),
        ("submissions/alpha/results/smoke/seed7.json", "run_id"),
        ("submissions/baseline/results/smoke/seed9.json", "submission"),
        ("submissions/baseline/results/smoke/seed9.json", "run_id"),
    ):  # fmt: skip
        assert any(line.startswith(f"{path}: field '{field}'") for line in board.skipped), (path, field)


def test_markdown_is_deterministic_and_check_detects_a_hand_edit(filled: Path) -> None:
    console = Console(file=io.StringIO())
    assert leaderboard_command(check=True, console=console, repo_root=filled) == 1  # not generated yet
    assert leaderboard_command(md=True, console=console, repo_root=filled) == 0
    readme = filled / README
    text = readme.read_text()
    assert text.startswith(HEADER + "\n")
    assert text == render_markdown(build_board(filled))
    assert leaderboard_command(check=True, console=console, repo_root=filled) == 0
    readme.write_text(text.replace("| 1 | [alpha]", "| 1 | [solo]"))
    assert leaderboard_command(check=True, console=console, repo_root=filled) == 1


@pytest.mark.parametrize(("flags", "named"), [({"md": True}, "--md"), ({"html": Path("page")}, "--html")])
def test_check_with_a_writing_flag_is_refused(filled: Path, flags: dict, named: str) -> None:
    # --check writes nothing: a combined --md or --html would otherwise be skipped without a word.
    with pytest.raises(SpeedrunError, match=f"--check writes nothing, so it cannot be combined with {named}"):
        leaderboard_command(check=True, console=Console(file=io.StringIO()), repo_root=filled, **flags)
    assert not (filled / README).exists()


def test_edited_results_are_skipped_and_submission_code_never_imported(filled: Path) -> None:
    marker = filled / "imported"
    (filled / "submissions" / "alpha" / "components.py").write_text(f"open({str(marker)!r}, 'w')\n")
    path = filled / "submissions" / "solo" / "results" / "smoke" / "seed0.json"
    data = json.loads(path.read_text())
    data["metrics"]["fid"] = 0.1
    path.write_text(json.dumps(data))
    board = build_board(filled)
    assert "solo" not in board.tables["smoke"]["submission"].tolist()
    assert any("submissions/solo/results/smoke/seed0.json" in s and "edited" in s for s in board.skipped)
    assert not marker.exists()


def test_html_page_is_self_contained(filled: Path, tmp_path: Path) -> None:
    add_result(filled, "wild", 0, None, status="diverged")
    for name, fid in (("one-eval", 30.0), ("one-eval-too", 40.0)):  # tiny: both seeds evaluated once, at one step
        for seed in range(2):
            add_result(filled, name, seed, fid + seed, track_id="tiny", evals=1)
    grid = filled / "submissions" / "alpha" / "results" / "smoke" / "seed0.png"
    from PIL import Image

    Image.new("RGB", (8, 8), (200, 30, 30)).save(grid)
    Image.new("RGB", (8, 8), (30, 200, 30)).save(grid.with_name("seed1.png"))
    out = tmp_path / "site"
    assert leaderboard_command(html=out, console=Console(file=io.StringIO()), repo_root=filled) == 0
    page = (out / "index.html").read_text()
    for name in ("baseline", "alpha", "solo", "wild"):
        assert f">{name}</a>" in page
    assert "<svg" in page and "<style>" in page
    assert page.count("data:image/png;base64,") == 2 and "alpha / seed0" in page and "alpha / seed1" in page
    for external in ("<link", "<script", 'src="http', "src='http", 'href="http', "url(http", "@import"):
        assert external not in page
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium to render the page")
    shot = tmp_path / "page.png"
    subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
         "--window-size=1400,6000", (out / "index.html").as_uri()],
        check=True, capture_output=True, timeout=60,
    )
    with Image.open(shot) as img:
        rgb = np.asarray(img.convert("RGB")).astype(int)
    pixels = rgb.reshape(-1, 3)
    assert len(np.unique(pixels @ [65536, 256, 1])) > 16  # not a blank page
    for colour in ((200, 30, 30), (30, 200, 30)):  # both of alpha's grids, drawn across the page
        assert (np.abs(pixels - colour).max(axis=1) < 8).sum() > 1200 * 1200, colour
    # Each chart panel is a dark frame; the coloured data inside it spans more than a column of dots.
    frames = ndimage.find_objects(ndimage.label(rgb.max(axis=2) < 128)[0])
    panels = [(r, c) for r, c in frames if r.stop - r.start > 100 and c.stop - c.start > 150]
    assert len(panels) == 6 + 4  # smoke: val_loss (trainer) and 5 metrics; tiny: and 3
    for r, c in panels:
        ink = np.flatnonzero(np.ptp(rgb[r.start + 3 : r.stop - 3, c.start + 3 : c.stop - 3], axis=2).max(axis=0) > 60)
        assert ink.size and ink[-1] - ink[0] > (c.stop - c.start) / 2, (r, c)


def test_no_results_renders_every_track_empty(root: Path) -> None:
    md = render_markdown(build_board(root))
    assert md.count("No results yet.") == len(list((root / "tracks").glob("*.toml")))


@pytest.mark.parametrize("width", [80, 120])
def test_terminal_table_keeps_rank_entry_and_ranking_metric_at_narrow_widths(filled: Path, width: int) -> None:
    out = io.StringIO()
    assert leaderboard_command(console=Console(file=out, width=width), repo_root=filled) == 0
    text = out.getvalue()
    lines = text.splitlines()
    assert max(map(len, lines)) <= width
    header = next(line for line in lines if "submission" in line)
    assert {"rank", "submission", "fid"} <= set(header.split())
    table = build_board(filled).tables["smoke"]
    for name in FIDS:
        line = next(line for line in lines if f" {name} " in f" {line} ")
        mean = row(table, name)["metric:fid:mean"]
        assert f"{mean:.4g}" in line, line
    assert f"left out at {width} columns:" in text


def test_the_teacher_an_entry_aligned_to_is_named(root: Path) -> None:
    for seed in range(2):
        add_result(root, "baseline", seed, 12.0 + seed)
        path = add_result(root, "aligned", seed, 11.0 + seed)
        data = json.loads(path.read_text())
        data["provenance"]["teachers"] = {"repa-teacher": "shapes-encoder@0123456789ab"}
        write_result(path, finalize({k: v for k, v in data.items() if k != "digest"}))
        sign_result(root, path, KEY)
    lines = render_markdown(build_board(root)).splitlines()
    header = next(line for line in lines if line.startswith("| rank |"))
    assert header.split(" | ")[4] == "teacher"
    assert next(line for line in lines if "[aligned]" in line).split(" | ")[4] == "shapes-encoder@0123456789ab"
    assert next(line for line in lines if "[baseline]" in line).split(" | ")[4] == "–"


def test_one_seed_slowed_by_a_busy_machine_does_not_skew_the_wall_clock_ratio(root: Path) -> None:
    """Speed is the recipe's: each side's seconds per step is its median over seeds."""
    for seed, bps in enumerate([4.0, 4.1, 1.5]):  # the baseline's seed 2 ran beside another job
        add_result(root, "baseline", seed, 12.0 + seed, bps=bps)
        add_result(root, "same", seed, 12.0 + seed, bps=4.05)
    found = row(build_board(root).tables["smoke"], "same")["speedup"]
    assert found.steps[0] == pytest.approx(1.0)
    assert found.wall[0] == pytest.approx(4.05 / 4.0)  # the medians' ratio, on every seed


def test_the_written_file_is_named_as_it_opens_from_the_current_folder(filled: Path, tmp_path, monkeypatch) -> None:
    (elsewhere := tmp_path / "elsewhere").mkdir()
    absolute = str((filled / README).resolve())
    places = ((filled, "leaderboard/README.md"), (filled.parent, "repo/leaderboard/README.md"), (elsewhere, absolute))
    for cwd, shown in places:
        monkeypatch.chdir(cwd)
        out = io.StringIO()
        assert leaderboard_command(md=True, console=Console(file=out, width=300), repo_root=filled) == 0
        assert out.getvalue().splitlines()[-1] == f"wrote {shown}"


def test_a_track_with_only_self_reported_results_says_none_is_reproduced(root: Path, tmp_path: Path) -> None:
    """A track no maintainer has re-run an entry of yet (prx-256 today): each rendering says that nothing is
    reproduced, then lists the self-reported entries."""
    write_keys(root, {KEY: "active"}, reproduces=("tiny",))
    for seed in range(SMOKE_SEEDS):
        add_result(root, "mine", seed, 5.0 + seed, signed=False)
    board = build_board(root)
    assert board.tables["smoke"].empty and row(board.self_reported["smoke"], "mine")["status"] == "ok"
    md = render_markdown(board, ["smoke"])
    out, site = io.StringIO(), tmp_path / "site"
    assert leaderboard_command(track="smoke", console=Console(file=out, width=120), repo_root=root) == 0
    assert leaderboard_command(track="smoke", html=site, console=Console(file=io.StringIO()), repo_root=root) == 0
    page = (site / "index.html").read_text()
    for text, none, mine in ((md, "No reproduced results yet.", "[mine]"), (out.getvalue(), "No reproduced", " mine "),
                             (page, "<p>No reproduced results yet.</p>", ">mine</a>")):  # fmt: skip
        assert text.index(none) < text.index(mine)


def test_self_reported_results_are_listed_apart_and_never_ranked(root: Path) -> None:
    """On a track no maintainer re-runs (here smoke, as prx-256 for now), unsigned results are shown below the
    ranking, compared with the baseline, never ranked, however good."""
    write_keys(root, {KEY: "active"}, reproduces=("tiny",))
    for seed in range(SMOKE_SEEDS):
        add_result(root, "baseline", seed, 12.0 + seed)
        add_result(root, "mine", seed, 5.0 + seed, signed=False)
    board = build_board(root)
    assert board.tables["smoke"]["submission"].tolist() == ["baseline"]
    mine = row(board.self_reported["smoke"], "mine")
    assert math.isnan(mine["rank"]) and mine["status"] == "ok" and mine["metric:fid:delta"] == pytest.approx(-7.0)
    md = render_markdown(board, ["smoke"])
    assert md.index("| 1 | [baseline]") < md.index(SELF_REPORTED) < md.index("| – | [mine]")
