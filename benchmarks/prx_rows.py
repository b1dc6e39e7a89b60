"""A prepared train split at the prx-256 track's row sizes, for benchmarks that read real shards.

The rows hold random values: float16 Flux latents 16 x 32 x 32 and T5Gemma embeddings 256 x 2304
(~1.2 MB a row), zero past a per-row text length drawn in [16, 256], laid out as ``speedrun prepare``
writes shards. The real dataset needs the Flux VAE and T5Gemma weights; the loader's cost does not
depend on the values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from speedrun.data.shards import Manifest, SplitDataset, SplitEntry, TextEncoderInfo, write_shard
from speedrun.data.text import T5GemmaEncoder

LATENT_SHAPE = (16, 32, 32)  # Flux VAE: 16 channels, 8x downsampling of 256 x 256
TEXT_TOKENS, TEXT_DIM = 256, T5GemmaEncoder.dim  # the prx-256 track's text_max_tokens


def prx_rows_split(root: Path, examples: int, per_shard: int = 128) -> SplitDataset:
    """Write ``examples`` rows under ``root/train`` and open them as the ``train`` split."""
    rng = np.random.default_rng(0)
    shards = []
    for start in range(0, examples, per_shard):
        n = min(per_shard, examples - start)
        mask = np.arange(TEXT_TOKENS)[None, :] < rng.integers(16, TEXT_TOKENS + 1, n)[:, None]
        text = rng.standard_normal((n, TEXT_TOKENS, TEXT_DIM), dtype=np.float32) * mask[..., None]
        arrays = {
            "x": rng.standard_normal((n, *LATENT_SHAPE), dtype=np.float32).astype(np.float16),
            "text": text.astype(np.float16),
            "mask": mask,
            "index": np.arange(start, start + n, dtype=np.int64),
        }
        shards.append(write_shard(root / "train", f"shard-{len(shards):05d}", start, arrays, {}))
    entry = SplitEntry(num_examples=examples, definition_hash="bench", shards=shards)
    encoder = TextEncoderInfo(
        key="t5gemma", id="bench", revision="bench", dim=TEXT_DIM, max_tokens=TEXT_TOKENS, precision="float32"
    )
    manifest = Manifest(
        format_version=1, dataset_hash="bench", definition={}, representation="latents", image_size=256,
        x_shape=LATENT_SHAPE, text_encoder=encoder, vae=None, null_text={}, splits={"train": entry},
    )  # fmt: skip
    return SplitDataset(root, "train", entry, manifest)
