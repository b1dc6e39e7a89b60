"""The compute functions of ``speedrun.metrics``: each scores one evaluation's samples (or its denoiser) and
writes into the report's sections. Feature distances compare with cached reference statistics."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from speedrun.errors import SpeedrunError
from speedrun.tracks import Track

# Images per extractor call here; the extractor itself always runs its fixed batch size.
FEATURE_CHUNK = 500


@dataclass(frozen=True)
class EvalInputs:
    """What a metric may read: the track, the samples (uint8 (n, H, W, 3)) and their prompts, the reference
    split and its pinned hash, the sampler (its ``model_fn``), the prepared data, device and cache folder."""

    track: Track
    images: np.ndarray
    captions: list[str]
    reference: Any
    reference_hash: str | None
    sampler: Any
    data: Any
    device: torch.device
    cache: Path
    protocol_hash: str


def feature_distance(inputs: EvalInputs, report: dict[str, dict], metric: str) -> None:
    """FID (Fréchet distance) or CMMD / DINO-MMD (MMD) of the samples against the reference split, in the
    metric's extractor's features; unavailable (with the reason) when its weights are not here."""
    from speedrun.eval.features import get_extractor
    from speedrun.eval.fid import fid_from_moments
    from speedrun.eval.mmd import mmd
    from speedrun.eval.stats import StreamingMoments, images_sha256, reference_stats

    track, images, ref_split = inputs.track, inputs.images, inputs.reference
    random_init, batch = track.eval.extractors == "random-init", track.eval.batch_size
    try:
        extractor = get_extractor(metric, device=inputs.device, random_init=random_init, batch_size=batch)
    except SpeedrunError as exc:
        report["metrics"][metric] = None
        report["unavailable"][metric] = str(exc)
        return
    n_ref = len(ref_split)
    # MMD reads features; exact FD needs those of each side with no more samples than dimensions.
    keep_ref, keep_gen = (metric != "fid" or n - 1 < extractor.dim for n in (n_ref, len(images)))
    key = {"metric": metric, "protocol": inputs.protocol_hash, "n": n_ref}

    def chunks():  # the reference images, uint8, FEATURE_CHUNK at a time
        return (ref_split.images(np.arange(i, min(i + FEATURE_CHUNK, n_ref))) for i in range(0, n_ref, FEATURE_CHUNK))

    ref = reference_stats(chunks(), extractor, inputs.cache / "reference-stats", key, keep_features=keep_ref,
                          images_hash=inputs.reference_hash or images_sha256(chunks()))
    gen = StreamingMoments(extractor.dim, keep_features=keep_gen)
    for i in range(0, len(images), FEATURE_CHUNK):
        gen.update(extractor(images[i : i + FEATURE_CHUNK]))
    value = fid_from_moments(gen, ref) if metric == "fid" else mmd(gen.features, ref.features)
    report["metrics"][metric] = float(value)
    report["reference_stats_sha256"][metric] = ref.meta.get("key", "")
    report["extractor_weights"][extractor.id] = extractor.weights_sha256 or "random-init"


def prompt_adherence(inputs: EvalInputs, report: dict[str, dict], metric: str) -> None:
    """The mean fraction of each prompt's attributes its sample shows (shapes captions only)."""
    from speedrun.data.adherence import score_batch

    report["metrics"][metric] = float(score_batch(inputs.images, inputs.captions).mean())


def val_loss(inputs: EvalInputs, report: dict[str, dict], metric: str) -> None:
    """The denoiser's flow-matching loss on the fixed validation examples, timesteps and noise."""
    from speedrun.flow import validation_loss

    spec, device = inputs.track.eval.val_loss, inputs.device
    val = inputs.data.validation(spec.samples)
    with torch.no_grad():
        result = validation_loss(
            inputs.sampler.model_fn, val.x.to(device), val.text.to(device), val.text_mask.to(device),
            timesteps=spec.timesteps, seed=spec.seed, batch_size=inputs.track.eval.batch_size,
        )  # fmt: skip
    report["metrics"][metric] = float(result["overall"])
    report["details"]["val_loss_per_t"] = result["per_t"]


def score(inputs: EvalInputs, report: dict[str, dict]) -> None:
    """Every metric of the track, in its order, each timed into ``report["seconds"]``."""
    from speedrun.metrics import METRICS

    for name in inputs.track.eval.metrics:
        t0 = time.perf_counter()
        METRICS[name].load()(inputs, report, name)
        report["seconds"][name] = time.perf_counter() - t0
