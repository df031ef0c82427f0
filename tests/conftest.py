from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.catalog import Catalog, default_catalog_dir, load_catalog

sys.path.insert(0, str(Path(__file__).parent))

from kasfixture import Upstreams, make_upstreams

CATALOG_PARTS = ("boards", "options", "distros", "recipes", "kas", "schemas")


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return load_catalog(default_catalog_dir())


@pytest.fixture
def catalog_copy(tmp_path: Path) -> Path:
    """A writable copy of the shipped catalogue, to break on purpose."""
    root = tmp_path / "catalog"
    for part in CATALOG_PARTS:
        shutil.copytree(default_catalog_dir() / part, root / part)
    return root


@pytest.fixture(scope="session")
def upstreams(tmp_path_factory: pytest.TempPathFactory) -> Upstreams:
    return make_upstreams(tmp_path_factory.mktemp("upstreams"))


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    """Run `cipbuild ARGS` in this process, through main() and its exit-code mapping."""
    from orchestrator.cli import main

    def run(*args: str) -> Result:
        monkeypatch.setattr(sys, "argv", ["cipbuild", *args])
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run
