"""An in-toto Statement v1 with a SLSA Provenance v1 predicate for one job.

Pure: the job's metadata and a few digests in, a JSON document out (``manifest`` does the reading
and writing). Everything in it comes from metadata.json, which holds only redacted values.
"""

from __future__ import annotations

from typing import Any

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://cipbuild.invalid/kas-build/v1"
BUILDER_ID = "https://cipbuild.invalid/builder/cipbuild"


def git_uri(url: str) -> str:
    return url if url.startswith("git+") else f"git+{url}"


def resolved_dependencies(meta: dict[str, Any], locked: dict[str, str]) -> list[dict[str, Any]]:
    """Every upstream repository with its commit (the catalogue pins, then what kas.lock.yml
    resolved besides them), the builder image with its digest and the kas file with its digest."""
    inputs = meta["inputs"]
    deps: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for name, pin in sorted(inputs.get("upstream", {}).items()):
        deps.append({"name": name, "uri": git_uri(pin["url"]), "digest": {"gitCommit": pin["commit"]}})
        seen.add((name, pin["commit"]))
    for name, commit in sorted(locked.items()):
        if (name, commit) not in seen:
            deps.append({"name": name, "digest": {"gitCommit": commit}, "annotations": {"from": "kas.lock.yml"}})
            seen.add((name, commit))
    image, image_digest = inputs.get("builder_image"), inputs.get("builder_image_digest", "")
    if image:
        algo, _, value = image_digest.partition(":")
        deps.append({"name": "builder-image", "uri": f"docker://{image}", "digest": {algo or "sha256": value}})
    deps.append(
        {
            "name": "job.yml",
            "uri": meta.get("files", {}).get("kas_file", "job.yml"),
            # the file as written (its body alone is an input); older metadata has only the input
            "digest": {"sha256": meta.get("kas_file_sha256") or inputs["kas_file_sha256"]},
        }
    )
    return deps


def statement(
    meta: dict[str, Any],
    artifacts: list[dict[str, Any]],
    locked: dict[str, str],
    log_sha256: str | None,
    cipbuild_version: str,
) -> dict[str, Any]:
    """The provenance of the job described by ``meta`` (its metadata.json) whose collected
    ``artifacts`` are the subjects; ``locked`` maps kas repository names to the commits
    kas.lock.yml resolved; ``log_sha256`` is build.log's digest, when there is a log."""
    job = meta["job"]
    byproducts = []
    if log_sha256:
        log = meta.get("files", {}).get("log", "build.log")
        byproducts.append({"name": log, "uri": log, "digest": {"sha256": log_sha256}})
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": a["path"], "digest": {"sha256": a["sha256"]}} for a in artifacts],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": job,
                "internalParameters": {
                    "cipbuild_version": meta["inputs"].get("cipbuild_version", cipbuild_version),
                    "runtime": meta.get("runtime", {}),
                    "inputs_digest": meta.get("inputs_digest"),
                    "env": meta["inputs"].get("env", {}),
                    "source_date_epoch": meta.get("source_date_epoch"),
                },
                "resolvedDependencies": resolved_dependencies(meta, locked),
            },
            "runDetails": {
                "builder": {"id": BUILDER_ID, "version": {"cipbuild": cipbuild_version}},
                "metadata": {
                    "invocationId": f"{job['id']}@{meta.get('started')}",
                    "startedOn": meta.get("started"),
                    "finishedOn": meta.get("finished"),
                },
                "byproducts": byproducts,
            },
        },
    }
