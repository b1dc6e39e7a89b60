"""Built-ins inside the real trainer: heads train and are saved, declared and dropped; teachers stay frozen."""

from __future__ import annotations

import math
from functools import partial

import torch
from component_helpers import step_rows, train
from vae_helpers import random_init_vae

from speedrun.checkpoint import load_denoiser_strict
from speedrun.components import Component, ComponentContext, Params
from speedrun.components.contrastive_fm import ContrastiveFM, ContrastiveFMParams
from speedrun.components.irepa import IREPA, IREPAParams
from speedrun.components.repa import REPA, REPAParams
from speedrun.components.teachers import load_teacher
from speedrun.components.tread import TREAD, TREADParams
from speedrun.components.xpred import XPrediction, XPredParams
from speedrun.data.loader import Loader
from speedrun.data.prepare import prepare
from speedrun.data.shards import open_dataset
from speedrun.data.source import TrainData
from speedrun.model import MODEL_CONFIGS, build_model
from speedrun.tracks import load_track
from speedrun.train import Trainer, TrainOptions


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
    assert {k.split(".")[1] for k in meta.component_keys} == {"repa", "irepa"}
    assert len(meta.component_keys) == 6 + 2  # three Linear layers; one Conv2d
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, trainer.model.state_dict()[key]), key


class PredictionSpy(Component):
    """Test-only: keeps what each step's state says the network output means."""

    name = "test-prediction-spy"

    def __init__(self) -> None:
        super().__init__(Params())
        self.seen: list[str] = []

    def losses(self, batch, prediction, state):
        self.seen.append(state.prediction)
        return {}


def test_components_learn_what_the_output_means_from_the_objective(smoke_data_root, tmp_path, short_smoke):
    # contrastive-fm converts an x0 output to velocity before contrasting it with a velocity.
    spy = PredictionSpy()
    _, summary = train(short_smoke, smoke_data_root, tmp_path / "run", components=[XPrediction(XPredParams()), spy])
    assert summary.status == "ok" and spy.seen == ["x0", "x0"]


class ImageSpy(Component):
    """Test-only: asks for the real images and keeps those each step received."""

    name = "test-image-spy"

    def __init__(self) -> None:
        super().__init__(Params())
        self.seen: dict[int, torch.Tensor] = {}

    def setup(self, ctx: ComponentContext) -> None:
        ctx.use_images(self.name)

    def losses(self, batch, prediction, state):
        self.seen[state.step] = batch.images_uint8.clone()
        return {}


def test_a_latent_track_that_keeps_train_images_feeds_teachers(tmp_path, track_variant, monkeypatch):
    """prx-256's arrangement at smoke size: latents to denoise, the real images beside them. A
    component that asks for images gets each batch's own (uint8, image size), REPA trains on them,
    and a run whose components do not ask never loads them."""
    monkeypatch.setitem(MODEL_CONFIGS, "test-latent", partial(MODEL_CONFIGS["smoke"], in_channels=16, patch_size=2))
    track = track_variant(
        data={
            "representation": "flux-vae",
            "vae": load_track("prx-256").data.vae,
            "train_images": True,
            "train_examples": 24,
            "reference_examples": 8,
        },
        model={"config": "test-latent"},
        train={"steps": 3, "untimed_warmup_steps": 1, "checkpoint_every": 3},
    )
    data = TrainData(open_dataset(prepare(track, tmp_path / "data", progress=False, vae=random_init_vae())))
    split = data.dataset.split("train")
    assert data.dataset.x_shape == (16, 4, 4) and data.train_images

    def run(components, name):
        options = TrainOptions(run_dir=tmp_path / name, seed=0, device="cpu", progress=False)
        trainer = Trainer(track, data, components, options)
        return trainer, trainer.run()

    spy, repa = ImageSpy(), REPA(REPAParams(projector_dim=8, random_init_teacher=True))
    trainer, summary = run([spy, repa], "repa")
    assert summary.status == "ok" and trainer.ctx.uses_images and repa.grid == (2, 2)
    stream = Loader(split, track.train.global_batch, seed=0)
    for step in range(3):
        expected = split.images(stream.indices(step * track.train.global_batch, track.train.global_batch))
        assert expected.shape == (8, 32, 32, 3)
        assert torch.equal(spy.seen[step], torch.from_numpy(expected)), step
    assert all(math.isfinite(row["repa"]) and row["repa"] != 0 for row in step_rows(tmp_path / "repa"))

    plain, _ = run([TREAD(TREADParams(start=1, end=1))], "plain")
    assert not plain.ctx.uses_images
