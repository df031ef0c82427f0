"""Artifact collection: sparse copies that keep every byte, the sha256 of the whole file, and no
more disk than the deploy folder used; the hostile deploy folder's symlinks still refused."""

from __future__ import annotations

import errno
import hashlib
import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from orchestrator import artifacts
from orchestrator.artifacts import Artifact, collect, copy_hashing, deploy_dir_of
from orchestrator.catalog import Catalog
from orchestrator.kasfile import job_facts
from orchestrator.matrix import resolve_job

KIB = 1 << 10
MIB = 1 << 20
JOB = "isar-bookworm-qemu-amd64-swupdate"  # the job whose rules collect the most kinds of file


def noise(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def sparse(path: Path, size: int, writes: list[tuple[int, int]]) -> Path:
    """A ``size`` byte file of holes with random data at each (offset, length)."""
    with path.open("wb") as f:
        f.truncate(size)
        for i, (offset, length) in enumerate(writes):
            f.seek(offset)
            f.write(noise(length, i))
    return path


def on_disk(path: Path) -> int:
    return os.stat(path).st_blocks * 512


@contextmanager
def folders(src: Path, out: Path) -> Iterator[tuple[int, int]]:
    out.mkdir(exist_ok=True)
    src_fd, out_fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY), os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield src_fd, out_fd
    finally:
        os.close(src_fd)
        os.close(out_fd)


def copied(tmp_path: Path, source: Path) -> tuple[Path, int, str]:
    with folders(source.parent, tmp_path / "out") as (src_fd, out_fd):
        size, digest = copy_hashing(src_fd, source.name, out_fd, source.name)
    return tmp_path / "out" / source.name, size, digest


def assert_same(source: Path, copy: Path, size: int, digest: str) -> None:
    data = source.read_bytes()
    assert copy.read_bytes() == data
    assert (size, digest) == (len(data), hashlib.sha256(data).hexdigest())
    assert on_disk(copy) <= on_disk(source)


SPARSE = {
    "hole-at-the-end": (64 * MIB, [(0, 4 * KIB), (10 * MIB, MIB + 123), (20 * MIB, 3 * MIB)]),
    "data-at-the-very-end": (48 * MIB + 77, [(5 * MIB, 100 * KIB), (48 * MIB - 4 * KIB, 4 * KIB + 77)]),
    "holes-only": (16 * MIB, []),
    "one-byte-at-the-end": (8 * MIB + 1, [(8 * MIB, 1)]),
}


@pytest.mark.parametrize("case", sorted(SPARSE))
def test_a_sparse_file_is_copied_sparsely_with_every_byte_and_its_hash(tmp_path: Path, case: str) -> None:
    size, writes = SPARSE[case]
    source = sparse(tmp_path / "image.wic", size, writes)
    if on_disk(source) >= size:
        pytest.skip("this filesystem does not keep holes")
    copy, got_size, digest = copied(tmp_path, source)
    assert_same(source, copy, got_size, digest)
    assert on_disk(copy) < size  # still sparse


def test_extents_longer_than_a_copy_step_are_copied_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(artifacts, "COPY_CHUNK", 64 * KIB + 3)  # steps that straddle pages and reads
    source = sparse(tmp_path / "image.wic", 12 * MIB, [(KIB, 3 * MIB + 5), (7 * MIB + 1, 2 * MIB)])
    assert_same(source, *copied(tmp_path, source))


def test_a_file_without_holes_and_an_empty_file(tmp_path: Path) -> None:
    full = tmp_path / "src" / "initrd.img"
    full.parent.mkdir()
    full.write_bytes(noise(3 * MIB + 17, 7))
    empty = tmp_path / "src" / "empty.manifest"
    empty.write_bytes(b"")
    for source in (full, empty):
        assert_same(source, *copied(tmp_path, source))


@pytest.mark.parametrize("why", [errno.EXDEV, errno.ENOSYS, 0])
def test_without_a_kernel_copy_it_reads_and_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, why: int) -> None:
    """Another filesystem, an old kernel, or a copy_file_range that copies nothing: same copy."""

    def refuse(*args: object) -> int:
        if why:
            raise OSError(why, os.strerror(why))
        return 0

    monkeypatch.setattr(os, "copy_file_range", refuse)
    source = sparse(tmp_path / "image.wic", 32 * MIB + 5, [(MIB, 2 * MIB), (32 * MIB, 5)])
    assert_same(source, *copied(tmp_path, source))


def test_a_file_that_shrinks_while_copied_is_refused_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "image.wic"
    source.write_bytes(noise(4 * MIB, 3))
    copy = artifacts._Copier.copy

    def shrink_first(self: artifacts._Copier, off: int, length: int) -> None:
        os.truncate(source, 0)
        copy(self, off, length)

    monkeypatch.setattr(artifacts._Copier, "copy", shrink_first)
    with pytest.raises(OSError, match="shrank"):
        copied(tmp_path, source)
    assert list((tmp_path / "out").iterdir()) == []


def test_no_symlink_is_followed_on_the_way_to_a_file(tmp_path: Path) -> None:
    deploy = tmp_path / "deploy"
    (deploy / "real").mkdir(parents=True)
    (deploy / "real" / "file").write_bytes(b"data")
    (deploy / "link").symlink_to("real/file")
    (deploy / "dirlink").symlink_to("real")
    os.mkfifo(deploy / "fifo")
    with folders(deploy, tmp_path / "out") as (src_fd, out_fd):
        for name, code in (("link", errno.ELOOP), ("dirlink/file", errno.ENOTDIR), ("fifo", errno.EINVAL)):
            with pytest.raises(OSError) as caught:
                copy_hashing(src_fd, name, out_fd, name.replace("/", "_"))
            assert caught.value.errno == code, name
        assert copy_hashing(src_fd, "real/file", out_fd, "file")[0] == 4
        with pytest.raises(FileExistsError):  # never over something already there
            copy_hashing(src_fd, "real/file", out_fd, "file")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["file"]


def deploy_folder(catalog: Catalog, job_dir: Path) -> tuple[Path, str]:
    """What a swupdate build of qemu-amd64 deploys, with a sparse wic, Yocto's stable-name symlink,
    and a kernel symlink that leads out of the deploy folder; one required artifact missing."""
    job = resolve_job(catalog, JOB)
    facts = job_facts(catalog, job)
    deploy = deploy_dir_of(job_dir, facts.machine)
    (deploy / "OVMF").mkdir(parents=True)
    image = facts.image
    sparse(deploy / f"{image}.wic", 48 * MIB, [(MIB, 8 * MIB), (20 * MIB, 5 * MIB), (48 * MIB - 512, 512)])
    (deploy / f"{image}-20240101.swu").write_bytes(noise(6 * MIB + 1, 1))
    (deploy / f"{image}.swu").symlink_to(f"{image}-20240101.swu")  # followed: it stays inside
    (deploy / f"{image}-initrd.img").write_bytes(noise(2 * MIB, 2))
    (deploy / f"{facts.rootfs}.manifest").write_text("base-files 12.4\n")
    (deploy / f"{facts.rootfs}.dpkg_status").write_text("Package: base-files\n")
    (deploy / f"{image}.spdx.json").write_text("{}")
    (deploy / "OVMF" / "OVMF_CODE.fd").write_bytes(noise(MIB, 3))
    (deploy / "OVMF" / "OVMF_VARS.fd").write_bytes(b"")
    secret = job_dir / "secret"
    secret.write_text("root:x:0:0\n")
    (deploy / f"{image}-vmlinuz").symlink_to(secret)  # refused: it leads outside
    return deploy, image  # no .squashfs: a missing required artifact


def test_collect_copies_a_whole_deploy_folder_in_rule_order(
    catalog: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = resolve_job(catalog, JOB)
    deploy, image = deploy_folder(catalog, tmp_path / "parallel")
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    found, problems = collect(catalog, job, tmp_path / "parallel")

    assert [(a.type, a.path) for a in found] == [
        ("initrd", f"artifacts/{image}-initrd.img"),
        ("manifest", f"artifacts/{image}.manifest"),
        ("dpkg_status", f"artifacts/{image}.dpkg_status"),
        ("swu", f"artifacts/{image}.swu"),
        ("sbom", f"artifacts/{image}.spdx.json"),
        ("wic", f"artifacts/{image}.wic"),
        ("firmware", "artifacts/OVMF_OVMF_CODE.fd"),
        ("firmware", "artifacts/OVMF_OVMF_VARS.fd"),
    ]
    assert problems == [
        f"missing squashfs artifact {image}.squashfs",
        f"{image}-vmlinuz leads outside the deploy folder (symlink): refused",
    ]
    out = tmp_path / "parallel" / "artifacts"
    assert sorted(p.name for p in out.iterdir()) == sorted(Path(a.path).name for a in found)
    for art in found:
        source = deploy / art.path.removeprefix("artifacts/").replace("OVMF_", "OVMF/", 1)
        assert_same(source, tmp_path / "parallel" / art.path, art.size, art.sha256)
    wic = next(a for a in found if a.type == "wic")
    assert on_disk(tmp_path / "parallel" / wic.path) == on_disk(deploy / f"{image}.wic")
    assert not any(b"root:" in p.read_bytes() for p in out.iterdir())

    # one at a time gives the same records and problems, in the same order
    deploy_folder(catalog, tmp_path / "serial")
    monkeypatch.setattr(artifacts, "WORKERS", 1)
    assert collect(catalog, job, tmp_path / "serial") == (found, problems)


def test_collect_refuses_a_file_swapped_for_a_symlink_after_it_was_looked_at(
    catalog: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check by name and the open are apart in time: the open itself follows no symlink."""
    job = resolve_job(catalog, JOB)
    _, image = deploy_folder(catalog, tmp_path)
    inside = artifacts._inside

    def swap_after_check(folder: Path, name: str) -> str | None:
        real = inside(folder, name)
        if name == f"{image}-initrd.img":
            (folder / name).unlink()
            (folder / name).symlink_to(tmp_path / "secret")
        return real

    monkeypatch.setattr(artifacts, "_inside", swap_after_check)
    found, problems = collect(catalog, job, tmp_path)
    assert f"{image}-initrd.img: {os.strerror(errno.ELOOP)}: refused" in problems
    assert "initrd" not in {a.type for a in found}
    assert not (tmp_path / "artifacts" / f"{image}-initrd.img").exists()
    assert all(isinstance(a, Artifact) for a in found)


def test_collect_links_what_only_the_deploy_folder_names_when_it_goes_next(catalog: Catalog, tmp_path: Path) -> None:
    """After a good build whose build/tmp goes next: a file of the deploy folder itself that no
    other name shares is hard-linked, not copied, and hashed all the same (holes too); a file in
    a subfolder of it, or one with another name elsewhere, is copied."""
    job = resolve_job(catalog, JOB)
    deploy, image = deploy_folder(catalog, tmp_path / "copied")
    copies = collect(catalog, job, tmp_path / "copied")
    deploy, image = deploy_folder(catalog, tmp_path / "linked")
    elsewhere = tmp_path / "linked" / "kept-elsewhere"
    os.link(deploy / f"{image}.manifest", elsewhere)  # a second name: linking would share it further
    found, problems = collect(catalog, job, tmp_path / "linked", link=True)
    assert (found, problems) == copies  # the same records: every sha256 computed all the same
    by_type = {a.type: tmp_path / "linked" / a.path for a in found}
    assert os.stat(by_type["wic"]).st_ino == os.stat(deploy / f"{image}.wic").st_ino
    assert os.stat(by_type["initrd"]).st_ino == os.stat(deploy / f"{image}-initrd.img").st_ino
    assert os.stat(by_type["manifest"]).st_ino != os.stat(elsewhere).st_ino
    firmware = [tmp_path / "linked" / a.path for a in found if a.type == "firmware"]
    assert all(os.stat(f).st_nlink == 1 for f in firmware)  # from OVMF/: copied
    for path in deploy.rglob("*"):  # the deploy folder goes: the artifacts stay whole
        if path.is_file() and not path.is_symlink():
            path.unlink()
    for art in found:
        data = (tmp_path / "linked" / art.path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == art.sha256
