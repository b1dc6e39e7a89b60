"""The kernels compiled for sm_90 exactly as launched at PRX 1.2B shapes (benchmarks/kernel_resources.py):
the attention loops stay software-pipelined, and no variant needs more than an SM offers; the
backward candidates of benchmarks/attention_variants/ too, so a lent card's minutes go to timing them."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_attention_loops_are_pipelined_on_hopper():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    candidates = ROOT / "benchmarks" / "attention_variants"
    env["ATTENTION_ALT"] = f"key-tiles={candidates / 'key_tile_grid.py'} small-tiles={candidates / 'small_tiles.py'}"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "kernel_resources.py"), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    variants = json.loads(proc.stdout)
    counts = {}
    for v in variants:
        counts[v["source"], v["kernel"]] = counts.get((v["source"], v["kernel"]), 0) + 1
    # Every autotune config of the two attention kernels, one variant of each plain launch; each
    # candidate's forward is the project's, its backward its own.
    forward = {"_attn_fwd_kernel": 8, "_attn_bwd_delta_kernel": 1}
    expected = {
        "project": {**forward, "_attn_bwd_kernel": 6, "_norm_rope_fwd_kernel": 1, "_norm_rope_bwd_kernel": 1},
        "key-tiles": {**forward, "_attn_bwd_key_tile_kernel": 8, "_attn_bwd_dq_cast_kernel": 1},
        "small-tiles": {**forward, "_attn_bwd_kernel": 6},
    }
    assert counts == {(source, k): n for source, kernels in expected.items() for k, n in kernels.items()}
    for v in variants:
        name = f"{v['source']} {v['kernel']} {v['config']} w{v['num_warps']} s{v['num_stages']}"
        assert v["programs_per_sm"] >= 1, f"{name} does not fit on one SM: {v}"
        assert v["registers"] <= 255, name
        if v["kernel"] in ("_attn_fwd_kernel", "_attn_bwd_kernel", "_attn_bwd_key_tile_kernel"):
            # Without cp.async the tile loads are synchronous: the tensor cores idle on every tile.
            assert v["pipelined_copies"] > 0, f"{name}: loop loads are not software-pipelined"
        if v["kernel"] == "_attn_fwd_kernel":
            assert v["spill_bytes"] == 0, f"{name} spills {v['spill_bytes']} bytes to the stack"
