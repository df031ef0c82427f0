"""`cipbuild build --check-reproducible`: a second build of the job, apart, compared artifact by
artifact. The fixture bitbake deploys images the test made, another variant per build: a disk
image whose ext4 root holds a file with another time stamp, an initrd (gzip cpio) with a random
byte in one file, and a rootfs tarball with two members in another order. The check must name
exactly those files; with one variant for both builds, everything is identical."""

from __future__ import annotations

import gzip
import io
import json
import random
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
from buildworld import World, open_to_builder
from kasfixture import Upstreams, make_test_catalog
from test_reprodiff import ESP_GUID, INITRD, LINUX_GUID, T, esp, make_disk, make_ext, make_fat, newc, rootfs

from orchestrator.manifest import write_job_trust

pytestmark = pytest.mark.integration

JOB = "isar-bookworm-qemu-amd64-targz"


def tarball(names: list[str]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name in names:
            info = tarfile.TarInfo(name)
            data = f"{name}\n".encode()
            info.size, info.mtime = len(data), T
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def variant(folder: Path, *, second: bool) -> None:
    """What one build deploys: the second build's files differ in the three chosen places."""
    folder.mkdir(parents=True)
    work = folder.parent / f"work-{folder.name}"
    fat = make_fat(esp(work / "esp", b"MZ"), work / "esp.vfat")
    ext = make_ext(rootfs(work / "root", b"cip\n", T + 3600 if second else T), work / "root.ext4", size="16M")
    make_disk(
        folder / "@image@.wic", [(fat, ESP_GUID), (ext, LINUX_GUID)], label_id="5a3c1e2d-0000-4000-8000-0000000000aa"
    )
    initrd = list(INITRD)
    if second:
        name, mode, data, mtime = initrd[1]
        changed = bytearray(data)
        changed[-2] ^= random.Random(7).randrange(1, 128)  # one byte, as a build's stray random byte
        initrd[1] = (name, mode, bytes(changed), mtime)
    (folder / "@image@-initrd.img").write_bytes(gzip.compress(newc(initrd), mtime=0))
    members = ["./etc/os-release", "./etc/hostname", "./usr/bin/tool"]
    if second:
        members[0], members[1] = members[1], members[0]
    (folder / "@image@.tar.gz").write_bytes(tarball(members))


@pytest.fixture
def repro_world(upstreams: Upstreams, tmp_path: Path) -> World:
    """The test catalogue with a kas fragment telling the fixture bitbake where the variants are."""
    root = open_to_builder(tmp_path)
    world = World(make_test_catalog(root / "catalog", upstreams), upstreams.root, root / "out", root / "cache")
    variants = world.cache / "variants"
    variants.mkdir(parents=True)
    variants.chmod(0o777)  # the builder user counts the builds in it
    fragment = world.catalog / "kas" / "fixture" / "variants.yml"
    fragment.write_text(
        "header:\n  version: 14\nlocal_conf_header:\n  fixture-variants: |\n"
        f'    CIPBUILD_FIXTURE_DEPLOY_FROM = "{variants}"\n'
    )
    distro = world.catalog / "distros" / "isar.yml"
    distro.write_text(
        distro.read_text().replace(
            "  - kas/fixture/base.yml\n", "  - kas/fixture/base.yml\n  - kas/fixture/variants.yml\n"
        )
    )
    return world


def checked(world: World) -> tuple[int, dict[str, Any], str]:
    proc = world.build(JOB, "--check-reproducible", "--json")
    data = json.loads(proc.stdout) if proc.stdout else {}
    (report,) = data.get("reproducibility", [{}])
    return proc.returncode, report, proc.stderr


def test_the_check_names_each_file_that_differs_inside_each_artifact(docker_engine: str, repro_world: World) -> None:
    variants = repro_world.cache / "variants"
    variant(variants / "1", second=False)
    variant(variants / "2", second=True)
    code, report, err = checked(repro_world)
    assert code == 3, err
    assert report["identical"] is False and report["second_build"].startswith(str(repro_world.out / ".reproducibility"))
    by_type = {
        a["path"].rsplit(".", 1)[-1] if not a["path"].endswith(".tar.gz") else "tar.gz": a for a in report["artifacts"]
    }
    inner = {kind: [(d["path"], d["kinds"]) for d in art["differences"]] for kind, art in by_type.items()}
    assert inner["wic"] == [("p2:/usr/share/doc/x/changelog", ["mtime"])]
    assert inner["img"] == [("init", ["content"])]
    assert [(path, kinds) for path, kinds in inner["tar.gz"]] in (
        [("./etc/hostname", ["order"])],
        [("./etc/os-release", ["order"])],
    )
    assert all(
        a["identical"] for a in report["artifacts"] if a["path"].endswith((".manifest", ".dpkg_status", "-vmlinuz"))
    )
    job_dir = repro_world.out / JOB
    assert json.loads((job_dir / "reproducibility.json").read_text())["identical"] is False
    assert f"not reproducible: {JOB}; see reproducibility.json" in err
    second = Path(report["second_build"])
    assert (second / "artifacts").is_dir()  # kept: they differ, and a person will want to look
    assert not (second.parent.parent / "sstate").exists()  # its private sstate is gone


def test_one_variant_for_both_builds_is_identical_and_the_manifest_says_so(
    docker_engine: str, repro_world: World
) -> None:
    variant(repro_world.cache / "variants" / "1", second=False)
    code, report, err = checked(repro_world)
    assert code == 0, err
    assert report["identical"] is True
    assert report["artifacts"] and all(a["identical"] for a in report["artifacts"])
    assert not (repro_world.out / ".reproducibility" / JOB).exists()  # nothing worth keeping
    job_dir = repro_world.out / JOB
    write_job_trust(job_dir)
    manifest = json.loads((job_dir / "manifest.json").read_text())
    assert manifest["reproducibility"]["identical"] is True and manifest["reproducibility"]["differing"] == []
    assert "reproducibility.json" in (job_dir / "SHA256SUMS").read_text()
    subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=job_dir, check=True, capture_output=True)
