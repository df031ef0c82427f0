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
            objects.append(
                {
                    "name": f"{job.id}/artifacts/{file}",
                    "path": f"{job.board}/{file}",
                    "url": f"{BASE}{job.board}/{file}",
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
    for job in record.jobs:
        for plan in plans_for(catalog, job):
            try:
                rendered.append(render(catalog, record, job, plan))
            except UserError as exc:  # a plan whose artifacts this job's options do not deploy
                assert "needs a" in str(exc), exc
    boards = {r.job.board for r in rendered}
    assert boards == {j.board for j in record.jobs}, "a board of cip-core-ci got no LAVA job"
    assert {r.plan for r in rendered} >= {"boot", "ltp", "security", "secure-boot"}
    for item in rendered:
        assert server.validate(item.text) is None, (item.file_name, server.validate(item.text), item.text)
        definition = item.definition
        assert definition["metadata"]["cipbuild.job"] == item.job.id
        assert definition["device_type"] == catalog.boards[item.job.board].test.device_type
        for url in item.urls:
            assert url.startswith(BASE)  # every download comes from the published record


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
    assert result.code == 2
    assert "no test plan applies" in result.err
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
        expected = {j.id for j in record.jobs if j.id in wanted and plans_for(catalog, j)}
        result = cli("test", "render", str(path), "-r", recipe, "--out", str(tmp_path / recipe), "--json")
        if not expected:
            assert result.code == 2, result.err
            continue
        assert result.code == 0, result.err
        assert {item["job"] for item in json.loads(result.out)} == expected
