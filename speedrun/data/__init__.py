"""Data: the shard format and loader, datasets, text encoders, the VAE and ``prepare``.

Heavy libraries (transformers, diffusers, datasets) are imported only when a model or an HF
dataset is actually loaded, so importing this package stays cheap. ``prepare`` is the module
``speedrun.data.prepare``; its entry point is ``speedrun.data.prepare.prepare``.
"""

from speedrun.data.adherence import parse_caption, score, score_batch, score_caption
from speedrun.data.loader import Batch, Loader, from_uint8, load_batch, to_uint8
from speedrun.data.prepare import dataset_dir
from speedrun.data.shapes import ShapeSpec, split_definition_hash
from speedrun.data.shards import PreparedDataset, SplitDataset, open_dataset, verify
from speedrun.data.text import TEXT_ENCODERS, TextEncoder, get_text_encoder
from speedrun.data.vae import FluxVAE, load_flux_vae, random_init_vae

__all__ = [
    "TEXT_ENCODERS",
    "Batch",
    "FluxVAE",
    "Loader",
    "PreparedDataset",
    "ShapeSpec",
    "SplitDataset",
    "TextEncoder",
    "dataset_dir",
    "from_uint8",
    "get_text_encoder",
    "load_batch",
    "load_flux_vae",
    "open_dataset",
    "parse_caption",
    "random_init_vae",
    "score",
    "score_batch",
    "score_caption",
    "split_definition_hash",
    "to_uint8",
    "verify",
]
