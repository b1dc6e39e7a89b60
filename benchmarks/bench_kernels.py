"""Forward+backward time of the Triton kernels against their torch counterparts at PRX 1.2B shapes.

Shapes: batch 32, 28 heads, head dim 64, 256 image tokens attending over 256 text + 256 image
keys, bf16 activations, fp32 norm weights; text lengths vary per sample so the key mask matters.

Attention variants: the Triton kernel; SDPA restricted to its cuDNN and memory-efficient backends
(both take the boolean mask); SDPA's flash backend, which cannot take a mask, so it runs unmasked as
a lower bound. A forward-only group times the Triton kernel and cuDNN without the backward, so a
gap can be placed. Norm+RoPE variants: the fused kernel, the eager torch path that
``speedrun.kernels.dispatch`` runs on its torch backend, and that path under ``torch.compile``.

To A/B a kernel change on one card in one process, name other versions of the attention module in
``ATTENTION_ALT="label=path.py ..."``: each file must define ``flash_attention`` with the same
signature, and gets its own forward+backward and forward-only rows. For example, the version
before a commit: ``git show REV:speedrun/kernels/triton_attention.py > benchmarks/attn_old.py``.

GPU only; on CPU both entry points skip. Run either as
``pytest benchmarks/bench_kernels.py --benchmark-enable`` (pytest-benchmark; the project's
pytest options disable benchmarking by default, which runs each case once as a smoke test) or as
``python benchmarks/bench_kernels.py``, which prints a table (median ms via triton's do_bench).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Callable

import pytest
import torch
import torch.nn.functional as F

from speedrun.kernels.dispatch import rms_norm
from speedrun.kernels.rope import apply_rope, rope_tables

# Triton (through the kernel modules) is imported inside the cases only: the first import of
# triton fixes compile-or-interpret for the process, and this file may be collected in one pytest
# process with tests/kernels on a CPU machine, which needs interpret mode.

BATCH, HEADS, HEAD_DIM, IMAGE_TOKENS, TEXT_TOKENS = 32, 28, 64, 256, 256
DTYPE = torch.bfloat16
EPS = 1e-6
CUDA = torch.cuda.is_available()

Step = Callable[[], None]


@dataclass(frozen=True)
class Case:
    """One variant: ``build()`` allocates inputs once and returns a single forward+backward step.
    The first variant of each group that runs is the baseline its speedups are measured against."""

    group: str
    name: str
    build: Callable[[], Step]


def _fwd_bwd(forward: Callable[[], tuple[torch.Tensor, ...]], inputs: tuple[torch.Tensor, ...]) -> Step:
    """A step running ``forward`` then its backward with fixed random output grads.

    torch.autograd.grad (not .backward) keeps .grad from accumulating across repetitions."""
    grads = tuple(torch.randn_like(out) for out in forward())

    def step() -> None:
        torch.autograd.grad(forward(), inputs, grads)

    return step


def _attention_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator(device="cuda").manual_seed(0)
    n_keys = TEXT_TOKENS + IMAGE_TOKENS
    # Queries as the fused qkv projection leaves them (tokens-major); keys/values concatenated.
    q = torch.randn(BATCH, IMAGE_TOKENS, HEADS, HEAD_DIM, device="cuda", dtype=DTYPE, generator=gen)
    q = q.transpose(1, 2).requires_grad_()
    k = torch.randn(BATCH, HEADS, n_keys, HEAD_DIM, device="cuda", dtype=DTYPE, generator=gen).requires_grad_()
    v = torch.randn(BATCH, HEADS, n_keys, HEAD_DIM, device="cuda", dtype=DTYPE, generator=gen).requires_grad_()
    text_lengths = torch.randint(16, TEXT_TOKENS + 1, (BATCH,), device="cuda", generator=gen)
    key_mask = torch.ones(BATCH, n_keys, dtype=torch.bool, device="cuda")
    key_mask[:, :TEXT_TOKENS] = torch.arange(TEXT_TOKENS, device="cuda") < text_lengths[:, None]
    return q, k, v, key_mask


def _forward_only(forward: Callable[[], tuple[torch.Tensor, ...]]) -> Step:
    def step() -> None:
        with torch.no_grad():
            forward()

    return step


def _sdpa_case(backend, masked: bool, backward: bool = True) -> Step:
    from torch.nn.attention import sdpa_kernel

    q, k, v, key_mask = _attention_inputs()
    mask = key_mask[:, None, None, :] if masked else None

    def forward():
        with sdpa_kernel(backend):
            return (F.scaled_dot_product_attention(q, k, v, attn_mask=mask),)

    return _fwd_bwd(forward, (q, k, v)) if backward else _forward_only(forward)


def _triton_attention_case(module_path: str | None = None, backward: bool = True) -> Step:
    """The project's kernel, or the ``flash_attention`` of another version of its module."""
    if module_path is None:
        from speedrun.kernels.triton_attention import flash_attention
    else:
        flash_attention = load_attention_module(Path(module_path)).flash_attention
    q, k, v, key_mask = _attention_inputs()

    def forward():
        return (flash_attention(q, k, v, key_mask),)

    return _fwd_bwd(forward, (q, k, v)) if backward else _forward_only(forward)


def load_module_copy(path: Path, name: str) -> ModuleType:
    """A fresh module executed from ``path``, registered as ``name`` (triton.jit reads each
    kernel's source through its module), sharing no globals with other copies of that file."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"{path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@functools.cache
def load_attention_module(path: Path) -> ModuleType:
    """An ATTENTION_ALT candidate, loaded once per path."""
    return load_module_copy(path, f"bench_attention_alt_{len(sys.modules)}")


def attention_alternatives() -> list[tuple[str, str]]:
    """``(label, path)`` pairs from ATTENTION_ALT="label=path ..."."""
    pairs = []
    for item in os.environ.get("ATTENTION_ALT", "").split():
        label, sep, path = item.partition("=")
        if not (sep and label and path):
            raise SystemExit(f"ATTENTION_ALT: expected label=path.py items, got {item!r}")
        if not Path(path).is_file():
            raise SystemExit(f"ATTENTION_ALT: {label}: no file {path}")
        pairs.append((label, path))
    return pairs


def _rope_inputs():
    gen = torch.Generator(device="cuda").manual_seed(0)
    qkv = torch.randn(BATCH, IMAGE_TOKENS, 3, HEADS, HEAD_DIM, device="cuda", dtype=DTYPE, generator=gen)
    q = qkv[:, :, 0].transpose(1, 2).detach().requires_grad_()
    k = qkv[:, :, 1].transpose(1, 2).detach().requires_grad_()
    q_weight = torch.ones(HEAD_DIM, device="cuda", requires_grad=True)
    k_weight = torch.ones(HEAD_DIM, device="cuda", requires_grad=True)
    side = int(IMAGE_TOKENS**0.5)
    cos, sin = rope_tables(side, side, HEAD_DIM, 10000.0, device="cuda")
    return q, k, q_weight, k_weight, cos, sin


def _torch_norm_rope(q, k, q_weight, k_weight, cos, sin):
    """The torch backend of speedrun.kernels.dispatch.qk_norm_rope, called directly so the
    backend choice cannot route it to Triton."""
    return apply_rope(rms_norm(q, q_weight, EPS), cos, sin), apply_rope(rms_norm(k, k_weight, EPS), cos, sin)


def _norm_rope_case(variant: str) -> Step:
    q, k, q_weight, k_weight, cos, sin = _rope_inputs()
    if variant == "triton":
        from speedrun.kernels.triton_rope import fused_qk_norm_rope

        fn = functools.partial(fused_qk_norm_rope, eps=EPS)
    elif variant == "compiled":
        fn = torch.compile(_torch_norm_rope)
    else:
        fn = _torch_norm_rope
    return _fwd_bwd(lambda: fn(q, k, q_weight, k_weight, cos, sin), (q, k, q_weight, k_weight))


def _cases() -> list[Case]:
    from torch.nn.attention import SDPBackend

    alternatives = attention_alternatives()
    return [
        Case("attention", "sdpa efficient, masked", lambda: _sdpa_case(SDPBackend.EFFICIENT_ATTENTION, True)),
        Case("attention", "sdpa cudnn, masked", lambda: _sdpa_case(SDPBackend.CUDNN_ATTENTION, True)),
        Case("attention", "sdpa flash, NO mask", lambda: _sdpa_case(SDPBackend.FLASH_ATTENTION, False)),
        Case("attention", "triton flash_attention", _triton_attention_case),
        *(
            Case("attention", f"triton {label}", functools.partial(_triton_attention_case, path))
            for label, path in alternatives
        ),
        Case("attn forward", "sdpa cudnn, masked", lambda: _sdpa_case(SDPBackend.CUDNN_ATTENTION, True, False)),
        Case("attn forward", "triton flash_attention", lambda: _triton_attention_case(backward=False)),
        *(
            Case("attn forward", f"triton {label}", functools.partial(_triton_attention_case, path, False))
            for label, path in alternatives
        ),
        Case("qk_norm_rope", "torch eager", lambda: _norm_rope_case("eager")),
        Case("qk_norm_rope", "torch.compile", lambda: _norm_rope_case("compiled")),
        Case("qk_norm_rope", "triton fused", lambda: _norm_rope_case("triton")),
    ]


def _first_line(exc: Exception) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def _synchronised(step: Step) -> Step:
    def run() -> None:
        step()
        torch.cuda.synchronize()

    return run


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="kernel benchmarks need CUDA")
@pytest.mark.parametrize("case", _cases() if CUDA else [], ids=lambda c: f"{c.group}-{c.name.replace(' ', '_')}")
def test_fwd_bwd(benchmark, case: Case) -> None:
    try:
        step = case.build()
        step()  # first call: autotuning / compilation, kept out of the timing
    except RuntimeError as exc:  # an SDPA backend that refuses these shapes or this GPU
        pytest.skip(f"{case.name} unavailable: {_first_line(exc)}")
    benchmark.group = case.group
    benchmark.pedantic(_synchronised(step), rounds=30, warmup_rounds=3)


def main() -> int:
    """Print median forward+backward milliseconds per variant and the speedup over the first
    variant of its group that runs."""
    if not CUDA:
        print("bench_kernels: CUDA is not available; nothing to benchmark (skipped).")
        return 0
    from triton.testing import do_bench

    print(
        f"{torch.cuda.get_device_name()} | B={BATCH} H={HEADS} D={HEAD_DIM} image={IMAGE_TOKENS} "
        f"text={TEXT_TOKENS} {str(DTYPE).removeprefix('torch.')} | forward+backward, median ms"
    )
    print(f"{'group':<14}{'variant':<26}{'ms':>10}{'speedup':>10}")
    baseline: dict[str, float] = {}
    for case in _cases():
        try:
            step = case.build()
            step()
        except RuntimeError as exc:
            print(f"{case.group:<14}{case.name:<26}  unavailable: {_first_line(exc)[:70]}")
            continue
        ms = do_bench(step, warmup=25, rep=200, return_mode="median")
        baseline.setdefault(case.group, ms)
        print(f"{case.group:<14}{case.name:<26}{ms:>10.3f}{baseline[case.group] / ms:>9.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
