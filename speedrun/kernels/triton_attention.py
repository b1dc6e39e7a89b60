"""Flash attention for PRX image queries over [text, image] keys with a key padding mask (Triton).

Forward: online softmax in fp32, saving the output and row LSE. Backward: delta = rowsum(dO * O), then
one program per batch*head walks its key blocks (dK, dV in registers, dQ shares added to fp32 partial
sums): five matmuls per tile, no atomics (deterministic grads); padding-only key blocks are skipped.
Without a GPU, set ``TRITON_INTERPRET=1`` before importing this module and pass CPU tensors."""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

# Read once, at import, because that is when triton.jit chose to compile or interpret the kernels.
_INTERPRET = triton.knobs.runtime.interpret

# Module-level constexprs are the globals a Triton kernel may read.
_LOG2E = tl.constexpr(1.4426950408889634)
_LN2 = tl.constexpr(0.6931471805599453)


def _configs(blocks: list[tuple[int, int, int, int]]) -> list[triton.Config]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) candidates; one small tile when interpreting."""
    if _INTERPRET:
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=4, num_stages=1)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in blocks]


_FWD_CONFIGS = _configs(
    [(64, 64, 4, 2), (64, 64, 4, 3), (128, 64, 4, 3), (128, 64, 8, 3), (128, 32, 4, 3), (64, 32, 4, 4),
     (128, 128, 8, 3), (64, 128, 4, 3)]
)  # fmt: skip
# BLOCK_N keys (with their dK, dV in registers) stay resident while BLOCK_M query blocks stream past.
_BWD_CONFIGS = _configs(
    [(32, 64, 4, 2), (64, 64, 4, 2), (64, 64, 8, 2), (32, 128, 4, 2), (64, 128, 8, 2), (32, 64, 4, 3)]
)
_TUNE_KEY = ["Nq", "Nk", "HEAD_DIM"]


@triton.jit
def _key_valid(mask_ptr, b, offs_n, Nk):
    """True for keys inside the sequence that the (B, Nk) byte padding mask lets queries attend to."""
    in_seq = offs_n < Nk
    return tl.load(mask_ptr + b * Nk + offs_n, mask=in_seq, other=0) != 0


@triton.autotune(configs=_FWD_CONFIGS, key=_TUNE_KEY)
@triton.jit
def _attn_fwd_kernel(
    Q, K, V, Mask, Out, Lse,
    sq_b, sq_h, sq_m, sq_d, sk_b, sk_h, sk_n, sk_d, sv_b, sv_h, sv_n, sv_d,
    so_b, so_h, so_m, so_d,
    H, Nq, Nk, qk_scale,
    HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    # torch.compile launches user kernels with Python floats typed fp64: keep the math fp32.
    qk_scale = tl.cast(qk_scale, tl.float32)
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < Nq
    q_ptrs = Q + b * sq_b + h * sq_h + offs_m[:, None] * sq_m + offs_d[None, :] * sq_d
    q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)
    k_base = K + b * sk_b + h * sk_h
    v_base = V + b * sv_b + h * sv_h

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for start_n in range(0, Nk, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        in_seq = offs_n < Nk
        valid = _key_valid(Mask, b, offs_n, Nk)
        kt = tl.load(k_base + offs_n[None, :] * sk_n + offs_d[:, None] * sk_d, mask=in_seq[None, :], other=0.0)
        s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale
        s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # A block of fully padded text keys leaves m_new at -inf; shifting by 0 instead keeps
        # exp2(-inf - shift) = 0 rather than NaN.
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - shift[:, None])
        alpha = tl.exp2(m_i - shift)
        l_i = l_i * alpha + tl.sum(p, 1)
        # Tail rows of V are zeroed: p is 0 there, but 0 * uninitialised memory may be NaN.
        v = tl.load(v_base + offs_n[:, None] * sv_n + offs_d[None, :] * sv_d, mask=in_seq[:, None], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new

    # A row with no valid key (only possible for a sample whose every key is padding) has l = 0
    # and acc = 0: dividing by 1 returns zeros, like the torch path in speedrun.kernels.dispatch,
    # and its LSE stays -inf, which the backward's key mask turns into zero grads.
    l_i = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_i[:, None]
    out_ptrs = Out + b * so_b + h * so_h + offs_m[:, None] * so_m + offs_d[None, :] * so_d
    tl.store(out_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None])
    # Natural-log LSE of the scaled scores, so it reads the same as other attention kernels'.
    tl.store(Lse + pid_bh.to(tl.int64) * Nq + offs_m, (m_i + tl.log2(l_i)) * _LN2, mask=row_ok)


@triton.jit
def _attn_bwd_delta_kernel(
    Out, dOut, Delta,
    so_b, so_h, so_m, so_d, sdo_b, sdo_h, sdo_m, sdo_d,
    H, Nq,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < Nq
    o_ptrs = Out + b * so_b + h * so_h + offs_m[:, None] * so_m + offs_d[None, :] * so_d
    o = tl.load(o_ptrs, mask=row_ok[:, None], other=0.0).to(tl.float32)
    do_ptrs = dOut + b * sdo_b + h * sdo_h + offs_m[:, None] * sdo_m + offs_d[None, :] * sdo_d
    do = tl.load(do_ptrs, mask=row_ok[:, None], other=0.0).to(tl.float32)
    tl.store(Delta + pid_bh.to(tl.int64) * Nq + offs_m, tl.sum(o * do, 1), mask=row_ok)


@triton.autotune(configs=_BWD_CONFIGS, key=_TUNE_KEY)
@triton.jit
def _attn_bwd_kernel(
    Q, K, V, Mask, dOut, Lse, Delta, dK, dV, dQ, dQacc,
    sq_b, sq_h, sq_m, sq_d, sk_b, sk_h, sk_n, sk_d, sv_b, sv_h, sv_n, sv_d,
    sdo_b, sdo_h, sdo_m, sdo_d, sdk_b, sdk_h, sdk_n, sdk_d, sdv_b, sdv_h, sdv_n, sdv_d,
    sdq_b, sdq_h, sdq_m, sdq_d,
    H, Nq, Nk, qk_scale, sm_scale,
    HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    # torch.compile launches user kernels with Python floats typed fp64: keep the math fp32.
    qk_scale = tl.cast(qk_scale, tl.float32)
    sm_scale = tl.cast(sm_scale, tl.float32)
    pid_bh = tl.program_id(0)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    offs_d = tl.arange(0, HEAD_DIM)
    q_base = Q + b * sq_b + h * sq_h
    do_base = dOut + b * sdo_b + h * sdo_h
    dq_base = dQ + b * sdq_b + h * sdq_h
    row_base = pid_bh.to(tl.int64) * Nq
    acc_base = dQacc + row_base * HEAD_DIM

    # Key tiles holding no valid key (padded text) are skipped: find the first and last that
    # hold one, where the dQ partial sums start from zero and end in the output.
    first_tile = Nk + 0
    last_tile = Nk * 0 - 1
    for start_n in range(0, Nk, BLOCK_N):
        has_key = tl.max(_key_valid(Mask, b, start_n + tl.arange(0, BLOCK_N), Nk).to(tl.int32), 0) > 0
        first_tile = tl.where(has_key & (first_tile == Nk), start_n, first_tile)
        last_tile = tl.where(has_key, start_n, last_tile)

    for start_n in range(0, Nk, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        in_seq = offs_n < Nk
        valid = _key_valid(Mask, b, offs_n, Nk)
        k_ptrs = K + b * sk_b + h * sk_h + offs_n[:, None] * sk_n + offs_d[None, :] * sk_d
        k = tl.load(k_ptrs, mask=in_seq[:, None], other=0.0)
        v_ptrs = V + b * sv_b + h * sv_h + offs_n[:, None] * sv_n + offs_d[None, :] * sv_d
        v = tl.load(v_ptrs, mask=in_seq[:, None], other=0.0)
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
            acc_ptrs = acc_base + offs_m[:, None] * HEAD_DIM + offs_d[None, :]
            if start_n != first_tile:
                dq += tl.load(acc_ptrs, mask=row_ok[:, None], other=0.0)
            if start_n == last_tile:
                dq_ptrs = dq_base + offs_m[:, None] * sdq_m + offs_d[None, :] * sdq_d
                tl.store(dq_ptrs, (dq * sm_scale).to(dQ.dtype.element_ty), mask=row_ok[:, None])
            else:
                tl.store(acc_ptrs, dq, mask=row_ok[:, None])
        # The next key tile reads back partial sums that other threads of this program wrote.
        tl.debug_barrier()
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

    # No valid key at all: every probability was 0, so dQ is too.
    if last_tile < 0:
        for start_m in range(0, Nq, BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M)
            dq_ptrs = dq_base + offs_m[:, None] * sdq_m + offs_d[None, :] * sdq_d
            tl.store(dq_ptrs, tl.zeros([BLOCK_M, HEAD_DIM], dQ.dtype.element_ty), mask=(offs_m < Nq)[:, None])


def _check_inputs(q, k, v, key_mask) -> None:
    """Shapes the kernels index by (a mismatch would read out of bounds); Triton refuses other misuse itself."""
    B, H, _, D = q.shape
    if k.dim() != 4 or k.shape != v.shape or (k.shape[0], k.shape[1], k.shape[3]) != (B, H, D):
        raise ValueError(f"q must be (B, H, Nq, D) and k, v (B, H, Nk, D); got q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}")  # fmt: skip
    if key_mask is not None and (key_mask.dtype != torch.bool or key_mask.shape != (B, k.shape[2])):
        raise ValueError(f"key_mask must be a bool tensor of shape ({B}, {k.shape[2]}); got {key_mask.dtype} "
                         f"{tuple(key_mask.shape)}")  # fmt: skip


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, key_mask):
        _check_inputs(q, k, v, key_mask)
        B, H, Nq, D = q.shape
        Nk = k.shape[2]
        # The kernels read 0 / 1 bytes: a copy, since inductor cannot lower a bool->uint8 view under
        # torch.compile. Without a mask an all-ones one keeps a single kernel variant.
        if key_mask is None:
            key_mask = torch.ones((B, Nk), dtype=torch.bool, device=q.device)
        mask = key_mask.to(torch.uint8).contiguous()
        # Tokens-major storage makes the usual out.transpose(1, 2).reshape(B, Nq, H * D) free.
        out = torch.empty((B, Nq, H, D), device=q.device, dtype=q.dtype).transpose(1, 2)
        lse = torch.empty((B, H, Nq), device=q.device, dtype=torch.float32)
        ctx.sm_scale = 1.0 / math.sqrt(D)
        ctx.qk_scale = ctx.sm_scale / math.log(2.0)  # scores in log2 units for exp2
        # TF32 would cost fp32 inputs ~3 decimal digits; the half types take the backend default.
        ctx.precision = "ieee" if q.dtype == torch.float32 else None
        _attn_fwd_kernel[lambda meta: (triton.cdiv(Nq, meta["BLOCK_M"]), B * H)](
            q, k, v, mask, out, lse,
            *q.stride(), *k.stride(), *v.stride(), *out.stride(),
            H, Nq, Nk, ctx.qk_scale,
            HEAD_DIM=D, PRECISION=ctx.precision,
        )  # fmt: skip
        ctx.save_for_backward(q, k, v, mask, out, lse)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, mask, out, lse = ctx.saved_tensors
        B, H, Nq, D = q.shape
        Nk = k.shape[2]
        delta = torch.empty_like(lse)
        delta_block = 16 if _INTERPRET else 64
        _attn_bwd_delta_kernel[(triton.cdiv(Nq, delta_block), B * H)](
            out, dout, delta, *out.stride(), *dout.stride(), H, Nq,
            HEAD_DIM=D, BLOCK_M=delta_block,
        )  # fmt: skip
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        # fp32 partial sums of dQ over the key tiles visited so far (B * H * Nq * D * 4 bytes).
        dq_acc = torch.empty((B * H, Nq, D), device=q.device, dtype=torch.float32)
        _attn_bwd_kernel[(B * H,)](
            q, k, v, mask, dout, lse, delta, dk, dv, dq, dq_acc,
            *q.stride(), *k.stride(), *v.stride(), *dout.stride(), *dk.stride(), *dv.stride(), *dq.stride(),
            H, Nq, Nk, ctx.qk_scale, ctx.sm_scale,
            HEAD_DIM=D, PRECISION=ctx.precision,
        )  # fmt: skip
        return dq, dk, dv, None


def flash_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :])`` within the input
    dtype's rounding for q (B, H, Nq, D), k, v (B, H, Nk, D) of fp16/bf16/fp32, D a power of two >= 16, and
    ``key_mask`` (B, Nk) bool or None; padded keys get zero grads, a sample with no valid key zeros (not
    NaN). The output is a tokens-major view of a contiguous (B, Nq, H, D) buffer."""
    return _FlashAttention.apply(q, k, v, key_mask)
