"""How results reach a person or a machine: rich tables on a terminal, plain aligned text when
piped (CI logs, files), JSON with --json."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from json.encoder import encode_basestring_ascii as _quote
from typing import Any

from .errors import OutputError


def is_terminal() -> bool:
    return sys.stdout.isatty()


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def print_line(text: str, *, bold: str | None = None) -> None:
    """A line of text; ``bold`` words are highlighted on a terminal."""
    if is_terminal():
        from rich.console import Console
        from rich.markup import escape

        markup = escape(text)
        if bold:
            markup = markup.replace(escape(bold), f"[bold]{escape(bold)}[/]")
        Console().print(markup, highlight=False)
    else:
        sys.stdout.write(text + "\n")


def print_table(title: str | None, columns: list[str], rows: list[list[str]], caption: str | None = None) -> None:
    if is_terminal():
        _rich_table(title, columns, rows, caption)
        return
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    out = [title] if title else []
    for row in [columns, ["-" * w for w in widths], *rows]:
        out.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    if caption:
        out.append(caption)
    sys.stdout.write("\n".join(out) + "\n")


def _rich_table(title: str | None, columns: list[str], rows: list[list[str]], caption: str | None) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=title,
        caption=caption,
        box=box.SIMPLE_HEAD,
        header_style="bold",
        title_justify="left",
        caption_justify="left",
    )
    for i, col in enumerate(columns):
        table.add_column(col, no_wrap=i == 0, overflow="fold")
    for row in rows:
        table.add_row(*row)
    Console().print(table)


class JsonArray:
    """A JSON array that ``print_json_fields`` writes item by item, as the items are made."""

    def __init__(self, items: Iterable[Any]):
        self.items = items


def print_json_fields(fields: Iterable[tuple[str, Any]]) -> None:
    """Write a JSON object exactly as ``print_json`` would, one field at a time; a ``JsonArray``
    value is streamed, so the whole document is never held in memory."""
    out = sys.stdout
    out.write("{")
    empty = True
    for key, value in fields:
        out.write(("\n" if empty else ",\n") + "  " + json.dumps(key) + ": ")
        empty = False
        if isinstance(value, JsonArray):
            _write_json_array(value.items)
        else:
            out.write(indented_json(value, "  "))
    out.write("}\n" if empty else "\n}\n")


def _write_json_array(items: Iterable[Any]) -> None:
    out = sys.stdout
    empty = True
    for item in items:
        out.write(("[\n" if empty else ",\n") + "    " + indented_json(item, "    "))
        empty = False
    out.write("[]" if empty else "\n  ]")


def indented_json(value: Any, prefix: str = "") -> str:
    """``json.dumps(value, indent=2)`` with every line after the first behind ``prefix``.

    json's indenting encoder is pure Python and costly to set up per call; this one leaves
    scalars to the C encoder, which matters when a stream has 10^5 small records."""
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, dict):
        if not value:
            return "{}"
        inner = prefix + "  "
        items = []
        for k, v in value.items():
            if not isinstance(k, str):  # json turns such keys into strings its own way
                return json.dumps(value, indent=2).replace("\n", "\n" + prefix)
            items.append(f"{inner}{_quote(k)}: {indented_json(v, inner)}")
        return "{\n" + ",\n".join(items) + "\n" + prefix + "}"
    if isinstance(value, (list, tuple)):
        if not value:
            return "[]"
        inner = prefix + "  "
        return "[\n" + ",\n".join([inner + indented_json(v, inner) for v in value]) + "\n" + prefix + "]"
    return json.dumps(value)


class GuardedStdout:
    """Standard output whose write errors become one OutputError instead of a traceback (or
    Python's "Exception ignored" at exit)."""

    def __init__(self, inner: Any):
        self.inner = inner

    def write(self, text: str) -> int:
        try:
            return int(self.inner.write(text))
        except OSError as exc:
            raise OutputError(exc) from None

    def flush(self) -> None:
        try:
            self.inner.flush()
        except OSError as exc:
            raise OutputError(exc) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
