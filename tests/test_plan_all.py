"""`plan --all` walks the option tree and prunes by the rules; a brute-force listing of every
candidate (the expansion as it was before the walk) must give the same plan."""

from __future__ import annotations

import itertools
import json
import random
import re
import shutil
import subprocess
import sys
import tracemalloc
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import Result

from orchestrator.catalog import Catalog, default_catalog_dir, load_catalog
from orchestrator.errors import UserError
from orchestrator.matrix import Excluded, Expander, Job, Plan, Selection, make_plan, select

Cli = Callable[..., Result]


def brute_force(catalog: Catalog, sel: Selection) -> Plan:
    """Every canonical option set of every base, judged one by one, then narrowed by ``sel``."""
    if catalog.root not in _LISTED:
        _LISTED[catalog.root] = list_every_candidate(catalog)
    return select(_LISTED[catalog.root], sel, catalog)


_LISTED: dict[Path, Plan] = {}


def list_every_candidate(catalog: Catalog) -> Plan:
    expander = Expander(catalog)
    jobs: list[Job] = []
    excluded: list[Excluded] = []
    for dname, ix in expander.index.items():
        masks = [m for m in range(1 << len(ix.options)) if ix.canonical(m) == m]
        boards = [(b, f.arch) for b, f in sorted(catalog.boards.items()) if dname in f.distros]
        for release in ix.distro.releases:
            for kernel in ix.distro.kernels:
                for board, arch in boards:
                    active = ix.active_rules(board, arch, release, kernel)
                    for mask in masks:
                        job = expander.job_of(dname, release, board, kernel, mask)
                        reasons = ix.verdict(active, mask)
                        if reasons:
                            excluded.append(Excluded(job, reasons))
                        else:
                            jobs.append(job)
    return Plan("the whole catalogue", jobs, len(jobs) + len(excluded), excluded, _expander=expander)


def assert_same_plan(catalog: Catalog, sel: Selection) -> Plan:
    walked = make_plan(catalog, recipe=None, everything=True, sel=sel)
    reference = brute_force(catalog, sel)
    assert walked.jobs == reference.jobs  # same jobs, same order
    assert walked.candidates == reference.candidates
    assert walked.excluded_count() == walked.candidates - walked.job_count() == len(reference.excluded)

    verdicts = {e.job.id: set(e.rules) for e in reference.excluded}
    listed = list(walked.iter_excluded())
    assert sorted(e.job.id for e in listed) == sorted(verdicts)
    for exc in listed:  # each is counted under at least one rule, and only under rules that exclude it
        assert exc.rules and set(exc.rules) <= verdicts[exc.job.id], exc
    counts = walked.rule_counts()
    assert counts == Counter(rule for exc in listed for rule in exc.rules)
    assert sum(counts.values()) >= walked.excluded_count()
    examples = walked.examples()
    assert set(examples) == set(counts)
    counted = {(exc.job.id, rule) for exc in listed for rule in exc.rules}
    assert all((job_id, rule) in counted for rule, job_id in examples.items())
    return walked


SHIPPED_SELECTIONS = [
    Selection(),
    Selection(boards=("qemu-riscv64",)),
    Selection(distros=("deby",)),
    Selection(options=("swupdate",)),
    Selection(options=("security", "rt"), releases=("bookworm", "trixie")),
    Selection(options=("ltp",)),
    Selection(kernels=("4.4",), boards=("bbb", "qemu-arm64")),
    Selection(job_ids=("isar-bookworm-qemu-amd64-security", "deby-buster-bbb-ltp", "isar-bookworm-bbb-rt")),
    Selection(job_ids=("isar-trixie-qemu-riscv64-rt",), options=("rt",), boards=("qemu-riscv64",)),
]


@pytest.mark.parametrize("sel", SHIPPED_SELECTIONS, ids=lambda s: s.describe() or "everything")
def test_walk_matches_brute_force_on_the_shipped_catalogue(catalog: Catalog, sel: Selection) -> None:
    plan = assert_same_plan(catalog, sel)
    assert plan.jobs


def test_whole_catalogue_counts(catalog: Catalog) -> None:
    expander = Expander(catalog)
    plan = expander.expand_all()
    assert (plan.candidates, plan.job_count(), plan.excluded_count()) == (245840, 14880, 230960)
    # a rule with no option condition excludes its whole base at the root, every option set counted
    ix = expander.index["isar"]
    option_sets = sum(1 for m in range(1 << len(ix.options)) if ix.canonical(m) == m)
    riscv_before_trixie = 3 * len(ix.distro.kernels)
    assert plan.rule_counts()["riscv64-trixie-only"] == riscv_before_trixie * option_sets == 23040


def test_a_job_id_the_rules_exclude_is_named_with_its_rule(catalog: Catalog) -> None:
    with pytest.raises(UserError, match="job 'isar-bookworm-bbb-security' is excluded by security-boards"):
        make_plan(catalog, recipe=None, everything=True, sel=Selection(job_ids=("isar-bookworm-bbb-security",)))
    with pytest.raises(UserError, match=r"no job 'isar-bookworm-qemu-amd64-swupdate-security'.*did you mean"):
        make_plan(
            catalog,
            recipe=None,
            everything=True,
            sel=Selection(job_ids=("isar-bookworm-qemu-amd64-swupdate-security",)),
        )


WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]


def random_catalogue(root: Path, seed: int) -> Path:
    """The shipped boards, releases and kernels with random isar options and rules."""
    rng = random.Random(seed)
    for part in ("boards", "distros", "kas"):
        shutil.copytree(default_catalog_dir() / part, root / part)
    (root / "options").mkdir()
    (root / "recipes").mkdir()
    (root / "recipes" / "one.yml").write_text("description: t\nmatrix: {board: [qemu-amd64]}\n")
    names = WORDS[: rng.randint(5, len(WORDS))]
    for i, name in enumerate(names):
        others = [o for o in names if o != name]
        spec: dict[str, Any] = {"kas": []}
        # implies point forward in this list, the walk's order is shuffled below: both directions
        implies = [o for o in names[i + 1 :] if rng.random() < 0.2]
        requires = [o for o in others if rng.random() < 0.12]
        conflicts = [o for o in others if o not in implies and rng.random() < 0.1]
        for key, value in (("implies", implies), ("requires", requires), ("conflicts", conflicts)):
            if value:
                spec[key] = value
        (root / "options" / f"{name}.yml").write_text(yaml.safe_dump({"summary": name, "distros": {"isar": spec}}))
    for dname in ("isar", "deby"):
        path = root / "distros" / f"{dname}.yml"
        distro = yaml.safe_load(path.read_text())
        order = [*(names if dname == "isar" else []), "board", "release", "kernel"]
        rng.shuffle(order)
        distro["order"] = order
        distro["rules"] = random_rules(rng, names) if dname == "isar" else []
        distro.pop("follow_ups", None)  # they require shipped options
        path.write_text(yaml.safe_dump(distro))
    return root


def random_rules(rng: random.Random, names: list[str]) -> list[dict[str, Any]]:
    bases: list[dict[str, Any]] = [
        {},
        {"board": rng.choice(["bbb", "qemu-amd64", "iwg20m"])},
        {"arch": {"not": "amd64"}},
        {"kernel": {"below": "5.10"}},
        {"release": ["buster", "trixie"]},
    ]
    rules = []
    for i in range(rng.randint(2, 5)):
        when = dict(rng.choice(bases))
        kind = rng.random()
        if kind < 0.4:
            when["options"] = rng.sample(names, rng.randint(1, 2))
        elif kind < 0.8:
            when["options_any"] = rng.sample(names, rng.randint(2, 3))
        elif kind < 0.9:
            when["options"] = rng.sample(names, 1)
            when["options_any"] = rng.sample(names, 2)
        if not when:
            when = {"board": "iwg20m"}  # a rule needs a condition
        rules.append({"id": f"rule-{i}", "summary": f"rule {i}", "when": when})
    return rules


@pytest.mark.parametrize("seed", range(16))
def test_walk_matches_brute_force_on_random_catalogues(tmp_path: Path, seed: int) -> None:
    catalog = load_catalog(random_catalogue(tmp_path / "catalog", seed), cache=False)
    names = catalog.options_of("isar")
    rng = random.Random(seed)
    selections = [
        Selection(),
        Selection(options=(rng.choice(names),)),
        Selection(options=tuple(rng.sample(names, 2)), boards=("qemu-amd64", "bbb")),
        Selection(kernels=("4.4", "6.12"), distros=("isar",)),
    ]
    for sel in selections:
        assert_same_plan(catalog, sel)


def test_a_requirement_only_a_later_option_brings_in_is_not_pruned_early(tmp_path: Path) -> None:
    root = random_catalogue(tmp_path / "catalog", 0)
    for name in WORDS[:5]:
        (root / "options" / f"{name}.yml").write_text(yaml.safe_dump({"summary": name, "distros": {"isar": {}}}))
    (root / "options" / "alpha.yml").write_text("summary: a\ndistros: {isar: {requires: [charlie]}}\n")
    (root / "options" / "bravo.yml").write_text("summary: b\ndistros: {isar: {implies: [charlie]}}\n")
    for extra in WORDS[5:]:
        (root / "options" / f"{extra}.yml").unlink(missing_ok=True)
    path = root / "distros" / "isar.yml"
    distro = yaml.safe_load(path.read_text())
    distro["order"] = ["board", "release", "kernel", "charlie", "alpha", "delta", "bravo", "echo"]
    distro["rules"] = []
    path.write_text(yaml.safe_dump(distro))
    catalog = load_catalog(root, cache=False)
    plan = assert_same_plan(catalog, Selection(boards=("qemu-amd64",), releases=("bookworm",), kernels=("6.1",)))
    ids = {j.id for j in plan.jobs}
    assert "isar-bookworm-qemu-amd64-alpha-bravo" in ids  # bravo, decided after alpha, brings charlie in
    assert "isar-bookworm-qemu-amd64-charlie-alpha" in ids
    assert plan.rule_counts() == {"alpha-requires-charlie": 4}  # alpha without charlie or bravo, x delta, echo


def test_plan_all_json_streams_the_same_document(cli: Cli, catalog: Catalog) -> None:
    from orchestrator.kasfile import job_record

    res = cli("plan", "--all", "--json", "-b", "qemu-arm64", "-R", "bookworm")
    plan = brute_force(catalog, Selection(boards=("qemu-arm64",), releases=("bookworm",)))
    expected = {
        "source": "the whole catalogue",
        "candidates": plan.candidates,
        "jobs": [job_record(catalog, j) for j in plan.jobs],
    }
    assert res.out == json.dumps(expected, indent=2) + "\n"


def test_plan_all_explain_json_lists_every_exclusion_once(cli: Cli) -> None:
    data = json.loads(cli("plan", "--all", "--explain", "--json", "-b", "bbb", "-k", "6.1").out)
    ids = [e["id"] for e in data["excluded"]]
    assert len(ids) == len(set(ids)) == data["candidates"] - len(data["jobs"])
    assert set(data["rules"]) == {r for e in data["excluded"] for r in e["rules"]}


def test_plan_all_table_shows_the_first_jobs_and_counts_by_rule(cli: Cli) -> None:
    out = cli("plan", "--all", "--explain").out
    jobs, _, by_rule = out.partition("14880 jobs from the whole catalogue; 230960 of 245840 candidates excluded")
    assert by_rule.startswith(" (first 200 shown; --json lists all)")
    assert sum(1 for line in jobs.splitlines() if line.startswith("isar-")) == 200
    assert re.search(r"\nriscv64-trixie-only +23040 +isar-buster-qemu-riscv64-k4\.4 ", by_rule)


PEAK_RSS = """
import resource, subprocess, sys
subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, check=True)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def peak_rss_mib(argv: list[str]) -> float:
    """Peak resident memory of a command, measured by a parent that runs nothing else."""
    out = subprocess.run([sys.executable, "-c", PEAK_RSS, *argv], capture_output=True, text=True, check=True)
    return int(out.stdout) / 1024


def test_peak_memory_does_not_grow_with_the_excluded(tmp_path: Path) -> None:
    # Thirteen more options that a rule excludes whenever one is chosen: 8192 times as many
    # excluded candidates (about 2 * 10^9), the same jobs. Listing all candidates (the expansion
    # before the walk) took gigabytes; counting them must take what the shipped catalogue takes.
    root = tmp_path / "catalog"
    for part in ("boards", "options", "distros", "recipes", "kas"):
        shutil.copytree(default_catalog_dir() / part, root / part)
    extra = [f"extra{i}" for i in range(13)]
    for name in extra:
        (root / "options" / f"{name}.yml").write_text(f"summary: {name}\ndistros: {{isar: {{}}}}\n")
    path = root / "distros" / "isar.yml"
    distro = yaml.safe_load(path.read_text())
    distro["order"] += extra
    distro["rules"].append({"id": "no-extras", "summary": "x", "when": {"options_any": extra}})
    path.write_text(yaml.safe_dump(distro))
    catalog = load_catalog(root, cache=False)
    plan = Expander(catalog).expand_all()
    assert plan.job_count() == 14880
    assert plan.excluded_count() == plan.candidates - 14880 > 2_000_000_000
    # the extras are decided last: only option sets the shipped rules accept get that far
    isar_jobs = sum(1 for job in plan.iter_jobs() if job.distro == "isar")
    assert plan.rule_counts()["no-extras"] == isar_jobs * 8191

    tracemalloc.start()
    listed = sum(1 for _ in itertools.islice(plan.iter_excluded(), 300_000))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert listed == 300_000 and peak < 8_000_000  # bytes; a list of them would be ~60 MB

    shipped = [sys.executable, "-m", "orchestrator", "plan", "--all", "--explain"]
    grown = [sys.executable, "-m", "orchestrator", "--catalog", str(root), "plan", "--all", "--explain"]
    assert peak_rss_mib(grown) < peak_rss_mib(shipped) * 1.5
