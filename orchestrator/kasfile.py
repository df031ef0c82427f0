"""Job -> the one pinned kas file that builds it.

Upstream content is never copied: boards, releases, kernels and options map to upstream kas files
through cross-repo includes of repositories pinned in kas/repos.yml. cipbuild's own fragments
(kas/<distro>/...) are merged into the file, so the result stands alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .catalog import Catalog, cache_dir, default_catalog_dir, suggest
from .errors import ConfigError, UserError
from .matrix import Job
from .models import KasRef

if TYPE_CHECKING:
    from jsonschema.exceptions import ValidationError
    from jsonschema.protocols import Validator

KAS_HEADER_VERSION = 14


@dataclass(frozen=True)
class JobFacts:
    """What a job asks bitbake for; the generated file sets these explicitly."""

    machine: str
    distro: str
    target: str
    image: str
    rootfs: str


def job_facts(catalog: Catalog, job: Job) -> JobFacts:
    dfile = catalog.distros[job.distro]
    machine = catalog.boards[job.board].distros[job.distro].machine
    bb_distro = dfile.releases[job.release].distro
    target, suffix = dfile.target, ""
    for name in job.options:
        spec = catalog.options[name].distros[job.distro]
        target = spec.target or target
        suffix += spec.image_suffix
    fields = {"target": target, "distro": bb_distro, "machine": machine, "release": job.release}
    image = dfile.image_name.format(suffix=suffix, **fields)
    rootfs = (dfile.rootfs_name or dfile.image_name).format(suffix=suffix, **fields)
    return JobFacts(machine, bb_distro, target, image, rootfs)


def job_record(catalog: Catalog, job: Job) -> dict[str, Any]:
    """A job as plan --json and metadata.json show it."""
    facts = job_facts(catalog, job)
    return {
        "id": job.id,
        "distro": job.distro,
        "release": job.release,
        "board": job.board,
        "kernel": job.kernel or None,  # None: the distribution's own kernel
        "options": list(job.options),
        "machine": facts.machine,
        "bitbake_distro": facts.distro,
        "target": facts.target,
        "image": facts.image,
        "waived": [{"rule": r, "reason": why} for r, why in job.waived],
        "follow_up": {"name": job.follow_up, "of": job.first.id} if job.follow_up else None,
    }


def fragments(catalog: Catalog, job: Job) -> list[KasRef | str]:
    """Every kas file of the job, in the distro's include order."""
    dfile = catalog.distros[job.distro]
    out: list[KasRef | str] = list(dfile.base)
    for entry in dfile.order:
        if entry == "board":
            out.extend(catalog.boards[job.board].distros[job.distro].kas)
        elif entry == "release":
            out.extend(dfile.releases[job.release].kas)
        elif entry == "kernel":
            if not job.kernel_is_default:
                out.extend(dfile.kernels[job.kernel].kas)
        elif entry in job.options:
            out.extend(catalog.options[entry].distros[job.distro].kas)
    if job.follow_up:  # as upstream CI's second build: the first's files, then its own
        out.extend(dfile.follow_ups[job.follow_up].kas)
    return out


def repos_of(catalog: Catalog, job: Job) -> list[str]:
    names = list(catalog.distros[job.distro].repos)
    names += catalog.boards[job.board].distros[job.distro].repos
    for option in job.options:
        names += catalog.options[option].distros[job.distro].repos
    return list(dict.fromkeys(names))


def kas_config(catalog: Catalog, job: Job) -> dict[str, Any]:
    """The generated kas configuration of ``job`` as a mapping."""
    facts = job_facts(catalog, job)
    includes: list[dict[str, str]] = []
    local: dict[str, Any] = {}
    for frag in fragments(catalog, job):
        if isinstance(frag, KasRef):
            entry = {"repo": frag.repo, "file": frag.file}
            if entry not in includes:
                includes.append(entry)
        else:
            _merge(local, _local_fragment(catalog, frag))
    repos: dict[str, Any] = {}
    for name in repos_of(catalog, job):
        pin = catalog.repos.repos[name]
        repos[name] = {"url": pin.url, "commit": pin.commit}
        if pin.layers is not None:
            repos[name]["layers"] = dict(pin.layers)
    header: dict[str, Any] = {"version": KAS_HEADER_VERSION}
    if includes:
        header["includes"] = includes
    config: dict[str, Any] = {
        "header": header,
        "build_system": catalog.distros[job.distro].build_system,
        "machine": facts.machine,
        "distro": facts.distro,
        "target": facts.target,
        "repos": repos,
    }
    _merge(config, local)
    if job.follow_up:
        from .followup import SECTION, local_conf_section

        section = local_conf_section(catalog, job)
        if section:
            config.setdefault("local_conf_header", {})[SECTION] = section
    if catalog.snapshot is not None:
        # isar's own switch and date (bitbake.conf, bootstrap.bbclass); kas writes local.conf's
        # sections sorted by name, so this one comes last and wins over a fragment's
        config.setdefault("local_conf_header", {})[SNAPSHOT_SECTION] = (
            f'ISAR_USE_APT_SNAPSHOT = "1"\nISAR_APT_SNAPSHOT_DATE = "{catalog.snapshot}"\n'
        )
    return config


SNAPSHOT_SECTION = "zz-cipbuild-apt-snapshot"
SNAPSHOT_FORMAT = re.compile(r"^\d{8}T\d{6}Z$")


def check_snapshot(catalog: Catalog, jobs: Iterable[Job], snapshot: str | None) -> None:
    """Set ``--snapshot`` on the catalogue: a Debian snapshot time (20240702T082400Z), for isar
    jobs only (deby builds from source)."""
    from datetime import datetime

    if snapshot is None:
        return
    try:
        if not SNAPSHOT_FORMAT.match(snapshot):
            raise ValueError
        datetime.strptime(snapshot, "%Y%m%dT%H%M%SZ")
    except ValueError:
        raise UserError(
            f"'{snapshot}' is not a snapshot time", where="--snapshot", hint="YYYYMMDDTHHMMSSZ, e.g. 20240702T082400Z"
        ) from None
    for job in jobs:
        if catalog.distros[job.distro].build_system != "isar":
            raise UserError(
                f"{job.id} does not take Debian's binary packages: a snapshot applies to isar jobs only",
                where="--snapshot",
            )
    catalog.snapshot = snapshot


def regenerate_command(catalog: Catalog, job: Job) -> str:
    """The command that prints this job's kas file again: with --catalog unless the catalogue is
    the built-in one."""
    root = catalog.root
    snapshot = f" --snapshot {catalog.snapshot}" if catalog.snapshot else ""
    if os.path.realpath(root) == os.path.realpath(default_catalog_dir()):
        return f"cipbuild kas {job.id}{snapshot}"
    return f"cipbuild --catalog {_shell_word(str(root.absolute()))} kas {job.id}{snapshot}"


def _shell_word(word: str) -> str:
    """``word`` quoted for a shell, on one line whatever it contains."""
    if word.isprintable():
        return shlex.quote(word)
    return "$'" + word.encode("unicode_escape").decode("ascii").replace("'", "\\'") + "'"


def render(catalog: Catalog, job: Job) -> str:
    """The kas file text: a header comment naming the job and the pins, then YAML. The file is
    checked against kas's own schema first."""
    import yaml

    config = kas_config(catalog, job)
    problem = kas_problem(config)
    if problem is not None:
        local = [str(f) for f in fragments(catalog, job) if isinstance(f, str)]
        raise UserError(
            f"the kas file cipbuild generates for {job.id} is not valid: {problem.message}",
            where=f"job {job.id}",
            hint=problem.hint or (f"it merges {', '.join(local)}" if local else None),
        )
    tags = [f"{n} {p.tag}" for n in repos_of(catalog, job) if (p := catalog.repos.repos[n]).tag]
    head = [
        f"# kas file for cipbuild job {job.id}, generated by cipbuild {__version__}.",
        f"# Regenerate with: {regenerate_command(catalog, job)}",
    ]
    if tags:
        head.append(f"# Upstream: {', '.join(tags)}")
    for rule, reason in job.waived:
        head.append(f"# Builds although rule {rule} excludes it: {' '.join(reason.split())}")

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        # local.conf snippets stay readable blocks, as people write them in kas files
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)

    Dumper.add_representer(str, text)
    body = yaml.dump(config, Dumper=Dumper, sort_keys=False, default_flow_style=False, width=100)
    return "\n".join(head) + "\n" + body


def kas_body(text: str) -> str:
    """A rendered kas file without its header comments, which name cipbuild's version and the
    catalogue's folder (neither changes what is built): the part an input digest should hash."""
    lines = text.splitlines(keepends=True)
    first = next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))
    return "".join(lines[first:])


def _local_fragment(catalog: Catalog, path: str) -> dict[str, Any]:
    from .yamlfile import load_yaml

    doc = load_yaml(catalog.root / path, display=path)
    if not isinstance(doc.data, dict):
        raise doc.error((), "a kas fragment must be a mapping")
    data = dict(doc.data)
    header = data.pop("header", {}) or {}
    if isinstance(header, dict) and header.get("includes"):
        raise ConfigError(
            path,
            doc.line_of(("header", "includes")),
            "cipbuild's own fragments cannot include other files",
            hint="list the included files in the catalogue instead",
        )
    return data


def _merge(into: dict[str, Any], other: dict[str, Any]) -> None:
    """kas merge semantics: mappings merge recursively, anything else is replaced."""
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


@dataclass(frozen=True)
class KasProblem:
    """What kas's schema finds wrong in a kas file: where (a key path), what, and a hint."""

    loc: tuple[str | int, ...]
    message: str
    hint: str | None = None


def kas_problem(data: dict[str, Any], *, fragment: bool = False) -> KasProblem | None:
    """The first problem kas's own JSON schema (that of the kas cipbuild runs with) finds in
    ``data``, a kas file as a mapping; None when it is valid. A ``fragment`` of the catalogue may
    leave out the header, which cipbuild writes itself.

    Files found valid are remembered in the user's cache by content and kas version, so the
    schema library is loaded only for files not checked before."""
    kas_version, _ = _kas_schema()
    if fragment and "header" not in data:
        data = {"header": {"version": KAS_HEADER_VERSION}, **data}
    marker = _valid_marker(data, kas_version)
    if marker.exists():
        return None
    errors = list(_kas_validator().iter_errors(data))
    if not errors:
        with contextlib.suppress(OSError):
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
            _prune_markers(marker.parent)
        return None
    return _explain(errors, kas_version)


def _kas_schema() -> tuple[str, dict[str, Any]]:
    """The version of the kas package cipbuild runs with, and its configuration schema."""
    import importlib

    kas = importlib.import_module("kas")  # no type information of its own
    schema: dict[str, Any] = kas.CONFIGSCHEMA
    return str(kas.__version__), schema


_validator: list[Validator] = []  # one per process: importing jsonschema is the costly part
_validator_lock = threading.Lock()


def _kas_validator() -> Validator:
    with _validator_lock:
        if not _validator:
            from jsonschema.validators import validator_for

            schema = _kas_schema()[1]
            _validator.append(validator_for(schema)(schema))
        return _validator[0]


def _valid_marker(data: dict[str, Any], kas_version: str) -> Path:
    text = json.dumps(data, sort_keys=True, default=lambda o: f"<{type(o).__name__} {o!r}>")
    digest = hashlib.sha256(f"kas {kas_version}\0{text}".encode()).hexdigest()
    return cache_dir() / "kas-valid" / digest[:32]


def _prune_markers(folder: Path, keep: int = 4096) -> None:
    """Leave the newest ``keep`` markers (each is an empty file)."""
    entries = list(os.scandir(folder))
    if len(entries) <= keep:
        return
    entries.sort(key=lambda e: e.stat().st_mtime, reverse=True)
    for old in entries[keep // 2 :]:
        with contextlib.suppress(OSError):
            os.unlink(old.path)


def _explain(errors: list[ValidationError], kas_version: str) -> KasProblem:
    """One problem out of jsonschema's errors: an unknown key first (usually a typo), else the
    error jsonschema finds most relevant."""
    from jsonschema.exceptions import best_match

    err = next((e for e in errors if e.validator == "additionalProperties"), None) or best_match(errors)
    assert err is not None  # errors is not empty
    loc = tuple(err.absolute_path)
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        schema = err.schema if isinstance(err.schema, dict) else {}
        known = list(schema.get("properties", {}))
        patterns = list(schema.get("patternProperties", {}))
        extra = [k for k in err.instance if k not in known and not any(re.search(p, str(k)) for p in patterns)]
        if extra:
            shown = ".".join(str(p) for p in (*loc, extra[0]))
            hint = suggest(str(extra[0]), known) if known else None
            return KasProblem((*loc, extra[0]), f"kas {kas_version} knows no key '{shown}'", hint)
    shown = ".".join(str(p) for p in loc) or "(top)"
    message = " ".join(err.message.split())
    if len(message) > 160:
        message = message[:157] + "..."
    return KasProblem(loc, f"{shown}: {message} (kas {kas_version}'s file format)")
