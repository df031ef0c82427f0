"""One job's build: its folder, its inputs and their digest, metadata.json, and the run itself.

``out/<job-id>/`` holds job.yml (the kas file), run.sh (the steps inside the builder),
kas.lock.yml (resolved commits), build.log, metadata.json (written before the build and completed
after), reproducer.sh, and artifacts/ (copies of what the board's rules collect).

The build writes to the job folder, so cipbuild treats it as hostile afterwards: it never follows
a symlink there when it writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import re
import shlex
import socket
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import __version__, followup
from .artifacts import Artifact, collect, rules_for
from .builder import ENTRYPOINT
from .cancel import CancelToken
from .catalog import Catalog, local_repo_paths
from .diskuse import remove_later, remove_tree, usage
from .errors import InfrastructureError, UserError
from .kasfile import job_facts, job_record, kas_body, render, repos_of
from .matrix import Job
from .rebuild import record_success, why_rebuilt
from .runtime import LABEL, RunSpec, Runtime, build_user
from .status import Status

METADATA_SCHEMA = 1
TASK_LINE = re.compile(r"Running (?:setscene )?task (\d+) of (\d+)(?: \((.+)\))?")
EPOCH_LINE = re.compile(r"^cipbuild: SOURCE_DATE_EPOCH=(\d+)$")
# run.sh says when it fetches the upstreams (`kas dump --lock` clones them), so that a repository
# kas could not get then is told apart from a failed build.
FETCH_START, FETCH_DONE = "cipbuild: fetching upstream repositories", "cipbuild: upstream repositories fetched"
# How kas 5 reports a repository it could not get: a failed clone (the git command line, then git's
# own messages on the next lines), or a failed fetch into a clone it already had.
KAS_CLONE_FAILED = re.compile(r'Command "[^"]*\$ git clone [^"]*?-- (\S+) \S+" failed:')
KAS_FETCH_FAILED = re.compile(r'Fetching of repo: "([^"]+)" failed: ?(.*)')
GIT_FATAL = re.compile(r"\bfatal: (.+)")
GIT_URL = re.compile(r"unable to access '([^']+?)/?'")

# Passed into the builder when set. An allowlist: credentials (AWS_*, LAVA tokens, signing keys)
# can never reach a build container by accident.
PASSTHROUGH = (
    "http_proxy",
    "https_proxy",
    "ftp_proxy",
    "no_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "FTP_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "DISTRO_APT_PREMIRRORS",
    "SOURCE_DATE_EPOCH",
)
# Of those, the ones that can change what a build produces, so they are part of its input digest.
BUILD_AFFECTING = ("DISTRO_APT_PREMIRRORS", "SOURCE_DATE_EPOCH")


@dataclass
class BuildContext:
    """Everything a build needs besides the job; one per `cipbuild build`."""

    catalog: Catalog
    runtime: Runtime
    out_dir: Path
    cache_dir: Path
    images: dict[str, str]  # build system -> builder image
    session: str
    threads: int = 1
    mirrors: tuple[Path, ...] = ()
    force: bool = False
    keep_build: bool = False  # keep bitbake's build/tmp after a good build (debugging, devshell)
    sstate_dir: Path | None = None  # a private sstate cache instead of the shared one (a second build)
    published: Mapping[str, str] = field(default_factory=dict)  # job id -> inputs digest already published
    first_builds: Path | None = None  # where a second build's first build is, when not in out_dir
    tidy_later: bool = True  # build/tmp freed by the background remover (not when the folder goes next)
    environ: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    _digests: dict[str, str] = field(default_factory=dict)
    _engine: dict[str, str] | None = None

    def image_for(self, job: Job) -> str:
        return self.images[self.catalog.distros[job.distro].build_system]

    def image_digest(self, image: str) -> str:
        if image not in self._digests:
            self._digests[image] = self.runtime.image_digest(image)
        return self._digests[image]

    def forget_image_digests(self) -> None:
        self._digests.clear()

    def engine(self) -> dict[str, str]:
        if self._engine is None:
            self._engine = self.runtime.check()
        return self._engine


@dataclass
class BuildResult:
    job: Job
    status: Status
    job_dir: Path
    duration: float = 0.0
    inputs_digest: str = ""
    artifacts: list[Artifact] = field(default_factory=list)
    error: str = ""
    exit_code: int | None = None
    disk: dict[str, Any] | None = None  # what the job folder takes, and what became of build/tmp
    # built here only for its second build, while the store holds it for the same inputs: it is
    # neither signed nor published again
    in_store: bool = False

    @property
    def log(self) -> Path:
        return self.job_dir / "build.log"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.job.id,
            "status": self.status,
            "duration_s": round(self.duration, 3),
            "folder": str(self.job_dir),
            "log": str(self.log),
            "inputs_digest": self.inputs_digest,
            "error": self.error or None,
            "artifacts": [a.to_json() for a in self.artifacts],
            "disk": self.disk,
            "in_store": self.in_store,
        }


@dataclass
class FetchWatch:
    """Reads build.log's lines for an upstream that kas could not clone or fetch while run.sh was
    fetching: that is the network or a wrong URL (infrastructure), not a failed build."""

    repo_urls: dict[str, str]  # repository name in the kas file -> its URL
    fetching: bool = False
    url: str = ""
    reason: str = ""

    def see(self, line: str) -> None:
        if line == FETCH_START:
            self.fetching = True
        elif line == FETCH_DONE:
            self.fetching = False
        elif not self.fetching:
            return
        elif match := KAS_CLONE_FAILED.search(line):
            self.url = self.url or match[1]
        elif match := KAS_FETCH_FAILED.search(line):
            name, message = match[1], match[2]
            found = GIT_URL.search(message)
            self.url = self.url or (found[1] if found else self.repo_urls.get(name, f'repository "{name}"'))
            self.reason = self.reason or message.removeprefix("fatal: ")
        elif self.url and not self.reason and (match := GIT_FATAL.search(line)):
            self.reason = match[1]

    def error(self, log: Path) -> str:
        """The one line that says which upstream could not be had; empty when none failed."""
        if not self.url:
            return ""
        reason = GIT_URL.sub("", self.reason).lstrip(": ").strip()  # the URL is named already
        why = f": {reason}" if reason else ""
        return f"could not fetch upstream {redact(self.url)}{why}; see {log}"


def now() -> str:
    """UTC, to the millisecond: jobs a second apart must still be told apart in their order."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def write_file(path: Path, text: str, mode: int = 0o644) -> None:
    """Replace ``path`` atomically without following a symlink a build may have planted there."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.write(fd, text.encode("utf-8"))
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    os.replace(tmp, path)  # rename replaces a symlink itself, not its target


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically, so a crash never leaves half a metadata file."""
    write_file(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def paths(ctx: BuildContext, job: Job) -> dict[str, Path]:
    job_dir = ctx.out_dir / job.id
    return {
        "job_dir": job_dir,
        "KAS_WORK_DIR": job_dir / "work",
        "KAS_BUILD_DIR": job_dir / "build",
        "DL_DIR": ctx.cache_dir / "downloads",
        "SSTATE_DIR": ctx.sstate_dir or ctx.cache_dir / "sstate",
        "KAS_REPO_REF_DIR": ctx.cache_dir / "repo-ref",
    }


def first_dir(ctx: BuildContext, job: Job) -> Path:
    """The folder of a second build's first build."""
    return (ctx.first_builds or ctx.out_dir) / job.first.id


def check_folders(ctx: BuildContext, jobs: Iterable[Job]) -> None:
    """Refuse, before any job starts, an --out or --cache that cannot be a folder, and a job folder
    that is not a real folder (a symlink would send job.yml, build.log and artifacts elsewhere)."""
    for job in jobs:
        job_dir = paths(ctx, job)["job_dir"]
        try:
            mode = os.lstat(job_dir).st_mode
        except OSError:
            continue  # not there yet, or --out itself is unusable (said next)
        if stat.S_ISLNK(mode):
            raise UserError(f"job folder {job_dir} is a symlink: remove it (cipbuild never writes through one)")
        if not stat.S_ISDIR(mode):
            raise UserError(f"job folder {job_dir} is not a folder: remove it")
    usable_folder(ctx.out_dir, "--out")
    usable_folder(ctx.cache_dir, "--cache")


def usable_folder(folder: Path, flag: str) -> None:
    """Create ``folder`` if need be and prove a folder can be made in it."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder} exists and is not a folder", where=flag)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(prefix=".cipbuild-probe-", dir=folder))
    except OSError as exc:
        raise UserError(f"cannot create or write to {folder}: {exc.strerror or exc}", where=flag) from None


def make_folder(path: Path) -> None:
    """Make ``path`` (its parent exists) without following a symlink found at its place."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o755)
    if not stat.S_ISDIR(os.lstat(path).st_mode):
        raise InfrastructureError(f"{path} is not a folder (a symlink?): remove it")


def premirrors(ctx: BuildContext) -> str:
    """KAS_PREMIRRORS lines sending each upstream URL to the first mirror folder that has a
    repository of its name (kas uses the first line that matches)."""
    lines: list[str] = []
    taken: set[str] = set()
    for mirror in ctx.mirrors:
        for entry in sorted(mirror.iterdir()) if mirror.is_dir() else []:
            name = entry.name.removesuffix(".git")
            if entry.is_dir() and name not in taken:
                taken.add(name)
                lines.append(f"^(?:https?|git|ssh|file)://.*/{re.escape(name)}(?:\\.git)?/?$ file://{entry}")
    user = ctx.environ.get("KAS_PREMIRRORS")
    return "\n".join(([user] if user else []) + lines)


def build_env(ctx: BuildContext, job: Job) -> dict[str, str]:
    p = paths(ctx, job)
    env = {k: str(v) for k, v in p.items() if k != "job_dir"}
    env.update({k: ctx.environ[k] for k in PASSTHROUGH if ctx.environ.get(k)})
    env["BB_NUMBER_THREADS"] = str(ctx.threads)
    env["PARALLEL_MAKE"] = f"-j {ctx.threads}"
    mirrors = premirrors(ctx)
    if mirrors:
        env["KAS_PREMIRRORS"] = mirrors
    sstate = sstate_mirror(ctx.environ)
    if sstate:
        env["SSTATE_MIRRORS"] = sstate
    return env


SSTATE_MIRROR_ENV = "CIPBUILD_SSTATE_MIRROR"


def sstate_mirror(environ: Mapping[str, str]) -> str | None:
    """SSTATE_MIRRORS for the store's shared sstate (`cipbuild cache push`) over HTTP, when
    CIPBUILD_SSTATE_MIRROR names the store's prefix URL; a cache location, not a build input."""
    url = environ.get(SSTATE_MIRROR_ENV)
    if not url:
        return None
    from .cachesync import sstate_mirrors

    try:
        return sstate_mirrors(url)
    except UserError as exc:
        raise UserError(exc.message, where=SSTATE_MIRROR_ENV, hint=exc.hint) from None


def inputs_of(ctx: BuildContext, job: Job, kas_text: str) -> dict[str, object]:
    image = ctx.image_for(job)
    inputs: dict[str, object] = {
        # its body: the header comments name cipbuild's version (an input of its own) and where the
        # catalogue lies, which must not make runners with other checkout paths rebuild
        "kas_file_sha256": hashlib.sha256(kas_body(kas_text).encode()).hexdigest(),
        "upstream": {
            n: {"url": ctx.catalog.repos.repos[n].url, "commit": ctx.catalog.repos.repos[n].commit}
            for n in repos_of(ctx.catalog, job)
        },
        "builder_image": image,
        "builder_image_digest": ctx.image_digest(image),
        "cipbuild_version": __version__,
        "env": {k: redact(ctx.environ[k]) for k in BUILD_AFFECTING if ctx.environ.get(k)},
        # secrets in those values change the digest but are never written down
        "env_sha256": hashlib.sha256(
            json.dumps({k: ctx.environ.get(k) for k in BUILD_AFFECTING}, sort_keys=True).encode()
        ).hexdigest(),
        "artifact_rules": [r.model_dump(mode="json") for r in rules_for(ctx.catalog, job)],
        "facts": dataclasses.asdict(job_facts(ctx.catalog, job)),
    }
    if ctx.catalog.snapshot is not None:  # in the kas file too; named here for metadata and why-rebuilt
        inputs["debian_snapshot"] = ctx.catalog.snapshot
    if job.follow_up:  # the first build's artifacts it reads, by digest
        inputs["follow_up"] = followup.inputs_of(ctx.catalog, job, first_dir(ctx, job))
    return inputs


def redact(value: str) -> str:
    """URLs keep their host, never their user:password."""
    return re.sub(r"(\w+://)[^/@\s]+@", r"\1***@", value)


def digest_of(inputs: dict[str, object]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def run_script(ctx: BuildContext, job: Job) -> str:
    main = ctx.catalog.distros[job.distro].repos[0]
    commit = ctx.catalog.repos.repos[main].commit
    return f"""#!/bin/sh
# cipbuild {__version__}: the steps that build {job.id} inside its builder.
set -eu
cd "$(dirname "$0")"
echo "{FETCH_START}"
kas dump --lock job.yml > kas.lock.yml
echo "{FETCH_DONE}"
if [ -z "${{SOURCE_DATE_EPOCH:-}}" ]; then
    SOURCE_DATE_EPOCH=$(git -C "$KAS_WORK_DIR/{main}" log -1 --format=%ct {commit})
    export SOURCE_DATE_EPOCH
fi
echo "cipbuild: SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH"
kas build job.yml:kas.lock.yml
"""


def reproducer(job: Job, spec: RunSpec, command: list[str], digest: str) -> str:
    """A script that reruns the build by hand: the runtime's command line for ``spec``. Inherited
    variables (proxies may carry credentials) are taken from the caller's environment again, never
    written down."""
    head = f"#!/bin/sh\n# Rebuild {job.id} by hand, as cipbuild {__version__} did.\n"
    inherited = sorted(spec.inherit & spec.env.keys())
    if inherited:
        head += f"# Set {', '.join(inherited)} as for the original build.\n"
    if spec.image:
        head += f"# Builder image {spec.image} was {digest}.\n"
    return head + f"exec {shell_lines(command)}\n"


def shell_lines(words: list[str]) -> str:
    """A command line for a script: quoted, one option with its values a line."""
    lines: list[list[str]] = [[]]
    for word in words:
        if word.startswith("-") and lines[-1]:
            lines.append([])
        lines[-1].append(shlex.quote(word))
    return " \\\n    ".join(" ".join(line) for line in lines)


def one_line(words: list[str]) -> str:
    """A command line on one line: a value with line breaks in bash's $'...' quoting."""
    return " ".join(_ansi_c(word) if "\n" in word else shlex.quote(word) for word in words)


def _ansi_c(word: str) -> str:
    return "$'" + word.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def log_header(ctx: BuildContext, job: Job, spec: RunSpec, command: list[str], attempt: int) -> str:
    """The first lines of build.log, as TuxMake starts its own: who built it, how to redo it, in what."""
    image = ctx.image_for(job)
    return (
        f"# cipbuild {__version__}: {job.id} on {ctx.runtime.name}, attempt {attempt}, started {now()}\n"
        f"# to reproduce this build locally: {one_line(command)}\n"
        f"# builder image: {image} {ctx.image_digest(image)}\n"
    )


def up_to_date(job_dir: Path, digest: str) -> list[Artifact] | None:
    """The artifacts of a previous successful build with the same input digest, if all are still there."""
    meta = read_json(job_dir / "metadata.json")
    if not meta or meta.get("status") != Status.SUCCESS or meta.get("inputs_digest") != digest:
        return None
    artifacts = [Artifact(**a) for a in meta.get("artifacts", [])]
    stamps = meta.get("artifact_stamps", {})
    for art in artifacts:
        if stamp(job_dir / art.path) != stamps.get(art.path):
            return None  # gone, or touched since it was hashed
    return artifacts


def stamp(path: Path) -> list[int] | None:
    """Size, mtime and inode: a cheap proof that a file is the one that was hashed."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def prepare(
    ctx: BuildContext, job: Job, *, may_skip_published: bool = True
) -> tuple[dict[str, object], str, BuildResult | None]:
    """Work out the input digest; a BuildResult when nothing needs building (here, or because
    the store holds it, unless its artifacts are needed here: ``may_skip_published``)."""
    job_dir = paths(ctx, job)["job_dir"]
    kas_text = render(ctx.catalog, job)
    inputs = inputs_of(ctx, job, kas_text)
    digest = digest_of(inputs)
    if not ctx.force and may_skip_published and ctx.published.get(job.id) == digest:
        return inputs, digest, BuildResult(job, Status.PUBLISHED, job_dir, 0.0, digest, error="published already")
    if not ctx.force:
        artifacts = up_to_date(job_dir, digest)
        if artifacts is not None:
            return inputs, digest, BuildResult(job, Status.UP_TO_DATE, job_dir, 0.0, digest, artifacts)
    return inputs, digest, None


def job_metadata(ctx: BuildContext, job: Job, inputs: dict[str, object], digest: str) -> dict[str, Any]:
    return {
        "schema": METADATA_SCHEMA,
        "job": job_record(ctx.catalog, job),
        "inputs": inputs,
        "inputs_digest": digest,
        "runtime": ctx.engine(),
        "host": {"hostname": socket.gethostname(), "kernel": platform.release(), "cpus": os.cpu_count()},
        "files": {"kas_file": "job.yml", "lock": "kas.lock.yml", "log": "build.log", "reproducer": "reproducer.sh"},
        "status": Status.RUNNING,
        "started": now(),
        "finished": None,
        "duration_s": None,
        "exit_code": None,
        "error": None,
        "source_date_epoch": None,
        "artifacts": [],
    }


Progress = Callable[[str, int, int], None]  # job id, task done, tasks total
Said = Callable[[str, str, str], None]  # job id, bitbake's current task, the log's last line


def task_name(where: str) -> str:
    """'recipe do_task' of bitbake's '(/path/recipe_1.0.bb:do_task)' (virtual: and mc: prefixes kept)."""
    recipe, _, task = where.rpartition(":")
    name = recipe.rsplit("/", 1)[-1].removesuffix(".bb")
    return f"{name.split('_', 1)[0]} {task}".strip() if recipe else where


def run_build(
    ctx: BuildContext,
    job: Job,
    inputs: dict[str, object],
    digest: str,
    token: CancelToken,
    progress: Progress,
    attempt: int = 1,
    said: Said | None = None,
) -> BuildResult:
    """Build one job; never raises for a failed build. Whatever goes wrong after its container
    started, the container is stopped and metadata.json says what happened; a cancelled ``token``
    kills it."""
    job_dir = paths(ctx, job)["job_dir"]
    entered = time.monotonic()
    try:
        if ctx.force:  # a real rebuild: a fresh build folder, from the shared caches
            _, left = remove_build_folder(ctx, job, paths(ctx, job)["KAS_BUILD_DIR"])
            if left:
                raise InfrastructureError(f"--force could not empty {paths(ctx, job)['KAS_BUILD_DIR']}: {left}")
        spec = prepare_folder(ctx, job, attempt)
        if job.follow_up:  # what it reads of its first build, as recorded in its inputs
            recorded = inputs["follow_up"]
            assert isinstance(recorded, dict)
            followup.place(ctx.catalog, job, first_dir(ctx, job), paths(ctx, job)["KAS_BUILD_DIR"], recorded)
        command = ctx.runtime.command(spec)
        digest_of_image = ctx.image_digest(ctx.image_for(job))
        write_file(job_dir / "reproducer.sh", reproducer(job, spec, command, digest_of_image), 0o755)
        meta = job_metadata(ctx, job, inputs, digest)
        kas_text = render(ctx.catalog, job)
        meta["kas_file_sha256"] = hashlib.sha256(kas_text.encode()).hexdigest()  # job.yml as written (provenance)
        meta["rebuilt_because"] = why_rebuilt(job_dir, inputs, digest, kas_text, forced=ctx.force).to_json()
        write_json(job_dir / "metadata.json", meta)
    except InfrastructureError as exc:
        return BuildResult(job, Status.INFRA_ERROR, job_dir, error=str(exc))
    except OSError as exc:  # a full disk, a folder made unwritable: nothing has started yet
        where = exc.filename or job_dir
        return BuildResult(job, Status.INFRA_ERROR, job_dir, error=f"cannot write {where}: {exc.strerror or exc}")
    started = time.monotonic()
    result = BuildResult(job, Status.FAILED, job_dir, inputs_digest=digest)
    try:
        ran = execute(
            ctx, spec, token, log_header(ctx, job, spec, command, attempt), LogReader(ctx, job, progress, said)
        )
    except InfrastructureError as exc:
        result.status, result.error = Status.INFRA_ERROR, str(exc)
    except Exception as exc:  # a bug of ours: the build is lost, not the other builds
        result.status, result.error = Status.INFRA_ERROR, f"{type(exc).__name__}: {exc}"
    else:
        meta["source_date_epoch"] = ran.reader.epoch
        classify(ctx, job, ran, result)
        if result.status == Status.SUCCESS:
            meta["artifact_stamps"] = {a.path: stamp(job_dir / a.path) for a in result.artifacts}
        collected = time.monotonic()
        if not ran.killed:
            result.disk = meta["disk"] = tidy(ctx, job, result.status == Status.SUCCESS)
        # where a build's time goes besides bitbake's own: cipbuild's fixed cost per job, by phase
        meta["phases_s"] = {
            "before_container": round(ran.started - entered, 3),
            "container": round(ran.ended - ran.started, 3),
            "collect": round(collected - ran.ended, 3),
            "tidy": round(time.monotonic() - collected, 3),
        }
    result.duration = time.monotonic() - started
    finish(job_dir, meta, result)
    if result.status == Status.SUCCESS:
        record_success(job_dir, inputs, digest, kas_text, meta["finished"])
    return result


def tidy(ctx: BuildContext, job: Job, succeeded: bool) -> dict[str, Any]:
    """After a good build whose artifacts are collected: remove bitbake's build/tmp (the shared
    sstate keeps the next build warm) unless --keep-build. A failed build keeps everything. Says
    what the job folder takes then, and what build/tmp took."""
    job_dir = paths(ctx, job)["job_dir"]
    tmp = paths(ctx, job)["KAS_BUILD_DIR"] / "tmp"
    if not succeeded or ctx.keep_build:
        why = "the build failed" if not succeeded else "--keep-build"
        return {"job_folder_bytes": usage(job_dir), "build_tmp": f"kept ({why})"}
    later = remove_later(tmp, ctx.out_dir) if ctx.tidy_later else None
    if later is not None:  # gone from the job folder now; its disk is freed in the background
        return {"job_folder_bytes": usage(job_dir), "build_tmp_bytes": later.bytes, "build_tmp": "removed"}
    freed, left = remove_build_folder(ctx, job, tmp)
    record: dict[str, Any] = {"job_folder_bytes": usage(job_dir), "build_tmp_bytes": freed}
    record["build_tmp"] = f"kept: {left}" if left else "removed"
    return record


def remove_build_folder(ctx: BuildContext, job: Job, folder: Path) -> tuple[int, str]:
    """Remove ``folder`` of the job's build; the bytes it took and, when some of it is left, why.
    An isar build leaves files owned by root: what this process may not remove, a container of
    the job's builder image (root inside, the job folder mounted) removes."""
    tally = remove_tree(folder)
    if not tally.problems or not os.path.lexists(folder):
        return tally.bytes, ""
    rest = usage(folder)
    if ctx.runtime.name == "native":
        return tally.bytes + rest, tally.problems[0]
    job_dir = paths(ctx, job)["job_dir"]
    spec = RunSpec(
        argv=["-rf", "--one-file-system", "--", str(folder)],
        workdir=job_dir,
        env={},
        mounts=(job_dir,),
        image=ctx.image_for(job),
        entrypoint=["rm"],
        name=f"cipbuild-{ctx.session}-{job.id}-tidy",
        labels={f"{LABEL}.session": ctx.session, f"{LABEL}.job": job.id},
    )
    try:
        handle = ctx.runtime.start(spec)
        said = [line for line in handle.lines()][-1:]
        code = handle.wait()
    except InfrastructureError as exc:
        return tally.bytes + rest, str(exc)
    if code != 0 or os.path.lexists(folder):
        return tally.bytes + rest - usage(folder), f"rm in the builder failed ({code}): {' '.join(said)}"
    return tally.bytes + rest, ""


def prepare_folder(ctx: BuildContext, job: Job, attempt: int) -> RunSpec:
    """The job's folders and the files its run reads (job.yml, run.sh, entry.sh); the RunSpec
    that runs it. InfrastructureError when a folder cannot be made."""
    p = paths(ctx, job)
    job_dir = p["job_dir"]
    uid, gid = build_user(ctx.runtime.name)
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    for key in ("job_dir", "KAS_WORK_DIR", "KAS_BUILD_DIR"):
        make_folder(p[key])
    for key in ("DL_DIR", "SSTATE_DIR", "KAS_REPO_REF_DIR"):
        p[key].mkdir(parents=True, exist_ok=True)
    if (uid, gid) != (os.getuid(), os.getgid()):
        # root calling: the builder user must own what it writes to (not recursive: the caches
        # are large, and what it wrote before is already its own)
        for path in [
            job_dir,
            p["KAS_WORK_DIR"],
            p["KAS_BUILD_DIR"],
            *p["KAS_WORK_DIR"].parent.glob("kas.lock.yml"),
            p["DL_DIR"],
            p["SSTATE_DIR"],
            p["KAS_REPO_REF_DIR"],
        ]:
            os.chown(path, uid, gid, follow_symlinks=False)
    write_file(job_dir / "job.yml", render(ctx.catalog, job))
    write_file(job_dir / "run.sh", run_script(ctx, job))
    # Our own entrypoint, so any Debian-based kas image works (the official ones run only kas
    # sub-commands through theirs) and the build runs as the caller's uid/gid.
    write_file(job_dir / "entry.sh", ENTRYPOINT)
    env = build_env(ctx, job)
    secret_prone = set(PASSTHROUGH) | ({"KAS_PREMIRRORS"} if ctx.environ.get("KAS_PREMIRRORS") else set())
    return RunSpec(
        argv=["sh", str(job_dir / "run.sh")],
        workdir=job_dir,
        env={**env, "CIPBUILD_UID": str(uid), "CIPBUILD_GID": str(gid)},
        mounts=(job_dir, ctx.cache_dir) + ((ctx.sstate_dir,) if ctx.sstate_dir else ()),
        readonly_mounts=(*ctx.mirrors, *local_repo_paths(ctx.catalog)),  # file:// repos at their own path
        image=ctx.image_for(job),
        entrypoint=["sh", str(job_dir / "entry.sh")],
        privileged=ctx.catalog.distros[job.distro].build_system == "isar",
        name=f"cipbuild-{ctx.session}-{job.id}" + (f"-a{attempt}" if attempt > 1 else ""),
        labels={f"{LABEL}.session": ctx.session, f"{LABEL}.job": job.id},
        inherit=frozenset(secret_prone & env.keys()),
    )


@dataclass
class LogReader:
    """What the build's output says as it goes: bitbake's progress, the SOURCE_DATE_EPOCH it
    chose, an upstream it could not fetch, and its last words."""

    ctx: BuildContext
    job: Job
    progress: Progress
    said: Said | None = None
    epoch: int | None = None
    last_line: str = ""
    task: str = ""
    fetch: FetchWatch = field(init=False)

    def __post_init__(self) -> None:
        self.fetch = FetchWatch({name: pin.url for name, pin in self.ctx.catalog.repos.repos.items()})

    def see(self, line: str) -> None:
        self.fetch.see(line)
        self.last_line = line.strip() or self.last_line
        if match := TASK_LINE.search(line):
            self.task = task_name(match[3]) if match[3] else self.task
            self.progress(self.job.id, int(match[1]), int(match[2]))
        elif match := EPOCH_LINE.match(line):
            self.epoch = int(match[1])
        if self.said is not None:
            self.said(self.job.id, self.task, self.last_line)


@dataclass(frozen=True)
class Ran:
    """How a run ended: its exit code, whether it was killed, whether the engine failed it."""

    code: int
    killed: bool
    engine_failed: bool
    reader: LogReader
    started: float  # time.monotonic() once the container runs, and once it is gone
    ended: float


def execute(ctx: BuildContext, spec: RunSpec, token: CancelToken, header: str, reader: LogReader) -> Ran:
    """Run ``spec``, streaming its output into build.log (after ``header``) and ``reader``; a
    cancelled token kills it. The container is gone when this returns or raises."""
    with _open_log(spec.workdir / "build.log") as log:
        log.write(header)
        handle = ctx.runtime.start(spec)
        started = time.monotonic()
        try:
            with token.on_cancel(handle.kill):
                for line in handle.lines():
                    log.write(line + "\n")
                    reader.see(line)
                code = handle.wait()
        except BaseException:
            handle.kill()
            raise
    return Ran(code, handle.killed, handle.engine_failed, reader, started, time.monotonic())


def classify(ctx: BuildContext, job: Job, ran: Ran, result: BuildResult) -> None:
    """Set ``result``'s status, error and artifacts from how its run ended."""
    result.exit_code = ran.code
    if ran.killed:
        result.status, result.error = Status.INTERRUPTED, "interrupted"
    elif ran.code == 0:
        # build/tmp goes after a good build (unless --keep-build): its files need no copy
        result.artifacts, problems = collect(ctx.catalog, job, result.job_dir, link=not ctx.keep_build)
        if problems and not ctx.keep_build:  # a failed build keeps build/tmp: no file shared with it
            result.artifacts, problems = collect(ctx.catalog, job, result.job_dir)
        result.status = Status.FAILED if problems else Status.SUCCESS
        result.error = "; ".join(problems)
    elif ran.engine_failed:
        result.status = Status.INFRA_ERROR
        result.error = engine_failure(ctx.runtime.name, ran.code, ran.reader.last_line)
    elif fetch_error := ran.reader.fetch.error(result.log):
        result.status, result.error = Status.INFRA_ERROR, fetch_error
    else:
        result.error = f"kas exited with {ran.code}; see {result.log}"


def engine_failure(engine: str, code: int, said: str) -> str:
    """The engine's own complaint (its last line, up to an escaped newline), cut short."""
    said = said.split("\\n", 1)[0][:200]
    why = f": {said}" if said else ""
    return f"{engine} could not run the container (exit {code}){why}; `cipbuild doctor` may name the fix"


def _open_log(path: Path) -> Any:
    if path.is_symlink() or path.is_dir():
        raise InfrastructureError(f"{path} is not a regular file: remove it")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    # line-buffered: `tail -f build.log` follows the build as it runs
    return os.fdopen(fd, "w", encoding="utf-8", errors="replace", buffering=1)


def finish(job_dir: Path, meta: dict[str, Any], result: BuildResult) -> None:
    meta.update(
        status=result.status,
        finished=now(),
        duration_s=round(result.duration, 3),
        exit_code=result.exit_code,
        error=result.error or None,
        artifacts=[a.to_json() for a in result.artifacts],
    )
    write_json(job_dir / "metadata.json", meta)


def mark_interrupted(job_dir: Path) -> None:
    """A job that never finished: its metadata must not claim it is running."""
    meta = read_json(job_dir / "metadata.json")
    if meta and meta.get("status") == Status.RUNNING:
        meta.update(status=Status.INTERRUPTED, finished=now(), error="interrupted")
        write_json(job_dir / "metadata.json", meta)
