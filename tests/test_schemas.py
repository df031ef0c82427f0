"""The JSON Schemas a catalogue file names (`# yaml-language-server: $schema=...`) accept what the
loader accepts and refuse what it refuses, checked with an independent validator (jsonschema)."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import Result
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from pydantic import ValidationError

from orchestrator.catalog import default_catalog_dir
from orchestrator.models import FILE_KINDS, Condition, Exclude, Model, RecipeFile
from orchestrator.schemas import schema_of

Cli = Callable[..., Result]
SCHEMA_COMMENT = re.compile(r"^# yaml-language-server: \$schema=(\S+)$")
ROOT = default_catalog_dir()
# folder -> the kind of file in it
KIND_OF = {"boards": "board", "distros": "distro", "options": "option", "recipes": "recipe", "testplans": "testplan"}


def schema_named_by(path: Path) -> Path | None:
    first = path.read_text(encoding="utf-8").split("\n", 1)[0]
    match = SCHEMA_COMMENT.match(first)
    return (path.parent / match[1]).resolve() if match else None


def validator(schema: dict[str, Any]) -> Draft202012Validator:
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


@functools.cache
def validator_of(kind: str, definition: str | None = None) -> Draft202012Validator:
    """The validator of a kind's schema, or of one of its definitions (made once: it takes a while)."""
    schema = schema_of(kind)
    if definition is not None:
        schema = {"$defs": schema["$defs"], "$ref": f"#/$defs/{definition}"}
    return validator(schema)


def shipped_files() -> list[Path]:
    files = [p for folder in KIND_OF for p in sorted((ROOT / folder).glob("*.yml"))]
    return [*files, ROOT / "kas" / "repos.yml"]


@pytest.mark.parametrize("path", shipped_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_file_validates_against_the_schema_it_names(path: Path) -> None:
    kind = "repos" if path.name == "repos.yml" else KIND_OF[path.parent.name]
    named = schema_named_by(path)
    assert named is not None, f"{path} names no schema"
    assert named == (ROOT / "schemas" / f"{kind}.schema.json").resolve()
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator(json.loads(named.read_text())).iter_errors(data)
    ]
    assert errors == []
    FILE_KINDS[kind].model_validate(data)  # and the loader's model agrees


def test_the_starter_catalogue_names_schemas_it_writes(tmp_path: Path) -> None:
    starter = pytest.importorskip("orchestrator.starter")
    root = tmp_path / "mine"
    for path in starter.write_starter(root):
        parts = path.relative_to(root).parts
        if path.suffix != ".yml" or (parts[0] == "kas" and parts[-1] != "repos.yml"):
            continue  # a schema, or a kas fragment (kas checks those against its own schema)
        named = schema_named_by(path)
        assert named is not None and named.is_file(), f"{path} names no schema it has"
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert list(validator(json.loads(named.read_text())).iter_errors(data)) == [], path


def test_schema_command_writes_what_a_catalogue_of_ones_own_names(cli: Cli, tmp_path: Path) -> None:
    res = cli("schema", "--out", str(tmp_path / "schemas"))
    assert res.code == 0, res.err
    for kind in FILE_KINDS:
        written = tmp_path / "schemas" / f"{kind}.schema.json"
        assert written.read_text() == (ROOT / "schemas" / written.name).read_text()


@pytest.mark.parametrize(
    ("kind", "path", "old", "new"),
    [
        ("board", "boards/qemu-arm.yml", "    machine: qemu-arm\n", "    machnie: qemu-arm\n"),
        ("distro", "distros/isar.yml", "default_release:", "default_relase:"),
        ("distro", "distros/isar.yml", 'when: {kernel: "4.19", arch: riscv64}', 'when: {kernel: "4.19", arc: riscv64}'),
        ("distro", "distros/isar.yml", "arch: [arm64, riscv64]}", "arch: {no: [arm64, riscv64]}}"),
        ("option", "options/rt.yml", "summary:", "sumary:"),
        ("recipe", "recipes/hands-on.yml", "  board: [qemu-amd64", "  boards: [qemu-amd64"),
        ("testplan", "testplans/boot.yml", "needs:", "need:"),
        ("repos", "kas/repos.yml", "    commit:", "    comit:"),
    ],
)
def test_a_typo_is_refused_by_the_schema_as_by_the_loader(kind: str, path: str, old: str, new: str) -> None:
    text = (ROOT / path).read_text(encoding="utf-8")
    assert old in text
    data = yaml.safe_load(text.replace(old, new, 1))
    assert not validator_of(kind).is_valid(data)
    with pytest.raises(ValidationError):
        FILE_KINDS[kind].model_validate(data)


# Values a condition, an exclude or a recipe's axes might be given: names right and wrong, versions,
# numbers YAML makes of unquoted versions, nulls, lists and mappings of them.
LEAVES = st.one_of(
    st.sampled_from(["qemu-amd64", "bookworm", "amd64", "riscv64", "6.1", "5.10", "default", "Qemu_AMD64", "", "x/y"]),
    st.integers(-1, 12),
    st.sampled_from([6.1, 5.1, True, None]),
)
KEYS = st.sampled_from(["not", "below", "at_least", "any_of", "none_of", "distro", "board", "kernel", "options"])
VALUES = st.recursive(
    LEAVES, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3), max_leaves=6
)


def agree(model: type[Model], kind: str, definition: str | None, data: Any) -> None:
    """The loader's model and the kind's schema (or one of its definitions) give one verdict."""
    try:
        model.model_validate(data)
        loader = True
    except ValidationError:
        loader = False
    errors = [e.message for e in validator_of(kind, definition).iter_errors(data)]
    assert loader == (not errors), f"loader {'accepts' if loader else 'refuses'} {data!r}; schema: {errors}"


@settings(max_examples=250, deadline=None)
@given(field=st.sampled_from(list(Condition.model_fields)), value=VALUES)
def test_a_condition_field_is_judged_alike_by_schema_and_loader(field: str, value: Any) -> None:
    agree(Condition, "distro", "Condition", {field: value})


@settings(max_examples=200, deadline=None)
@given(fields=st.dictionaries(st.sampled_from(list(Exclude.model_fields)), VALUES, max_size=2))
def test_a_recipe_exclude_is_judged_alike(fields: dict[str, Any]) -> None:
    agree(Exclude, "recipe", "Exclude", fields)


@settings(max_examples=250, deadline=None)
@given(matrix=VALUES | st.dictionaries(st.sampled_from(["distro", "board", "release", "kernel", "options"]), VALUES))
def test_a_recipe_matrix_is_judged_alike(matrix: Any) -> None:
    agree(RecipeFile, "recipe", None, {"description": "t", "matrix": matrix})


@pytest.mark.parametrize(
    "value",
    [
        "qemu-amd64",
        ["qemu-amd64", "bbb"],
        {"not": "bbb"},
        {"not": ["bbb", "iwg20m"]},
        # not forms of a board: refused alike
        [],
        {"any_of": ["bbb"]},
        {"below": "6.1"},
        {"not": []},
        {},
        None,
        6,
    ],
)
def test_the_documented_board_forms(value: Any) -> None:
    agree(Condition, "distro", "Condition", {"board": value})


@pytest.mark.parametrize(
    "value",
    [
        "6.1",
        ["4.4", "4.19"],
        {"not": "6.12"},
        {"below": "5.10"},
        {"at_least": "6.1", "not": ["6.12"]},
        # refused alike
        6.1,
        {"below": ["5.10"]},
        {"below": None},
        {"none_of": ["6.1"]},
    ],
)
def test_the_documented_kernel_forms(value: Any) -> None:
    agree(Condition, "distro", "Condition", {"kernel": value})


def test_the_schemas_document_the_short_forms_the_catalogue_uses() -> None:
    condition = schema_of("distro")["$defs"]["Condition"]["properties"]
    assert {"type": "string"}.items() <= condition["board"]["anyOf"][0].items()
    assert condition["board"]["anyOf"][1]["type"] == "array"
    assert "Selector" not in schema_of("distro")["$defs"]  # the parsed form is not something to write
    recipe = schema_of("recipe")["properties"]["matrix"]["anyOf"]
    assert recipe[0] == {"$ref": "#/$defs/Axes"} and recipe[1]["type"] == "array"
