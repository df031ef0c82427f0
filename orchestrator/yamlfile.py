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
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(shown, None, f"cannot read file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(shown, None, "not UTF-8 text") from None
    loader = _Loader(text)
    lines: dict[Path_, int] = {}
    try:
        node = loader.get_single_node()
        data = _build(node, (), lines, loader, shown) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(shown, line, f"invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(shown, None, f"invalid YAML: {exc}") from None
    finally:
        loader.dispose()
    if node is not None:
        lines[()] = node.start_mark.line + 1
    return YamlDoc(shown, data, lines)


def _build(node: yaml.Node, loc: Path_, lines: dict[Path_, int], loader: yaml.SafeLoader, path: Path) -> Any:
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            key = _scalar(key_node, loader)
            if isinstance(key, int) and not isinstance(key, bool):
                key = str(key)
            if not isinstance(key, str):
                raise ConfigError(path, line, f"mapping key {key!r} must be a string")
            if key in out:
                raise ConfigError(path, line, f"duplicate key '{key}'", hint="each key may appear once")
            lines[(*loc, key)] = line
            out[key] = _build(value_node, (*loc, key), lines, loader, path)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for index, item in enumerate(node.value):
            lines[(*loc, index)] = item.start_mark.line + 1
            items.append(_build(item, (*loc, index), lines, loader, path))
        return items
    return _scalar(node, loader)


def _scalar(node: yaml.Node, loader: yaml.SafeLoader) -> Any:
    # The catalogue has versions, never real numbers: "5.10" must not become 5.1.
    if node.tag == "tag:yaml.org,2002:float":
        return str(node.value)
    return loader.construct_object(node, deep=True)
