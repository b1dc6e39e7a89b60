"""Attention backward candidate: one program per (key tile, batch*head), dQ summed by fp32 atomics.

An A/B candidate for ``benchmarks/bench_kernels.py`` (``ATTENTION_ALT="key-tiles=<this file>"``),
not used by the trainer. The project's backward runs one program per batch*head that walks all
of that head's key tiles in turn: 896 programs at the PRX 1.2B shapes (batch 32 x 28 heads), 3.4
waves of 2 per SM on 132 SMs, the last wave 40% full. Here every key tile of every head is its
own program (8x as many with 64-key tiles), each keeping its dK and dV in registers while the
query tiles stream past, as FlashAttention-2's dK/dV kernel does, and adding its share of dQ
into an fp32 buffer with ``atomic_add``, as FlashAttention-3 does. A last kernel scales that
buffer and casts it to dQ's dtype.

The price is determinism: the order of the atomic fp32 sums varies from launch to launch, so dQ
can differ in its last bits between two identical backward passes (the project's kernel is
bitwise deterministic). Key tiles holding only padding write zero dK/dV and add nothing.

The forward pass and the delta preprocess are the project's (the autograd Function is a subclass
that replaces only ``backward``). The per-tile math repeats the project's backward on purpose: a
candidate is a whole kernel to time, and whichever of the two loses on a card is deleted.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from speedrun.kernels.triton_attention import (
    _INTERPRET,
    _LOG2E,
    _TUNE_KEY,
    _attn_bwd_delta_kernel,
    _configs,
    _FlashAttention,
    _key_valid,
)

_BWD_CONFIGS = _configs(
    [(32, 32, 4, 2), (64, 32, 4, 2), (32, 64, 4, 2), (64, 64, 4, 2), (64, 64, 8, 2), (32, 128, 4, 2),
     (64, 128, 8, 2), (128, 64, 8, 2)]
)  # fmt: skip


# The autotuner runs each config on the same buffers, so the dQ sums must start from zero each time.
@triton.autotune(configs=_BWD_CONFIGS, key=_TUNE_KEY, reset_to_zero=["dQacc"])
@triton.jit
def _attn_bwd_key_tile_kernel(
    Q, K, V, Mask, dOut, Lse, Delta, dK, dV, dQacc,
    sq_b, sq_h, sq_m, sq_d, sk_b, sk_h, sk_n, sk_d, sv_b, sv_h, sv_n, sv_d,
    sdo_b, sdo_h, sdo_m, sdo_d, sdk_b, sdk_h, sdk_n, sdk_d, sdv_b, sdv_h, sdv_n, sdv_d,
    H, Nq, Nk, qk_scale, sm_scale,
    HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    # torch.compile launches user kernels with Python floats typed fp64: keep the math fp32.
    qk_scale = tl.cast(qk_scale, tl.float32)
    sm_scale = tl.cast(sm_scale, tl.float32)
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    in_seq = offs_n < Nk
    valid = _key_valid(Mask, b, offs_n, Nk)
    q_base = Q + b * sq_b + h * sq_h
    do_base = dOut + b * sdo_b + h * sdo_h
    row_base = pid_bh.to(tl.int64) * Nq
    acc_base = dQacc + row_base * HEAD_DIM
    k = tl.load(
        K + b * sk_b + h * sk_h + offs_n[:, None] * sk_n + offs_d[None, :] * sk_d, mask=in_seq[:, None], other=0.0
    )
    v = tl.load(
        V + b * sv_b + h * sv_h + offs_n[:, None] * sv_n + offs_d[None, :] * sv_d, mask=in_seq[:, None], other=0.0
    )
    # A tile of padding only: its probabilities are all 0, so it adds nothing to dQ and gets zero dK/dV.
    q_end = tl.where(tl.max(valid.to(tl.int32), 0) > 0, Nq, 0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    for start_m in range(0, q_end, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < Nq
        q = tl.load(q_base + offs_m[:, None] * sq_m + offs_d[None, :] * sq_d, mask=row_ok[:, None], other=0.0)
        do = tl.load(do_base + offs_m[:, None] * sdo_m + offs_d[None, :] * sdo_d, mask=row_ok[:, None], other=0.0)
        # +inf LSE on tail rows makes their probabilities exactly 0.
        lse = tl.load(Lse + row_base + offs_m, mask=row_ok, other=float("inf")) * _LOG2E
        delta = tl.load(Delta + row_base + offs_m, mask=row_ok, other=0.0)
        # Transposed scores (keys x queries), so dK and dV accumulate without transposes.
        st = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale
        pt = tl.where(valid[:, None], tl.exp2(st - lse[None, :]), 0.0)
        dv += tl.dot(pt.to(do.dtype), do, input_precision=PRECISION)
        dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        dst = (pt * (dpt - delta[None, :])).to(q.dtype)
        dk += tl.dot(dst, q, input_precision=PRECISION)
        dq = tl.dot(tl.trans(dst), k, input_precision=PRECISION)
        # Relaxed: the sums are read only by the next kernel, after this launch has finished.
        tl.atomic_add(
            acc_base + offs_m[:, None] * HEAD_DIM + offs_d[None, :], dq, mask=row_ok[:, None], sem="relaxed"
        )
    tl.store(
        dK + b * sdk_b + h * sdk_h + offs_n[:, None] * sdk_n + offs_d[None, :] * sdk_d,
        (dk * sm_scale).to(dK.dtype.element_ty),
        mask=in_seq[:, None],
    )
    tl.store(
        dV + b * sdv_b + h * sdv_h + offs_n[:, None] * sdv_n + offs_d[None, :] * sdv_d,
        dv.to(dV.dtype.element_ty),
        mask=in_seq[:, None],
    )


@triton.jit
def _attn_bwd_dq_cast_kernel(
    dQacc, dQ, sdq_b, sdq_h, sdq_m, sdq_d, H, Nq, sm_scale, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr
):
    """dQ = sm_scale * the fp32 sums, in dQ's dtype and strides."""
    sm_scale = tl.cast(sm_scale, tl.float32)
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < Nq
    acc = tl.load(
        dQacc + (pid_bh.to(tl.int64) * Nq + offs_m[:, None]) * HEAD_DIM + offs_d[None, :],
        mask=row_ok[:, None],
        other=0.0,
    )
    tl.store(
        dQ + b * sdq_b + h * sdq_h + offs_m[:, None] * sdq_m + offs_d[None, :] * sdq_d,
        (acc * sm_scale).to(dQ.dtype.element_ty),
        mask=row_ok[:, None],
    )


class _FlashAttentionKeyTiles(_FlashAttention):
    @staticmethod
    def backward(ctx, dout):
        q, k, v, mask, out, lse = ctx.saved_tensors
        B, H, Nq, D = q.shape
        Nk = k.shape[2]
        row_block = 16 if _INTERPRET else 64
        row_grid = (triton.cdiv(Nq, row_block), B * H)
        delta = torch.empty_like(lse)
        _attn_bwd_delta_kernel[row_grid](
            out, dout, delta, *out.stride(), *dout.stride(), H, Nq, HEAD_DIM=D, BLOCK_M=row_block
        )
        dk = torch.empty_like(k)
        dv = torch.empty_like(v)
        dq_acc = torch.zeros((B * H, Nq, D), device=q.device, dtype=torch.float32)
        _attn_bwd_key_tile_kernel[lambda meta: (triton.cdiv(Nk, meta["BLOCK_N"]), B * H)](
            q, k, v, mask, dout, lse, delta, dk, dv, dq_acc,
            *q.stride(), *k.stride(), *v.stride(), *dout.stride(), *dk.stride(), *dv.stride(),
            H, Nq, Nk, ctx.qk_scale, ctx.sm_scale,
            HEAD_DIM=D, PRECISION=ctx.precision,
        )  # fmt: skip
        dq = torch.empty_like(q)
        _attn_bwd_dq_cast_kernel[row_grid](
            dq_acc, dq, *dq.stride(), H, Nq, ctx.sm_scale, HEAD_DIM=D, BLOCK_M=row_block
        )
        return dq, dk, dv, None


def flash_attention(q, k, v, key_mask=None):
    """``speedrun.kernels.triton_attention.flash_attention`` with this file's backward."""
    return _FlashAttentionKeyTiles.apply(q, k, v, key_mask)
