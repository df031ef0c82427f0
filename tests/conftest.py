from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.catalog import Catalog, default_catalog_dir, load_catalog

sys.path.insert(0, str(Path(__file__).parent))

from buildworld import BUILDER_IMAGE, World, open_to_builder
from kasfixture import Upstreams, make_test_catalog, make_upstreams

pytest_plugins = ["s3fixtures", "lavafixtures", "registryfixture"]  # real S3 + fault proxy; real LAVA; a real registry

CATALOG_PARTS = ("boards", "options", "distros", "recipes", "kas", "schemas", "testplans")


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
    return make_upstreams(open_to_builder(tmp_path_factory.mktemp("upstreams")))


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


def _unavailable(reason: str) -> None:
    """In CI a missing engine or image is a failure (.ci/run provides them); elsewhere a skip."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def docker_engine() -> str:
    import docker

    try:
        client = docker.from_env(timeout=10)
        client.ping()
        client.images.get(BUILDER_IMAGE)
    except docker.errors.ImageNotFound:
        _unavailable(f"builder image {BUILDER_IMAGE} missing: cipbuild image build --profile minimal")
    except Exception as exc:
        _unavailable(f"no docker engine ({exc}); .ci/run starts one and sets DOCKER_HOST")
    return os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")


@pytest.fixture(scope="session")
def test_catalog(upstreams: Upstreams, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_test_catalog(tmp_path_factory.mktemp("catalog") / "catalog", upstreams)


@pytest.fixture
def world(test_catalog: Path, upstreams: Upstreams, tmp_path: Path) -> World:
    """Fresh out/ and cache/ for one test, over the session's fixture upstreams."""
    return World(test_catalog, upstreams.root, open_to_builder(tmp_path) / "out", tmp_path / "cache")


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The tests' catalogue cache lives apart from the user's."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
