"""Tracks: frozen, versioned race definitions, ``tracks/<id>.toml``, fixing everything that decides a
score; submissions may change only its ``rules.allowed_overrides``. Unknown keys are errors. A track file of
one's own, kept anywhere, is named by its path (``--track path/to/track.toml``): ``load_track`` resolves both."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import stat
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from speedrun.errors import SpeedrunError, format_validation_error
from speedrun.metrics import METRICS

REPO_ROOT = Path(__file__).resolve().parent.parent
TRACKS_DIR = REPO_ROOT / "tracks"
TRACK_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")  # use fullmatch: "$" would accept a trailing "\n"
# Fields a submission may ever be allowed to override (a track lists its subset); all else is fixed.
OVERRIDABLE = frozenset(
    [f"optim.{k}" for k in ("lr", "betas", "eps", "weight_decay", "warmup_steps", "cooldown_steps", "grad_clip")]
    + ["train.caption_dropout", "train.compile"]
    + [f"train.timesteps.{k}" for k in ("mean", "std", "shift", "uniform_fraction")]
)
Beta = Annotated[float, Field(ge=0, lt=1)]
M = TypeVar("M", bound=BaseModel)


class _Frozen(BaseModel):
    # strict: TOML strings are never coerced; tuple fields opt out for TOML arrays. No nan or inf (they pass bounds).
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


class TeacherTraining(_Frozen):
    """A small frozen vision encoder that ``prepare`` trains on the train split of a shapes dataset, for
    REPA and iREPA (teacher "shapes-encoder"): a ``patch``-pixel patchify stem, then ``depth`` residual
    3x3 convolutions of width ``dim`` on the patch grid; AdamW, fp32 on the CPU, fixed seed and batch order."""

    patch: int = Field(4, gt=0, description="Pixels a side of one output token.")
    dim: int = Field(64, gt=0, description="Token width.")
    depth: int = Field(3, gt=0, description="Residual 3x3 convolutions on the patch grid.")
    steps: int = Field(gt=0, description="Optimizer steps.")
    batch_size: int = Field(64, gt=0)
    lr: float = Field(2e-3, gt=0)
    seed: int = Field(0, ge=0)


class DataSpec(_Frozen):
    """What the model trains on and what the evaluator compares against."""

    dataset: Literal["shapes", "mjv6", "imagefolder"]
    source: str = Field(description="Generator id, HF dataset id@revision, or imagefolder path (from the track file).")
    image_size: int = Field(gt=0, description="Square image side in pixels.")
    representation: Literal["pixels", "flux-vae"]
    vae: str | None = Field(None, description="HF repo@revision of the VAE for latent tracks.")
    train_examples: int = Field(gt=0)
    validation_examples: int = Field(gt=0)
    reference_examples: int = Field(ge=2, description="Held-out real images for metric statistics; two for a covariance.")
    text_encoder: str = Field(description="Text encoder key in speedrun.data.text.")
    text_max_tokens: int = Field(gt=0)
    train_images: bool = Field(False, description="Latent tracks: keep each train image for pixel teachers (REPA).")
    split_hashes: dict[str, str] = Field(default_factory=dict, description="sha256 of each split; empty until pinned.")
    teacher: TeacherTraining | None = Field(None, description="Shapes only: a vision encoder prepare trains (REPA).")

    @model_validator(mode="after")
    def _vae_matches_representation(self) -> DataSpec:
        if self.representation == "flux-vae" and not self.vae:
            raise ValueError("representation 'flux-vae' needs data.vae (repo@revision)")
        if self.representation == "pixels" and self.vae:
            raise ValueError("representation 'pixels' takes no data.vae")
        if self.representation == "pixels" and self.train_images:
            raise ValueError(
                "representation 'pixels' stores its images as x already; data.train_images is for latent tracks"
            )
        if self.teacher is not None:
            if self.dataset != "shapes":
                raise ValueError("data.teacher learns from the shapes generator's scene specs: dataset 'shapes' only")
            if self.representation != "pixels" and not self.train_images:
                raise ValueError("data.teacher reads the train images: a latent track needs data.train_images = true")
            if self.image_size % self.teacher.patch:
                raise ValueError(
                    f"data.teacher.patch {self.teacher.patch} does not divide data.image_size {self.image_size}"
                )
        return self


class ModelSpec(_Frozen):
    config: str = Field(description="Key of speedrun.model.MODEL_CONFIGS.")


class OptimSpec(_Frozen):
    name: Literal["adamw"] = "adamw"
    lr: float = Field(gt=0)
    betas: tuple[Beta, Beta] = Field(strict=False)
    eps: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    warmup_steps: int = Field(ge=0, description="Linear LR warmup, then constant.")
    cooldown_steps: int = Field(0, ge=0, description="Linear LR decay to 0 over the last steps of train.steps.")
    grad_clip: float = Field(gt=0, description="Max global grad norm.")


class TimestepSpec(_Frozen):
    """Logit-normal t = sigmoid(N(mean, std)), shifted, with a uniform fraction, clamped."""

    mean: float = 0.0
    std: float = Field(1.0, gt=0)
    shift: float = Field(1.0, gt=0)
    uniform_fraction: float = Field(0.1, ge=0, le=1)
    t_min: float = Field(1e-3, ge=0, lt=1)
    t_max: float = Field(1.0, gt=0, le=1, description="Exclusive upper clamp.")

    @model_validator(mode="after")
    def _clamp_is_an_interval(self) -> TimestepSpec:
        if self.t_min >= self.t_max:
            raise ValueError(f"t_min ({self.t_min}) must be below t_max ({self.t_max})")
        return self


class TrainSpec(_Frozen):
    steps: int = Field(gt=0)
    max_seconds: float | None = Field(None, gt=0, description="Timed budget (clock s): ends the step that passes it.")
    global_batch: int = Field(gt=0)
    caption_dropout: float = Field(ge=0, le=1)
    precision: Literal["fp32", "bf16"] = Field(description="bf16 = autocast on CUDA, fp32 master.")
    ema: bool = Field(False, description="Not implemented (the PRX baseline disables it): must be false.")
    compile: bool = False
    untimed_warmup_steps: int = Field(ge=0, description="Run, then model and optimizer reset.")
    checkpoint_every: int = Field(gt=0)
    timesteps: TimestepSpec = TimestepSpec()

    @field_validator("ema")
    def _no_ema(cls, v: bool) -> bool:
        if v:
            raise ValueError("EMA of the weights is not implemented (the PRX baseline trains without it); set false")
        return v


class ValLossSpec(_Frozen):
    """Deterministic stratified validation loss (MLPerf Flux style)."""

    samples: int = Field(gt=0, description="Fixed held-out validation examples.")
    timesteps: int = Field(8, gt=0, description="Fixed, evenly spaced timesteps per sample.")
    seed: int = 0
    interval: int = Field(gt=0, description="Trainer logs it every this many steps.")


class EvalSpec(_Frozen):
    interval: int = Field(gt=0, description="Evaluate every this many steps (and at the end).")
    samples: int = Field(ge=2, description="Generated images per evaluation; FID needs two for a covariance.")
    sampler: Literal["euler"] = "euler"
    sampler_steps: int = Field(gt=0)
    cfg_scale: float = Field(ge=0)
    seed: int
    reference_split: Literal["reference"] = "reference"
    metrics: tuple[str, ...] = Field(strict=False)
    extractors: Literal["pretrained", "random-init"] = Field("pretrained", description="random-init: smoke track only.")
    batch_size: int = Field(gt=0, description="Fixed feature-extraction batch size.")
    val_loss: ValLossSpec

    @field_validator("metrics")
    def _known_metrics(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if unknown := [m for m in v if m not in METRICS]:
            raise ValueError(f"unknown metric(s) {unknown}; allowed: {list(METRICS)}")
        if len(set(v)) != len(v):
            raise ValueError("metrics listed twice")
        return v


class RankingSpec(_Frozen):
    metric: str
    direction: Literal["min", "max"]


class RulesSpec(_Frozen):
    allowed_overrides: tuple[str, ...] = Field((), strict=False)
    seeds_required: int = Field(gt=0, description="Seeds a leaderboard entry needs.")

    @field_validator("allowed_overrides")
    def _overridable(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if bad := [f for f in v if f not in OVERRIDABLE]:
            raise ValueError(f"{bad} can never be overridden; overridable: {sorted(OVERRIDABLE)}")
        return v


class Track(_Frozen):
    id: str
    version: int = Field(ge=1)
    description: str
    data: DataSpec
    model: ModelSpec
    optim: OptimSpec
    train: TrainSpec
    eval: EvalSpec
    ranking: RankingSpec
    rules: RulesSpec
    # The file of a track named by its path; it anchors an imagefolder's data.source. Never dumped nor hashed.
    _file: Path | None = PrivateAttr(None)

    @field_validator("id")
    def _slug(cls, v: str) -> str:
        if not TRACK_ID.fullmatch(v):
            raise ValueError("a track id is lowercase letters, digits and '-', at most 64")
        return v

    @field_validator("eval")
    def _metrics_have_their_annotations(cls, v: EvalSpec, info: ValidationInfo) -> EvalSpec:
        # Adherence reads a caption's stated shapes back from the image: only shapes-v1 captions state them.
        data = info.data.get("data")  # None when the data section is invalid, which its own error names
        if data is not None and data.dataset != "shapes":
            if unscorable := [m for m in v.metrics if METRICS[m].reads == "images and prompts"]:
                raise ValueError(
                    f"metrics {unscorable} need captions annotated with what the image shows, which dataset "
                    f"'{data.dataset}' lacks (only 'shapes' has them); remove them from eval.metrics"
                )
        return v

    @model_validator(mode="after")
    def _ranking_is_a_metric(self) -> Track:
        ranking = self.ranking
        if ranking.metric not in self.eval.metrics:
            raise ValueError(f"ranking.metric '{ranking.metric}' is not in eval.metrics {list(self.eval.metrics)}")
        if ranking.direction != (better := METRICS[ranking.metric].direction):
            raise ValueError(f"ranking.direction of '{ranking.metric}' is '{better}', not '{ranking.direction}'")
        return self

    @property
    def file(self) -> Path | None:
        """The track file when the track was named by its path; None for a track of the tracks folder."""
        return self._file

    @property
    def ref(self) -> str:
        """What names this track to ``--track``: its file's path, else its id."""
        return str(self._file) if self._file else self.id

    @property
    def content_hash(self) -> str:
        """sha256 of the canonical JSON of every field, recorded in every result."""
        return canonical_hash(self.model_dump(mode="json"))

    def with_overrides(self, overrides: dict[str, Any]) -> Track:
        """A copy with dotted-path ``overrides`` applied; each must be in ``rules.allowed_overrides``."""
        if forbidden := [k for k in overrides if k not in self.rules.allowed_overrides]:
            raise SpeedrunError(
                f"track '{self.id}' does not allow overriding {forbidden}; "
                f"allowed: {list(self.rules.allowed_overrides) or 'nothing'}"
            )
        data = self.model_dump(mode="python")
        for key, value in overrides.items():
            *parents, leaf = key.split(".")
            functools.reduce(dict.__getitem__, parents, data)[leaf] = value
        track = validated(Track, data, f"overrides on track '{self.id}'")
        track._file = self._file
        return track


def canonical_hash(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def validated(model: type[M], data: Any, source: str) -> M:
    """``data`` as a ``model``; invalid, a ``SpeedrunError`` naming ``source`` and each field at fault."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise SpeedrunError(format_validation_error(source, exc)) from None


MAX_TOML_BYTES = 1_000_000
_MAX_KEY_PARTS = 64
_KEY_PART = r"""(?:[A-Za-z0-9_-]++|"[^"\n]*"|'[^'\n]*')"""
_DEEP_DOTTED_KEY = re.compile(rf"(?<![A-Za-z0-9_-])(?:{_KEY_PART}[ \t]*\.[ \t]*){{{_MAX_KEY_PARTS},}}")


_FILE_KINDS = {stat.S_IFDIR: "a folder", stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
               stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; every failure is an error naming the file."""
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):  # opening a FIFO would wait for a writer forever
            raise SpeedrunError(f"{path}: not a regular file ({_FILE_KINDS.get(stat.S_IFMT(mode), 'special file')})")
        with open(path, "rb") as handle:  # at most one byte past the limit: never a whole huge file
            raw = handle.read(MAX_TOML_BYTES + 1)
    except FileNotFoundError:
        raise SpeedrunError(f"{path}: file not found") from None
    except OSError as exc:
        raise SpeedrunError(f"{path}: cannot read ({exc.strerror})") from None
    if len(raw) > MAX_TOML_BYTES:
        raise SpeedrunError(f"{path}: more than {MAX_TOML_BYTES} bytes is too large (limit 1 MB)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SpeedrunError(f"{path}: not UTF-8 text") from None
    # tomllib spends O(parts^2) time and memory on one dotted key: refuse absurd ones before parsing.
    if deep := _DEEP_DOTTED_KEY.search(text):
        line = text.count("\n", 0, deep.start()) + 1
        raise SpeedrunError(f"{path}: line {line}: a key nested too deeply (more than {_MAX_KEY_PARTS} dotted parts)")
    try:
        return tomllib.loads(text)
    except ValueError as exc:  # TOMLDecodeError, or an integer beyond Python's 4300-digit conversion limit
        raise SpeedrunError(f"{path}: invalid TOML ({exc})") from None
    except RecursionError:
        raise SpeedrunError(f"{path}: nested too deeply") from None


def load_track_file(path: Path) -> Track:
    """The track of a tracks folder's file, which is named after the track's id."""
    track = validated(Track, read_toml(path), str(path))
    if track.id != path.stem:
        raise SpeedrunError(f"{path}: field 'id' is '{track.id}' but the file is named '{path.stem}'")
    return track


def available_tracks(tracks_dir: Path = TRACKS_DIR) -> list[str]:
    """Ids of the track files in ``tracks_dir``; a ``*.toml`` that cannot be one (``prx-256 copy.toml``) is an error."""
    ids = []
    for path in sorted(tracks_dir.glob("*.toml")):
        if not path.is_file() or not TRACK_ID.fullmatch(path.stem):
            raise SpeedrunError(
                f"{path}: not a track file (a track is a file named <id>.toml, the id lowercase letters, digits "
                "and '-'); move it out of the tracks folder"
            )
        ids.append(path.stem)
    return ids


def load_track(track_id: str, tracks_dir: Path = TRACKS_DIR) -> Track:
    """The track ``track_id`` names: an id, of ``<tracks_dir>/<id>.toml``, or the path of a track file ending in
    ``.toml``. Such a file's id is its ``id`` field, which no track of ``tracks_dir`` may have: their results
    would share a folder."""
    if track_id.endswith(".toml"):
        path = Path(track_id).absolute()
        track = validated(Track, read_toml(path), str(path))
        if track.id in available_tracks(tracks_dir):
            if path.resolve() == (tracks_dir / f"{track.id}.toml").resolve():
                return load_track(track.id, tracks_dir)
            raise SpeedrunError(
                f"{path}: track id '{track.id}' is taken by {tracks_dir / f'{track.id}.toml'}; give this track "
                "another id (field 'id')"
            )
        track._file = path
        return track
    if not TRACK_ID.fullmatch(track_id):
        raise SpeedrunError(f"{track_id!r} is not a valid track id; known: {available_tracks(tracks_dir)}")
    path = tracks_dir / f"{track_id}.toml"
    if not path.is_file():
        raise SpeedrunError(f"no track {track_id!r}; known: {available_tracks(tracks_dir)}")
    return load_track_file(path)


def all_tracks(tracks_dir: Path = TRACKS_DIR) -> list[Track]:
    return [load_track(t, tracks_dir) for t in available_tracks(tracks_dir)]
