"""Throughput of the data path: shapes rendering, adherence scoring, text encoding, the loader.

    python benchmarks/bench_data.py [--examples 2000] [--batch 32] [--minilm]

Prints one row per stage (items per second, wall clock). The loader row uses a prepared copy of
the smoke track's shape with a small random-init text encoder (the loader's cost does not depend
on the embedding values); ``--minilm`` adds the real MiniLM's caption throughput, which bounds
``speedrun prepare`` for shapes tracks.

The ``prx-256 rows`` rows read shards of the prx-256 track's row sizes (``prx_rows.py``: ~1.2 MB a
row, cached by the OS after a first epoch) on the CPU: reading a batch alone, then how long
``next(loader)`` takes without and with prefetch when a ``--step-ms`` sleep stands in for each
GPU step (the sleep releases the GIL as a CUDA synchronisation does); "wall s" is the sum over the
calls. Without a GPU the float32 conversion of the batch still runs on the host inside
``next(loader)`` here; a CUDA run does it on the device.

    python benchmarks/bench_data.py --prx-examples 512 --step-ms 100
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from prx_rows import prx_rows_split
from rich.console import Console
from rich.table import Table

from speedrun.data import adherence, shapes
from speedrun.data.loader import Loader, host_rows
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


def prx_rows(examples: int, batch: int, step_ms: float) -> list[tuple[str, str, float, float]]:
    """Rows for the prx-256-sized loader: a batch read alone, then the time ``next(loader)`` takes
    between simulated steps (the time a step waits for its batch), without and with prefetch."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        split = prx_rows_split(Path(tmp), examples)
        steps = examples // batch
        warm = Loader(split, batch, seed=1)
        for _ in range(steps):  # one epoch, so every row is in the page cache
            next(warm)
        order = Loader(split, batch, seed=0)
        batches = [order.indices(k * batch, batch) for k in range(steps)]
        rate, seconds = _rate(steps, lambda: [host_rows(split, i) for i in batches])
        rows.append((f"prx-256 rows, read batch {batch}", "batches", rate, seconds))
        for name, prefetch in (("", False), (" prefetch", True)):
            loader = Loader(split, batch, seed=0, prefetch=prefetch)
            waits = []
            for _ in range(2 * steps):
                start = time.perf_counter()
                next(loader)
                waits.append(time.perf_counter() - start)
                time.sleep(step_ms / 1000)
            loader.close()
            median = statistics.median(waits[2:])
            label = f"prx-256 rows, next(){name}, {step_ms:g} ms steps"
            rows.append((label, "batches", 1 / median, sum(waits)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000, help="examples rendered and scored")
    parser.add_argument("--batch", type=int, default=32, help="loader global batch")
    parser.add_argument("--minilm", action="store_true", help="also time the real MiniLM encoder")
    parser.add_argument("--prx-examples", type=int, default=512, help="prx-256-sized rows written (1.2 MB each)")
    parser.add_argument("--step-ms", type=float, default=100.0, help="simulated training step around the loader")
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
    rows += prx_rows(args.prx_examples, args.batch, args.step_ms)

    table = Table(title="speedrun data throughput")
    for column in ("stage", "unit", "per second", "wall s"):
        table.add_column(column)
    for stage, unit, rate, seconds in rows:
        table.add_row(stage, unit, f"{rate:,.0f}", f"{seconds:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
