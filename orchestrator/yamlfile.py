"""YAML loading that remembers where every key came from, so errors can name ``file:line``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

try:
    _Loader: type[yaml.SafeLoader] = yaml.CSafeLoader  # type: ignore[assignment]
except AttributeError:  # pragma: no cover - libyaml missing
    _Loader = yaml.SafeLoader

Path_ = tuple[str | int, ...]


@dataclass(frozen=True)
class YamlDoc:
    """A parsed YAML file and the line of every mapping key and sequence item."""

    path: Path
    data: Any
    lines: dict[Path_, int] = field(default_factory=dict)

    def line_of(self, loc: Sequence[str | int]) -> int | None:
        """The line of the deepest known node on ``loc`` (1-based), or ``None``."""
        loc = tuple(loc)
        while loc:
            if loc in self.lines:
                return self.lines[loc]
            loc = loc[:-1]
        return self.lines.get((), None)

    def error(self, loc: Sequence[str | int], message: str, hint: str | None = None) -> ConfigError:
        return ConfigError(self.path, self.line_of(loc), message, hint=hint)


def load_yaml(path: Path, *, display: str | None = None) -> YamlDoc:
    """Parse ``path``; any syntax problem, duplicate key or non-string key is a ConfigError."""
    shown = Path(display) if display else path
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_BYTES + 1)  # never more: the size is checked before parsing
    except OSError as exc:
        raise ConfigError(shown, None, f"cannot read file: {exc.strerror}") from None
    if len(raw) > MAX_BYTES:
        raise ConfigError(
            shown,
            None,
            f"file is larger than {MAX_BYTES // (1 << 20)} MiB; no catalogue file comes near that",
            hint="is this the file you meant? split it, or move data out of the catalogue",
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(shown, raw[: exc.start].count(b"\n") + 1, "not UTF-8 text") from None
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        builder = _Builder(loader, shown)
        data = builder.build(node, ()) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(shown, line, f"invalid YAML: {problem}") from None
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1
        raise ConfigError(shown, line, f"invalid YAML: {exc.reason} (character {exc.character!r})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(shown, None, f"invalid YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise ConfigError(shown, None, "invalid YAML: nested too deeply") from None
    finally:
        loader.dispose()
    if node is not None:
        builder.lines[()] = node.start_mark.line + 1
    return YamlDoc(shown, data, builder.lines)


# No catalogue file comes near these. Bounding bytes before parsing keeps a huge file cheap to
# refuse; bounding nodes stops aliases from expanding without bound.
MAX_BYTES = 1 << 20
MAX_NODES = 100_000


class _Builder:
    """Python data from a composed YAML node tree, recording each key's line."""

    def __init__(self, loader: yaml.SafeLoader, path: Path):
        self.loader = loader
        self.path = path
        self.lines: dict[Path_, int] = {}
        self.nodes = 0
        self.open: set[int] = set()
        self.built: set[int] = set()
        self.aliased = False

    def build(self, node: yaml.Node, loc: Path_) -> Any:
        self.nodes += 1
        if id(node) in self.built:
            self.aliased = True
        self.built.add(id(node))
        if self.nodes > MAX_NODES:
            if self.aliased:
                raise ConfigError(
                    self.path,
                    node.start_mark.line + 1,
                    f"YAML expands to more than {MAX_NODES} values through its aliases",
                    hint="check the aliases (*name) in this file",
                )
            raise ConfigError(self.path, node.start_mark.line + 1, f"file has more than {MAX_NODES} values")
        if id(node) in self.open:
            raise ConfigError(self.path, node.start_mark.line + 1, "YAML alias refers to itself")
        if isinstance(node, yaml.MappingNode):
            self.open.add(id(node))
            try:
                return self._mapping(node, loc)
            finally:
                self.open.discard(id(node))
        if isinstance(node, yaml.SequenceNode):
            self.open.add(id(node))
            try:
                items = []
                for index, item in enumerate(node.value):
                    self.lines[(*loc, index)] = item.start_mark.line + 1
                    items.append(self.build(item, (*loc, index)))
                return items
            finally:
                self.open.discard(id(node))
        return _scalar(node, self.loader)

    def _mapping(self, node: yaml.MappingNode, loc: Path_) -> dict[str, Any]:
        self.loader.flatten_mapping(node)
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            key = _scalar(key_node, self.loader) if isinstance(key_node, yaml.ScalarNode) else None
            if isinstance(key, int) and not isinstance(key, bool):
                key = str(key)
            if not isinstance(key, str):
                raise ConfigError(self.path, line, f"mapping key {key!r} must be a string")
            if key in out:
                raise ConfigError(self.path, line, f"duplicate key '{key}'", hint="each key may appear once")
            self.lines[(*loc, key)] = line
            out[key] = self.build(value_node, (*loc, key))
        return out


def _scalar(node: yaml.Node, loader: yaml.SafeLoader) -> Any:
    # The catalogue has versions, never real numbers: "5.10" must not become 5.1.
    if node.tag == "tag:yaml.org,2002:float":
        return str(node.value)
    return loader.construct_object(node, deep=True)
