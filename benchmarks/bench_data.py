"""Throughput of the data path: shapes rendering, adherence scoring, text encoding, the loader.

    python benchmarks/bench_data.py [--examples 2000] [--batch 32] [--minilm]

Prints one row per stage (items per second, wall clock). The loader row uses a prepared copy of
the smoke track's shape with a small random-init text encoder (the loader's cost does not depend
on the embedding values); ``--minilm`` adds the real MiniLM's caption throughput, which bounds
``speedrun prepare`` for shapes tracks.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from speedrun.data import adherence, shapes
from speedrun.data.loader import Loader
from speedrun.data.prepare import prepare
from speedrun.data.shards import open_dataset
from speedrun.data.text import get_text_encoder
from speedrun.tracks import load_track

# A MiniLM-shaped BERT small enough that preparing the loader benchmark's data is instant.
_SMALL_BERT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}


def _rate(count: int, fn) -> tuple[float, float]:
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    return count / seconds, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000, help="examples rendered and scored")
    parser.add_argument("--batch", type=int, default=32, help="loader global batch")
    parser.add_argument("--minilm", action="store_true", help="also time the real MiniLM encoder")
    args = parser.parse_args()

    rows = []
    for size in (32, 64):
        rate, seconds = _rate(args.examples, lambda s=size: shapes.examples("train", 0, args.examples, s))
        rows.append((f"render shapes {size}x{size}", "images", rate, seconds))
    images, captions, specs = shapes.examples("reference", 0, args.examples, 32)
    rate, seconds = _rate(args.examples, lambda: [adherence.score(i, s) for i, s in zip(images, specs)])
    rows.append(("adherence score 32x32", "images", rate, seconds))
    if args.minilm:
        encoder = get_text_encoder("minilm", 32)
        unique = list(dict.fromkeys(captions))[:1024]
        rate, seconds = _rate(len(unique), lambda: encoder.encode(unique))
        rows.append(("MiniLM encode (32 tokens)", "captions", rate, seconds))

    track = load_track("smoke")
    track = track.model_copy(update={"data": track.data.model_copy(update={"train_examples": 4096})})
    with tempfile.TemporaryDirectory() as tmp:
        encoder = get_text_encoder("minilm", track.data.text_max_tokens, random_init_config=_SMALL_BERT)
        root = prepare(track, Path(tmp), progress=False, text_encoder=encoder, examples_per_shard=1024)
        loader = Loader(open_dataset(root).split("train"), args.batch, seed=0)
        steps = 4096 // args.batch * 2
        rate, seconds = _rate(steps, lambda: [next(loader) for _ in range(steps)])
        rows.append((f"loader batch {args.batch} (random rows, 2 epochs)", "batches", rate, seconds))

    table = Table(title="speedrun data throughput")
    for column in ("stage", "unit", "per second", "wall s"):
        table.add_column(column)
    for stage, unit, rate, seconds in rows:
        table.add_row(stage, unit, f"{rate:,.0f}", f"{seconds:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
