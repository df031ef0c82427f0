"""How results reach a person or a machine: rich tables on a terminal, plain aligned text when
piped (CI logs, files), JSON with --json."""

from __future__ import annotations

import json
import sys
from typing import Any


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
