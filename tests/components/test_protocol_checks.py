"""The trainer's checks on what components hand it: hooks() tables, hook outputs, routed tokens coming
back, and loss-term names that would clash with the training log's own columns."""

from __future__ import annotations

import pytest
import torch
from component_helpers import make_batch, make_ctx, step_rows, train

from speedrun.components import Component, Params
from speedrun.components.tread import TREAD, TREADParams
from speedrun.data.source import TrainData
from speedrun.protocol import ContractError, StepState, collect_hooks, collect_losses, replacing_objective
from speedrun.runlog import STEP_LOG_KEYS
from speedrun.train import Trainer, TrainOptions


class Fake(Component):
    """Test-only: hands the trainer whatever hooks() table and loss terms it is given."""

    name = "fake"

    def __init__(self, table=None, terms=()) -> None:
        super().__init__(Params())
        self.table = {} if table is None else table
        self.terms = terms

    def hooks(self):
        return self.table

    def losses(self, batch, prediction, state):
        return {name: prediction.float().mean() * 0 for name in self.terms}


def identity(tokens, state):
    return tokens


def route_half(tokens, state):
    """Keeps the first half of the tokens, in order."""
    keep = tokens.shape[1] // 2
    state.token_index = torch.arange(keep).expand(tokens.shape[0], -1)
    return tokens[:, :keep]


def unroute_without_restoring(tokens, state):
    state.token_index = None
    return tokens


def run_forward(ctx, hooks):
    batch, x_t, t = make_batch(ctx)
    state = StepState(step=0, seed=ctx.seed, training=True, x_t=x_t, t=t)
    return ctx.model(x_t, t, batch.text, batch.text_mask, hooks=hooks, state=state)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ([(0, (identity, None))], "hooks() must return a dict {block_index: (before, after)}, got list"),
        ({2: (identity, None)}, "hooks() key 2 is not a block index of the denoiser's 2 blocks (0..1)"),
        ({-1: (identity, None)}, "hooks() key -1 is not a block index"),
        ({"0": (identity, None)}, "hooks() key '0' is not a block index"),
        ({True: (identity, None)}, "hooks() key True is not a block index"),
        ({0: identity}, "hooks()[0] must be a (before, after) pair of hooks or None"),
        ({0: (identity,)}, "hooks()[0] must be a (before, after) pair of hooks or None"),
        ({1: (None, "identity")}, "hooks()[1] must be a (before, after) pair of hooks or None, got (None, 'identity')"),
    ],
)
def test_a_bad_hooks_table_is_refused_at_setup(table, message):
    with pytest.raises(ContractError) as info:
        collect_hooks([Fake(table)], depth=2)
    assert str(info.value).startswith(f"component 'fake' (Fake): {message}")


def test_the_trainer_checks_block_indices_against_its_denoiser(smoke_data_root, tmp_path, short_smoke):
    data = TrainData.open(short_smoke, smoke_data_root)
    options = TrainOptions(run_dir=tmp_path / "run", seed=0, device="cpu", progress=False)
    with pytest.raises(ContractError, match=r"component 'fake' \(Fake\): hooks\(\) key 2 is not a block index"):
        Trainer(short_smoke, data, [Fake({2: (identity, None)})], options)


@pytest.mark.parametrize(
    ("hook", "message"),
    [
        (lambda tokens, state: None, "returned NoneType, not a tensor of image tokens"),
        (lambda tokens, state: tokens.double(), "returned torch.float64 tokens on cpu, expected torch.float32 on cpu"),
        (
            lambda tokens, state: tokens[:, 1:],
            "returned tokens of shape (3, 63, 64), expected (3, 64, 64); a hook that does not route keeps",
        ),
        (
            lambda tokens, state: tokens[..., :8],
            "returned tokens of shape (3, 64, 8), expected (3, 64, 64)",
        ),
    ],
)
def test_a_hook_output_unlike_its_input_is_refused(hook, message):
    ctx = make_ctx()
    assert ctx.token_grid == (8, 8) and ctx.model.config.hidden_size == 64  # the shapes the messages name
    with pytest.raises(ContractError) as info:
        run_forward(ctx, collect_hooks([Fake({1: (None, hook)})], depth=2))
    assert str(info.value).startswith(f"component 'fake' (Fake), after hook of block index 1 {message}")


def route_but_return_all(tokens, state):
    route_half(tokens, state)
    return tokens


@pytest.mark.parametrize(
    ("table", "message"),
    [
        pytest.param(
            {0: (route_but_return_all, None)},
            "component 'fake' (Fake), before hook of block index 0 returned tokens of shape (3, 64, 64), "
            "expected (3, 32, 64); state.token_index keeps 32 tokens",
            id="routing-hook-returns-exactly-the-kept-tokens",
        ),
        pytest.param(
            {0: (route_half, unroute_without_restoring)},
            "component 'fake' (Fake), after hook of block index 0 returned tokens of shape (3, 32, 64), "
            "expected (3, 64, 64); routing ended (state.token_index None): every one of the 64 image tokens "
            "must come back",
            id="hook-ending-routing-brings-every-token-back",
        ),
        pytest.param(
            {0: (route_half, None)},
            "component 'fake' (Fake), before hook of block index 0 routed the image tokens (kept 32 of 64) and "
            "no hook brought every token back by the end of the last block",
            id="still-routed-after-the-last-block-names-the-router",
        ),
    ],
)
def test_routed_tokens_must_all_come_back(table, message):
    with pytest.raises(ContractError) as info:
        run_forward(make_ctx(), collect_hooks([Fake(table)], depth=2))
    assert str(info.value) == message


def test_checked_hooks_compute_exactly_what_the_bare_hooks_compute():
    ctx = make_ctx()
    tread, recorder = TREAD(TREADParams(start=1, end=2)), Fake({0: (None, identity), 1: (identity, identity)})
    tread.setup(ctx)
    bare: dict[int, list] = {}
    for comp in (tread, recorder):
        for index, pair in comp.hooks().items():
            bare.setdefault(index, []).append(pair)
    checked = run_forward(ctx, collect_hooks([tread, recorder], depth=2))
    assert torch.equal(checked, run_forward(ctx, bare))


@pytest.mark.parametrize(("term", "shown"), [("lr", "'lr'"), ("loss_fm", "'loss_fm'"), (3, "3")])
def test_a_loss_term_named_like_a_log_column_is_refused(smoke_data_root, tmp_path, short_smoke, term, shown):
    with pytest.raises(ContractError) as info:
        train(short_smoke, smoke_data_root, tmp_path / "run", components=[Fake(terms=[term])])
    assert str(info.value).startswith(
        f"component 'fake' (Fake): loss term {shown} cannot name a column of the training log: names are strings "
        f"other than the trainer's own {sorted(STEP_LOG_KEYS)}"
    )


class Other(Fake):
    """A second component, for what two components may not both do."""

    name = "other"
    replaced_by = object()  # stands for an Objective: which one a component replaces it with

    def objective(self):
        return self.replaced_by


def test_two_components_may_not_return_one_loss_term():
    with pytest.raises(ContractError, match="components 'fake' and 'other' both return loss term 'aux'"):
        collect_losses([Fake(terms=["aux"]), Other(terms=["aux"])], None, torch.zeros(2), None, frozenset())


def test_two_components_may_not_both_replace_the_objective():
    assert replacing_objective([Fake(), Other()]) is Other.replaced_by and replacing_objective([Fake()]) is None
    with pytest.raises(ContractError, match=r"components \['other', 'other'\] each replace the objective; at most one"):
        replacing_objective([Other(), Fake(), Other()])


def test_a_correct_component_trains_and_its_term_is_a_column_of_its_own(smoke_data_root, tmp_path, short_smoke):
    comps = [TREAD(TREADParams(start=1, end=2)), Fake({0: (None, identity)}, terms=["fake-term"])]
    _, summary = train(short_smoke, smoke_data_root, tmp_path / "run", components=comps)
    assert summary.status == "ok"
    rows = step_rows(tmp_path / "run")
    assert len(rows) == 2
    # STEP_LOG_KEYS is what a step line holds besides the terms (and "event", which marks other lines).
    assert all(set(row) == STEP_LOG_KEYS - {"event"} | {"fake-term"} for row in rows)
