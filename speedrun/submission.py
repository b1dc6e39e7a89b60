"""Submission manifests, ``submissions/<name>/submission.toml``, validated without running their code."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from speedrun.components.registry import Registry, declared_component_names
from speedrun.errors import SpeedrunError
from speedrun.paths import lookup
from speedrun.tracks import TRACKS_DIR, Track, available_tracks, load_track, read_toml, validated

SLUG = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")  # use fullmatch: "$" would accept a trailing "\n"
MANIFEST = "submission.toml"
CUSTOM_COMPONENTS = "components.py"
MAX_COMPONENTS = 16


def _slug(v: str) -> str:
    if not SLUG.fullmatch(v):
        raise ValueError("a name is lowercase letters, digits, '_' and '-', at most 64, no paths")
    return v


Slug = Annotated[str, AfterValidator(_slug)]


class ComponentEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Slug = Field(description="Registry name of a built-in or of a class in components.py.")
    params: dict[str, Any] = Field(default_factory=dict, description="The component's Params.")


class Manifest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Slug = Field(description="Slug equal to the submission's folder name.")
    authors: list[str] = Field(min_length=1, max_length=64)
    tracks: list[str] = Field(min_length=1, max_length=16, description="First is the default.")
    description: str = Field(min_length=1, max_length=20_000)
    components: list[ComponentEntry] = Field(default_factory=list, max_length=MAX_COMPONENTS)
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="Nested tables of track fields, e.g. [overrides.optim] lr = 2e-4."
    )

    @field_validator("authors")
    def _authors(cls, v: list[str]) -> list[str]:
        if any(not a.strip() or len(a) > 200 for a in v):
            raise ValueError("each author is a non-empty name of at most 200 characters")
        return v

    @field_validator("tracks")
    def _track_ids(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("a track is listed twice")
        return v

    def flat_overrides(self) -> dict[str, Any]:
        """``{"optim.lr": 2e-4, ...}`` from the nested override tables."""
        flat: dict[str, Any] = {}

        def walk(prefix: str, node: Any) -> None:
            if isinstance(node, dict):
                for key, value in node.items():
                    walk(f"{prefix}.{key}" if prefix else key, value)
            elif prefix in flat:  # [overrides.optim] lr and [overrides] "optim.lr" overlap
                raise SpeedrunError(f"override {prefix!r} is given twice")
            else:
                flat[prefix] = node

        walk("", self.overrides)
        return flat


@dataclass(frozen=True)
class Submission:
    """A validated submission folder."""

    path: Path
    manifest: Manifest

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def custom_components(self) -> Path | None:
        p = self.path / CUSTOM_COMPONENTS
        return p if p.is_file() else None

    def results_dir(self, track_id: str) -> Path:
        return self.path / "results" / track_id

    def track(self, track_id: str | None = None, tracks_dir: Path = TRACKS_DIR) -> Track:
        """The effective track (overrides applied); default: the manifest's first track. ``track_id`` may be a
        track file's path (``load_track``): any submission whose overrides it allows races on such a track."""
        track_id = self.manifest.tracks[0] if track_id is None else track_id
        named = track_id in self.manifest.tracks or track_id.endswith(".toml")  # or a path load_track reads
        if not named and track_id not in (known := available_tracks(tracks_dir)):
            raise SpeedrunError(f"no track {track_id!r}; known: {known}")
        track = load_track(track_id, tracks_dir)
        if track.file is None and track.id not in self.manifest.tracks:
            raise SpeedrunError(
                f"{self.path / MANIFEST}: submission '{self.name}' does not target track '{track.id}' "
                f"(field 'tracks' = {self.manifest.tracks})"
            )
        track = track.with_overrides(self.manifest.flat_overrides())
        if track.file is not None:  # load_submission checked the components on the tracks the manifest lists
            _check_components(self.manifest, self.path, Registry(), [track])
        return track


def _check_inside(folder: Path) -> None:
    """Reject symlinks that leave the submission folder."""
    root = folder.resolve()
    for p in folder.rglob("*"):
        if p.is_symlink():
            try:
                target = p.resolve()
            except (OSError, RuntimeError):  # RuntimeError: a symlink loop (Python < 3.13)
                raise SpeedrunError(f"{p}: symlink loop inside the submission folder") from None
            if root != target and root not in target.parents:
                raise SpeedrunError(f"{p}: symlink points outside the submission folder ({target})")


def load_submission(path: Path | str, tracks_dir: Path = TRACKS_DIR, registry: Registry | None = None) -> Submission:
    """Validate a submission folder (or its ``submission.toml``) without running any of its code: schema,
    name, tracks, overrides and components (built-ins' ``Params``; ``components.py`` read with ``ast``)."""
    path = Path(path)
    try:
        if lookup(path) == "file" and path.name != MANIFEST:  # e.g. its components.py
            hint = f"; pass its folder, {path.parent}" if lookup(path.parent / MANIFEST) == "file" else ""
            raise SpeedrunError(f"{path}: a file, not a submission folder{hint}")
        folder = path.parent if path.name == MANIFEST else path
        manifest_path = folder / MANIFEST
        if lookup(folder) != "folder":
            raise SpeedrunError(f"{folder}: no such submission folder")
        if lookup(manifest_path) != "file":
            raise SpeedrunError(f"{folder}: no {MANIFEST} in this folder (see CONTRIBUTING.md)")
    except OSError as exc:  # a name too long, or a folder that may not be entered
        raise SpeedrunError(f"{path}: cannot look at this submission folder ({exc.strerror or exc})") from None
    _check_inside(folder)
    manifest = validated(Manifest, read_toml(manifest_path), str(manifest_path))
    if manifest.name != (name := folder.resolve().name):
        raise SpeedrunError(f"{manifest_path}: field 'name' is '{manifest.name}' but the folder is '{name}'")
    tracks, field = [], "overrides"  # the field an error below is blamed on
    try:
        overrides = manifest.flat_overrides()
        for track_id in manifest.tracks:
            field = "tracks"
            track = load_track(track_id, tracks_dir)
            field = "overrides"
            tracks.append(track.with_overrides(overrides))
    except SpeedrunError as exc:
        raise SpeedrunError(f"{manifest_path}: field '{field}': {exc}") from None
    _check_components(manifest, folder, registry or Registry(), tracks)
    return Submission(path=folder, manifest=manifest)


def _check_components(manifest: Manifest, folder: Path, registry: Registry, tracks: list[Track]) -> None:
    custom_file = folder / CUSTOM_COMPONENTS
    custom = declared_component_names(custom_file) if custom_file.is_file() else []
    for i, entry in enumerate(manifest.components):
        where = f"{folder / MANIFEST}: field 'components.{i}'"
        if entry.name in [e.name for e in manifest.components[:i]]:
            raise SpeedrunError(f"{where}: component '{entry.name}' is listed twice")
        if entry.name in custom:
            if entry.name in registry:
                raise SpeedrunError(f"{custom_file}: component '{entry.name}' collides with a built-in")
            continue  # its Params are validated when `speedrun run` imports components.py
        if entry.name not in registry:
            known = sorted(set(registry.names()) | set(custom))
            raise SpeedrunError(f"{where}: unknown component '{entry.name}'; known: {known or 'none'}")
        component = registry.get(entry.name)
        params = validated(component.Params, entry.params, f"{where} ({entry.name}).params")
        for track in tracks:
            try:
                component.check(params, track)
            except SpeedrunError as exc:
                raise SpeedrunError(f"{where} ({entry.name}).params on track '{track.id}': {exc}") from None


def discover_submissions(root: Path) -> list[Path]:
    """Every folder under ``root`` holding a submission.toml, sorted; not hidden ones, nor links (counted twice)."""
    return sorted(
        p.parent for p in root.glob(f"*/{MANIFEST}") if not p.parent.name.startswith(".") and not p.parent.is_symlink()
    )
