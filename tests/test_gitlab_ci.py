"""`cipbuild ci gitlab`: the generated pipelines obey GitLab's structural rules for the shipped
recipes, a 450-job matrix and the whole catalogue, and the generated pipeline runs for real under
gitlab-ci-local (shell executor): every build job builds with the native runtime over the fixture
upstreams and publishes its part to the real SeaweedFS store, the release job assembles, signs and
verifies the release, and a failing build fails the pipeline."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from buildworld import World
from s3fixtures import S3Bucket
from test_signing import (
    Keys,
    keys,  # noqa: F401  (the session fixture)
)

from orchestrator.gitlabci import MAX_JOBS, PIPELINE, check_pipeline

Cli = Callable[..., Any]
ROOT = Path(__file__).resolve().parent.parent
GITLAB_CI_LOCAL = "4.60.1"


def generate(cli: Cli, out: Path, *args: str) -> dict[str, Any]:
    root = list(args[:2]) if args[:1] == ("--catalog",) else []
    rest = args[2:] if root else args
    result = cli(*root, "ci", "gitlab", "--out", str(out), "--no-pin", "--ref", "master", "--json", *rest)
    assert result.code == 0, result.err
    data: dict[str, Any] = json.loads(result.out)
    return data


def run_script(script: list[str], variables: dict[str, str]) -> list[str]:
    """The arguments ``script`` gives cipbuild when a shell runs it with ``variables``."""
    stand_in = 'cipbuild() { for a in "$@"; do printf "%s\\n" "$a"; done; }\n'
    env = {"PATH": os.environ["PATH"], "CIPBUILD_LAVA_URL": "https://lava.invalid/", **variables}
    shell = ["sh", "-ec", stand_in + "\n".join(script)]
    proc = subprocess.run(shell, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


@pytest.mark.parametrize("recipe", ["ci", "release", "cip-core-ci"])
def test_shipped_recipes_make_valid_pipelines(cli: Cli, tmp_path: Path, recipe: str) -> None:
    data = generate(cli, tmp_path, "-r", recipe)
    doc = load(tmp_path / PIPELINE)
    assert check_pipeline(doc) == []
    builds = [n for n, j in doc.items() if isinstance(j, dict) and j.get("extends") == ".cipbuild-build"]
    tests = {n: j for n, j in doc.items() if isinstance(j, dict) and j.get("extends") == ".cipbuild-test"}
    assert len(builds) == data["builds"] and len(tests) == data["tests"]
    planned = json.loads(cli("plan", "-r", recipe, "--json").out)["jobs"]
    assert sorted(builds) == sorted(j["id"] for j in planned if not j["follow_up"])  # named by job id
    for name, job in tests.items():
        assert job["needs"] == [name.removeprefix("test:")]
        assert job["variables"] == doc[name.removeprefix("test:")]["variables"]  # its second builds too
    # a second build runs in its first's GitLab job, as upstream's build_swu_v2 does in the same job
    seconds = {j["follow_up"]["of"]: j["id"] for j in planned if j["follow_up"]}
    for build in builds:
        also = {"CIPBUILD_FOLLOW_UPS": seconds[build]} if build in seconds else {}
        assert doc[build]["variables"] == {"CIPBUILD_JOB": build, **also} and doc[build]["image"]
    assert len(seconds) == (4 if recipe == "cip-core-ci" else 0)
    assert '"$CIPBUILD_JOB" ${CIPBUILD_FOLLOW_UPS:-} --out out' in doc[".cipbuild-build"]["script"][1]
    if recipe == "cip-core-ci":  # the test job's script, run by a shell: a second build's part joins its first's
        first = next(iter(seconds))
        variables = {**doc[f"test:{first}"]["variables"], "CIPBUILD_STORE": "s3://b/cip-core", "CIPBUILD_REF": "v1"}
        argv = run_script(doc[".cipbuild-test"]["script"], variables)
        parts = "s3://b/cip-core/v1/parts"
        assert argv[:5] == ["test", "run", f"{parts}/{first}.json", first, "--with"]
        assert argv[5] == f"{parts}/{seconds[first]}.json" and argv[6] == "--lava"
        argv = run_script(doc[".cipbuild-test"]["script"], {**variables, "CIPBUILD_FOLLOW_UPS": ""})
        assert argv[4] == "--lava"  # a job without a second build names no other part
    assert doc["release:index"]["stage"] == "release"
    assert f"-r {recipe}" in doc["release:index"]["script"][0]
    text = (tmp_path / PIPELINE).read_text()
    assert "AWS_SECRET_ACCESS_KEY" not in text and "BEGIN PGP" not in text


def test_a_450_job_matrix_is_split_into_children_that_each_fit(cli: Cli, catalog_copy: Path, tmp_path: Path) -> None:
    """A synthetic recipe of 450 jobs of the catalogue, with a 200-job limit: children that fit."""
    plan = cli("--catalog", str(catalog_copy), "plan", "--all", "--json")
    assert plan.code == 0, plan.err
    specs = [
        {key: job[key] for key in ("distro", "board", "release", "kernel", "options")}
        for job in json.loads(plan.out)["jobs"][:450]
    ]
    recipe = {"description": "450 jobs", "include": specs}
    (catalog_copy / "recipes" / "big.yml").write_text(json.dumps(recipe))
    data = generate(cli, tmp_path, "--catalog", str(catalog_copy), "-r", "big", "--max-jobs", "200")
    assert data["builds"] == 450 and data["tests"] > 0
    files = {Path(f).name: count for f, count in data["files"].items()}
    assert len(files) - 1 >= (450 + data["tests"]) // 200
    parent = load(tmp_path / PIPELINE)
    assert check_pipeline(parent, max_jobs=200) == []
    triggers = [n for n, j in parent.items() if isinstance(j, dict) and "trigger" in j]
    assert len(triggers) == len(files) - 1
    names: set[str] = set()
    builds = 0
    for trigger in triggers:
        (include,) = parent[trigger]["trigger"]["include"]
        assert include["job"] == "cipbuild:children" and parent[trigger]["trigger"]["strategy"] == "depend"
        child = load(tmp_path / Path(include["artifact"]).name)
        assert check_pipeline(child, max_jobs=200) == []
        jobs = {n for n in child if n not in ("stages", "variables") and not n.startswith(".")}
        assert len(jobs) <= 200 and not names & jobs  # names unique across the children
        names |= jobs
        builds += sum(1 for j in child.values() if isinstance(j, dict) and j.get("extends") == ".cipbuild-build")
    assert builds == 450
    needs = parent["cipbuild:children"]["needs"]
    assert needs == [{"pipeline": "$PARENT_PIPELINE_ID", "job": "cipbuild:generate"}]
    assert parent["release:index"]["stage"] == "release" and "-r big" in parent["release:index"]["script"][0]


def test_runner_tags_come_from_the_catalogue(cli: Cli, catalog_copy: Path, tmp_path: Path) -> None:
    distro = catalog_copy / "distros" / "isar.yml"
    distro.write_text(distro.read_text() + 'runner_tags: [isar-builder, "{arch}-capable"]\n')
    generate(cli, tmp_path, "--catalog", str(catalog_copy), "-r", "ci", "--tag", "large")
    doc = load(tmp_path / PIPELINE)
    assert doc["isar-bookworm-qemu-arm64"]["tags"] == ["isar-builder", "arm64-capable", "large"]
    assert doc["isar-bookworm-qemu-amd64"]["tags"] == ["isar-builder", "amd64-capable", "large"]
    assert doc["deby-buster-qemu-amd64"]["tags"] == ["large"]  # deby names none


def test_the_whole_catalogue_generates_quickly(cli: Cli, tmp_path: Path) -> None:
    started = time.monotonic()
    data = generate(cli, tmp_path, "--all")
    took = time.monotonic() - started
    assert data["builds"] > 10_000 and len(data["files"]) > data["builds"] // MAX_JOBS
    assert took < 30  # the bench measures the 2 s goal; this only catches a collapse


def test_check_pipeline_names_what_gitlab_would_refuse() -> None:
    doc = {
        "stages": ["build", "test"],
        "a": {"stage": "build", "script": ["true"]},
        "b": {"stage": "test", "script": ["true"], "needs": ["missing"]},
        "c": {"stage": "nowhere", "script": ["true"]},
        "d": {"stage": "build", "script": ["true"], "needs": ["e"]},
        "e": {"stage": "test", "script": ["true"]},
        "f": {"extends": ".gone", "script": ["true"]},
        "g": {"stage": "build"},
        "h": {"stage": "build", "script": ["true"], "rules": [{"iff": "$X"}]},
    }
    problems = check_pipeline(doc, max_jobs=7)
    for words in ("8 jobs, more than 7", "b: needs 'missing'", "c: stage 'nowhere'", "d: needs 'e' of a later",
                  "f: extends '.gone'", "g: no script", "h: a rule"):  # fmt: skip
        assert any(words in p for p in problems), (words, problems)


def test_bad_arguments_are_one_line(cli: Cli, tmp_path: Path) -> None:
    nothing = cli("ci", "gitlab", "--out", str(tmp_path))
    assert nothing.code == 2 and "say which jobs" in nothing.err
    both = cli("ci", "gitlab", "-r", "ci", "--all", "--out", str(tmp_path))
    assert both.code == 2 and "pick one" in both.err
    keyword = cli("ci", "gitlab", "-r", "ci", "--generate-job", "variables", "--out", str(tmp_path))
    assert keyword.code == 2 and "cannot name a GitLab job" in keyword.err
    for result in (nothing, both, keyword):
        assert result.err.count("\n") == 1 and "Traceback" not in result.err


# --- the pipeline, run ---------------------------------------------------------------------------


def gitlab_ci_local() -> str:
    path = shutil.which("gitlab-ci-local")
    if path is not None:
        return path
    reason = f"gitlab-ci-local missing: npm install -g gitlab-ci-local@{GITLAB_CI_LOCAL} (.ci/run does)"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def run_pipeline(
    repo: Path, file: str, variables: dict[str, str], *jobs: str, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    """Run the pipeline file as runners would: each job in a folder of its own (--shell-isolation)."""
    argv = [gitlab_ci_local(), "--file", file, "--force-shell-executor", "--shell-isolation", "--no-color"]
    argv += ["--json-schema-validation"]
    argv += [arg for key, value in variables.items() for arg in ("--variable", f"{key}={value}")]
    return subprocess.run(
        [*argv, *jobs], cwd=repo, capture_output=True, text=True, check=False, timeout=timeout, env=os.environ.copy()
    )


def runner_variables(world: World, keys: Keys, s3: S3Bucket) -> dict[str, str]:  # noqa: F811
    """The CI/CD variables a project sets for the generated pipeline (the fixture world's)."""
    return {
        "CIPBUILD_CATALOG": str(world.catalog),
        "CIPBUILD_MIRROR": str(world.mirror),
        "CIPBUILD_SIGNING_KEY": str(keys.good.secret),
        "CIPBUILD_KEYRING": str(keys.good.public),
        "AWS_ENDPOINT_URL": s3.endpoint,
    }


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A project work tree, as a runner checks it out."""
    path = tmp_path / "project"
    path.mkdir()
    env = {**os.environ, "GIT_AUTHOR_NAME": "ci", "GIT_AUTHOR_EMAIL": "ci@example.invalid",
           "GIT_COMMITTER_NAME": "ci", "GIT_COMMITTER_EMAIL": "ci@example.invalid"}  # fmt: skip
    (path / "README").write_text("a project that builds CIP Core images\n")
    for args in (["init", "-q", "-b", "main"], ["add", "README"], ["commit", "-q", "-m", "start"]):
        subprocess.run(["git", *args], cwd=path, check=True, env=env)
    return path


@pytest.mark.integration
def test_the_generated_pipeline_builds_publishes_and_releases(
    cli: Cli,
    world: World,
    repo: Path,
    s3: S3Bucket,
    keys: Keys,  # noqa: F811
) -> None:
    store = f"{s3.url}/cip-core"
    generated = repo / ".cipbuild-ci"
    result = cli("--catalog", str(world.catalog), "ci", "gitlab", "-r", "four", "--out", str(generated),
                 "--store", store, "--ref", "master", "--no-pin")  # fmt: skip
    assert result.code == 0, result.err
    s3.client().put_bucket_acl(Bucket=s3.bucket, ACL="public-read")  # builds read the sstate over HTTP
    variables = {
        **runner_variables(world, keys, s3),
        "CIPBUILD_CACHE_STORE": f"{s3.url}/ci-cache",
        "CIPBUILD_SSTATE_MIRROR": f"{s3.endpoint}/{s3.bucket}/ci-cache",
    }
    done = run_pipeline(repo, f".cipbuild-ci/{PIPELINE}", variables)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    # the runners shared their caches through the store, and bitbake was given the store's sstate
    sstate = [k for k in s3.keys("ci-cache/_cache/sstate/") if k.endswith("_do_fixture.tar.zst")]
    assert len(sstate) == 4
    mirror = f"SSTATE_MIRRORS=file://.* {s3.endpoint}/{s3.bucket}/ci-cache/_cache/sstate/PATH;downloadfilename=PATH"
    logs = list(repo.glob(".gitlab-ci-local/**/out/*/build.log"))
    assert logs and all(mirror in log.read_text() for log in logs), [log.read_text()[-500:] for log in logs]
    plan = json.loads(cli("--catalog", str(world.catalog), "plan", "-r", "four", "--json").out)
    ids = sorted(j["id"] for j in plan["jobs"])
    keys_in_store = s3.keys("cip-core/master/")
    assert {f"cip-core/master/parts/{job_id}.json" for job_id in ids} <= set(keys_in_store)
    assert "cip-core/master/index.json" in keys_in_store
    index = json.loads(s3.client().get_object(Bucket=s3.bucket, Key="cip-core/master/index.json")["Body"].read())
    assert sorted(entry["id"] for entry in index["jobs"]) == ids
    assert "release:index" in done.stdout and "verified" in done.stdout.lower()

    # a second run with nothing changed: every build is skipped as published, the release again verifies
    again = run_pipeline(repo, f".cipbuild-ci/{PIPELINE}", variables)
    assert again.returncode == 0, again.stdout[-6000:]
    for job_id in ids:  # each build job's table: its job skipped as published, nothing built
        assert re.search(rf"{re.escape(job_id)}\s+published\s", again.stdout), job_id
        assert not re.search(rf"{re.escape(job_id)}\s+success\s", again.stdout), job_id


@pytest.mark.integration
def test_a_failing_build_fails_the_pipeline_and_no_release_appears(
    cli: Cli,
    world: World,
    repo: Path,
    s3: S3Bucket,
    keys: Keys,  # noqa: F811
) -> None:
    store = f"{s3.url}/cip-core"
    generated = repo / ".cipbuild-ci"
    jobs = ("isar-bookworm-qemu-amd64", "isar-bookworm-qemu-amd64-fail")  # the fixture bitbake fails the second
    result = cli("--catalog", str(world.catalog), "ci", "gitlab", *jobs, "--out", str(generated),
                 "--store", store, "--ref", "broken", "--no-pin")  # fmt: skip
    assert result.code == 0, result.err
    variables = runner_variables(world, keys, s3)
    done = run_pipeline(repo, f".cipbuild-ci/{PIPELINE}", variables)
    assert done.returncode != 0, done.stdout[-3000:]
    stored = s3.keys("cip-core/broken/")
    assert "cip-core/broken/parts/isar-bookworm-qemu-amd64.json" in stored  # the good build published
    assert "cip-core/broken/index.json" not in stored  # the release job never ran


@pytest.mark.integration
def test_the_projects_own_pipeline_runs_up_to_the_trigger(tmp_path: Path) -> None:
    """The project's .gitlab-ci.yml: valid for GitLab, and its generate job, run for real, writes
    the pipeline its trigger job includes."""
    project = tmp_path / "cipbuild"
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (project / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, project / name)
    env = {**os.environ, "GIT_AUTHOR_NAME": "ci", "GIT_AUTHOR_EMAIL": "ci@example.invalid",
           "GIT_COMMITTER_NAME": "ci", "GIT_COMMITTER_EMAIL": "ci@example.invalid"}  # fmt: skip
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "cipbuild"]):
        subprocess.run(["git", *args], cwd=project, check=True, env=env, capture_output=True)
    own = load(project / ".gitlab-ci.yml")
    assert check_pipeline(own) == []
    trigger = own["build"]["trigger"]
    assert trigger["strategy"] == "depend" and trigger["include"][0]["job"] == "cipbuild:generate"
    assert own["build"]["variables"] == {"PARENT_PIPELINE_ID": "$CI_PIPELINE_ID"}
    listed = run_pipeline(project, ".gitlab-ci.yml", {}, "--list")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    for job in ("lint", "test", "cipbuild:generate"):
        assert job in listed.stdout
    done = run_pipeline(project, ".gitlab-ci.yml", {}, "cipbuild:generate")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    generated = next(project.rglob("cipbuild-pipeline.yml"))
    child = load(generated)
    assert check_pipeline(child) == []
    assert "-r ci" in child["release:index"]["script"][0]
    tagged = run_pipeline(project, ".gitlab-ci.yml", {"CI_COMMIT_TAG": "v1.0"}, "cipbuild:generate")
    assert tagged.returncode == 0, tagged.stdout[-3000:]
    assert "-r release" in load(next(project.rglob("cipbuild-pipeline.yml")))["release:index"]["script"][0]
