"""The PRX denoiser: shapes, init, text handling, hooks and routing, FLOPs; and the kernel dispatch."""

import pytest
import torch
import torch.nn.functional as F
from model_helpers import randomized, reference_attention
from torch.utils.flop_counter import FlopCounterMode

from speedrun.errors import SpeedrunError
from speedrun.kernels import dispatch
from speedrun.kernels.rope import apply_rope, rope_tables
from speedrun.model import MODEL_CONFIGS, build_model
from speedrun.protocol import Component, ContractError, StepState, collect_hooks

TEXT_LEN = 6



def inputs(batch=2, hw=(16, 16), text_dim=384, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, *hw, generator=gen)
    t = torch.rand(batch, generator=gen)
    text = torch.randn(batch, TEXT_LEN, text_dim, generator=gen)
    mask = torch.ones(batch, TEXT_LEN, dtype=torch.bool)
    mask[0, 4:] = False  # sample 0 has two padding tokens
    return x, t, text, mask


@pytest.fixture(scope="module")
def smoke():
    torch.manual_seed(0)
    return randomized(build_model("smoke")).eval()


def test_shapes_and_non_square_input(smoke):
    x, t, text, mask = inputs(hw=(16, 32))
    out = smoke(x, t, text, mask)
    assert out.shape == x.shape
    assert smoke.grid((16, 32)) == (4, 8)
    assert isinstance(smoke.blocks, torch.nn.ModuleList) and len(smoke.blocks) == smoke.config.depth == 2


def test_fresh_model_outputs_exactly_zero():
    model = build_model("smoke")
    x, t, text, mask = inputs()
    assert torch.count_nonzero(model(x, t, text, mask)) == 0


def test_configs_and_overrides():
    assert MODEL_CONFIGS["tiny"]().hidden_size == 96
    assert build_model("smoke", depth=3).config.depth == 3
    with pytest.raises(SpeedrunError, match="unknown model config"):
        build_model("huge")
    tiny = sum(p.numel() for p in build_model("tiny").parameters())
    assert 1e6 <= tiny <= 3e6


def test_prx_1_2b_parameter_count_on_meta():
    with torch.device("meta"):
        model = build_model("prx-1.2b")
    n = sum(p.numel() for p in model.parameters())
    assert 1.15e9 <= n <= 1.20e9
    assert model.config.head_dim == 64 and model.grid((32, 32)) == (16, 16)


def test_text_stream_is_projected_once_and_never_updated(smoke):
    seen = []
    handles = [b.register_forward_pre_hook(lambda mod, args: seen.append(args[1])) for b in smoke.blocks]
    x, t, text, mask = inputs()
    try:
        smoke(x, t, text, mask)
    finally:
        for h in handles:
            h.remove()
    assert len(seen) == len(smoke.blocks)
    expected = smoke.text_in(text)
    for text_tokens in seen:
        torch.testing.assert_close(text_tokens, expected, atol=0, rtol=0)


def test_padded_text_tokens_do_not_change_the_output(smoke):
    x, t, text, mask = inputs()
    changed = text.clone()
    changed[~mask] = torch.randn(int((~mask).sum()), text.shape[-1]) * 100
    torch.testing.assert_close(smoke(x, t, changed, mask), smoke(x, t, text, mask), atol=1e-6, rtol=0)
    # and the mask matters: unmasking the padding does change the output
    assert not torch.allclose(smoke(x, t, changed, torch.ones_like(mask)), smoke(x, t, text, mask))


def test_output_depends_on_timestep_and_text(smoke):
    x, t, text, mask = inputs()
    base = smoke(x, t, text, mask)
    assert not torch.allclose(base, smoke(x, 1 - t, text, mask))
    assert not torch.allclose(base, smoke(x, t, text.roll(1, dims=0), mask.roll(1, dims=0)))


def routing_hooks(keep_fraction: float, permute: bool, seed: int = 0):
    """TREAD-like routing: before block 0 keep a random subset of tokens, after block 1 scatter them back."""
    gen = torch.Generator().manual_seed(seed)

    def route(tokens, state):
        b, n, _ = tokens.shape
        keep = int(n * keep_fraction)
        order = [torch.randperm(n, generator=gen) if permute else torch.arange(n) for _ in range(b)]
        index = torch.stack(order)[:, :keep]
        state.records["full"] = tokens
        state.token_index = index
        return torch.gather(tokens, 1, index[..., None].expand(-1, -1, tokens.shape[-1]))

    def restore(tokens, state):
        full = state.records.pop("full")
        index = state.token_index[..., None].expand(-1, -1, full.shape[-1])
        state.token_index = None
        return full.scatter(1, index, tokens)

    return {0: [(route, None)], 1: [(None, restore)]}


def test_keep_all_routing_equals_plain_forward(smoke):
    x, t, text, mask = inputs()
    plain = smoke(x, t, text, mask)
    for permute in (False, True):  # a permuted keep-all order only agrees if RoPE follows the tokens
        routed = smoke(x, t, text, mask, hooks=routing_hooks(1.0, permute), state=StepState(training=True))
        torch.testing.assert_close(routed, plain, atol=1e-5, rtol=1e-5)


def test_half_routing_runs_and_skips_blocks_for_dropped_tokens(smoke):
    x, t, text, mask = inputs()
    state = StepState(training=True)
    sizes = []
    hooks = routing_hooks(0.5, permute=True)
    hooks[1].append((lambda tok, st: sizes.append(tok.shape[1]) or tok, None))
    out = smoke(x, t, text, mask, hooks=hooks, state=state)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert sizes == [4 * 4 // 2]  # half the tokens of the 4 x 4 grid
    assert state.token_index is None


def test_hooks_run_in_order_around_each_block(smoke):
    calls = []

    def tag(name):
        def hook(tokens, state):
            calls.append(name)
            return tokens

        return hook

    hooks = {1: [(tag("b1"), tag("a1")), (tag("b2"), None), (None, tag("a2"))], 0: [(None, tag("a0"))]}
    x, t, text, mask = inputs()
    smoke(x, t, text, mask, hooks=hooks)
    assert calls == ["a0", "b1", "b2", "a1", "a2"]


def test_a_leaked_token_index_is_an_error(smoke):
    """The checked hooks of ``collect_hooks`` refuse a routing that never brings the tokens back."""
    route = routing_hooks(0.5, permute=True)[0][0][0]

    class Leaky(Component):
        name = "leaky"

        def hooks(self):
            return {0: (route, None)}

    x, t, text, mask = inputs()
    hooks = collect_hooks([Leaky(Leaky.Params())], smoke.config.depth)
    with pytest.raises(ContractError, match="no hook brought every token back by the end of the last block"):
        smoke(x, t, text, mask, hooks=hooks, state=StepState(training=True))


def test_flops_formula_matches_flop_counter(monkeypatch):
    # torch's counter does not see the fused CPU attention kernel: count attention as explicit matmuls
    monkeypatch.setattr(dispatch, "attention", reference_attention)
    model = build_model("smoke", bottleneck_dim=24)
    x, t, text, mask = inputs(batch=3, hw=(16, 32))
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x, t, text, mask)
    assert model.flops_per_step(3, (16, 32), TEXT_LEN) == 3 * counter.get_total_flops()


def test_prx_1_2b_flops_at_the_baseline_shape():
    with torch.device("meta"):
        model = build_model("prx-1.2b")
    flops = model.flops_per_step(256, (32, 32), 256)
    # by hand, per sample: 256 image tokens through 14.5 h^2 weights per block (qkv 3, out 1, GeGLU 10.5),
    # 256 text tokens through text_in and 2 h^2 of text kv per block, attention 4 N (N + L) h per block
    h, n, length, depth = 1792, 256, 256, 16
    dense = 2 * n * depth * 14.5 * h * h + 2 * length * (depth * 2 * h * h + 2304 * h)
    attention = depth * 4 * n * (n + length) * h
    assert flops == pytest.approx(3 * 256 * (dense + attention), rel=0.01)


# --- kernel dispatch (torch path) -------------------------------------------------------------


def test_attention_matches_explicit_softmax_and_guards_empty_rows():
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(3, 2, 5, 8, generator=gen)
    k = torch.randn(3, 2, 7, 8, generator=gen)
    v = torch.randn(3, 2, 7, 8, generator=gen)
    key_mask = torch.rand(3, 7, generator=gen) > 0.4
    key_mask[:2, 0] = True
    key_mask[2] = False  # sample 2 has no valid key at all
    out = dispatch.attention(q, k, v, key_mask)
    torch.testing.assert_close(out[:2], reference_attention(q[:2], k[:2], v[:2], key_mask[:2]), atol=1e-6, rtol=1e-5)
    assert torch.count_nonzero(out[2]) == 0


def test_qk_norm_rope_is_rmsnorm_then_rope():
    gen = torch.Generator().manual_seed(4)
    q, k = torch.randn(2, 2, 12, 16, generator=gen), torch.randn(2, 2, 12, 16, generator=gen)
    wq, wk = torch.rand(16, generator=gen), torch.rand(16, generator=gen)
    cos, sin = rope_tables(3, 4, 16, 10000.0)
    out_q, out_k = dispatch.qk_norm_rope(q, k, wq, wk, cos, sin, 1e-6)
    torch.testing.assert_close(out_q, apply_rope(F.rms_norm(q, (16,), wq, 1e-6), cos, sin), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out_k, apply_rope(F.rms_norm(k, (16,), wk, 1e-6), cos, sin), atol=1e-6, rtol=1e-5)


def test_backend_selection(monkeypatch):
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    dispatch.set_backend(None)
    assert dispatch.requested_backend() == "auto"
    assert dispatch.active_backend("cpu", 64) == "torch"
    monkeypatch.setenv(dispatch.ENV_VAR, "triton")
    assert dispatch.requested_backend() == "triton"
    with pytest.raises(SpeedrunError, match="CUDA"):
        dispatch.active_backend("cpu", 64)
    try:
        dispatch.set_backend("torch")  # an explicit choice beats the environment
        assert dispatch.active_backend("cpu", 64) == "torch"
    finally:
        dispatch.set_backend(None)
    monkeypatch.setenv(dispatch.ENV_VAR, "fast")
    with pytest.raises(SpeedrunError, match="SPEEDRUN_KERNELS"):
        dispatch.requested_backend()


def test_traces_as_one_graph_for_torch_compile(smoke):
    # the trainer compiles the denoiser; dispatch and RoPE must not break the graph
    x, t, text, mask = inputs()
    compiled = torch.compile(smoke, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x, t, text, mask), smoke(x, t, text, mask), atol=0, rtol=0)


def test_auto_picks_triton_on_cuda_only_when_the_kernels_import(monkeypatch):
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    dispatch.set_backend(None)
    monkeypatch.setattr(dispatch, "_kernels", (reference_attention, None))
    assert dispatch.active_backend("cuda", 64) == "triton"
    assert dispatch.active_backend("cpu", 64) == "torch"
    monkeypatch.setattr(dispatch, "_kernels", ImportError("no triton here"))
    assert dispatch.active_backend("cuda", 64) == "torch"
    monkeypatch.setenv(dispatch.ENV_VAR, "triton")
    with pytest.raises(SpeedrunError, match="no triton here"):
        dispatch.active_backend("cuda", 64)


@pytest.mark.parametrize("head_dim", [8, 12, 48, 96])
def test_auto_keeps_torch_for_head_dims_the_kernels_do_not_take(monkeypatch, head_dim):
    # The model allows any multiple of 4; the attention kernel's tiles need a power of two >= 16.
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    dispatch.set_backend(None)
    monkeypatch.setattr(dispatch, "_kernels", (reference_attention, None))
    assert dispatch.active_backend("cuda", head_dim) == "torch"
    assert [d for d in (16, 32, 64, 128) if dispatch.active_backend("cuda", d) == "triton"] == [16, 32, 64, 128]
    monkeypatch.setenv(dispatch.ENV_VAR, "triton")
    with pytest.raises(SpeedrunError, match=f"got {head_dim}; choose 'torch' or 'auto'"):
        dispatch.active_backend("cuda", head_dim)
