"""A distro that builds its distribution's own kernel (plain Isar with Debian's linux-image) lists
no kernels: its jobs have none, in ids, plans, job records and kernel selection."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import Result

from orchestrator.catalog import load_catalog
from orchestrator.errors import UserError
from orchestrator.kasfile import fragments
from orchestrator.matrix import DISTRIBUTION_KERNEL, Expander, Selection, make_plan, resolve_job
from orchestrator.starter import write_starter

Cli = Callable[..., Result]
JOB = "isar-bookworm-qemu-amd64"


def kernelless_catalog(root: Path) -> Path:
    """The catalogue guide's example (plain Isar, qemuamd64, isar-image-base): no kernels."""
    write_starter(root)
    return root


def with_cip_distro(root: Path) -> Path:
    """Next to it, a distro with CIP kernels that builds the same board."""
    (root / "kas" / "cip").mkdir()
    (root / "kas" / "cip" / "k6.12.yml").write_text("header:\n  version: 14\n")
    cip = {
        "description": "a distro with CIP kernels",
        "build_system": "isar",
        "repos": ["isar"],
        "base": ["kas/isar/base.yml"],
        "target": "isar-image-base",
        "builder": "cipbuild-builder:isar",
        "default_release": "bookworm",
        "releases": {"bookworm": {"debian": "12", "distro": "debian-bookworm", "default_kernel": "6.1"}},
        "kernels": {"6.1": {}, "6.12": {"kas": ["kas/cip/k6.12.yml"]}},
        "order": ["board", "kernel", "release"],
    }
    (root / "distros" / "cip.yml").write_text(yaml.safe_dump(cip, sort_keys=False))
    isar = root / "distros" / "isar.yml"
    isar.write_text(isar.read_text() + "default: true  # a job that names no distro stays plain Isar\n")
    board = root / "boards" / "qemu-amd64.yml"
    data = yaml.safe_load(board.read_text())
    data["distros"]["cip"] = {"machine": "qemuamd64"}
    board.write_text(yaml.safe_dump(data, sort_keys=False))
    return root


@pytest.fixture
def plain(tmp_path: Path) -> Path:
    return kernelless_catalog(tmp_path / "catalog")


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    return with_cip_distro(kernelless_catalog(tmp_path / "catalog"))


def test_it_loads_and_its_job_has_no_kernel(plain: Path) -> None:
    catalog = load_catalog(plain, cache=False)
    assert catalog.distros["isar"].kernels == {}
    assert catalog.distros["isar"].releases["bookworm"].default_kernel is None
    [job] = Expander(catalog).expand_recipe("qemu").jobs
    assert (job.id, job.kernel, job.kernel_is_default) == (JOB, DISTRIBUTION_KERNEL, True)
    assert resolve_job(catalog, JOB) == job
    assert [j.id for j in Expander(catalog).expand_all().jobs] == [JOB]


def test_plan_json_lists_the_job_without_a_kernel(cli: Cli, plain: Path) -> None:
    for args in (("plan",), ("plan", "-r", "qemu"), ("plan", "--all")):
        res = cli("--catalog", str(plain), *args, "--json")
        assert res.code == 0, res.err
        [job] = json.loads(res.out)["jobs"]
        assert job["id"] == JOB and "-k" not in job["id"]
        assert job["kernel"] is None
        facts = (job["machine"], job["bitbake_distro"], job["target"])
        assert facts == ("qemuamd64", "debian-bookworm", "isar-image-base")
    table = cli("--catalog", str(plain), "plan")
    assert table.code == 0 and JOB in table.out


def test_kas_renders_the_job(cli: Cli, plain: Path) -> None:
    res = cli("--catalog", str(plain), "kas", JOB)
    assert res.code == 0, res.err
    kas = yaml.safe_load(res.out)
    assert kas["machine"] == "qemuamd64" and kas["distro"] == "debian-bookworm"
    assert kas["target"] == "isar-image-base"
    catalog = load_catalog(plain, cache=False)
    assert fragments(catalog, resolve_job(catalog, JOB)) == ["kas/isar/base.yml"]  # base only: no kernel file


def test_a_kernel_selection_selects_none_of_its_jobs(cli: Cli, mixed: Path) -> None:
    catalog = load_catalog(mixed, cache=False)
    every = [j.id for j in Expander(catalog).expand_all().jobs]
    assert every == [JOB, "cip-bookworm-qemu-amd64", "cip-bookworm-qemu-amd64-k6.12"]
    picked = make_plan(catalog, recipe=None, everything=True, sel=Selection(kernels=("6.1",)))
    assert [j.id for j in picked.jobs] == ["cip-bookworm-qemu-amd64"]
    res = cli("--catalog", str(mixed), "plan", "--all", "--kernel", "6.12", "--json")
    assert [j["id"] for j in json.loads(res.out)["jobs"]] == ["cip-bookworm-qemu-amd64-k6.12"]
    # asked of the kernel-less distro alone, a kernel is an error that says why
    res = cli("--catalog", str(mixed), "plan", "--distro", "isar", "--kernel", "6.12")
    assert res.code == 2 and "kernel-not-in-distro" in res.err
    res = cli("--catalog", str(mixed), "plan", "-r", "qemu", "--kernel", "6.1")
    assert res.code == 2 and "no job of recipe 'qemu' matches --kernel 6.1" in res.err
    res = cli("--catalog", str(mixed), "kas", f"{JOB}-k6.12")
    assert res.code == 2 and "unknown kernel 6.12 for isar" in res.err and "its distribution's own kernel" in res.err


def test_a_kernel_flag_in_a_catalogue_without_kernels_says_so(cli: Cli, plain: Path) -> None:
    res = cli("--catalog", str(plain), "plan", "--kernel", "6.1")
    assert res.code == 2 and "unknown kernel '6.1'" in res.err
    assert "no distro of this catalogue lists kernels" in res.err


def test_a_recipe_kernel_condition_never_matches_a_job_without_one(mixed: Path) -> None:
    (mixed / "recipes" / "both.yml").write_text(
        "description: both distros\n"
        "matrix: {distro: [isar, cip], board: qemu-amd64, kernel: default}\n"
        "exclude: [{kernel: {below: '6.12'}}]\n"
    )
    catalog = load_catalog(mixed, cache=False)
    plan = Expander(catalog).expand_recipe("both")
    assert [j.id for j in plan.jobs] == [JOB]
    assert [e.job.id for e in plan.excluded] == ["cip-bookworm-qemu-amd64"]


def edit_distro(root: Path, change: Callable[[dict[str, object]], None]) -> str:
    """The load error after ``change`` to the distro file (restored afterwards)."""
    path = root / "distros" / "isar.yml"
    original = path.read_text()
    distro = yaml.safe_load(original)
    change(distro)
    path.write_text(yaml.safe_dump(distro, sort_keys=False))
    try:
        with pytest.raises(UserError) as info:
            load_catalog(root, cache=False)
    finally:
        path.write_text(original)
    return str(info.value)


def test_a_distro_is_either_with_kernels_or_without(plain: Path) -> None:
    def default_kernel_without_kernels(d: dict[str, object]) -> None:
        d["releases"] = {"bookworm": {"debian": "12", "distro": "debian-bookworm", "default_kernel": "6.1"}}

    msg = edit_distro(plain, default_kernel_without_kernels)
    assert "release 'bookworm' names default_kernel 6.1, but the distro lists no kernels" in msg

    def kernels_without_default(d: dict[str, object]) -> None:
        d["kernels"] = {"6.1": {}}
        d["releases"] = {"bookworm": {"debian": "12", "distro": "debian-bookworm"}}

    msg = edit_distro(plain, kernels_without_default)
    assert "release 'bookworm' needs a default_kernel: the distro lists kernels" in msg

    def kernel_rule(d: dict[str, object]) -> None:
        d["rules"] = [{"id": "old-kernels", "summary": "x", "when": {"kernel": {"below": "6.1"}}}]

    msg = edit_distro(plain, kernel_rule)
    assert "rule 'old-kernels' has a kernel condition, but the distro lists no kernels" in msg
