"""Fused per-head RMSNorm + 2-D axial RoPE on image queries and keys (Triton).

One launch normalises q and k rows in fp32 and rotates them with one load of the cos/sin tile. The
backward recomputes the norm; weight grads are reduced in fp32 without atomics (deterministic).
Without a GPU, set ``TRITON_INTERPRET=1`` before importing this module and pass CPU tensors."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Read once, at import, because that is when triton.jit chose to compile or interpret the kernels.
_INTERPRET = triton.knobs.runtime.interpret

# Elements of one (tokens x head-dim) tile: 16 fp32 values per thread at 4 warps for each of the
# even/odd halves, enough to hide memory latency without spilling.
_TILE_ELEMENTS = 4096


@triton.jit
def _load_pairs(ptr, base, rows, row_ok, sx_n, sx_d, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr):
    ptrs = ptr + base + rows[:, None] * sx_n + tl.arange(0, HEAD_DIM)[None, :] * sx_d
    x = tl.load(ptrs, mask=row_ok[:, None], other=0.0).to(tl.float32)
    return tl.split(tl.reshape(x, (BLOCK_N, HEAD_DIM // 2, 2)))


@triton.jit
def _store_pairs(ptr, base, rows, row_ok, even, odd, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr):
    cols = tl.arange(0, HEAD_DIM)
    x = tl.reshape(tl.join(even, odd), (BLOCK_N, HEAD_DIM))
    tl.store(ptr + base + rows[:, None] * HEAD_DIM + cols[None, :], x.to(ptr.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _norm_rope_fwd_tile(
    x_ptr, y_ptr, w_ptr, x_base, y_base, rows, row_ok, cos, sin, sx_n, sx_d, eps,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    xe, xo = _load_pairs(x_ptr, x_base, rows, row_ok, sx_n, sx_d, HEAD_DIM, BLOCK_N)
    we, wo = tl.split(tl.reshape(tl.load(w_ptr + tl.arange(0, HEAD_DIM)).to(tl.float32), (HEAD_DIM // 2, 2)))
    rstd = tl.rsqrt((tl.sum(xe * xe, 1) + tl.sum(xo * xo, 1)) / HEAD_DIM + eps)
    ye = xe * rstd[:, None] * we[None, :]
    yo = xo * rstd[:, None] * wo[None, :]
    _store_pairs(y_ptr, y_base, rows, row_ok, cos * ye - sin * yo, sin * ye + cos * yo, HEAD_DIM, BLOCK_N)


@triton.jit
def _tile(cos_ptr, sin_ptr, sc_b, H, N, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's ids, sample, head, token rows (``row_ok`` where they exist) and their cos/sin tables."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    half = tl.arange(0, HEAD_DIM // 2)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    table = b * sc_b + rows[:, None] * (HEAD_DIM // 2) + half[None, :]
    cos = tl.load(cos_ptr + table, mask=row_ok[:, None], other=0.0)
    sin = tl.load(sin_ptr + table, mask=row_ok[:, None], other=0.0)
    return pid_n, pid_bh, b, h, rows, row_ok, cos, sin


@triton.jit
def _norm_rope_fwd_kernel(
    q_ptr, k_ptr, qo_ptr, ko_ptr, qw_ptr, kw_ptr, cos_ptr, sin_ptr,
    sq_b, sq_h, sq_n, sq_d, sk_b, sk_h, sk_n, sk_d, sc_b,
    H, N, eps,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    # torch.compile launches user kernels with Python floats typed fp64: keep the math fp32.
    eps = tl.cast(eps, tl.float32)
    _, pid_bh, b, h, rows, row_ok, cos, sin = _tile(cos_ptr, sin_ptr, sc_b, H, N, HEAD_DIM, BLOCK_N)
    out_base = pid_bh.to(tl.int64) * N * HEAD_DIM
    _norm_rope_fwd_tile(
        q_ptr, qo_ptr, qw_ptr, b.to(tl.int64) * sq_b + h * sq_h, out_base,
        rows, row_ok, cos, sin, sq_n, sq_d, eps, HEAD_DIM, BLOCK_N,
    )  # fmt: skip
    _norm_rope_fwd_tile(
        k_ptr, ko_ptr, kw_ptr, b.to(tl.int64) * sk_b + h * sk_h, out_base,
        rows, row_ok, cos, sin, sk_n, sk_d, eps, HEAD_DIM, BLOCK_N,
    )  # fmt: skip


@triton.jit
def _norm_rope_bwd_tile(
    x_ptr, dy_ptr, dx_ptr, w_ptr, dw_ptr, x_base, dy_base, dx_base, dw_base,
    rows, row_ok, cos, sin, sx_n, sx_d, sdy_n, sdy_d, eps,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    xe, xo = _load_pairs(x_ptr, x_base, rows, row_ok, sx_n, sx_d, HEAD_DIM, BLOCK_N)
    dye, dyo = _load_pairs(dy_ptr, dy_base, rows, row_ok, sdy_n, sdy_d, HEAD_DIM, BLOCK_N)
    we, wo = tl.split(tl.reshape(tl.load(w_ptr + tl.arange(0, HEAD_DIM)).to(tl.float32), (HEAD_DIM // 2, 2)))
    rstd = tl.rsqrt((tl.sum(xe * xe, 1) + tl.sum(xo * xo, 1)) / HEAD_DIM + eps)
    # The rotation is orthogonal: the grad of its input is the inverse rotation of the grad.
    due = cos * dye + sin * dyo
    duo = cos * dyo - sin * dye
    xhe = xe * rstd[:, None]
    xho = xo * rstd[:, None]
    # Masked rows load as zeros, so they add nothing to the weight-grad partial sums.
    cols = tl.arange(0, HEAD_DIM)
    dw = tl.reshape(tl.join(tl.sum(due * xhe, 0), tl.sum(duo * xho, 0)), (HEAD_DIM,))
    tl.store(dw_ptr + dw_base + cols, dw)
    # d/dx of x * rstd(x): rstd * (g - x_hat * mean(g * x_hat)), with g the grad of x_hat.
    ge = due * we[None, :]
    go = duo * wo[None, :]
    proj = (tl.sum(ge * xhe, 1) + tl.sum(go * xho, 1)) / HEAD_DIM
    dxe = rstd[:, None] * (ge - xhe * proj[:, None])
    dxo = rstd[:, None] * (go - xho * proj[:, None])
    _store_pairs(dx_ptr, dx_base, rows, row_ok, dxe, dxo, HEAD_DIM, BLOCK_N)


@triton.jit
def _norm_rope_bwd_kernel(
    q_ptr, k_ptr, dqo_ptr, dko_ptr, dq_ptr, dk_ptr, qw_ptr, kw_ptr, dqw_ptr, dkw_ptr,
    cos_ptr, sin_ptr,
    sq_b, sq_h, sq_n, sq_d, sk_b, sk_h, sk_n, sk_d,
    sdq_b, sdq_h, sdq_n, sdq_d, sdk_b, sdk_h, sdk_n, sdk_d, sc_b,
    H, N, eps,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    # torch.compile launches user kernels with Python floats typed fp64: keep the math fp32.
    eps = tl.cast(eps, tl.float32)
    pid_n, pid_bh, b, h, rows, row_ok, cos, sin = _tile(cos_ptr, sin_ptr, sc_b, H, N, HEAD_DIM, BLOCK_N)
    dx_base = pid_bh.to(tl.int64) * N * HEAD_DIM
    # One row of weight-grad partial sums per program, summed over programs by the caller.
    dw_base = (pid_bh.to(tl.int64) * tl.num_programs(0) + pid_n) * HEAD_DIM
    b64 = b.to(tl.int64)
    _norm_rope_bwd_tile(
        q_ptr, dqo_ptr, dq_ptr, qw_ptr, dqw_ptr,
        b64 * sq_b + h * sq_h, b64 * sdq_b + h * sdq_h, dx_base, dw_base,
        rows, row_ok, cos, sin, sq_n, sq_d, sdq_n, sdq_d, eps, HEAD_DIM, BLOCK_N,
    )  # fmt: skip
    _norm_rope_bwd_tile(
        k_ptr, dko_ptr, dk_ptr, kw_ptr, dkw_ptr,
        b64 * sk_b + h * sk_h, b64 * sdk_b + h * sdk_h, dx_base, dw_base,
        rows, row_ok, cos, sin, sk_n, sk_d, sdk_n, sdk_d, eps, HEAD_DIM, BLOCK_N,
    )  # fmt: skip


def _launch_shape(n_tokens: int, head_dim: int, batch_heads: int) -> tuple[int, tuple[int, int]]:
    block_n = min(triton.next_power_of_2(n_tokens), max(1, _TILE_ELEMENTS // head_dim))
    return block_n, (triton.cdiv(n_tokens, block_n), batch_heads)


def _check_inputs(q, k, q_weight, k_weight, cos, sin) -> None:
    """Shapes the kernels index by (a mismatch would read out of bounds); Triton refuses other misuse itself."""
    B, _, N, D = q.shape
    if q.shape != k.shape or q_weight.shape != (D,) or k_weight.shape != (D,):
        shapes = f"q {tuple(q.shape)}, k {tuple(k.shape)}, weights {tuple(q_weight.shape)}, {tuple(k_weight.shape)}"
        raise ValueError(f"q and k must be (B, H, N, D) tensors of one shape and the weights ({D},); got {shapes}")
    if cos.shape != sin.shape or cos.shape not in ((N, D // 2), (B, N, D // 2)):
        raise ValueError(f"cos and sin must both have shape ({N}, {D // 2}) or ({B}, {N}, {D // 2}); "
                         f"got {tuple(cos.shape)} and {tuple(sin.shape)}")  # fmt: skip


class _FusedQKNormRope(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, q_weight, k_weight, cos, sin, eps):
        _check_inputs(q, k, q_weight, k_weight, cos, sin)
        B, H, N, D = q.shape
        cos, sin = (table.to(device=q.device, dtype=torch.float32).contiguous() for table in (cos, sin))
        q_weight, k_weight = q_weight.contiguous(), k_weight.contiguous()
        q_out = torch.empty((B, H, N, D), device=q.device, dtype=q.dtype)
        k_out = torch.empty_like(q_out)
        sc_b = N * (D // 2) if cos.dim() == 3 else 0
        block_n, grid = _launch_shape(N, D, B * H)
        _norm_rope_fwd_kernel[grid](
            q, k, q_out, k_out, q_weight, k_weight, cos, sin,
            *q.stride(), *k.stride(), sc_b, H, N, eps,
            HEAD_DIM=D, BLOCK_N=block_n,
        )  # fmt: skip
        ctx.save_for_backward(q, k, q_weight, k_weight, cos, sin)
        ctx.eps, ctx.sc_b = eps, sc_b
        return q_out, k_out

    @staticmethod
    def backward(ctx, dq_out, dk_out):
        q, k, q_weight, k_weight, cos, sin = ctx.saved_tensors
        B, H, N, D = q.shape
        dq = torch.empty((B, H, N, D), device=q.device, dtype=q.dtype)
        dk = torch.empty_like(dq)
        block_n, grid = _launch_shape(N, D, B * H)
        dqw_partial = torch.empty((grid[0] * grid[1], D), device=q.device, dtype=torch.float32)
        dkw_partial = torch.empty_like(dqw_partial)
        _norm_rope_bwd_kernel[grid](
            q, k, dq_out, dk_out, dq, dk, q_weight, k_weight, dqw_partial, dkw_partial, cos, sin,
            *q.stride(), *k.stride(), *dq_out.stride(), *dk_out.stride(), ctx.sc_b, H, N, ctx.eps,
            HEAD_DIM=D, BLOCK_N=block_n,
        )  # fmt: skip
        dq_weight, dk_weight = dqw_partial.sum(0).to(q_weight.dtype), dkw_partial.sum(0).to(k_weight.dtype)
        return dq, dk, dq_weight, dk_weight, None, None, None


def fused_qk_norm_rope(
    q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor, cos: torch.Tensor,
    sin: torch.Tensor, eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """``speedrun.kernels.rope.apply_rope`` of ``x * rsqrt(mean(x**2) + eps) * weight`` (fp32) for q and k,
    (B, H, N, D) of one dtype, D a power of two; weights (D,); tables (N, D//2) or (B, N, D//2), cast to
    fp32, no grad. Returns contiguous (B, H, N, D) tensors in the input dtype."""
    return _FusedQKNormRope.apply(q, k, q_weight, k_weight, cos, sin, eps)
