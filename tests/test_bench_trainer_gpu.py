"""benchmarks/bench_trainer_gpu.py's profile summary counts each kernel once (checked on CPU with
profiler events built by hand: the GPU run that found the double count cannot run here)."""

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from torch.autograd import DeviceType

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_trainer_gpu", ROOT / "benchmarks" / "bench_trainer_gpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT / "benchmarks"))  # it imports its sibling prx_rows.py, as when run as a script
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return module


def _event(key, device, us=0.0, count=1, annotation=False, cpu_us=0.0):
    return SimpleNamespace(
        key=key,
        device_type=device,
        device_time_total=us,
        count=count,
        cpu_time_total=cpu_us,
        is_user_annotation=annotation,
    )


class FakeProfile:
    def __init__(self, events):
        self.events = events

    def key_averages(self):
        return self.events


def test_ranges_are_not_kernels_and_inductor_kernels_are(bench):
    # Two profiled steps of 100 ms wall. The GPU annotations of ProfilerStep and of the optimizer
    # span the kernels inside them; the inductor kernel also has a CPU launcher event of its name.
    events = [
        _event("ProfilerStep*", DeviceType.CPU, cpu_us=200_000),
        _event("ProfilerStep*", DeviceType.CUDA, us=199_000, count=2, annotation=True),
        _event("Optimizer.step#AdamW.step", DeviceType.CUDA, us=40_000, count=2, annotation=True),
        _event("nvjet_sm90_tst_320x128_64x3_1x2_h_bz_coopB_NNT", DeviceType.CUDA, us=100_000, count=160),
        _event("triton_poi_fused_add_mul_0", DeviceType.CPU, cpu_us=500, count=64),
        _event("triton_poi_fused_add_mul_0", DeviceType.CUDA, us=30_000, count=64),
        _event("void at::native::multi_tensor_apply_kernel<FusedAdamMathFunctor>", DeviceType.CUDA, us=20_000),
        _event("_attn_bwd_kernel", DeviceType.CUDA, us=10_000, count=32),
    ]
    lines = bench.gpu_time_breakdown(FakeProfile(events), steps=2, top=3)
    # 160 ms of kernels over 2 steps of 100 ms: 80 ms busy per step, 80% of the wall.
    assert lines[0] == "profile: 2 steps, 100.0 ms wall per step, kernels busy 80.0 ms per step (80.0% of wall)"
    by_kind = {line.split("  ")[1].strip(): line for line in lines[1:5]}
    assert set(by_kind) == {"gemm", "inductor fused", "optimizer, grad clip", "attention (triton)"}
    assert "50.00 ms/step  62.5%" in by_kind["gemm"]
    assert "15.00 ms/step  18.8%" in by_kind["inductor fused"]
    assert "10.00 ms/step  12.5%" in by_kind["optimizer, grad clip"]
    assert "5.00 ms/step   6.2%" in by_kind["attention (triton)"]
    assert not any("ProfilerStep" in line or "Optimizer.step" in line for line in lines)


def test_kernel_kinds(bench):
    assert bench.kernel_kind("nvjet_sm90_tst_256x128_64x4_1x1_h_bz_coopA_NTT") == "gemm"
    assert bench.kernel_kind("_norm_rope_bwd_kernel") == "norm+rope (triton)"
    assert bench.kernel_kind("cudnn_generated_fort_native_sdpa_sm90_flash_fprop") == "attention (sdpa)"
    assert bench.kernel_kind("triton_red_fused_native_layer_norm_1") == "inductor fused"
    assert bench.kernel_kind("Memcpy HtoD (Pageable -> Device)") == "copy / memset"
    assert bench.kernel_kind("something_else") == "other"
