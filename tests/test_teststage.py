"""The test stage's LAVA jobs: rendered from published releases for every board of the
cip-core-ci recipe, and judged valid by a real LAVA server's own validation."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from lavafixtures import LavaInstance
from test_signing import (
    Keys,
    keys,  # noqa: F401  (the session fixture)
    make_out,
)

from orchestrator.artifacts import rules_for
from orchestrator.catalog import Catalog
from orchestrator.errors import UserError
from orchestrator.kasfile import job_facts
from orchestrator.matrix import Selection, make_plan
from orchestrator.publish import Published
from orchestrator.signing import KEY_ENV
from orchestrator.teststage.lava import Lava
from orchestrator.teststage.render import plans_for, render

Cli = Callable[..., Any]
BASE = "http://127.0.0.1:9/cip-core/master/"


def published_ci(catalog: Catalog) -> Published:
    """The record publish would write for the cip-core-ci recipe: every job with one object per
    artifact its board and distro deploy (names from the artifact rules)."""
    jobs = []
    for job in make_plan(catalog, recipe="cip-core-ci", everything=False, sel=Selection()).jobs:
        facts = job_facts(catalog, job)
        objects = []
        for number, rule in enumerate(rules_for(catalog, job)):
            name = rule.glob.format(image=facts.image, rootfs=facts.image, machine=facts.machine).replace("*", "x")
            file = PurePosixPath(name).name
            path = f"{job.board}/{job.follow_up}/{file}" if job.follow_up else f"{job.board}/{file}"  # as publish
            objects.append(
                {
                    "name": f"{job.id}/artifacts/{file}",
                    "path": path,
                    "url": f"{BASE}{path}",
                    "sha256": f"{number:064x}",
                    "size": 1,
                    "type": rule.type,
                }
            )
        jobs.append(
            {
                "id": job.id,
                "board": job.board,
                "distro": job.distro,
                "release": job.release,
                "options": list(job.options),
                "image": facts.image,
                "inputs_digest": "ab" * 32,
                "manifest": f"{BASE}{job.board}/{job.id}.manifest.json",
                "objects": objects,
            }
        )
    index = {"name": "index.json", "path": "index.json", "url": BASE + "index.json", "sha256": "0" * 64}
    return Published.model_validate(
        {
            "schema": "cipbuild-published/1",
            "store": "s3://bucket/cip-core",
            "ref": "master",
            "layout": "{board}/{file}",
            "url": BASE,
            "index": {**index, "size": 1, "type": "index"},
            "index_signature": {
                **index,
                "name": "index.json.asc",
                "path": "index.json.asc",
                "size": 1,
                "type": "index",
            },
            "jobs": jobs,
        }
    )


def test_every_board_of_cip_core_ci_gets_jobs_lava_calls_valid(catalog: Catalog, lava: LavaInstance) -> None:
    record = published_ci(catalog)
    server = Lava(lava.url)
    rendered = []
    ids = {job.id for job in record.jobs}
    for job in record.jobs:
        for plan in plans_for(catalog, job, ids):
            try:
                rendered.append(render(catalog, record, job, plan))
            except UserError as exc:  # a plan whose artifacts this job's options do not deploy
                assert "needs a" in str(exc), exc
    boards = {r.job.board for r in rendered}
    assert boards == {j.board for j in record.jobs}, "a board of cip-core-ci got no LAVA job"
    assert {r.plan for r in rendered} >= {"boot", "ltp", "security", "secure-boot", "swupdate"}
    for item in rendered:
        assert server.validate(item.text) is None, (item.file_name, server.validate(item.text), item.text)
        definition = item.definition
        assert definition["metadata"]["cipbuild.job"] == item.job.id
        assert definition["device_type"] == catalog.boards[item.job.board].test.device_type
        for url in item.urls:
            assert url.startswith(BASE)  # every download comes from the published record
        login = [a["boot"].get("auto_login") for a in definition["actions"] if "boot" in a]
        security = "security" in catalog.with_implied(item.job.distro, item.job.options)
        for auto in login:  # a security image's root password is not root
            assert auto["password"] == ("CIPsecurity@123" if security else "root"), (item.file_name, auto)


def test_lava_calls_a_broken_definition_invalid(lava: LavaInstance) -> None:
    broken = yaml.safe_dump({"device_type": "qemu", "job_name": "no actions", "visibility": "public"})
    assert Lava(lava.url).validate(broken) is not None


def test_render_a_published_release_writes_one_file_per_job_and_plan(
    cli: Cli,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    keys: Keys,  # noqa: F811
    lava: LavaInstance,
) -> None:
    out = make_out(tmp_path / "out")
    monkeypatch.setenv(KEY_ENV, str(keys.good.secret))
    assert cli("sign", str(out), "--compress", "zstd").code == 0
    published = cli("publish", str(out), "--to", str(tmp_path / "store"), "--ref", "master", "--json")
    assert published.code == 0, published.err
    (tmp_path / "published.json").write_text(published.out)
    result = cli(
        "test", "render", str(tmp_path / "published.json"), "--out", str(tmp_path / "jobs"),
        "--validate", lava.url, "--json",
    )  # fmt: skip
    assert result.code == 0, result.err
    listed = json.loads(result.out)
    assert sorted((j["job"], j["plan"]) for j in listed) == [
        ("isar-bookworm-qemu-amd64", "boot"),
        ("isar-bookworm-qemu-arm64", "boot"),
    ]
    job = yaml.safe_load((tmp_path / "jobs" / "isar-bookworm-qemu-amd64.boot.yaml").read_text())
    system = job["actions"][0]["deploy"]["images"]["system"]
    record = json.loads(published.out)
    wic = next(o for j in record["jobs"] for o in j["objects"] if o["path"] == "qemu-amd64/image.wic.zst")
    assert (system["url"], system["sha256sum"], system["compression"]) == (wic["url"], wic["sha256"], "zstd")
    assert job["metadata"]["cipbuild.inputs_digest"] == record["jobs"][0]["inputs_digest"]

    # the same release read back from its folder renders the same jobs
    again = cli("test", "render", str(tmp_path / "store" / "master"), "--out", str(tmp_path / "again"))
    assert again.code == 0, again.err
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == sorted(
        p.name for p in (tmp_path / "jobs").iterdir()
    )


def test_a_plan_that_does_not_apply_is_one_line_and_exit_2(cli: Cli, catalog: Catalog, tmp_path: Path) -> None:
    record = published_ci(catalog)
    path = tmp_path / "published.json"
    path.write_text(record.model_dump_json(by_alias=True))
    riscv = "isar-trixie-qemu-riscv64"
    result = cli("test", "render", str(path), riscv, "--plan", "ltp", "--out", str(tmp_path / "jobs"))
    assert result.code == 2  # the plan named says why
    assert f"job {riscv}: plan ltp does not apply (board qemu-riscv64 runs boot on it)" in result.err
    result = cli("test", "render", str(path), "isar-trixie-qemu-riscv6", "--out", str(tmp_path / "jobs"))
    assert result.code == 2
    assert riscv in result.err  # the nearest id is suggested
    job = next(j for j in record.jobs if j.id == riscv)
    with pytest.raises(UserError, match="plan ltp does not apply"):
        render(catalog, record, job, "ltp")


def test_the_shipped_handoff_schema_is_the_one_the_code_writes() -> None:
    from orchestrator.catalog import default_catalog_dir
    from orchestrator.teststage.run import handoff_schema

    shipped = json.loads((default_catalog_dir() / "schemas" / "handoff.schema.json").read_text())
    assert shipped == handoff_schema(), (
        "refresh it: python -c 'from pathlib import Path; from orchestrator.teststage.run import "
        'write_handoff_schema; write_handoff_schema(Path("schemas"))\''
    )


def test_a_recipe_selects_the_releases_jobs_it_builds(cli: Cli, catalog: Catalog, tmp_path: Path) -> None:
    record = published_ci(catalog)
    path = tmp_path / "published.json"
    path.write_text(record.model_dump_json(by_alias=True))
    for recipe in ("hands-on", "ci"):
        wanted = {j.id for j in make_plan(catalog, recipe=recipe, everything=False, sel=Selection()).jobs}
        ids = {j.id for j in record.jobs}
        expected = {j.id for j in record.jobs if j.id in wanted and plans_for(catalog, j, ids)}
        result = cli("test", "render", str(path), "-r", recipe, "--out", str(tmp_path / recipe), "--json")
        if not expected:
            assert result.code == 2, result.err
            continue
        assert result.code == 0, result.err
        assert {item["job"] for item in json.loads(result.out)} == expected


FIRSTS_WITH_V2 = {  # upstream v1.8 CI's build_swu_v2 jobs, as cip-core-ci names them
    "isar-bookworm-qemu-amd64-security-targz-separate-home-iec-testing",
    "isar-bookworm-qemu-arm64-security-targz-separate-home-iec-testing",
    "isar-bookworm-qemu-arm-security-targz-separate-home-iec-testing",
    "isar-bookworm-x86-uefi-security-separate-home-no-watchdog-iec-testing",
}


REFUSALS = {  # upstream's negative SWUpdate tests and the message each expects from swupdate
    "swupdate-corrupt-swu": "CPIO Header corrupted, cannot be parsed",
    "swupdate-corrupt-artifact": "Image invalid or corrupted",
    "swupdate-same-image": "'configfilecheck()' failed",
}


def actions(definition: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [next(iter(action.items())) for action in definition["actions"]]


def test_the_swupdate_plan_installs_the_second_builds_update_on_the_first_and_boots_into_it(
    catalog: Catalog, lava: LavaInstance
) -> None:
    record = published_ci(catalog)
    ids = {job.id for job in record.jobs}
    tested = {job.id for job in record.jobs if "swupdate" in plans_for(catalog, job, ids)}
    assert tested == FIRSTS_WITH_V2  # security implies swupdate; a job without a second build has no update
    server = Lava(lava.url)
    for first in sorted(tested):
        job = next(j for j in record.jobs if j.id == first)
        second = next(j for j in record.jobs if j.id == f"{first}--swu-v2")
        rendered = render(catalog, record, job, "swupdate")
        assert server.validate(rendered.text) is None, (first, server.validate(rendered.text))
        steps = actions(rendered.definition)
        if job.board == "x86-uefi":  # real hardware: the second boot power-cycles it
            assert [kind for kind, _ in steps] == ["deploy", "boot", "test", "boot", "test"]
        else:
            assert [kind for kind, _ in steps] == ["deploy", "boot", "test", "command", "boot", "test"]
            assert steps[3][1] == {"name": "manual_kill"}  # CIP's lab stops qemu so, before the disk boots again
        images = steps[0][1]["images"]
        disk = images.get("system", images.get("image"))
        v1_wic = next(o for o in job.objects if o.type == "wic")
        v2_swu = next(o for o in second.objects if o.type == "swu")
        assert disk["url"] == v1_wic.url and "/swu-v2/" not in disk["url"]  # the first build's image boots
        install = steps[2][1]["definitions"][0]
        assert install["name"] == "install-update"
        assert install["repository"]["run"]["steps"] == [
            f"""lava-test-case install --shell 'swupdate -d "-u {v2_swu.url}"'"""
        ]
        boots = [body for kind, body in steps if kind == "boot"]
        assert "parameters" not in boots[0]
        assert boots[1]["parameters"] == {"kernel-start-message": "kernel: C:BOOT1:linux.efi"}  # the other partition
        assert boots[1]["auto_login"]["password"] == "CIPsecurity@123"
        after = steps[-1][1]["definitions"][0]["repository"]["run"]["steps"]
        assert after[0].startswith("""lava-test-case update-state --shell '[ "$(bg_printenv | grep ustate""")
        assert after[1] == "lava-test-case confirm --shell bg_setenv -c"
        assert v2_swu.url in rendered.urls  # checked before submission like every download
        if job.board == "x86-uefi":  # upstream runs its refusal tests on qemu only
            continue
        unconfirmed = render(catalog, record, job, "swupdate-no-confirm")
        assert server.validate(unconfirmed.text) is None, (first, server.validate(unconfirmed.text))
        steps = actions(unconfirmed.definition)
        kinds = ["deploy", "boot", "test", "command", "boot", "test", "command", "boot", "test"]
        assert [kind for kind, _ in steps] == kinds  # into the update, not confirmed, booted again
        messages = [
            body["parameters"]["kernel-start-message"]
            for kind, body in steps[1:]
            if kind == "boot" and "parameters" in body
        ]
        assert messages == ["kernel: C:BOOT1:linux.efi", "kernel: C:BOOT0:linux.efi"]  # and back to the old partition
        assert steps[-1][1]["definitions"][0]["name"] == "boot-3"
        assert steps[-1][1]["definitions"][0]["repository"]["run"]["steps"][0].endswith("= 3 ]'")  # failed: ustate 3
        for name, message in REFUSALS.items():
            refusal = render(catalog, record, job, name)
            assert server.validate(refusal.text) is None, (first, name, server.validate(refusal.text))
            steps = actions(refusal.definition)
            assert [kind for kind, _ in steps] == ["deploy", "boot", "test"]  # refused: nothing to boot into
            run = steps[2][1]["definitions"][0]["repository"]["run"]["steps"]
            assert run[0] == f"""lava-test-case fetch --shell 'curl -sSf "{v2_swu.url}" --output /root/update.swu'"""
            assert message in run[-1] and run[-1].startswith("lava-test-case refused --shell ")
            assert refusal.definition["metadata"]["cipbuild.update_job"] == second.id


def test_an_update_plan_without_its_second_build_in_the_release_is_one_line_and_exit_2(
    cli: Cli, catalog: Catalog, tmp_path: Path
) -> None:
    record = published_ci(catalog)
    first = sorted(FIRSTS_WITH_V2)[0]
    full = tmp_path / "published.json"
    full.write_text(record.model_dump_json(by_alias=True))
    alone = record.model_copy(update={"jobs": [j for j in record.jobs if j.id != f"{first}--swu-v2"]})
    part = tmp_path / "first-only.json"
    part.write_text(alone.model_dump_json(by_alias=True))
    result = cli("test", "render", str(part), first, "--plan", "swupdate", "--out", str(tmp_path / "jobs"))
    assert result.code == 2
    assert f"plan swupdate installs the swu of its second build swu-v2, and the release has no {first}--swu-v2" in (
        result.err
    )
    assert "add its part with --with" in result.err
    assert "Traceback" not in result.err and len(result.err.strip().splitlines()) <= 2

    # a fan-out's test job reads the first build's part and names the second's with --with
    second = record.model_copy(update={"jobs": [j for j in record.jobs if j.id == f"{first}--swu-v2"]})
    (tmp_path / "second.json").write_text(second.model_dump_json(by_alias=True))
    result = cli(
        "test", "render", str(part), first, "--with", str(tmp_path / "second.json"),
        "--out", str(tmp_path / "jobs"), "--json",
    )  # fmt: skip
    assert result.code == 0, result.err
    plans = {item["plan"] for item in json.loads(result.out)}
    assert "swupdate" in plans

    # a whole release tests a second build through its first build's update plan only
    result = cli("test", "render", str(full), "--out", str(tmp_path / "all"), "--json")
    assert result.code == 0, result.err
    listed = json.loads(result.out)
    assert not [item for item in listed if "--" in item["job"]]
    assert {item["job"] for item in listed if item["plan"] == "swupdate"} == FIRSTS_WITH_V2
    # ... and on its own where no chosen plan installs it
    result = cli("test", "render", str(full), "--plan", "security", "--out", str(tmp_path / "sec"), "--json")
    assert result.code == 0, result.err
    seconds = {item["job"] for item in json.loads(result.out) if "--" in item["job"]}
    assert seconds == {f"{first}--swu-v2" for first in FIRSTS_WITH_V2}
