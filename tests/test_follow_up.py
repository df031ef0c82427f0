"""A job's second build (upstream CI's build_swu_v2): what the recipe asks for, how the id reads,
what the kas file says, and a real fixture build of a first build and its follow-up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from buildworld import BUILDER_IMAGE, World, results
from test_matrix import UPSTREAM_CI, cip_core_files

from orchestrator.artifacts import rules_for
from orchestrator.catalog import Catalog, load_catalog
from orchestrator.errors import UserError
from orchestrator.followup import APPENDS, SECTION
from orchestrator.kasfile import kas_config
from orchestrator.matrix import Expander, Selection, make_plan, resolve_job

FIRST = "isar-bookworm-qemu-amd64"
SECOND = f"{FIRST}--v2"


def upstream_second_builds() -> dict[str, tuple[list[str], str, str]]:
    """build:<name> -> (kas files of upstream's second build, artifact type copied to
    build/previous-image, the recipe PV = "2.0" is appended to)."""
    out = {}
    for line in UPSTREAM_CI.read_text().splitlines():
        if line.startswith("swu_v2:"):
            name, chain, copied, recipe = line.split()
            out[name.replace("swu_v2:", "build:")] = (chain.split(":"), copied, recipe)
    return out


def test_cip_core_ci_builds_upstreams_second_builds_after_their_firsts(catalog: Catalog) -> None:
    from test_matrix import upstream_chains

    plan = Expander(catalog).expand_recipe("cip-core-ci")
    firsts_by_chain = {tuple(chain): name for name, chain in upstream_chains().items()}
    theirs = upstream_second_builds()
    ours = [job for job in plan.jobs if job.follow_up]
    assert len(ours) == len(theirs) == 4
    ids = [job.id for job in plan.jobs]
    for job in ours:
        assert job.follow_up == "swu-v2" and job.id == f"{job.first.id}--swu-v2"
        assert ids.index(job.id) == ids.index(job.first.id) + 1  # right after its first build
        upstream_job = firsts_by_chain[tuple(cip_core_files(catalog, job.first))]
        chain, copied, recipe = theirs[upstream_job]
        assert cip_core_files(catalog, job) == chain  # the first's files, then kas/opt/delta-update.yml
        follow_up = catalog.distros["isar"].follow_ups["swu-v2"]
        kept = [r.type for r in rules_for(catalog, job.first) if r.type in follow_up.previous]
        assert kept == [copied] and follow_up.previous_folder == "previous-image"
        assert follow_up.appends[recipe].strip() == 'PV = "2.0"'
        assert kas_config(catalog, job)["target"] == recipe
        section = kas_config(catalog, job)["local_conf_header"][SECTION]
        assert section.splitlines()[-1] == f'BBFILES += "${{TOPDIR}}/{APPENDS}/*.bbappend"'


def test_a_second_build_names_its_first_and_needs_what_the_follow_up_requires(catalog: Catalog) -> None:
    first = "isar-bookworm-qemu-amd64-security-targz-separate-home-iec-testing"
    job = resolve_job(catalog, f"{first}--swu-v2")
    assert job.first.id == first and job.first.waived  # the recipe's waiver holds for its second build too
    with pytest.raises(UserError, match="needs a first build with swupdate; isar-bookworm-qemu-amd64-rt has none"):
        resolve_job(catalog, "isar-bookworm-qemu-amd64-rt--swu-v2")
    with pytest.raises(UserError, match=r"isar has no follow-up 'swu-v3' .*follow_ups: swu-v2"):
        resolve_job(catalog, "isar-bookworm-qemu-amd64-swupdate--swu-v3")
    # naming the second build plans its first before it
    plan = make_plan(catalog, recipe=None, everything=False, sel=Selection(job_ids=(f"{first}--swu-v2",)))
    assert [j.id for j in plan.jobs] == [first, f"{first}--swu-v2"]
    # so does narrowing a recipe to it
    plan = make_plan(catalog, recipe="cip-core-ci", everything=False, sel=Selection(job_ids=(f"{first}--swu-v2",)))
    assert [j.id for j in plan.jobs] == [first, f"{first}--swu-v2"]


def test_a_recipe_asking_for_a_follow_up_wrongly_says_where(catalog_copy: Path) -> None:
    recipe = catalog_copy / "recipes" / "cip-core-ci.yml"
    text = recipe.read_text()
    recipe.write_text(text.replace("  - name: swu-v2\n", "  - name: swu-v3\n"))
    with pytest.raises(UserError) as caught:
        load_catalog(catalog_copy).recipe("cip-core-ci")
    assert "unknown follow-up 'swu-v3'" in str(caught.value) and "did you mean 'swu-v2'" in str(caught.value)
    assert caught.value.where and caught.value.where.startswith(f"{recipe}:")
    head, tail = text.split("\nfollow_ups:")
    third = "isar-bookworm-qemu-arm-security-targz-separate-home-iec-testing"

    def third_first(job_id: str) -> None:
        recipe.write_text(head + "\nfollow_ups:" + tail.replace(third, job_id))

    third_first("isar-bookworm-qemu-arm-rt-test-targz")
    with pytest.raises(UserError, match="needs a first build with swupdate; isar-bookworm-qemu-arm-rt-test-targz"):
        Expander(load_catalog(catalog_copy)).expand_recipe("cip-core-ci")
    third_first("isar-bookworm-qemu-amd64-security-targz-separate-home-iec-testing")
    with pytest.raises(UserError, match=r"follow_ups\[0\]\.jobs\[2\]: .* gets follow-up 'swu-v2' twice"):
        Expander(load_catalog(catalog_copy)).expand_recipe("cip-core-ci")
    third_first("isar-bookworm-bbb-security")
    with pytest.raises(UserError, match=r"follow_ups\[0\]\.jobs\[2\]: 'isar-bookworm-bbb-security' is not a job"):
        Expander(load_catalog(catalog_copy)).expand_recipe("cip-core-ci")


# --- a real fixture build: kas in a container, the fixture's bitbake -------------------------------


def why(world: World) -> dict[str, tuple[bool, str]]:
    """`plan -r twice --why`: job id -> (would build, why)."""
    argv = [sys.executable, "-m", "orchestrator", "--catalog", str(world.catalog), "plan", "-r", "twice", "--why"]
    argv += ["--out", str(world.out), "--runtime", "docker", "--image", BUILDER_IMAGE, "--json"]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return {r["id"]: (r["would_build"], r["summary"]) for r in json.loads(proc.stdout)}


@pytest.mark.integration
def test_second_build_reads_its_firsts_artifacts_and_is_recorded(docker_engine: str, world: World) -> None:
    before = why(world)  # nothing built yet: the second build is judged after its first
    assert before[SECOND] == (True, f"after its first build {FIRST}, which would be built")
    proc = world.build("-r", "twice", "--json")
    assert proc.returncode == 0, proc.stderr
    got = results(proc)
    assert list(got) == [FIRST, SECOND, "isar-bookworm-qemu-arm64"]
    first, second = world.metadata(FIRST), world.metadata(SECOND)
    manifest = next(a for a in first["artifacts"] if a["type"] == "manifest")
    assert second["job"]["follow_up"] == {"name": "v2", "of": FIRST}
    previous = second["inputs"]["follow_up"]["previous"]
    assert previous == [{"type": "manifest", "path": manifest["path"], "sha256": manifest["sha256"]}]
    # the fixture bitbake saw PV = "2.0" through the .bbappend and made its delta against the first's files
    swu = next(a for a in second["artifacts"] if a["type"] == "swu")
    lines = (world.out / SECOND / swu["path"]).read_text().splitlines()
    assert lines[0] == "version 2.0"
    assert lines[1].split() == [manifest["sha256"], Path(manifest["path"]).name]
    image = "cip-core-image-cip-core-bookworm-qemu-amd64"
    wics = [(world.out / job / "artifacts" / f"{image}.wic").read_text() for job in (FIRST, SECOND)]
    assert wics == [f"disk image of {image}\n", f"disk image of {image} 2.0\n"]  # built again as 2.0
    assert not any(a["type"] == "swu" for a in first["artifacts"])  # the first build makes none
    assert SECTION in yaml.safe_load((world.out / SECOND / "job.yml").read_text())["local_conf_header"]
    # again: nothing changed, nothing built
    again = results(world.build("-r", "twice", "--json"))
    assert {job: r["status"] for job, r in again.items()} == dict.fromkeys(got, "up-to-date")
    assert {job: would for job, (would, _) in why(world).items()} == dict.fromkeys(got, False)


@pytest.mark.integration
def test_naming_the_second_build_builds_its_first_and_a_failed_first_skips_it(docker_engine: str, world: World) -> None:
    proc = world.build("isar-bookworm-qemu-arm64--v2", "--json")
    assert proc.returncode == 0, proc.stderr
    assert [(j, r["status"]) for j, r in results(proc).items()] == [
        ("isar-bookworm-qemu-arm64", "success"),
        ("isar-bookworm-qemu-arm64--v2", "success"),
    ]
    failing = "isar-bookworm-qemu-amd64-fail"
    proc = world.build(f"{failing}--v2", "--json")
    assert proc.returncode == 3
    got = results(proc)
    assert got[failing]["status"] == "failed"
    assert got[f"{failing}--v2"]["status"] == "skipped"
    assert f"its first build {failing} is failed" in got[f"{failing}--v2"]["error"]
    assert not (world.out / f"{failing}--v2" / "metadata.json").exists()


def test_the_second_builds_inputs_follow_its_firsts_artifacts(tmp_path: Path, catalog: Catalog) -> None:
    """Another first build, another digest: the second build's inputs name the first's artifacts
    by sha256, and a changed or missing first build is refused with what to do."""
    from orchestrator.buildjob import stamp
    from orchestrator.followup import inputs_of

    job = resolve_job(catalog, "isar-bookworm-qemu-amd64-swupdate--swu-v2")
    first_dir = tmp_path / job.first.id
    with pytest.raises(UserError, match="not built") as caught:
        inputs_of(catalog, job, first_dir)
    assert caught.value.hint and f"cipbuild build {job.id}" in caught.value.hint
    (first_dir / "artifacts").mkdir(parents=True)
    image = first_dir / "artifacts" / "x.squashfs"
    image.write_bytes(b"rootfs one")

    def record(sha: str) -> None:
        art = {"type": "squashfs", "path": "artifacts/x.squashfs", "size": 10, "sha256": sha}
        stamps = {art["path"]: stamp(image)}
        meta = {"status": "success", "inputs_digest": "d" * 64, "artifacts": [art], "artifact_stamps": stamps}
        (first_dir / "metadata.json").write_text(json.dumps(meta))

    record("a" * 64)
    one = inputs_of(catalog, job, first_dir)
    assert one == {
        "name": "swu-v2",
        "of": job.first.id,
        "previous": [{"type": "squashfs", "path": "artifacts/x.squashfs", "sha256": "a" * 64}],
    }
    record("b" * 64)
    assert inputs_of(catalog, job, first_dir) != one
    image.write_bytes(b"rootfs two, touched by hand")
    with pytest.raises(UserError, match="changed or went since"):
        inputs_of(catalog, job, first_dir)


@pytest.mark.integration
def test_a_second_build_checked_for_reproducibility_reads_the_same_first_build(
    docker_engine: str, world: World
) -> None:
    proc = world.build(SECOND, "--check-reproducible", "--json")
    assert proc.returncode == 0, proc.stderr
    reports = {r["job"]: r for r in json.loads(proc.stdout)["reproducibility"]}
    assert set(reports) == {FIRST, SECOND}
    assert all(r["identical"] and r["error"] is None for r in reports.values()), reports


def test_a_second_build_may_not_read_what_compress_replaces(catalog_copy: Path) -> None:
    distro = catalog_copy / "distros" / "isar.yml"
    distro.write_text(distro.read_text().replace("previous: [verity, squashfs]", "previous: [verity, wic]"))
    with pytest.raises(UserError) as caught:
        load_catalog(catalog_copy, cache=False)
    assert "cannot read a wic: --compress replaces it" in str(caught.value)
    assert caught.value.where and caught.value.where.startswith(f"{distro}:")
