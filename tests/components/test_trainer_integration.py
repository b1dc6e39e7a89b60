"""Built-ins inside the real trainer: heads train and are saved, declared and dropped; teachers stay frozen."""

from __future__ import annotations

import math

import torch
from component_helpers import step_rows, train

from speedrun.checkpoint import load_denoiser_strict
from speedrun.components.contrastive_fm import ContrastiveFM, ContrastiveFMParams
from speedrun.components.irepa import IREPA, IREPAParams
from speedrun.components.repa import REPA, REPAParams
from speedrun.components.teachers import load_teacher
from speedrun.components.tread import TREAD, TREADParams
from speedrun.model import build_model


def test_repa_irepa_tread_contrastive_together(smoke_data_root, tmp_path, short_smoke):
    repa = REPA(REPAParams(projector_dim=16))  # the smoke track's policy gives a random-init teacher
    irepa = IREPA(IREPAParams(teacher="dinov2-vitb14"))
    comps = [repa, irepa, TREAD(TREADParams(start=2, end=2)), ContrastiveFM(ContrastiveFMParams())]
    trainer, summary = train(short_smoke, smoke_data_root, tmp_path / "run", components=comps)
    assert summary.status == "ok"
    for row in step_rows(tmp_path / "run"):
        parts = row["loss_fm"] + row["repa"] + row["irepa"] + row["contrastive-fm"]
        assert math.isclose(row["loss"], parts, rel_tol=1e-5, abs_tol=1e-6)
        assert -0.5 <= row["repa"] <= 0.5 and -0.5 <= row["irepa"] <= 0.5  # lambda 0.5 times a cosine
    # The teachers did not move (equal to a fresh load) and got no gradient.
    for comp, name in ((repa, "dinov2-vitl14-reg"), (irepa, "dinov2-vitb14")):
        fresh = load_teacher(name, (8, 8), random_init=True).state_dict()
        for key, value in comp.teacher.state_dict().items():
            assert torch.equal(value, fresh[key]), key
        assert all(p.grad is None and not p.requires_grad for p in comp.teacher.parameters())
    # The heads trained (their weights moved) and are in the optimizer; the teachers are not.
    in_optim = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert all(id(p) in in_optim for p in [*repa.projector.parameters(), *irepa.projector.parameters()])
    assert not any(id(p) in in_optim for p in [*repa.teacher.parameters(), *irepa.teacher.parameters()])
    assert not torch.equal(irepa.projector.weight, trainer.initial_state["heads"]["irepa"]["weight"])
    # The checkpoint declares exactly the heads; the evaluator's strict load drops them.
    ckpt = tmp_path / "run" / "checkpoints" / "step-00000002"
    fresh = build_model("smoke", text_dim=trainer.data.text_dim)
    meta = load_denoiser_strict(ckpt, fresh)
    assert {k.split(".")[1] for k in meta["component_keys"]} == {"repa", "irepa"}
    assert len(meta["component_keys"]) == 6 + 2  # three Linear layers; one Conv2d
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, trainer.model.state_dict()[key]), key
