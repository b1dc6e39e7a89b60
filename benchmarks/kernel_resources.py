"""Compile every Triton kernel launch at PRX 1.2B shapes for an H100/H200 (sm_90), on any machine.

What the card would run, without the card: the attention and norm+RoPE wrappers are called on
CPU tensors of the benchmark's shapes (batch 32, 28 heads, head dim 64, 256 image + 256 text
tokens, bf16) with every kernel launch captured instead of run. Each captured launch is then
compiled the way triton's JIT would compile it there: the same specialisation of every argument
(integers equal to 1 become constants, values and pointers divisible by 16 are marked so), each
autotune config with its warps and stages, ptxas from the triton wheel. Reported per variant:
registers per thread, bytes spilled to the stack, shared memory, how many programs fit on one SM
by those limits and how many waves the launch's grid then takes on 132 SMs; plus whether the loop
loads were software-pipelined (cp.async copies in the Triton GPU IR), which decides whether the
tensor cores wait on memory every tile.

Candidate attention modules named as for bench_kernels.py (``ATTENTION_ALT="label=path.py ..."``,
e.g. those in ``benchmarks/attention_variants/``) are compiled too, their rows labelled, so a
candidate's registers and occupancy can be read before a card is lent to time it.

These are compiler facts, not timings: which config is fastest is still the autotuner's call on a
card. Compiling is CPU work (about 2 s per variant). Run as a script in a process where
TRITON_INTERPRET is unset: ``[ATTENTION_ALT=...] python benchmarks/kernel_resources.py [--json]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence
from unittest.mock import patch

import torch
from bench_kernels import attention_alternatives, load_attention_module

BATCH, HEADS, HEAD_DIM, IMAGE_TOKENS, TEXT_TOKENS = 32, 28, 64, 256, 256
DTYPE = torch.bfloat16
EPS = 1e-6
TARGET_ARCH, WARP_SIZE = 90, 32
# H100/H200 per-SM limits (CUDA occupancy calculator, compute capability 9.0).
SM_COUNT = 132  # H100 SXM and H200
SM_REGISTERS = 65536
SM_WARPS, SM_BLOCKS = 64, 32
SM_SHARED_BYTES = 233472
BLOCK_RESERVED_SHARED_BYTES = 1024
REGISTER_ALLOCATION_UNIT = 256  # registers are granted per warp in units of 256


@dataclass(frozen=True)
class Launch:
    """One kernel launch as the wrapper issued it: grid, positional arguments, keyword constexprs."""

    source: str  # "project", or the label of the candidate attention module that launched it
    kernel: Any  # triton's JITFunction or its Autotuner
    grid: Any  # a tuple, or a function of the config's meta-parameters
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@dataclass(frozen=True)
class Variant:
    source: str
    kernel: str
    config: str
    num_warps: int
    num_stages: int
    registers: int
    spill_bytes: int
    shared_bytes: int
    programs_per_sm: int
    waves: float
    pipelined_copies: int


def capture_launches(alternatives: Sequence[tuple[str, str]] = ()) -> list[Launch]:
    """Run the attention and norm+RoPE wrappers forward and backward on CPU tensors, recording
    each kernel launch instead of running it. The attention runs once with the project's module
    and once with each ``(label, path)`` candidate module (bench_kernels.py's ATTENTION_ALT)."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    from speedrun.kernels import triton_attention as ta
    from speedrun.kernels import triton_rope as tr

    modules = [("project", ta)] + [(label, load_attention_module(Path(path))) for label, path in alternatives]
    launches: list[Launch] = []
    source = "project"

    def record(kernel, *args, grid, warmup=False, **kwargs):
        launches.append(Launch(source, kernel, grid, args, kwargs))

    # The wrappers' input checks refuse CPU tensors outside the interpreter; nothing runs here.
    # (Their interpret flag must stay False: it also shrinks launch shapes for the interpreter.)
    # Candidates may run a private copy of the attention module, with its own check.
    no_check = {"_check_inputs": lambda *tensors: None}
    copies = [m for m in list(sys.modules.values()) if getattr(m, "__file__", None) in (ta.__file__, tr.__file__)]
    patches = [patch.multiple(m, **no_check) for m in copies]
    patches += [patch.object(JITFunction, "run", record), patch.object(Autotuner, "run", record)]
    with contextlib.ExitStack() as stack:
        for p in patches:
            stack.enter_context(p)
        gen = torch.Generator().manual_seed(0)
        n_keys = TEXT_TOKENS + IMAGE_TOKENS
        q = torch.randn(BATCH, IMAGE_TOKENS, HEADS, HEAD_DIM, generator=gen, dtype=DTYPE).transpose(1, 2)
        k = torch.randn(BATCH, HEADS, n_keys, HEAD_DIM, generator=gen, dtype=DTYPE)
        v = torch.randn_like(k)
        key_mask = torch.ones(BATCH, n_keys, dtype=torch.bool)
        leaves = [t.requires_grad_() for t in (q, k, v)]
        for source, module in modules:
            out = module.flash_attention(*leaves, key_mask)
            torch.autograd.grad(out, leaves, torch.ones_like(out))

        from speedrun.kernels.rope import rope_tables

        source = "project"
        side = math.isqrt(IMAGE_TOKENS)
        cos, sin = rope_tables(side, side, HEAD_DIM, 10000.0)
        # Queries and keys as the fused qkv projection leaves them (tokens-major), like the benchmark.
        qkv = torch.randn(BATCH, IMAGE_TOKENS, 3, HEADS, HEAD_DIM, generator=gen, dtype=DTYPE)
        qn, kn = (qkv[:, :, i].transpose(1, 2).requires_grad_() for i in range(2))
        weights = [torch.ones(HEAD_DIM, requires_grad=True) for _ in range(2)]
        outs = tr.fused_qk_norm_rope(qn, kn, *weights, cos, sin, eps=EPS)
        torch.autograd.grad(outs, [qn, kn, *weights], [torch.ones_like(o) for o in outs])
    return launches


def _specialise(fn, args: tuple[Any, ...], constexprs: dict[str, Any]):
    """Signature, constants and attributes exactly as triton's JIT derives them from the args."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.nvidia.compiler import CUDABackend

    signature: dict[str, str] = {}
    constants: dict[tuple[int, ...], Any] = {}
    attrs: dict[tuple[int, ...], Any] = {}
    positional = iter(args)
    for index, param in enumerate(fn.params):
        if param.name in constexprs or param.is_constexpr:
            signature[param.name] = "constexpr"
            constants[(index,)] = constexprs[param.name] if param.name in constexprs else next(positional)
            continue
        kind, spec = native_specialize_impl(CUDABackend, next(positional), False, not param.do_not_specialize, True)
        signature[param.name] = kind
        if kind == "constexpr":
            constants[(index,)] = spec
        elif isinstance(spec, str):
            attrs[(index,)] = CUDABackend.parse_attr(spec)
    return signature, constants, attrs


def _resources(cubin: bytes) -> tuple[int, int]:
    """(registers per thread, stack bytes) from cuobjdump, shipped with the triton wheel."""
    import triton

    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        report = subprocess.run([str(cuobjdump), "-res-usage", f.name], capture_output=True, text=True, check=True)
    match = re.search(r"REG:(\d+)\s+STACK:(\d+)", report.stdout)
    if match is None:
        raise RuntimeError(f"cuobjdump printed no resource usage:\n{report.stdout}{report.stderr}")
    return int(match.group(1)), int(match.group(2))


def _programs_per_sm(registers: int, num_warps: int, shared_bytes: int) -> int:
    per_warp = math.ceil(registers * WARP_SIZE / REGISTER_ALLOCATION_UNIT) * REGISTER_ALLOCATION_UNIT
    by_registers = SM_REGISTERS // (per_warp * num_warps)
    by_shared = SM_SHARED_BYTES // (shared_bytes + BLOCK_RESERVED_SHARED_BYTES)
    return min(by_registers, by_shared, SM_WARPS // num_warps, SM_BLOCKS)


def compile_variants(launches: list[Launch]) -> list[Variant]:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    variants = []
    for launch in launches:
        configs = getattr(launch.kernel, "configs", None)
        fn = launch.kernel.fn if configs is not None else launch.kernel
        # A plain launch takes the JIT's defaults (4 warps, 3 stages) unless it passed its own.
        launch_options = {k: launch.kwargs[k] for k in ("num_warps", "num_stages") if k in launch.kwargs}
        options = [
            (dict(c.kwargs), c.num_warps, c.num_stages)
            for c in (configs or [triton.Config({}, **{"num_warps": 4, "num_stages": 3, **launch_options})])
        ]
        for blocks, num_warps, num_stages in options:
            constexprs = {k: v for k, v in {**launch.kwargs, **blocks}.items() if k not in launch_options}
            signature, constants, attrs = _specialise(fn, launch.args, constexprs)
            compiled = triton.compile(
                ASTSource(fn, signature, constants, attrs),
                target=GPUTarget("cuda", TARGET_ARCH, WARP_SIZE),
                options=dict(num_warps=num_warps, num_stages=num_stages),
            )
            registers, spill = _resources(compiled.asm["cubin"])
            shared = compiled.metadata.shared
            per_sm = _programs_per_sm(registers, num_warps, shared)
            grid = launch.grid(constexprs) if callable(launch.grid) else launch.grid
            variants.append(
                Variant(
                    source=launch.source,
                    kernel=fn.__name__,
                    config=" ".join(f"{k}={v}" for k, v in blocks.items()) or "-",
                    num_warps=num_warps,
                    num_stages=num_stages,
                    registers=registers,
                    spill_bytes=spill,
                    shared_bytes=shared,
                    programs_per_sm=per_sm,
                    waves=round(math.prod(grid) / (per_sm * SM_COUNT), 2),
                    pipelined_copies=compiled.asm["ttgir"].count("ttg.async_copy_global_to_local"),
                )
            )
    return variants


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="one JSON list of variants instead of a table")
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("kernel_resources: unset TRITON_INTERPRET; interpreted kernels cannot be compiled", file=sys.stderr)
        return 2
    variants = compile_variants(capture_launches(attention_alternatives()))
    if args.json:
        print(json.dumps([asdict(v) for v in variants]))
        return 0
    import triton

    print(
        f"sm_{TARGET_ARCH}, triton {triton.__version__} | B={BATCH} H={HEADS} D={HEAD_DIM} "
        f"image={IMAGE_TOKENS} text={TEXT_TOKENS} {str(DTYPE).removeprefix('torch.')}"
    )
    columns = "source kernel config warps stages registers spill_B shared_KiB programs/SM waves cp.async".split()
    print("| " + " | ".join(c.replace("_", " ") for c in columns) + " |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for v in variants:
        print(
            f"| {v.source} | {v.kernel} | {v.config} | {v.num_warps} | {v.num_stages} | {v.registers} | "
            f"{v.spill_bytes} | "
            f"{v.shared_bytes / 1024:.1f} | {v.programs_per_sm} | {v.waves} | {v.pipelined_copies} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
