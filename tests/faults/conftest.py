"""Fixtures of the fault tests: an uninterrupted reference run (subprocess) and a small in-process track."""

from __future__ import annotations

import pytest
from fault_helpers import copy_submission, run, small_track, speedrun_run_cmd, subprocess_env, train_in_process


@pytest.fixture(scope="session")
def fault_cache(tmp_path_factory: pytest.TempPathFactory):
    """One SPEEDRUN_CACHE_DIR (reference statistics) for every subprocess of the session."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def reference_run(smoke_data_root, fault_cache, tmp_path_factory: pytest.TempPathFactory):
    """`speedrun run` of a copy of submissions/baseline on smoke, seed 0, never interrupted."""
    root = tmp_path_factory.mktemp("reference")
    sub = copy_submission(root)
    proc = run(speedrun_run_cmd(sub, root / "runs", smoke_data_root), subprocess_env(fault_cache))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {
        "results": sub / "results" / "smoke" / "seed0.json",
        "run_dir": root / "runs" / "baseline" / "smoke" / "seed0",
    }


@pytest.fixture(scope="session")
def small_reference(smoke_data_root, tmp_path_factory: pytest.TempPathFactory):
    """The uninterrupted in-process run of ``small_track()``: its run directory."""
    run_dir = tmp_path_factory.mktemp("small-reference") / "run"
    _, summary = train_in_process(small_track(), smoke_data_root, run_dir)
    assert summary.status == "ok" and summary.steps == 6
    return run_dir


@pytest.fixture(autouse=True)
def one_torch_thread():
    """In-process training on one thread: bit-reproducible, and on a shared 2-core machine several
    times faster than competing OpenMP threads."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
