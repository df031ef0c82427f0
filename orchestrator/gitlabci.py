"""GitLab child pipelines generated from the matrix: one build job per job id, a test job after
each build whose board is tested in LAVA, and one release job that assembles, signs and verifies
the release from the store (child pipelines cannot hand artifacts back to their parent).

A matrix that fits one pipeline (``max_jobs``) becomes one file. A bigger one becomes several
children plus a pipeline that triggers each (``strategy: depend``) and then releases; that
pipeline takes the children from the job that generated them (``needs:pipeline``), so what runs
is exactly what was generated. Each file is written line by line with JSON-quoted scalars (a
JSON string is a YAML scalar), which keeps 15,000 jobs fast and any name or URL from breaking
the YAML; ``check_pipeline`` holds GitLab's structural rules and is run on every file written.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from . import __version__
from .catalog import Catalog
from .errors import UserError
from .matrix import Job

PIPELINE = "cipbuild-pipeline.yml"
STORE_VARIABLE = "$CIPBUILD_STORE"
CHILD = "cipbuild-child-{n}.yml"
GENERATE_JOB = "cipbuild:generate"
RELEASE_JOB = "release:index"
MAX_JOBS = 500  # GitLab.com's pipeline size limit on the free tier; self-managed: ci_pipeline_size
MAX_NEEDS = 50  # GitLab's default ci_max_needs
MAX_NAME = 255
MAX_FILE = 1 << 20  # GitLab's default max_yaml_size_bytes
KEYWORDS = frozenset(
    {"image", "services", "stages", "types", "before_script", "after_script", "variables", "cache", "include"}
    | {"default", "workflow", "pages", "true", "false", "nil", "spec"}
)
STAGE_OF_CHILD = ("build", "test")
_QUOTE = json.dumps
_PLAIN = re.compile(r"[A-Za-z_.][A-Za-z0-9_.-]*")  # a key YAML reads as itself, unquoted


@dataclass(frozen=True)
class Settings:
    """What the generated jobs run with; secrets are never here, only the names of CI variables."""

    recipe: str | None
    command: str  # the `cipbuild ci gitlab ...` line that generated it (a comment)
    ref: str
    store: str = STORE_VARIABLE
    max_jobs: int = MAX_JOBS
    install: str = f"python3 -m pip install --quiet cipbuild=={__version__}"
    runtime: str = "native"
    tags: tuple[str, ...] = ()
    expire: str = "1 week"
    images: dict[str, str] = field(default_factory=dict)  # distro -> builder image as pinned
    generate_job: str = GENERATE_JOB
    folder: str = ".cipbuild-ci"  # where the generating job leaves the files (its artifacts)


@dataclass
class Generated:
    files: dict[str, str]  # file name -> YAML text
    jobs: dict[str, int]  # file name -> jobs in it
    builds: int
    tests: int


def runner_tags(catalog: Catalog, job: Job, extra: Iterable[str]) -> list[str]:
    """The distro's runner tags ({arch} and {distro} filled in) and ``extra``, in order, once each."""
    arch = catalog.boards[job.board].arch
    tags = [t.format(arch=arch, distro=job.distro) for t in catalog.distros[job.distro].runner_tags]
    return list(dict.fromkeys([*tags, *extra]))


def tested(catalog: Catalog, job: Job) -> bool:
    """Whether a LAVA plan of the job's board applies to it."""
    board = catalog.boards[job.board]
    if board.test.device_type is None or board.test.boot_method == "none":
        return False
    options = set(job.options)
    return any(
        set(catalog.testplans[name].when) <= options and not set(catalog.testplans[name].unless) & options
        for name in board.test.plans
        if name in catalog.testplans
    )


def check_name(name: str) -> str:
    if not name or len(name) > MAX_NAME or name in KEYWORDS or name.startswith(".") or "\n" in name:
        raise UserError(f"{name[:80]!r} cannot name a GitLab job (empty, too long, hidden or a keyword)")
    return name


Doc = dict[str, Any]


def generate(catalog: Catalog, jobs: list[Job], settings: Settings) -> Generated:
    """The pipeline files for ``jobs``, each checked against GitLab's rules before it is written."""
    if not jobs:
        raise UserError("no job to generate a pipeline for")
    if settings.max_jobs < 3:
        raise UserError("a pipeline needs room for a build, its test and the release job", where="--max-jobs")
    # a second build runs in its first build's job, as upstream CI's build_swu_v2 does: it reads
    # the first's artifacts from --out, which another runner would not have
    later: dict[str, list[str]] = {}
    for job in jobs:
        if job.follow_up:
            later.setdefault(job.first.id, []).append(job.id)
    units = [(job, tested(catalog, job)) for job in jobs if not job.follow_up]
    missing = sorted(set(later) - {job.id for job, _ in units})
    if missing:
        raise UserError(f"a second build without its first: {missing[0]}", where="ci gitlab")
    fits = sum(1 + t for _, t in units) + 1 <= settings.max_jobs
    docs: dict[str, tuple[str, Doc]] = {}
    if fits:
        docs[PIPELINE] = ("The build matrix as GitLab jobs", _child(catalog, units, later, settings, release=True))
    else:
        chunks = _chunks(units, settings.max_jobs)
        names = [CHILD.format(n=n) for n in range(1, len(chunks) + 1)]
        for name, chunk in zip(names, chunks, strict=True):
            docs[name] = ("One child of the build matrix", _child(catalog, chunk, later, settings, release=False))
        docs[PIPELINE] = (f"The build matrix in {len(names)} child pipelines", _parent(names, settings))
    files: dict[str, str] = {}
    counts: dict[str, int] = {}
    for name, (what, doc) in docs.items():
        problems = check_pipeline(doc, max_jobs=settings.max_jobs)
        files[name] = "\n".join(_header(settings, what)) + "\n" + emit(doc)
        counts[name] = len(_jobs(doc))
        if problems or len(files[name].encode()) > MAX_FILE:
            raise AssertionError(f"generated {name} breaks GitLab's rules: {problems or 'larger than 1 MiB'}")
    return Generated(files, counts, len(units), sum(t for _, t in units))


def _chunks(units: list[tuple[Job, bool]], max_jobs: int) -> list[list[tuple[Job, bool]]]:
    """Consecutive runs of (build, test) pairs that fit a child; a test stays with its build."""
    chunks: list[list[tuple[Job, bool]]] = [[]]
    size = 0
    for unit in units:
        weight = 1 + unit[1]
        if size + weight > max_jobs:
            chunks.append([])
            size = 0
        chunks[-1].append(unit)
        size += weight
    return chunks


def _header(settings: Settings, what: str) -> list[str]:
    return [
        f"# {what}",
        f"# Generated by cipbuild {__version__}: {settings.command}",
        "# Do not edit: generate it again. Secrets come from CI/CD variables named here, never from this file.",
    ]


def _variables(settings: Settings) -> dict[str, str]:
    # a project's CI/CD variable outranks one set here: the store named by reference is not repeated
    store = {} if settings.store == STORE_VARIABLE else {"CIPBUILD_STORE": settings.store}
    return {**store, "CIPBUILD_REF": settings.ref, "CIPBUILD_RUNTIME": settings.runtime, "GIT_DEPTH": "1"}


def _base(settings: Settings) -> Doc:
    return {"before_script": [settings.install] if settings.install else ["cipbuild --version"]}


def _templates(settings: Settings) -> Doc:
    """The hidden jobs every generated job extends: install, cache, build, publish a part, test."""
    build = (
        'cipbuild build --runtime "$CIPBUILD_RUNTIME" "$CIPBUILD_JOB" ${CIPBUILD_FOLLOW_UPS:-} --out out --sign'
        ' --skip-published "$CIPBUILD_STORE/$CIPBUILD_REF"'
    )
    cache = 'if [ -n "${CIPBUILD_CACHE_STORE:-}" ]; then cipbuild cache %s --to "$CIPBUILD_CACHE_STORE"; fi'
    part = (
        'if [ -f out/index.json ]; then cipbuild publish out --part --to "$CIPBUILD_STORE" --ref "$CIPBUILD_REF"'
        ' --json > "out/$CIPBUILD_JOB.part.json"; fi'
    )
    # a second build's part joins its first's: the first's update plan installs what it built
    test = (
        'parts="$CIPBUILD_STORE/$CIPBUILD_REF/parts"; set --; for id in ${CIPBUILD_FOLLOW_UPS:-}; do'
        ' set -- "$@" --with "$parts/$id.json"; done;'
        ' cipbuild test run "$parts/$CIPBUILD_JOB.json" "$CIPBUILD_JOB" "$@"'
        ' --lava "$CIPBUILD_LAVA_URL" --results results'
    )
    kept = ["out/*.part.json", "out/*/metadata.json", "out/*/build.log", "out/*/job.yml", "out/*/reproducer.sh"]
    return {
        ".cipbuild": _base(settings),
        ".cipbuild-build": {
            "extends": ".cipbuild",
            "stage": "build",
            "script": [cache % "pull", build, part, cache % "push"],
            "artifacts": {"when": "always", "expire_in": settings.expire, "paths": kept},
        },
        ".cipbuild-test": {
            "extends": ".cipbuild",
            "stage": "test",
            "rules": [{"if": "$CIPBUILD_LAVA_URL"}],
            "script": [test],
            "artifacts": {
                "when": "always",
                "expire_in": settings.expire,
                "paths": ["results/"],
                "reports": {"junit": ["results/*/*.xml"]},
            },
        },
    }


def _release(settings: Settings) -> Doc:
    recipe = f" -r {shlex.quote(settings.recipe)}" if settings.recipe else ""
    return {
        "extends": ".cipbuild",
        "stage": "release",
        "script": [
            f'cipbuild publish --assemble --to "$CIPBUILD_STORE" --ref "$CIPBUILD_REF"{recipe}',
            'cipbuild verify "$CIPBUILD_STORE/$CIPBUILD_REF" --keyring "$CIPBUILD_KEYRING"',
        ],
    }


def _child(
    catalog: Catalog,
    units: list[tuple[Job, bool]],
    later: dict[str, list[str]],
    settings: Settings,
    *,
    release: bool,
) -> Doc:
    doc: Doc = {
        "stages": [*STAGE_OF_CHILD, "release"] if release else list(STAGE_OF_CHILD),
        "variables": _variables(settings),
        **_templates(settings),
    }
    for job, test in units:
        name = check_name(job.id)
        image = settings.images.get(job.distro, catalog.distros[job.distro].builder)
        tags = runner_tags(catalog, job, settings.tags)
        doc[name] = {"extends": ".cipbuild-build", "image": image, **({"tags": tags} if tags else {})}
        doc[name]["variables"] = {"CIPBUILD_JOB": job.id}
        if job.id in later:
            doc[name]["variables"]["CIPBUILD_FOLLOW_UPS"] = " ".join(later[job.id])
        if test:
            doc[check_name(f"test:{job.id}")] = {
                "extends": ".cipbuild-test",
                "image": image,
                "needs": [name],
                "variables": dict(doc[name]["variables"]),
            }
    if release:
        doc[RELEASE_JOB] = _release(settings)
    return doc


def _parent(children: list[str], settings: Settings) -> Doc:
    """Triggers each child and then releases; the children come from the generating job."""
    doc: Doc = {
        "stages": ["fetch", "build", "release"],
        "variables": _variables(settings),
        ".cipbuild": _base(settings),
        "cipbuild:children": {
            "stage": "fetch",
            "needs": [{"pipeline": "$PARENT_PIPELINE_ID", "job": settings.generate_job}],
            "script": ["ls -l " + shlex.quote(settings.folder)],
            "artifacts": {"paths": [settings.folder + "/"], "expire_in": settings.expire},
        },
    }
    for number, child in enumerate(children, 1):
        doc[f"build:part-{number}"] = {
            "stage": "build",
            "trigger": {
                "include": [{"artifact": f"{settings.folder}/{child}", "job": "cipbuild:children"}],
                "strategy": "depend",
            },
        }
    doc[RELEASE_JOB] = _release(settings)
    return doc


def emit(doc: Doc) -> str:
    """``doc`` as YAML: block mappings, every scalar a JSON string (a JSON document is YAML),
    lists of several strings as block sequences, the rest as JSON flow collections, and a blank
    line before each top-level entry that is a mapping."""
    out: list[str] = []
    for key, value in doc.items():
        if isinstance(value, dict) and not key.startswith("test:"):
            out.append("")
        _emit(key, value, 0, out)
    return "\n".join(out) + "\n"


def _emit(key: str, value: Any, indent: int, out: list[str]) -> None:
    pad = " " * indent
    name = key if _PLAIN.fullmatch(key) else _QUOTE(key)
    if isinstance(value, dict) and value and not _flat(value):
        out.append(f"{pad}{name}:")
        for sub, item in value.items():
            _emit(sub, item, indent + 2, out)
    elif (isinstance(value, list) and len(value) > 1 and all(isinstance(v, str) for v in value)) or (
        isinstance(value, list) and len(value) == 1 and isinstance(value[0], str) and len(value[0]) > 60
    ):
        out.append(f"{pad}{name}:")
        out.extend(f"{pad}  - {_QUOTE(item)}" for item in value)
    else:
        out.append(f"{pad}{name}: {_QUOTE(value)}")


def _flat(value: dict[str, Any]) -> bool:
    """A mapping short enough for one flow line (a job's variables)."""
    return len(value) == 1 and all(isinstance(v, str) for v in value.values())


def _jobs(doc: Doc) -> Doc:
    return {n: j for n, j in doc.items() if n not in KEYWORDS and not n.startswith(".")}


def check_pipeline(doc: dict[str, Any], *, max_jobs: int = MAX_JOBS) -> list[str]:
    """What breaks GitLab's structural rules in one pipeline file (empty when nothing): the job
    count, names, stages, `needs` (in this file, an earlier or same stage, at most 50), `extends`
    targets, `rules`, and `trigger` includes (an artifact of a job of this pipeline)."""
    problems: list[str] = []
    stages = doc.get("stages", ["build", "test", "deploy"])
    jobs = _jobs(doc)
    memo: dict[str, dict[str, Any]] = {}
    if len(jobs) > max_jobs:
        problems.append(f"{len(jobs)} jobs, more than {max_jobs}")
    for name, job in doc.items():
        if name in KEYWORDS:
            continue
        if not isinstance(job, dict):
            problems.append(f"{name}: not a mapping")
            continue
        if len(str(name)) > MAX_NAME or not name or "\n" in name:
            problems.append(f"{name}: not a valid job name")
        merged = _resolve(name, doc, problems, memo)
        if name not in jobs:
            continue
        stage = merged.get("stage", "test")
        if stage not in stages:
            problems.append(f"{name}: stage {stage!r} is not in stages")
            continue
        if "script" not in merged and "trigger" not in merged:
            problems.append(f"{name}: no script and no trigger")
        needs = merged.get("needs", [])
        if len(needs) > MAX_NEEDS:
            problems.append(f"{name}: {len(needs)} needs, more than {MAX_NEEDS}")
        for need in needs:
            if isinstance(need, dict) and "pipeline" in need:
                continue  # a job of another pipeline
            target = need["job"] if isinstance(need, dict) else need
            if target not in jobs:
                problems.append(f"{name}: needs {target!r}, which is not a job of this pipeline")
            elif stages.index(_stage(target, doc, memo)) > stages.index(stage):
                problems.append(f"{name}: needs {target!r} of a later stage")
        for rule in merged.get("rules", []):
            if not isinstance(rule, dict) or not set(rule) <= {"if", "when", "changes", "exists", "variables"}:
                problems.append(f"{name}: a rule {rule!r} GitLab does not accept")
        trigger = merged.get("trigger")
        if isinstance(trigger, dict):
            for include in trigger.get("include", []):
                source = include.get("job") if isinstance(include, dict) else None
                if source not in jobs:
                    problems.append(f"{name}: includes an artifact of {source!r}, which is not a job of this pipeline")
                elif stages.index(_stage(source, doc, memo)) >= stages.index(stage):
                    problems.append(f"{name}: includes an artifact of {source!r}, which runs no earlier")
    return problems


def _resolve(name: str, doc: dict[str, Any], problems: list[str], memo: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The job with what it extends merged in (GitLab's deep merge, enough for these files)."""
    if name in memo:
        return memo[name]
    job = doc[name]
    parents = job.get("extends", [])
    merged: dict[str, Any] = {}
    for parent in [parents] if isinstance(parents, str) else parents:
        if parent not in doc:
            problems.append(f"{name}: extends {parent!r}, which does not exist")
            continue
        merged.update(_resolve(parent, doc, problems, memo))
    merged.update({k: v for k, v in job.items() if k != "extends"})
    memo[name] = merged
    return merged


def _stage(name: str, doc: dict[str, Any], memo: dict[str, dict[str, Any]]) -> str:
    return str(_resolve(name, doc, [], memo).get("stage", "test"))
