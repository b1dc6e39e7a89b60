"""Test-wide settings: offline hub, CPU threads, deterministic torch."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

# Triton decides compile-or-interpret when triton.language is first imported, which other test
# modules trigger through torch._dynamo; so it is set here, before any collection. Without a GPU
# the Triton kernels can only run interpreted (fp32/fp16 correct, bf16 tl.dot is not).
if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

from speedrun.tracks import Track, load_track  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def private_harness_dirs(tmp_path_factory: pytest.TempPathFactory):
    """Runs, data and reference statistics of code under test (and of the subprocesses it starts)
    go to temporary folders, never into the checkout's ./runs, ./data or ./cache."""
    with pytest.MonkeyPatch.context() as mp:
        for name in ("SPEEDRUN_CACHE_DIR", "SPEEDRUN_RUNS_DIR", "SPEEDRUN_DATA_DIR"):
            mp.setenv(name, str(tmp_path_factory.mktemp(name.removeprefix("SPEEDRUN_").lower())))
        yield


@pytest.fixture(scope="session")
def smoke_data_root(tmp_path_factory: pytest.TempPathFactory):
    """The smoke track's data prepared once per test session with the real offline MiniLM."""
    from speedrun.data.prepare import prepare

    root = tmp_path_factory.mktemp("data")
    prepare(load_track("smoke"), root, progress=False)
    return root


def _track_variant(base: str = "smoke", **sections: dict) -> Track:
    data = load_track(base).model_dump(mode="python")
    for section, updates in sections.items():
        data[section] = {**data[section], **updates}
    return Track.model_validate(data)


@pytest.fixture
def track_variant():
    """``track_variant(base="smoke", train={"steps": 6})``: a track with some fields replaced.

    Only for tests: real runs take tracks from tracks/*.toml.
    """
    return _track_variant


@pytest.fixture
def python314_path_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """``Path.exists``, ``is_file`` and ``is_dir`` as Python 3.14 has them: False on any OSError, a name
    too long included (3.11 to 3.13 raise it), so code relying on them would read such a name as missing."""
    from pathlib import Path

    for name in ("exists", "is_file", "is_dir"):
        real = getattr(Path, name)

        def quiet(self, *args, _real=real, **kwargs):
            try:
                return _real(self, *args, **kwargs)
            except OSError:
                return False

        monkeypatch.setattr(Path, name, quiet)


@pytest.fixture
def read_only(monkeypatch: pytest.MonkeyPatch):
    """``read_only(folder)``: from then on the harness's folder checks (``speedrun.paths``) find
    ``folder`` may be entered but not written. os.access stands in for the permission bits: tests
    run as root here, who may write anywhere."""
    from pathlib import Path

    def deny_writes(folder: Path) -> None:
        monkeypatch.setattr("speedrun.paths.os.access", lambda path, mode: Path(path) != folder or not mode & os.W_OK)

    return deny_writes
