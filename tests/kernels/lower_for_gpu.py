"""Lower every Triton kernel to Triton IR for an sm_90 (H100/H200) target, without a GPU.

The CPU interpreter runs kernels that the real compiler rejects: globals that are not
``tl.constexpr`` instances, or a loop-carried value whose type changes when torch.compile launches
the kernel with Python floats typed fp64 (both reached a GPU once). Lowering through Triton's own
front end catches both. Run as a script in a process where TRITON_INTERPRET is unset (importing the
kernels in interpret mode yields interpreter objects with no IR); prints one line per variant and
exits 1 if any failed.
"""

from __future__ import annotations

import os
import sys
import traceback

# Triton aliases for the element types; fp64 is what torch.compile passes for Python floats.
FLOAT_SCALARS = {"qk_scale", "sm_scale", "eps"}
FP32_POINTERS = {"Lse", "Delta", "dQacc", "qw_ptr", "kw_ptr", "dqw_ptr", "dkw_ptr", "cos_ptr", "sin_ptr"}
ACTIVATION_POINTERS = {
    "Q", "K", "V", "Out", "dOut", "dQ", "dK", "dV",
    "q_ptr", "k_ptr", "qo_ptr", "ko_ptr", "dqo_ptr", "dko_ptr", "dq_ptr", "dk_ptr",
}  # fmt: skip


def lower(kernel, activation: str, scalar: str, constexprs: dict[str, object]) -> None:
    from triton._C.libtriton import ir
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.compiler.compiler import make_backend

    names = kernel.arg_names
    signature = {}
    for name in names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in ACTIVATION_POINTERS:
            signature[name] = f"*{activation}"
        elif name in FP32_POINTERS:
            signature[name] = "*fp32"
        elif name == "Mask":
            signature[name] = "*u8"
        elif name in FLOAT_SCALARS:
            signature[name] = scalar
        else:
            signature[name] = "i32"
    target = GPUTarget("cuda", 90, 32)
    backend = make_backend(target)
    src = ASTSource(kernel, signature, {(names.index(n),): v for n, v in constexprs.items()})
    options = backend.parse_options(src.parse_options())
    context = ir.context()
    ir.load_dialects(context)
    backend.load_dialects(context)
    src.make_ir(target, options, backend.get_codegen_implementation(options), backend.get_module_map(), context)


def variants():
    from speedrun.kernels import triton_attention as ta
    from speedrun.kernels import triton_rope as tr

    for activation in ("bf16", "fp16", "fp32"):
        precision = "ieee" if activation == "fp32" else None
        for head_dim in (64, 128):
            for scalar in ("fp32", "fp64"):
                tag = f"{activation} D={head_dim} scalars={scalar}"
                yield f"_attn_bwd_delta_kernel {tag}", ta._attn_bwd_delta_kernel, activation, scalar, {
                    "HEAD_DIM": head_dim, "BLOCK_M": 64}
                for autotuned in (ta._attn_fwd_kernel, ta._attn_bwd_kernel):
                    for config in autotuned.configs:
                        blocks = dict(config.kwargs)
                        yield f"{autotuned.fn.__name__} {tag} {blocks}", autotuned.fn, activation, scalar, {
                            "HEAD_DIM": head_dim, "PRECISION": precision, **blocks}
                block_n, _ = tr._launch_shape(256, head_dim, 1)
                for kernel in (tr._norm_rope_fwd_kernel, tr._norm_rope_bwd_kernel):
                    yield f"{kernel.__name__} {tag}", kernel, activation, scalar, {
                        "HEAD_DIM": head_dim, "BLOCK_N": block_n}


def main() -> int:
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("lower_for_gpu: unset TRITON_INTERPRET; interpreted kernels have no IR", file=sys.stderr)
        return 2
    failed = 0
    for name, kernel, activation, scalar, constexprs in variants():
        try:
            lower(kernel, activation, scalar, constexprs)
        except Exception as exc:  # report every failing variant, not just the first
            failed += 1
            message = " ".join("".join(traceback.format_exception_only(exc)).split())  # one line per variant
            print(f"FAIL {name}: {message[-400:]}")
        else:
            print(f"ok   {name}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
