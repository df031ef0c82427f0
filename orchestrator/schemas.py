"""JSON Schemas of the catalogue's file kinds, generated from the pydantic models.

They describe the forms the loader accepts (a name where a list is expected, one set of axes for
a list of them) and the shape of every value; what needs the rest of the catalogue (does that
board exist, is that template's field known) only the loader checks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from .models import FILE_KINDS

DRAFT = "https://json-schema.org/draft/2020-12/schema"


class _Generator(GenerateJsonSchema):
    def dict_schema(self, schema: core_schema.DictSchema) -> JsonSchemaValue:
        """A mapping whose keys follow a pattern (names, versions) has no other keys."""
        out = super().dict_schema(schema)
        if out.get("patternProperties") and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out


def schema_of(kind: str) -> dict[str, Any]:
    schema = FILE_KINDS[kind].model_json_schema(schema_generator=_Generator)
    schema["$schema"] = DRAFT
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
