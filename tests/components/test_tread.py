"""TREAD: exact keep fraction, deterministic routing, identity at evaluation, REPA sees visible tokens."""

from __future__ import annotations

import pytest
import torch
from component_helpers import forward, make_batch, make_ctx

from speedrun.components import StepState
from speedrun.components.irepa import IREPA, IREPAParams, spatial_normalize
from speedrun.components.repa import REPA, REPAParams
from speedrun.components.tread import (
    TREAD,
    TREADParams,
    kept_count,
    resolve_span,
    routing_generator,
    routing_index,
    step_routing_index,
)
from speedrun.errors import SpeedrunError
from speedrun.protocol import Component, ContractError


def tread(ctx, **params) -> TREAD:
    comp = TREAD(TREADParams(**params))
    comp.setup(ctx)
    return comp


def test_span_defaults_scale_with_depth_and_are_validated():
    assert resolve_span(None, None, 16) == (2, 12)
    assert resolve_span(None, None, 6) == (1, 5)  # round(0.75), round(4.5) with halves up
    assert resolve_span(None, None, 2) == (1, 2)
    assert resolve_span(3, None, 16) == (3, 12)
    for start, end, depth in [(5, 4, 16), (2, 17, 16), (None, 3, 2)]:
        with pytest.raises(SpeedrunError, match="1 <= start <= end <="):
            resolve_span(start, end, depth)


@pytest.mark.parametrize("keep,n,expected", [(0.5, 64, 32), (0.25, 10, 3), (0.75, 10, 8), (1.0, 7, 7), (0.3, 5, 2)])
def test_keeps_exactly_round_keep_n(keep, n, expected):
    assert kept_count(keep, n) == expected
    comp = TREAD(TREADParams(keep=keep))
    tokens = torch.randn(4, n, 6)
    state = StepState(step=0, seed=1, training=True)
    routed = comp.route(tokens, state)
    index = state.token_index
    assert routed.shape == (4, expected, 6) and index.shape == (4, expected)
    for row in range(4):
        assert torch.equal(index[row], index[row].unique())  # sorted, no repeats
        torch.testing.assert_close(routed[row], tokens[row, index[row]])
    assert index.min() >= 0 and index.max() < n


def test_a_keep_that_keeps_no_token_of_the_grid_is_refused_at_setup():
    ctx = make_ctx()  # smoke: an 8x8 token grid
    assert tread(ctx, keep=0.5 / 64).hooks()
    with pytest.raises(SpeedrunError) as info:
        tread(ctx, keep=0.007)
    assert str(info.value) == (
        "component 'tread': keep=0.007 keeps none of the 64 image tokens of the 8x8 token grid "
        "(round(keep * 64) = 0); raise keep"
    )


def test_routing_is_deterministic_per_seed_step_rank():
    def draw(seed, step, rank):
        return routing_index(8, 64, 32, routing_generator(seed, step, rank))

    assert torch.equal(draw(0, 5, 0), draw(0, 5, 0))
    others = [draw(0, 6, 0), draw(0, 5, 1), draw(1, 5, 0)]
    assert all(not torch.equal(draw(0, 5, 0), other) for other in others)
    rows = draw(0, 5, 0)
    assert not torch.equal(rows[0], rows[1])  # each sample has its own routing


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_routing_on_cuda_is_the_cpu_routing():
    """The draw stays on the CPU generator (the same routing on every device); only the copy to
    the GPU is queued, from pinned memory."""
    state = StepState(step=3, seed=2, rank=1, training=True)
    on_cpu = step_routing_index(state, 8, 64, 32, torch.device("cpu"))
    on_cuda = step_routing_index(state, 8, 64, 32, torch.device("cuda"))
    assert on_cuda.device.type == "cuda" and torch.equal(on_cuda.cpu(), on_cpu)


def test_restore_scatters_processed_tokens_back_into_the_saved_set():
    comp = TREAD(TREADParams(keep=0.5))
    tokens = torch.randn(2, 10, 3, requires_grad=True)
    state = StepState(step=3, seed=0, training=True)
    routed = comp.route(tokens, state)
    index = state.token_index.clone()
    restored = comp.restore(routed * 2, state)
    assert state.token_index is None and "tread:full" not in state.records
    kept = torch.zeros(2, 10, dtype=torch.bool).scatter(1, index, True)
    torch.testing.assert_close(restored[kept], 2 * tokens[kept])
    torch.testing.assert_close(restored[~kept], tokens[~kept])
    restored.sum().backward()
    torch.testing.assert_close(tokens.grad, 1 + kept.float()[..., None].expand(-1, -1, 3))


def test_evaluation_and_keep_all_equal_the_plain_model():
    ctx = make_ctx()
    batch, x_t, t = make_batch(ctx)
    comp = tread(ctx)
    assert (comp.start, comp.end) == (1, 2) and set(comp.hooks()) == {0, 1}
    plain, _ = forward(ctx, [], batch, x_t, t, training=False)
    routed_off, state = forward(ctx, [comp], batch, x_t, t, training=False)
    assert torch.equal(routed_off, plain) and state.token_index is None
    keep_all, _ = forward(ctx, [tread(ctx, keep=1.0)], batch, x_t, t, training=True)
    torch.testing.assert_close(keep_all, plain, rtol=1e-5, atol=1e-6)
    routed_on, _ = forward(ctx, [comp], batch, x_t, t, training=True)
    assert routed_on.shape == plain.shape and not torch.allclose(routed_on, plain)


def test_routed_tokens_flow_through_the_span_only():
    ctx = make_ctx(depth=4)
    comp = tread(ctx, start=2, end=3)
    assert comp.hooks().keys() == {1, 2}
    sizes = {}

    def probe(i):
        def hook(module, args):
            sizes[i] = args[0].shape[1]

        return hook

    handles = [block.register_forward_pre_hook(probe(i)) for i, block in enumerate(ctx.model.blocks)]
    batch, x_t, t = make_batch(ctx)
    pred, state = forward(ctx, [comp], batch, x_t, t, training=True)
    for h in handles:
        h.remove()
    assert sizes == {0: 64, 1: 32, 2: 32, 3: 64} and state.token_index is None
    pred.square().mean().backward()
    assert ctx.model.blocks[1].qkv.weight.grad.abs().sum() > 0 and ctx.model.img_in.weight.grad.abs().sum() > 0


def test_single_block_span_and_nested_routing_refused():
    ctx = make_ctx()
    comp = tread(ctx, start=2, end=2)
    before, after = comp.hooks()[1]
    assert before is not None and after is not None
    state = StepState(training=True, token_index=torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(SpeedrunError, match="already routed"):
        comp.route(torch.randn(1, 4, 2), state)


def test_a_hook_that_changes_the_routed_token_set_inside_the_span_is_refused():
    """The checked hooks of ``collect_hooks`` guard TREAD's span: the routed tokens stay those it kept."""

    class Dropper(Component):
        name = "dropper"

        def hooks(self):
            return {0: (None, lambda tokens, state: tokens[:, :-1])}

    ctx = make_ctx()
    batch, x_t, t = make_batch(ctx)
    with pytest.raises(ContractError, match=r"shape \(3, 31, 64\), expected \(3, 32, 64\); state.token_index keeps 32"):
        forward(ctx, [tread(ctx, start=1, end=2), Dropper(Dropper.Params())], batch, x_t, t)


def test_repa_under_tread_compares_only_visible_tokens():
    ctx = make_ctx()
    router = tread(ctx, start=1, end=2)
    repa = REPA(REPAParams(layer=1, weight=0.5, projector_dim=16, random_init_teacher=True))
    repa.setup(ctx)
    batch, x_t, t = make_batch(ctx)
    pred, state = forward(ctx, [router, repa], batch, x_t, t, step=4)
    tokens, index = state.records["repa"]
    assert index.shape == (3, 32) and tokens.shape[:2] == (3, 32)
    expected_index = routing_index(3, 64, 32, routing_generator(ctx.seed, 4, 0))
    assert torch.equal(index, expected_index)
    loss = repa.losses(batch, pred, state)["repa"]
    y = repa.teacher(batch.images_uint8)
    visible = torch.stack([y[b, index[b]] for b in range(3)])
    proj = repa.projector(tokens)
    cos = (proj * visible).sum(-1) / (proj.norm(dim=-1) * visible.norm(dim=-1))
    torch.testing.assert_close(loss, -0.5 * cos.mean(), rtol=1e-5, atol=1e-6)


def test_irepa_under_tread_convolves_a_zero_filled_grid_and_scores_visible_tokens():
    ctx = make_ctx()
    router = tread(ctx, start=1, end=2)
    irepa = IREPA(IREPAParams(layer=1, random_init_teacher=True))
    irepa.setup(ctx)
    batch, x_t, t = make_batch(ctx)
    pred, state = forward(ctx, [router, irepa], batch, x_t, t, step=1)
    tokens, index = state.records["irepa"]
    loss = irepa.losses(batch, pred, state)["irepa"]
    full = torch.zeros(3, 64, tokens.shape[-1])
    for b in range(3):
        full[b, index[b]] = tokens[b]
    proj = irepa.projector(full.reshape(3, 8, 8, -1).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).reshape(3, 64, -1)
    y = spatial_normalize(irepa.teacher(batch.images_uint8), 0.8)  # statistics over the full grid
    p = torch.stack([proj[b, index[b]] for b in range(3)])
    v = torch.stack([y[b, index[b]] for b in range(3)])
    cos = (p * v).sum(-1) / (p.norm(dim=-1) * v.norm(dim=-1))
    torch.testing.assert_close(loss, -0.5 * cos.mean(), rtol=1e-5, atol=1e-6)
