"""Every kernel variant lowers to Triton IR for sm_90 (see lower_for_gpu.py), on any machine."""

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def test_kernels_lower_for_hopper_with_fp32_and_fp64_scalars():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parents[1]), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, str(HERE / "lower_for_gpu.py")], env=env, capture_output=True, text=True, timeout=600
    )
    lines = proc.stdout.splitlines()
    failures = [line for line in lines if line.startswith("FAIL")]
    assert proc.returncode == 0 and not failures, "\n".join(failures) or proc.stderr[-2000:]
    # 3 dtypes x 2 head dims x 2 scalar types x (delta + 14 autotune configs + 2 rope kernels)
    assert len(lines) == 3 * 2 * 2 * (1 + 8 + 6 + 2)
