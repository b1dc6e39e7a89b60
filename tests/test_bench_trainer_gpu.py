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


def test_idle_gaps_are_measured_between_kernels_and_grouped_by_place(bench):
    # Two steps of the same shape (µs): a gemm, a 3 ms gap (the step's host prologue), an inductor
    # kernel overlapped by a copy on another stream, a 10 µs launch gap, the optimizer, then a
    # 1 ms gap to the next step's gemm.
    def step(t0):
        return [
            ("nvjet_gemm", t0, t0 + 5_000),
            ("triton_poi_fused_0", t0 + 8_000, t0 + 9_000),
            ("Memcpy HtoD (Pinned -> Device)", t0 + 8_500, t0 + 9_500),
            ("multi_tensor_apply_kernel<FusedAdam>", t0 + 9_510, t0 + 10_000),
        ]

    kernels = step(0) + step(11_000)
    lines = bench.idle_gaps(kernels, steps=2)
    # Idle: 3000 + 10 per step, and one 1000 µs gap between the steps: 7020 µs over 2 steps.
    assert lines[0].startswith("idle: 3.51 ms per step with no kernel running; 3.50 ms of it in 1.5 gaps of >= 20 us")
    places = [line.split() for line in lines[1:]]
    assert places == [
        ["3.00", "1.0", "nvjet_gemm", "->", "triton_poi_fused_0"],
        ["0.50", "0.5", "multi_tensor_apply_kernel<FusedAdam>", "->", "nvjet_gemm"],
    ]
    assert bench.idle_gaps([], steps=2) == ["idle: no kernels profiled"]


def test_kernel_intervals_leave_out_ranges_and_cpu_events(bench):
    def event(key, device, start, end, annotation=False):
        return SimpleNamespace(
            key=key, device_type=device, time_range=SimpleNamespace(start=start, end=end),
            is_user_annotation=annotation,
        )

    prof = SimpleNamespace(
        events=lambda: [
            event("ProfilerStep#7", DeviceType.CUDA, 0, 100, annotation=True),
            event("aten::mm", DeviceType.CPU, 0, 5),
            event("nvjet_gemm", DeviceType.CUDA, 10, 40),
        ]
    )
    assert bench.kernel_intervals(prof) == [("nvjet_gemm", 10, 40)]


def test_inductor_options_are_set_by_type_and_refused_clearly(bench, monkeypatch):
    from torch._inductor import config

    monkeypatch.setattr(config, "max_autotune", False)
    monkeypatch.setattr(config.triton, "cudagraphs", False)
    applied = bench.apply_inductor_options(["max_autotune=True", "triton.cudagraphs=True"])
    assert applied == {"max_autotune": True, "triton.cudagraphs": True}
    assert config.max_autotune is True and config.triton.cudagraphs is True
    for bad, message in [
        ("max_autotune", "'max_autotune': expected KEY=VALUE"),
        ("no_such_entry=1", "has no entry 'no_such_entry'"),
        ("nope.max_autotune=1", "has no entry 'nope.max_autotune'"),
        ("max_autotune=yes", "'yes' is not a Python literal"),
        ("max_autotune=3", "max_autotune is a bool, got a int"),
    ]:
        with pytest.raises(ValueError, match=message):
            bench.apply_inductor_options([bad])


def test_host_update_turns_the_trainers_in_kernel_update_off(bench, monkeypatch):
    import torch
    from torch import nn

    import speedrun.optim

    monkeypatch.setattr(speedrun.optim, "updates_in_kernel", speedrun.optim.updates_in_kernel)
    fused = torch.optim.AdamW(nn.Linear(2, 2).parameters(), fused=True)
    assert bench.choose_update(False) == "in-kernel" and speedrun.optim.updates_in_kernel(fused)
    assert bench.choose_update(True) == "host" and not speedrun.optim.updates_in_kernel(fused)
