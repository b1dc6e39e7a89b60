"""Training speed on a busy machine: the tiny trainer quiet, and beside a competing process that keeps both
cores busy, under OpenMP settings that decide how torch's threads wait (issue: a fair CPU share).

Each measurement is a fresh process (OpenMP reads its settings when torch loads) training the tiny track for
STEPS timed steps; its rate is steps / the sum of their step times, from ``train.jsonl``, so a measurement cut
by its timeout still reports the steps it took. The competitor is what a user runs beside a race: another
torch job whose two OpenMP threads multiply matrices without pause.

    python benchmarks/bench_contention.py       # prints one line per setting; minutes on 2 cores
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEPS = 40
TIMEOUT_S = 240
SETTINGS = {  # name -> environment added to the trainer's (it imports torch before speedrun sets its default)
    "spinning (libgomp default)": {},
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},  # what speedrun sets unless the user chose
    "GOMP_SPINCOUNT=1000": {"GOMP_SPINCOUNT": "1000"},
    "GOMP_SPINCOUNT=10000": {"GOMP_SPINCOUNT": "10000"},
    "1 thread": {"OMP_NUM_THREADS": "1"},  # changes numbers: torch's CPU reductions split by thread count
}
COMPETITOR = (
    "import torch\ntorch.set_num_threads(2)\na = torch.randn(512, 512)\nwhile True:\n    a = (a @ a).tanh()\n"
)
TRAIN = """
import sys
from pathlib import Path
from bench_train import _track
from speedrun.data.source import TrainData
from speedrun.paths import data_root
from speedrun.train import Trainer, TrainOptions
track = _track(int(sys.argv[2]))
Trainer(track, TrainData.open(track, data_root()), [], TrainOptions(run_dir=Path(sys.argv[1]), seed=0,
        device="cpu", progress=False)).run()
"""


def rate(extra_env: dict[str, str]) -> tuple[float, int]:
    """(steps/s over the timed steps taken, how many) of one trainer process with ``extra_env``."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), **extra_env}
        try:
            subprocess.run([sys.executable, "-c", TRAIN, tmp, str(STEPS + 5)], env=env, timeout=TIMEOUT_S, check=True)
        except subprocess.TimeoutExpired:
            pass
        log = Path(tmp) / "train.jsonl"
        rows = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
    step_s = [r["step_s"] for r in rows if "step_s" in r][5:]  # the first steps warm caches
    return (len(step_s) / sum(step_s), len(step_s)) if step_s else (0.0, 0)


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, {STEPS} tiny steps per measurement")
    quiet = {name: rate(env) for name, env in SETTINGS.items()}
    competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR])
    try:
        time.sleep(2)
        busy = {name: rate(env) for name, env in SETTINGS.items()}
    finally:
        competitor.kill()
    base = quiet["spinning (libgomp default)"][0]
    for name in SETTINGS:
        (q, _), (b, nb) = quiet[name], busy[name]
        print(
            f"{name:24s} quiet {q:5.2f} steps/s ({q / base:4.0%} of spinning)   "
            f"busy {b:5.2f} steps/s ({b / base:4.0%} of quiet spinning, {nb} steps)"
        )


if __name__ == "__main__":
    main()
