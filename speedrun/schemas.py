"""JSON Schemas of the public file formats, written by ``speedrun schema``."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel


def schema_models() -> dict[str, type[BaseModel]]:
    from speedrun.submission import Manifest
    from speedrun.tracks import Track

    models: dict[str, type[BaseModel]] = {"track": Track, "submission": Manifest}
    try:
        from speedrun.results import RunResult
    except ImportError:
        return models
    models["results"] = RunResult
    return models


def write_schemas(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model in schema_models().items():
        path = out / f"{name}.schema.json"
        path.write_text(json.dumps(model.model_json_schema(), indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written
