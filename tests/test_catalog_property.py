"""Random catalogues whose names are drawn to collide: either the catalogue is refused with one
clean line (exit 2), or no two distinct jobs of it can ever share an id."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.catalog import load_catalog
from orchestrator.matrix import Job

Cli = Callable[..., Result]

# Few segments, so that names overlap: "a-b" next to "a" and "b", "k6.1" next to kernel 6.1.
SEGMENTS = ["a", "b", "rt", "k6.1", "qemu", "x1"]
NAMES = st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=3).map("-".join)
KERNELS = ["6.1", "6.12", "5.10"]


@st.composite
def catalogues(draw: st.DrawFn) -> dict[str, Any]:
    distros = draw(st.lists(NAMES, min_size=1, max_size=2, unique=True))
    boards = draw(st.lists(NAMES, min_size=1, max_size=4, unique=True))
    options = draw(st.lists(NAMES, min_size=0, max_size=5, unique=True))
    files: dict[str, Any] = {}
    for d in distros:
        releases = draw(st.lists(NAMES, min_size=1, max_size=2, unique=True))
        kernels = draw(st.lists(st.sampled_from(KERNELS), min_size=1, max_size=3, unique=True))
        own = [o for o in options if draw(st.booleans())]
        files[f"distros/{d}.yml"] = {
            "description": d,
            "build_system": "isar",
            "repos": ["up"],
            "base": [{"repo": "up", "file": "kas.yml"}],
            "target": "image",
            "builder": "builder:1",
            "default_release": releases[0],
            "releases": {r: {"distro": "dist", "default_kernel": kernels[0], "debian": "12"} for r in releases},
            "kernels": {k: {} for k in kernels},
            "order": ["board", "release", "kernel", *draw(st.permutations(own))],
            "_options": own,
        }
    for b in boards:
        files[f"boards/{b}.yml"] = {
            "description": b,
            "arch": "amd64",
            "distros": {d: {"machine": "m"} for d in distros if draw(st.booleans())} or {distros[0]: {"machine": "m"}},
        }
    for o in options:
        per: dict[str, Any] = {}
        for d in distros:
            own = files[f"distros/{d}.yml"]["_options"]
            if o in own:
                others = [x for x in own if x != o]
                per[d] = {
                    "implies": draw(st.lists(st.sampled_from(others), unique=True, max_size=2)) if others else [],
                    "conflicts": draw(st.lists(st.sampled_from(others), unique=True, max_size=1)) if others else [],
                }
        files[f"options/{o}.yml"] = {"summary": o, "distros": per or {distros[0]: {}}}
    for d in distros:
        del files[f"distros/{d}.yml"]["_options"]
    return files


def write(root: Path, files: dict[str, Any]) -> None:
    for part in ("boards", "options", "distros", "recipes", "kas"):
        (root / part).mkdir(parents=True)
    (root / "kas" / "repos.yml").write_text(
        yaml.safe_dump(
            {"header": {"version": 14}, "repos": {"up": {"url": "https://example.invalid/up.git", "commit": "0" * 40}}}
        )
    )
    for name, data in files.items():
        (root / name).write_text(yaml.safe_dump(data, sort_keys=False))


def every_job(root: Path) -> list[Job]:
    """Every distro x release x board x kernel x option subset, rules or not."""
    cat = load_catalog(root, cache=False)
    jobs = []
    for dname, d in cat.distros.items():
        options = cat.options_of(dname)
        boards = [b for b, f in cat.boards.items() if dname in f.distros]
        for release, rel in d.releases.items():
            for board, kernel in itertools.product(boards, d.kernels):
                for n in range(len(options) + 1):
                    for chosen in itertools.combinations(options, n):
                        jobs.append(Job(dname, release, board, kernel, chosen, kernel == rel.default_kernel))
    return jobs


def has_colliding_ids(root: Path) -> bool:
    """Whether two distinct jobs really share an id (the loader's own check switched off)."""
    import orchestrator.catalog as catalog_module

    check = catalog_module._check_job_ids
    catalog_module._check_job_ids = lambda catalog: None
    try:
        jobs = every_job(root)
    finally:
        catalog_module._check_job_ids = check
    return len({j.id for j in jobs}) < len(set(jobs))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=catalogues())
def test_random_catalogue_is_refused_cleanly_or_has_unique_ids(
    tmp_path_factory: pytest.TempPathFactory, cli: Cli, files: dict[str, Any]
) -> None:
    root = tmp_path_factory.mktemp("random") / "catalog"
    write(root, files)
    res = cli("--catalog", str(root), "plan", "--all", "--json")
    if res.code == 2:
        assert res.err.startswith("cipbuild: error: ") and res.err.count("\n") == 1, res.err
        assert "Traceback" not in res.err
        if "would name two different jobs" in res.err:
            assert has_colliding_ids(root), f"refused without a collision: {res.err}"
        return
    assert res.code == 0, res.err
    ids: dict[str, Job] = {}
    for job in every_job(root):
        same = ids.setdefault(job.id, job)
        assert same == job, f"{job.id} names {same} and {job}"
    planned = [j["id"] for j in json.loads(res.out)["jobs"]]
    assert len(planned) == len(set(planned)) and set(planned) <= set(ids)


def test_generator_makes_both_kinds(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The property above must see both catalogues with colliding ids and good ones, or it proves nothing."""
    from hypothesis import find

    from orchestrator.errors import UserError

    def outcome(files: dict[str, Any]) -> str:
        root = tmp_path_factory.mktemp("probe") / "catalog"
        write(root, files)
        try:
            load_catalog(root, cache=False)
        except UserError as exc:
            return "collision" if "would name two different jobs" in str(exc) else "refused"
        return "loaded"

    assert find(catalogues(), lambda f: outcome(f) == "collision")
    assert find(catalogues(), lambda f: sum(k.startswith("options/") for k in f) >= 2 and outcome(f) == "loaded")
