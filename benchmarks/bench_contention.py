"""Training speed beside a busy process: the share of its quiet speed a tiny run keeps when another
CPU-bound program runs on every core (issue goal: at least 40% with one competitor on 2 cores).

Each measurement is a fresh process running ``bench_train.trainer_rate`` (the real trainer, tiny track,
median step time); the competitor is one busy process per core (a pure-Python loop, as a second job on a
shared machine would be), or a second trainer. Variants differ only in the environment the measured
process starts with, e.g. the OpenMP wait policy, so ratios are comparable within one run only.

    python benchmarks/bench_contention.py [--steps 60]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VARIANTS: dict[str, dict[str, str]] = {
    "default": {},
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
}
SPIN = "while True: pass"


def measure(env: dict[str, str], steps: int) -> float:
    """Steps/s of one trainer run in a fresh process started with ``env`` added."""
    code = (
        "import json, sys; sys.path.insert(0, %r); import bench_train as b; "
        "print(json.dumps(b.trainer_rate(b._data_root(), %d)))" % (str(HERE), steps)
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return float(json.loads(out.stdout.strip().splitlines()[-1]))


def beside(competitors: list[list[str]], env: dict[str, str], steps: int) -> float:
    """``measure`` while the ``competitors`` commands run."""
    procs = [subprocess.Popen(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"}) for cmd in competitors]
    try:
        time.sleep(1.0)  # let them occupy the cores first
        return measure(env, steps)
    finally:
        for p in procs:
            p.kill()
            p.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    spinners = [[sys.executable, "-c", SPIN]] * cores
    trainer = [[sys.executable, str(HERE / "bench_train.py")]]
    print(f"{cores} cores; steps/s of the tiny trainer (median step), ratio to quiet")
    for name, env in VARIANTS.items():
        quiet = measure(env, args.steps)
        busy = beside(spinners, env, args.steps)
        pair = beside(trainer, env, args.steps)
        print(
            f"{name:28s} quiet {quiet:5.2f}  beside {cores} spinning processes {busy:5.2f} ({busy / quiet:4.0%})"
            f"  beside another trainer {pair:5.2f} ({pair / quiet:4.0%})",
            flush=True,
        )


if __name__ == "__main__":
    main()
