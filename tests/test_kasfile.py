from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from kasfixture import Upstreams, kas_dump

from orchestrator.catalog import Catalog
from orchestrator.kasfile import job_facts, kas_config, render, repos_of
from orchestrator.matrix import Expander, Job, resolve_job


def test_generated_file_pins_every_repo_and_passes_environment(catalog: Catalog) -> None:
    job = resolve_job(catalog, "isar-bookworm-qemu-amd64-security")
    config = kas_config(catalog, job)
    assert config["repos"] == {
        "cip-core": {
            "url": "https://gitlab.com/cip-project/cip-core/isar-cip-core.git",
            "commit": "f15ea486a3235275a10423e541612c5e3ecf0791",
        }
    }
    assert config["target"] == "cip-core-image-security"
    assert config["header"]["includes"][0] == {"repo": "cip-core", "file": "kas-cip.yml"}
    # cipbuild decides these at build time; the file only forwards them
    assert {"DL_DIR", "SSTATE_DIR", "SOURCE_DATE_EPOCH"} <= set(config["env"])
    assert all(v is None for v in config["env"].values())
    text = render(catalog, job)
    assert text.startswith("# kas file for cipbuild job isar-bookworm-qemu-amd64-security")
    assert yaml.safe_load(text) == config


def test_image_names_follow_upstream_naming(catalog: Catalog) -> None:
    test_image = job_facts(catalog, resolve_job(catalog, "isar-bookworm-qemu-amd64-rt-test-targz"))
    assert test_image.image == "cip-core-image-cip-core-bookworm-qemu-amd64-test"
    assert test_image.rootfs == "cip-core-image-cip-core-bookworm-qemu-amd64"
    ltp = job_facts(catalog, resolve_job(catalog, "deby-buster-bbb-ltp"))
    assert (ltp.machine, ltp.image) == ("beaglebone", "core-image-minimal-ltp-beaglebone")


def expected_local_conf(catalog: Catalog, job: Job) -> dict[str, str]:
    """local.conf sections (and a line of each) the fixture upstream files give this job."""
    want: dict[str, str] = {}
    closure = set(Expander(catalog).closure_names(job))
    if job.distro == "isar":
        if not job.kernel_is_default:
            want["kernel-version"] = f'PREFERRED_VERSION_linux-cip = "{job.kernel}.%"'
        if "rt" in job.options:
            want["preempt-rt"] = 'KERNEL_NAME = "cip-rt"'
        if "targz" in job.options:
            want["image-type"] = 'IMAGE_FSTYPES:append = " tar.gz"'
        if "swupdate" in closure:
            want["wic-swu"] = "swu"
        if "secure-boot" in closure:
            want["secure-boot"] = ":secureboot"
        if "test" in job.options:
            want["testing"] = "-test"
    else:
        want[job_facts(catalog, job).machine] = "CIP_KERNEL_CONFIG"
        if "targz" in job.options:
            want["cipbuild-targz"] = 'IMAGE_FSTYPES_append = " tar.gz"'
        if "ltp" in job.options:
            want["ltp"] = "-ltp"
        if "security" in job.options:
            want["security"] = "pam"
    return want


# Repositories that upstream's kas files (not cipbuild's) add, and layers of each.
UPSTREAM_LAYERS = {"isar": {"isar": ["meta"]}, "openembedded": {"poky": ["meta", "meta-poky"], "meta-debian": []}}


def dump_all(catalog: Catalog, upstreams: Upstreams, jobs: list[Job], tmp: Path) -> dict[str, dict[str, Any]]:
    def one(arg: tuple[int, Job]) -> tuple[str, dict[str, Any]]:
        slot, job = arg
        kas_file = tmp / f"{job.id}.yml"
        kas_file.write_text(render(catalog, job), encoding="utf-8")
        names = [*repos_of(catalog, job), "isar", "poky", "meta-debian", "meta-ti", "meta-cip-test-support"]
        return job.id, kas_dump(upstreams, kas_file, tmp / f"work{slot % 2}", names)

    # two kas processes at a time, each with its own work dir
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(one, enumerate(jobs)))


@pytest.mark.integration
@pytest.mark.parametrize("recipe", ["cip-core-ci", "release"])
def test_kas_dump_accepts_every_job(catalog: Catalog, upstreams: Upstreams, tmp_path: Path, recipe: str) -> None:
    jobs = Expander(catalog).expand_recipe(recipe).jobs
    dumps = dump_all(catalog, upstreams, jobs, tmp_path)
    assert len(dumps) == len(jobs)
    for job in jobs:
        dumped = dumps[job.id]
        facts = job_facts(catalog, job)
        assert (dumped["machine"], dumped["distro"], dumped["target"]) == (facts.machine, facts.distro, facts.target)
        sections = dumped.get("local_conf_header", {})
        for section, line in expected_local_conf(catalog, job).items():
            assert line in sections.get(section, ""), f"{job.id}: local.conf section {section} lacks {line!r}"
        assert not ("kernel-version" in sections and job.kernel_is_default), job.id
        # what kas resolved: each pinned repo at the commit the lock file gave it (the fixture's
        # stand-in for the real pin), and the repos upstream's own files pull in, with their layers
        locked = upstreams.lock_for(repos_of(catalog, job))["overrides"]["repos"]
        resolved = dumped["repos"]
        for name in repos_of(catalog, job):
            assert resolved[name]["url"] == catalog.repos.repos[name].url
            assert resolved[name]["commit"] == locked[name]["commit"], (job.id, name)
        for name, layers in UPSTREAM_LAYERS[catalog.distros[job.distro].build_system].items():
            # deby's kas files are format 3: kas resolves their legacy refspec in place
            commit = resolved[name].get("commit") or resolved[name].get("refspec")
            assert commit == upstreams.commits[name], (job.id, name, resolved[name])
            assert set(layers) <= set(resolved[name].get("layers") or {}), (job.id, name)


def test_regenerate_line_names_the_catalogue_unless_it_is_the_built_in_one(
    catalog: Catalog, catalog_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.catalog import load_catalog

    job_id = "isar-bookworm-qemu-amd64-security"
    assert f"\n# Regenerate with: cipbuild kas {job_id}\n" in render(catalog, resolve_job(catalog, job_id))
    copy = load_catalog(catalog_copy)
    assert f"\n# Regenerate with: cipbuild --catalog {catalog_copy} kas {job_id}\n" in render(
        copy, resolve_job(copy, job_id)
    )
    monkeypatch.chdir(catalog_copy.parent)  # a relative --catalog is written absolute: job.yml lives elsewhere
    relative = load_catalog(Path(catalog_copy.name))
    assert f"--catalog {catalog_copy} kas" in render(relative, resolve_job(relative, job_id))


@pytest.mark.parametrize(("name", "shown"), [("my cat", "'{parent}/my cat'"), ("my\ncat", "$'{parent}/my\\ncat'")])
def test_regenerate_line_quotes_the_catalogue_on_one_line(catalog_copy: Path, name: str, shown: str) -> None:
    from orchestrator.catalog import load_catalog

    odd = catalog_copy.rename(catalog_copy.parent / name)
    copy = load_catalog(odd)
    job = resolve_job(copy, "isar-bookworm-qemu-amd64")
    text = render(copy, job)
    line = text.splitlines()[1]
    assert line == f"# Regenerate with: cipbuild --catalog {shown.format(parent=odd.parent)} kas {job.id}"
    assert yaml.safe_load(text) == kas_config(copy, job)


def test_kas_body_is_the_same_wherever_the_catalogue_lies(catalog: Catalog, catalog_copy: Path) -> None:
    from orchestrator.catalog import load_catalog
    from orchestrator.kasfile import kas_body

    copy = load_catalog(catalog_copy)
    job_id = "isar-bookworm-qemu-amd64-security"
    here, there = render(catalog, resolve_job(catalog, job_id)), render(copy, resolve_job(copy, job_id))
    assert here != there
    assert kas_body(here) == kas_body(there)
    assert kas_body(here).startswith("header:\n") and yaml.safe_load(kas_body(here)) == yaml.safe_load(here)
