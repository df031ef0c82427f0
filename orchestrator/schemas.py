"""JSON Schemas of the catalogue's file kinds, generated from the pydantic models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .models import FILE_KINDS


def schema_of(kind: str) -> dict[str, Any]:
    schema = FILE_KINDS[kind].model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://cipbuild.invalid/schemas/{kind}.schema.json"
    return schema


def schema_text(kind: str) -> str:
    return json.dumps(schema_of(kind), indent=2, sort_keys=True) + "\n"


def write_schemas(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for kind in FILE_KINDS:
        path = folder / f"{kind}.schema.json"
        path.write_text(schema_text(kind), encoding="utf-8")
        written.append(path)
    return written
