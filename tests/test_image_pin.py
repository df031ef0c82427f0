"""Builder images pinned by digest (images.lock.yml) against a real registry and the real Docker
engine (and podman): `image pin`, `--check`, pinned builds, refusing a local image whose digest
is not the pin, an unreachable registry, and pushing with the digest recorded."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from buildworld import BUILDER_IMAGE, open_to_builder
from conftest import Result
from kasfixture import Upstreams
from registryfixture import Registry, containers_trust, new_registry

from orchestrator.errors import ConfigError, UserError
from orchestrator.imagepins import (
    PINS_FILE,
    apply_pins,
    push_image,
    read_pins,
    record_pin,
    registry_digests,
    render_pins,
    verify_pins,
)

pytestmark = pytest.mark.integration

Cli = Callable[..., Result]
JOB = "isar-bookworm-qemu-amd64"
DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64


# ---------------------------------------------------------------- helpers


def docker_client() -> Any:
    import docker

    return docker.from_env(timeout=120)


def tiny_tar(content: str) -> bytes:
    """A root filesystem of one small file: an image that pushes in milliseconds."""
    data = content.encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("marker")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def tiny_image(ref: str, content: str) -> str:
    """Import a tiny image as ``ref`` (name:tag) into the Docker engine; its id."""
    repository, _, tag = ref.rpartition(":")
    client = docker_client()
    client.api.import_image_from_data(tiny_tar(content), repository=repository, tag=tag)
    return str(client.images.get(ref).id)


def docker_push(ref: str) -> str:
    """Push with the engine (as a person would with `docker push`); the digest it reports."""
    repository, _, tag = ref.rpartition(":")
    digest = None
    for event in docker_client().images.push(repository, tag=tag, stream=True, decode=True):
        assert "error" not in event, event
        if "aux" in event and "Digest" in event["aux"]:
            digest = event["aux"]["Digest"]
    assert digest is not None
    return str(digest)


def forget(*refs_or_ids: str) -> None:
    client = docker_client()
    for item in refs_or_ids:
        with contextlib.suppress(Exception):  # already gone
            client.images.remove(item, force=True)


def catalogue(test_catalog: Path, where: Path, isar: str, deby: str | None = None) -> Path:
    """A copy of the test catalogue whose distros name these builders."""
    root = where / "catalog"
    shutil.copytree(test_catalog, root)
    for name, ref in (("isar", isar), ("deby", deby or isar)):
        path = root / "distros" / f"{name}.yml"
        text = path.read_text()
        assert f"builder: {BUILDER_IMAGE}" in text or "builder: cipbuild-builder:minimal" in text
        path.write_text(text.replace("builder: cipbuild-builder:minimal", f"builder: {ref}"))
    return open_to_builder(root)


def build(catalog: Path, upstreams: Upstreams, work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A real `cipbuild build` with each distro's own builder (no --image)."""
    out, cache = open_to_builder(work) / "out", work / "cache"
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator",
            "--catalog",
            str(catalog),
            "build",
            *args,
            "--runtime",
            "docker",
            "--out",
            str(out),
            "--cache",
            str(cache),
            "--mirror",
            str(upstreams.root),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# ---------------------------------------------------------------- the test builder, pushed once


@pytest.fixture(scope="module")
def pushed_builder(docker_engine: str, registry: Registry) -> Iterator[tuple[str, str]]:
    """The test builder image as <registry>/kas-test:1 (an image of its own, the builder plus a
    label, so that removing it leaves the builder alone), pushed: (reference, pushed digest)."""
    ref = registry.ref("kas-test", "1")
    dockerfile = f"FROM {BUILDER_IMAGE}\nLABEL org.cip-project.cipbuild.test=pinned\n".encode()
    image, _ = docker_client().images.build(fileobj=io.BytesIO(dockerfile), tag=ref, rm=True)
    digest = docker_push(ref)
    yield ref, digest
    forget(ref, str(image.id))


# ---------------------------------------------------------------- 1. image pin


def test_pin_writes_the_registrys_digest(
    cli: Cli, registry: Registry, pushed_builder: tuple[str, str], test_catalog: Path, tmp_path: Path
) -> None:
    ref, pushed = pushed_builder
    cat = catalogue(test_catalog, tmp_path, ref)
    res = cli("--catalog", str(cat), "image", "pin", "--json")
    assert res.code == 0, res.err
    said = json.loads(res.out)
    assert said["written"] is True and said["stale"] is True
    assert [(i["reference"], i["status"]) for i in said["images"]] == [(ref, "new")]
    lock = cat / PINS_FILE
    text = lock.read_text()
    assert text.startswith("# ") and "cipbuild image pin" in text  # what wrote it, how to regenerate
    # the digest the registry itself serves for the tag, which is what the engine reported on push
    assert yaml.safe_load(text) == {ref: registry.manifest_digest("kas-test", "1")}
    assert read_pins(cat) == {ref: pushed}
    # deterministic: a second run finds nothing to change and leaves the file as it was
    again = cli("--catalog", str(cat), "image", "pin")
    assert again.code == 0, again.err
    assert "unchanged" in again.out and "up to date" in again.out
    assert lock.read_text() == text
    assert cli("--catalog", str(cat), "image", "pin", "--check").code == 0
    # every builder reference is pinned as name:tag@digest
    assert apply_pins(cat, {"isar": ref, "openembedded": ref}) == {
        "isar": f"{ref}@{pushed}",
        "openembedded": f"{ref}@{pushed}",
    }


# ---------------------------------------------------------------- 2. a pinned build


def test_a_pinned_build_runs_and_records_the_pinned_digest(
    cli: Cli,
    pushed_builder: tuple[str, str],
    test_catalog: Path,
    upstreams: Upstreams,
    tmp_path: Path,
) -> None:
    ref, pushed = pushed_builder
    cat = catalogue(test_catalog, tmp_path, ref)
    assert cli("--catalog", str(cat), "image", "pin").code == 0
    proc = build(cat, upstreams, tmp_path, JOB, "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = tmp_path / "out" / JOB
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["status"] == "success"
    assert meta["inputs"]["builder_image"] == f"{ref}@{pushed}"
    assert meta["inputs"]["builder_image_digest"] == pushed
    # the command that reruns it by hand names exactly that digest too
    assert f"{ref}@{pushed}" in (folder / "reproducer.sh").read_text()


# ---------------------------------------------------------------- 3. another local image under the tag


def test_a_local_tag_with_another_digest_is_refused_before_any_container(
    cli: Cli,
    docker_engine: str,
    registry: Registry,
    test_catalog: Path,
    upstreams: Upstreams,
    tmp_path: Path,
) -> None:
    repo = unique("stale")
    ref = registry.ref(repo, "1")
    first = tiny_image(ref, "first")
    digest_a = docker_push(ref)
    cat = catalogue(test_catalog, tmp_path, ref)
    try:
        assert cli("--catalog", str(cat), "image", "pin").code == 0
        assert read_pins(cat) == {ref: digest_a}
        # someone pushes another image under the same tag, and the engine's tag follows it
        second = tiny_image(ref, "second")
        digest_b = docker_push(ref)
        forget(first)  # the pinned image is not on this engine any more
        assert registry.manifest_digest(repo, "1") == digest_b != digest_a

        proc = build(cat, upstreams, tmp_path, JOB)
        assert proc.returncode == 2, proc.stderr
        error = proc.stderr.strip()
        assert len(error.splitlines()) == 1 and "Traceback" not in error
        assert f"builder image {ref} is {digest_b} here, {PINS_FILE} pins {digest_a}" in error
        assert f"docker pull {ref}@{digest_a}" in error and "cipbuild image pin" in error
        assert not (tmp_path / "out" / JOB).exists()  # no job started, so no container either

        # the advice works: with the pinned image pulled by digest the build may go ahead
        docker_client().images.pull(f"{ref}@{digest_a}")
        verify_pins("docker", {"isar": f"{ref}@{digest_a}"})
        # and an engine without any image of that name pulls it on the first build: fine too
        forget(f"{registry.host}/{repo}@{digest_a}", ref, second)
        verify_pins("docker", {"isar": f"{ref}@{digest_a}"})
    finally:
        forget(f"{registry.host}/{repo}@{digest_a}", ref, first)


# ---------------------------------------------------------------- 4. --check


def test_check_notices_a_stale_lock_and_writes_nothing(
    cli: Cli, docker_engine: str, registry: Registry, test_catalog: Path, tmp_path: Path
) -> None:
    repo = unique("check")
    ref = registry.ref(repo, "1")
    cat = catalogue(test_catalog, tmp_path, ref)
    images = [tiny_image(ref, "one")]
    try:
        digest_a = docker_push(ref)
        lock = cat / PINS_FILE
        missing = cli("--catalog", str(cat), "image", "pin", "--check")
        assert missing.code == 3 and ref in missing.err  # not pinned at all
        assert not lock.exists()
        assert cli("--catalog", str(cat), "image", "pin").code == 0
        assert cli("--catalog", str(cat), "image", "pin", "--check").code == 0
        before = lock.read_bytes()

        images.append(tiny_image(ref, "two"))
        digest_b = docker_push(ref)
        stale = cli("--catalog", str(cat), "image", "pin", "--check", "--json")
        assert stale.code == 3
        said = json.loads(stale.out)
        assert said["stale"] is True and said["written"] is False
        assert said["images"] == [{"reference": ref, "digest": digest_b, "previous": digest_a, "status": "changed"}]
        assert f"{PINS_FILE} is stale for {ref}" in stale.err and "cipbuild image pin" in stale.err
        assert lock.read_bytes() == before

        assert cli("--catalog", str(cat), "image", "pin").code == 0
        assert read_pins(cat) == {ref: digest_b}
        assert cli("--catalog", str(cat), "image", "pin", "--check").code == 0
    finally:
        forget(ref, *images)


# ---------------------------------------------------------------- 5. registry down


def test_an_unreachable_registry_exits_4_and_leaves_the_lock(
    cli: Cli, docker_engine: str, test_catalog: Path, tmp_path: Path
) -> None:
    own = new_registry(tmp_path / "registry")
    with own:
        isar, deby = own.ref("isar-builder", "1"), own.ref("deby-builder", "1")
        images = [tiny_image(isar, "isar"), tiny_image(deby, "deby")]
        for ref in (isar, deby):
            docker_push(ref)
        cat = catalogue(test_catalog, tmp_path, isar, deby)
        assert cli("--catalog", str(cat), "image", "pin").code == 0
    try:
        lock = cat / PINS_FILE
        before = lock.read_bytes()
        assert set(yaml.safe_load(before)) == {isar, deby}
        assert not own.answers()
        for args in ((), ("--check",)):
            res = cli("--catalog", str(cat), "image", "pin", *args)
            assert res.code == 4, res.err
            lines = res.err.strip().splitlines()
            assert "Traceback" not in res.err
            # one line per reference, then the summary
            assert [line.split(": ")[2] for line in lines[:2]] == [deby, isar]
            assert all("registry unreachable" in line and "connection refused" in line for line in lines[:2])
            assert (
                lines[2] == f"cipbuild: error: 2 of 2 builder image(s) could not be resolved; {PINS_FILE} is unchanged"
            )
            assert lock.read_bytes() == before
        assert not list(cat.glob(f".{PINS_FILE}.*"))  # no partial file left behind
    finally:
        forget(isar, deby, *images)


def test_a_registry_without_the_image_is_a_user_error(
    cli: Cli, docker_engine: str, registry: Registry, test_catalog: Path, tmp_path: Path
) -> None:
    ref = registry.ref(unique("never-pushed"), "1")
    cat = catalogue(test_catalog, tmp_path, ref)
    res = cli("--catalog", str(cat), "image", "pin")
    assert res.code == 2, res.err
    assert f"image pin: {ref}: registry refused: " in res.err and "manifest unknown" in res.err
    assert not (cat / PINS_FILE).exists()


# ---------------------------------------------------------------- push and record


def test_push_records_the_pushed_digest(docker_engine: str, registry: Registry, tmp_path: Path) -> None:
    ref = registry.ref(unique("pushed"), "2")
    image = tiny_image(ref, "pushed")
    try:
        said: list[str] = []
        digest = push_image("docker", ref, said.append)
        assert digest == registry.manifest_digest(ref.split("/", 1)[1].rsplit(":", 1)[0], "2")
        assert said == [f"docker push {ref}"]
        (tmp_path / PINS_FILE).write_text(render_pins({"other:1": DIGEST_A}))
        record_pin(tmp_path, ref, digest)
        assert read_pins(tmp_path) == {"other:1": DIGEST_A, ref: digest}
        # the engine resolved the same digest without pulling
        assert registry_digests("docker", [ref]) == ({ref: digest}, [])
    finally:
        forget(ref, image)


def test_pushing_to_no_registry_is_an_infrastructure_error(docker_engine: str) -> None:
    from orchestrator.errors import InfrastructureError

    ref = f"127.0.0.1:1/{unique('nowhere')}:1"
    image = tiny_image(ref, "nowhere")
    try:
        with pytest.raises(InfrastructureError, match=r"docker push .* failed: .*connection refused"):
            push_image("docker", ref, lambda text: None)
    finally:
        forget(ref, image)


def test_image_build_refuses_what_it_cannot_push_or_pin(cli: Cli) -> None:
    res = cli("image", "build", "--pin")
    assert res.code == 2 and "--pin: --pin records the digest of a push (add --push)" in res.err
    res = cli("image", "build", "--tag", f"x/y:1@{DIGEST_A}", "--push")
    assert res.code == 2 and "--tag: 'x/y:1@sha256:" in res.err and "carries a digest already" in res.err
    res = cli("image", "build", "--engine", "lxc")
    assert res.code == 2 and "unknown engine 'lxc'" in res.err


# ---------------------------------------------------------------- podman


@pytest.fixture
def podman_registry(registry: Registry) -> Iterator[Registry]:
    if not shutil.which("podman"):
        pytest.skip("podman is not installed")
    with containers_trust(registry):
        yield registry


def podman(*args: str) -> str:
    proc = subprocess.run(["podman", *args], capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def podman_tiny(ref: str, content: str, tmp_path: Path) -> str:
    """Import a tiny image as ``ref`` into podman's store; its id."""
    tar = tmp_path / f"{content}.tar"
    tar.write_bytes(tiny_tar(content))
    podman("import", "--quiet", str(tar), ref)
    return podman("image", "inspect", "--format", "{{.Id}}", ref).strip()


def test_podman_refuses_another_local_image_and_pins_with_skopeo(podman_registry: Registry, tmp_path: Path) -> None:
    registry = podman_registry
    repo = unique("podman")
    ref = registry.ref(repo, "1")
    images = [podman_tiny(ref, "podman-a", tmp_path)]
    try:
        digest_a = push_image("podman", ref, lambda text: None)
        assert digest_a == registry.manifest_digest(repo, "1")
        if shutil.which("skopeo"):
            assert registry_digests("podman", [ref]) == ({ref: digest_a}, [])
        # podman knows its image by the pushed digest too (the push pulls it back): not refused
        verify_pins("podman", {"isar": f"{ref}@{digest_a}"})
        podman("rmi", "--force", images[0])  # the pinned image leaves this store
        images.append(podman_tiny(ref, "podman-b", tmp_path))
        digest_b = push_image("podman", ref, lambda text: None)
        with pytest.raises(UserError) as refused:
            verify_pins("podman", {"isar": f"{ref}@{digest_a}"})
        message = str(refused.value)
        # podman keeps its own manifest's digest beside the pushed one: both are named
        here = message.split(" here, ", maxsplit=1)[0]
        assert here.startswith(f"builder image {ref} is sha256:") and digest_b in here
        assert f"here, {PINS_FILE} pins {digest_a}: pull it (podman pull {ref}@{digest_a})" in message
        podman("pull", "--quiet", f"{ref}@{digest_a}")
        images.append(podman("image", "inspect", "--format", "{{.Id}}", f"{ref}@{digest_a}").strip())
        verify_pins("podman", {"isar": f"{ref}@{digest_a}"})
    finally:
        for image in images:
            subprocess.run(["podman", "rmi", "--force", image], capture_output=True, check=False)


def test_podman_pin_without_skopeo_says_what_to_install(
    cli: Cli, test_catalog: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # neither skopeo nor anything else
    cat = catalogue(test_catalog, tmp_path, "example.org/kas:1")
    res = cli("--catalog", str(cat), "image", "pin", "--engine", "podman")
    assert res.code == 4 and "skopeo is not installed (apt-get install skopeo)" in res.err


# ---------------------------------------------------------------- the lock file itself (no engine)


def test_apply_pins_pins_what_the_lock_names_and_leaves_digests_alone(tmp_path: Path) -> None:
    assert apply_pins(tmp_path, {"isar": "a:1"}) == {"isar": "a:1"}  # no lock: as they are
    (tmp_path / PINS_FILE).write_text(render_pins({"a:1": DIGEST_A, "registry.example:5000/b/c:2": DIGEST_B}))
    assert apply_pins(
        tmp_path,
        {"isar": "a:1", "oe": f"a:1@{DIGEST_B}", "other": "d:1", "port": "registry.example:5000/b/c:2"},
    ) == {
        "isar": f"a:1@{DIGEST_A}",
        "oe": f"a:1@{DIGEST_B}",
        "other": "d:1",
        "port": f"registry.example:5000/b/c:2@{DIGEST_B}",
    }


def test_the_lock_is_deterministic(tmp_path: Path) -> None:
    one = render_pins({"b:1": DIGEST_B, "a:1": DIGEST_A})
    assert one == render_pins({"a:1": DIGEST_A, "b:1": DIGEST_B})
    assert one.splitlines()[-2:] == [f"a:1: {DIGEST_A}", f"b:1: {DIGEST_B}"]
    assert all(line.startswith("#") for line in one.splitlines()[:-2])


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("- a:1\n", 1, "must be a mapping"),
        (f"# x\na:1: {DIGEST_A}\nb:1: sha1:abc\n", 3, "the digest of b:1 is not sha256:<64 hex digits>"),
        (f"a:1: {DIGEST_A}\n'c:1@{DIGEST_A}': {DIGEST_A}\n", 2, "is not an image reference"),
        (f"a:1: {DIGEST_A}\na:1: {DIGEST_B}\n", 2, "duplicate key 'a:1'"),
        ("a:1: [\n", 2, "invalid YAML"),
        ("'Bad Name': x\n", 1, "'Bad Name' is not an image reference"),
    ],
)
def test_a_malformed_lock_names_file_and_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    (tmp_path / PINS_FILE).write_text(text)
    with pytest.raises(ConfigError) as bad:
        apply_pins(tmp_path, {"isar": "a:1"})
    assert bad.value.where is not None and bad.value.where.endswith(f"{PINS_FILE}:{line}")
    assert message in bad.value.message


def test_a_malformed_lock_stops_a_build_with_exit_2(cli: Cli, test_catalog: Path, tmp_path: Path) -> None:
    cat = catalogue(test_catalog, tmp_path, BUILDER_IMAGE)
    (cat / PINS_FILE).write_text(f"{BUILDER_IMAGE}: latest\n")
    for args in (("build", JOB, "--runtime", "native"), ("image", "pin"), ("doctor", "--runtime", "native")):
        res = cli("--catalog", str(cat), *args)
        assert res.code == 2, (args, res.err)
        assert f"{PINS_FILE}:1: the digest of {BUILDER_IMAGE} is not sha256" in res.err
        assert len(res.err.strip().splitlines()) == 1


def test_verify_pins_needs_no_engine_when_nothing_is_pinned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    verify_pins("docker", {"isar": "a:1"})  # nothing pinned: the engine is not asked
    verify_pins("native", {"isar": f"a:1@{DIGEST_A}"})  # the host is the builder
    from orchestrator.errors import InfrastructureError

    with pytest.raises(InfrastructureError, match="docker engine"):
        verify_pins("docker", {"isar": f"a:1@{DIGEST_A}"})


def test_a_distro_of_its_own_is_pinned_alone(
    cli: Cli, docker_engine: str, registry: Registry, test_catalog: Path, tmp_path: Path
) -> None:
    ref = registry.ref(unique("only-isar"), "1")
    image = tiny_image(ref, "only-isar")
    try:
        docker_push(ref)
        cat = catalogue(test_catalog, tmp_path, ref, f"{registry.host}/not-pushed:1")
        assert cli("--catalog", str(cat), "image", "pin").code == 2  # deby's builder is not there
        res = cli("--catalog", str(cat), "image", "pin", "--distro", "isar", "--json")
        assert res.code == 0, res.err
        assert list(read_pins(cat)) == [ref]
        res = cli("--catalog", str(cat), "image", "pin", "--distro", "nosuch")
        assert res.code == 2 and "nosuch" in res.err
    finally:
        forget(ref, image)
