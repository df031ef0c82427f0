from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.catalog import Catalog, load_catalog
from orchestrator.errors import UserError
from orchestrator.kasfile import fragments
from orchestrator.matrix import Expander, Job, Selection, make_plan, parse_job_id, resolve_job
from orchestrator.models import KasRef

UPSTREAM_CI = Path(__file__).parent / "fixtures" / "cip-core-ci-v1.8.txt"


def upstream_chains() -> dict[str, list[str]]:
    """build:<name> -> the kas files of upstream's first build of that CI job."""
    chains = {}
    for line in UPSTREAM_CI.read_text().splitlines():
        if line.startswith("build:"):
            name, chain = line.split()
            chains[name] = chain.split(":")
    return chains


def cip_core_files(catalog: Catalog, job: Job) -> list[str]:
    return [f.file for f in fragments(catalog, job) if isinstance(f, KasRef) and f.repo == "cip-core"]


def test_cip_core_ci_recipe_is_upstream_ci_job_for_job(catalog: Catalog) -> None:
    plan = Expander(catalog).expand_recipe("cip-core-ci")
    firsts = [job for job in plan.jobs if not job.follow_up]
    ours = sorted(tuple(cip_core_files(catalog, job)) for job in firsts)
    theirs = sorted(tuple(chain) for chain in upstream_chains().values())
    assert len(firsts) == 26
    assert plan.candidates == len(plan.jobs) + plan.excluded_count()
    assert ours == theirs  # same kas files, in the same order, for every job


def test_waiver_lets_only_the_named_jobs_through(catalog: Catalog) -> None:
    plan = Expander(catalog).expand_recipe("cip-core-ci")
    waived = {job.id: job.waived for job in plan.jobs if job.waived and not job.follow_up}
    assert set(waived) == {
        f"isar-bookworm-{b}-security-targz-separate-home-iec-testing" for b in ("qemu-amd64", "qemu-arm64", "qemu-arm")
    }
    assert all(rules[0][0] == "targz-swupdate" for rules in waived.values())
    # the id alone finds the recipe's waiver (so `cipbuild kas` works for it) ...
    job = resolve_job(catalog, "isar-bookworm-qemu-amd64-security-targz-separate-home-iec-testing")
    assert job.waived[0][0] == "targz-swupdate" and "(recipe cip-core-ci)" in job.waived[0][1]
    # ... and a job no recipe waives stays refused
    with pytest.raises(UserError, match="targz-swupdate"):
        resolve_job(catalog, "isar-bookworm-qemu-amd64-security-targz")


def test_stale_waiver_is_an_error(catalog_copy: Path) -> None:
    recipe = catalog_copy / "recipes" / "cip-core-ci.yml"
    recipe.write_text(recipe.read_text().replace("isar-bookworm-qemu-arm-security", "isar-bookworm-bbb-security"))
    with pytest.raises(UserError, match="does not exclude a job 'isar-bookworm-bbb-security"):
        Expander(load_catalog(catalog_copy)).expand_recipe("cip-core-ci")


@pytest.mark.parametrize(
    ("job_id", "rule"),
    [
        ("isar-bookworm-qemu-arm64-k4.4", "kernel-4.4-arch"),
        ("isar-trixie-qemu-riscv64-k4.19", "kernel-4.19-riscv64"),
        ("isar-bookworm-iwg20m-k6.12", "kernel-6.12-iwg20m"),
        ("isar-bookworm-qemu-riscv64", "riscv64-trixie-only"),
        ("isar-trixie-qemu-riscv64-k6.1-rt", "rt-riscv64-kernel"),
        ("isar-buster-qemu-amd64-security", "iec-layer-kernel"),
        ("isar-bookworm-bbb-security", "security-boards"),
        ("isar-bookworm-iwg20m-swupdate", "swupdate-iwg20m"),
        ("isar-trixie-qemu-riscv64-k5.10-swupdate", "swupdate-riscv64-kernel"),
        ("isar-bookworm-qemu-amd64-swupdate-targz", "targz-swupdate"),
        ("isar-bookworm-qemu-arm-no-watchdog", "watchdog-boards"),
        ("isar-bookworm-qemu-amd64-encrypt", "encrypt-requires-swupdate"),
        ("isar-bookworm-qemu-amd64-security-kernelci", "security-conflicts-kernelci"),
    ],
)
def test_each_kconfig_rule_excludes_and_names_itself(catalog: Catalog, job_id: str, rule: str) -> None:
    with pytest.raises(UserError, match=rule):
        resolve_job(catalog, job_id)


def test_security_selects_swupdate_so_its_rules_apply(catalog: Catalog) -> None:
    # Kconfig: IMAGE_SECURITY selects IMAGE_SWUPDATE, and tar format depends on !IMAGE_SWUPDATE
    with pytest.raises(UserError, match="targz-swupdate"):
        resolve_job(catalog, "isar-bookworm-qemu-amd64-security-targz")
    assert resolve_job(catalog, "isar-trixie-qemu-riscv64-rt").kernel == "6.12"


def test_implied_options_collapse_into_one_job(catalog: Catalog) -> None:
    sel = Selection(boards=("qemu-amd64",), options=("security", "swupdate", "secure-boot"))
    plan = make_plan(catalog, recipe=None, everything=False, sel=sel)
    assert [j.id for j in plan.jobs] == ["isar-bookworm-qemu-amd64-security"]


def test_option_order_is_canonical(catalog: Catalog) -> None:
    a = make_plan(
        catalog, recipe=None, everything=False, sel=Selection(boards=("bbb",), options=("targz", "test", "rt"))
    )
    assert [j.id for j in a.jobs] == ["isar-bookworm-bbb-rt-test-targz"]
    with pytest.raises(UserError, match="use 'isar-bookworm-bbb-rt-test-targz'"):
        resolve_job(catalog, "isar-bookworm-bbb-targz-test-rt")


def test_non_default_kernel_is_part_of_the_id(catalog: Catalog) -> None:
    job = resolve_job(catalog, "isar-buster-qemu-amd64-k5.10-secure-boot-encrypt")
    assert (job.release, job.kernel, job.kernel_is_default) == ("buster", "5.10", False)
    assert resolve_job(catalog, "isar-bullseye-qemu-amd64").kernel == "5.10"


def test_every_recipe_job_id_parses_back(catalog: Catalog) -> None:
    expander = Expander(catalog)
    for name in catalog.recipe_files:
        for job in expander.expand_recipe(name).jobs:
            distro, release, board, _kernel, options = parse_job_id(catalog, job.first.id)
            assert (distro, release, board, options) == (job.distro, job.release, job.board, job.options)
            assert resolve_job(catalog, job.id).id == job.id  # a second build's id too


def test_full_catalogue_expansion(catalog: Catalog) -> None:
    plan = Expander(catalog).expand_all()
    assert plan.candidates > 10_000
    assert plan.candidates == len(plan.jobs) + plan.excluded_count()
    ids = [j.id for j in plan.jobs]
    assert len(ids) == len(set(ids))
    # every job the full expansion accepts is buildable on its own, and vice versa for a sample
    for job in plan.jobs[:: max(1, len(plan.jobs) // 300)]:
        assert resolve_job(catalog, job.id) == job
    for excluded in plan.excluded[:: max(1, plan.excluded_count() // 300)]:
        with pytest.raises(UserError, match=excluded.rules[0]):
            resolve_job(catalog, excluded.job.id)


def test_selectors_narrow_a_recipe(catalog: Catalog) -> None:
    plan = make_plan(catalog, recipe="release", everything=False, sel=Selection(boards=("bbb",), distros=("deby",)))
    assert {j.id for j in plan.jobs} == {"deby-buster-bbb", "deby-buster-bbb-security", "deby-buster-bbb-ltp"}


def test_selector_matching_nothing_is_a_user_error(catalog: Catalog) -> None:
    with pytest.raises(UserError, match="no job of recipe 'hands-on' matches --board bbb"):
        make_plan(catalog, recipe="hands-on", everything=False, sel=Selection(boards=("bbb",)))


def test_recipe_exclude_is_explained(catalog_copy: Path) -> None:
    (catalog_copy / "recipes" / "mini.yml").write_text(
        "description: t\nmatrix: {board: [qemu-amd64, qemu-arm64], options: [[], [test]]}\n"
        "exclude:\n  - {board: qemu-arm64, options: [test]}\n"
    )
    plan = Expander(load_catalog(catalog_copy)).expand_recipe("mini")
    assert [j.id for j in plan.jobs] == [
        "isar-bookworm-qemu-amd64",
        "isar-bookworm-qemu-amd64-test",
        "isar-bookworm-qemu-arm64",
    ]
    assert [(e.job.id, e.rules) for e in plan.excluded] == [("isar-bookworm-qemu-arm64-test", ("recipe-exclude[0]",))]


def test_empty_recipe_is_a_user_error(catalog_copy: Path) -> None:
    (catalog_copy / "recipes" / "empty.yml").write_text(
        "description: t\nmatrix: {board: [bbb], options: [[security]]}\n"
    )
    with pytest.raises(UserError, match=r"recipes/empty.yml: recipe 'empty' expands to no job.*security-boards"):
        Expander(load_catalog(catalog_copy)).expand_recipe("empty")


def test_recipe_exclude_beats_a_waiver(catalog_copy: Path) -> None:
    recipe = catalog_copy / "recipes" / "cip-core-ci.yml"
    recipe.write_text(recipe.read_text() + "exclude:\n  - {board: qemu-arm}\n")
    plan = Expander(load_catalog(catalog_copy)).expand_recipe("cip-core-ci")
    waived = "isar-bookworm-qemu-arm-security-targz-separate-home-iec-testing"
    assert waived not in {j.id for j in plan.jobs}
    assert {e.job.id: e.rules for e in plan.excluded}[waived] == ("recipe-exclude[0]",)
    assert len(plan.jobs) == 26 + 4 - 3 - 1  # and the second build of the qemu-arm security image


def test_option_filter_sees_implied_options(catalog: Catalog) -> None:
    plan = make_plan(catalog, recipe="cip-core-ci", everything=False, sel=Selection(options=("swupdate",)))
    ids = {j.id for j in plan.jobs}
    assert "isar-bookworm-qemu-amd64-swupdate" in ids
    assert "isar-bookworm-x86-uefi-security-separate-home-no-watchdog-iec-testing" in ids
    assert len(ids) == 7 + 4  # and the second builds of the four security images
    assert plan.candidates == len(plan.jobs) + plan.excluded_count()


def test_unknown_kernel_in_an_id_is_named(catalog: Catalog) -> None:
    with pytest.raises(UserError, match=r"unknown kernel 9\.9 for isar"):
        resolve_job(catalog, "isar-bookworm-qemu-amd64-k9.9")


def test_requires_of_implied_options_are_checked(catalog_copy: Path) -> None:
    option = catalog_copy / "options" / "security.yml"
    edit_text = option.read_text().replace("implies: [swupdate, secure-boot, encrypt]", "implies: [encrypt]")
    option.write_text(edit_text)
    with pytest.raises(UserError, match="encrypt-requires-swupdate"):
        resolve_job(load_catalog(catalog_copy), "isar-bookworm-qemu-amd64-security")


def test_every_expansion_path_agrees_on_every_job(catalog: Catalog) -> None:
    """The whole-catalogue walk, a recipe's expansion, one job judged alone and a job id resolved
    must agree on every job of every shipped recipe and of `plan --all`."""
    import dataclasses
    import itertools

    expander = Expander(catalog)
    whole = expander.expand_all()
    planned = list(whole.iter_jobs())
    for name in catalog.recipe_files:
        planned += expander.expand_recipe(name).jobs
    assert len(planned) > 14_000
    for job in planned:
        judged, reasons = expander._judge(job.distro, job.release, job.board, job.kernel, job.options)
        assert judged.id == job.first.id and set(reasons) == {rule for rule, _ in job.waived}, job.id
        resolved = resolve_job(catalog, job.id)
        assert dataclasses.replace(resolved, waived=()) == dataclasses.replace(job, waived=())
        assert [r for r, _ in resolved.waived] == [r for r, _ in job.waived]
    for excluded in itertools.islice(whole.iter_excluded(), 0, None, 97):
        job = excluded.job
        _, reasons = expander._judge(job.distro, job.release, job.board, job.kernel, job.options)
        assert set(excluded.rules) <= set(reasons), job.id
        with pytest.raises(UserError, match="cannot be built"):
            resolve_job(catalog, job.id)


def test_job_id_naming_an_option_twice_is_refused(catalog: Catalog) -> None:
    with pytest.raises(UserError, match="names an option twice"):
        resolve_job(catalog, "isar-bookworm-qemu-amd64-test-rt-test")
    with pytest.raises(UserError, match=r"not in canonical form .*use 'isar-bookworm-qemu-amd64-rt-test'"):
        resolve_job(catalog, "isar-bookworm-qemu-amd64-test-rt")
