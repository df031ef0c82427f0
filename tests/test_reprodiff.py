"""The comparison behind `build --check-reproducible`: two versions of each kind of artifact
made here (tar, cpio, ext2/4, FAT, squashfs, GPT and MBR disk images, compressed ones), and
the check must name exactly the inner files that differ and how, and call copies identical.

The images are made with the real tools (e2fsprogs, dosfstools, mtools, fdisk's sfdisk,
squashfs-tools, zstd, cpio) with fixed UUIDs, hash seeds and times, as a reproducible build
makes them; those tests are marked integration."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import tarfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from orchestrator.reprodiff import (
    MAX_DIFFERENCES,
    ArtifactComparison,
    compare_files,
    compare_sets,
    summary_lines,
)
from orchestrator.reprodiff.extfs import ExtFs
from orchestrator.reprodiff.spans import Span

T = 1_700_000_000  # every time stamp the builds pin
FS_UUID = "6b5c0a4e-0d1f-4c3e-9a77-1f2e3d4c5b6a"
HASH_SEED = "1c7b2f4e-5d6a-4b3c-8e9f-0a1b2c3d4e5f"
MIB = 1 << 20
integration = pytest.mark.integration


def found(result: ArtifactComparison) -> list[tuple[str, tuple[str, ...]]]:
    return [(d.path, d.kinds) for d in result.differences]


def check(first: Path, second: Path) -> ArtifactComparison:
    """Compare; and a copy of ``first`` must be identical to it, whatever its format."""
    copy = first.with_name(first.name + ".copy")
    shutil.copyfile(first, copy)
    same = compare_files(first, copy, "copy")
    assert same.identical and not same.differences and not same.note, same
    result = compare_files(first, second, first.name)
    assert not result.identical
    json.dumps(result.to_json())
    return result


# ---- tar -------------------------------------------------------------------------------------


def make_tar(path: Path, members: Sequence[tuple[str, bytes | None, int]], mode: str = "w") -> Path:
    """A tar of (name, content or None for a folder, mtime), in that order."""
    with tarfile.open(path, mode, format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        for name, data, mtime in members:
            info = tarfile.TarInfo(name)
            info.mtime = mtime
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return path


TAR_FIRST = [
    ("etc", None, T),
    ("etc/hostname", b"cip-one\n", T),
    ("etc/moved", b"moved\n", T),
    ("etc/issue", b"CIP Core\n", T),
    ("etc/timestamp", b"same\n", T),
    ("etc/passwd", b"root:x:0:0\n", T),
]
TAR_SECOND = [
    ("etc", None, T),
    ("etc/hostname", b"cip-two\n", T),  # same size, other content
    ("etc/issue", b"CIP Core\n", T),
    ("etc/timestamp", b"same\n", T + 100),
    ("etc/passwd", b"root:x:0:0\n", T),
    ("etc/moved", b"moved\n", T),  # moved to the end
]


def test_tar_names_the_member_with_other_content_the_one_with_another_mtime_and_the_moved_one(tmp_path: Path) -> None:
    result = check(make_tar(tmp_path / "a.tar", TAR_FIRST), make_tar(tmp_path / "b.tar", TAR_SECOND))
    assert result.format == "tar"
    assert found(result) == [("etc/hostname", ("content",)), ("etc/timestamp", ("mtime",)), ("etc/moved", ("order",))]
    assert "mtime 1700000000 vs 1700000100" in result.differences[1].detail
    assert "position 3 vs 6" in result.differences[2].detail
    assert result.kind_counts == {"content": 1, "mtime": 1, "order": 1}


@pytest.mark.parametrize(("mode", "fmt"), [("w:gz", "tar.gz"), ("w:xz", "tar.xz"), ("w:bz2", "tar.bz2")])
def test_compressed_tar(tmp_path: Path, mode: str, fmt: str) -> None:
    result = check(make_tar(tmp_path / "a", TAR_FIRST, mode), make_tar(tmp_path / "b", TAR_SECOND, mode))
    assert result.format == fmt
    paths = [p for p, _ in found(result)]
    if fmt == "tar.gz":  # tarfile's gzip header holds the file's name (and the time it was made)
        assert paths.pop(0) == "(gzip header)" and "name a vs b" in result.differences[0].detail
    assert paths == ["etc/hostname", "etc/timestamp", "etc/moved"]


def test_a_gzip_header_time_is_named_when_the_archive_inside_is_the_same(tmp_path: Path) -> None:
    raw = make_tar(tmp_path / "rootfs.tar", TAR_FIRST).read_bytes()
    first, second = tmp_path / "a.tar.gz", tmp_path / "b.tar.gz"
    first.write_bytes(gzip.compress(raw, mtime=T))
    second.write_bytes(gzip.compress(raw, mtime=T + 60))
    result = check(first, second)
    assert found(result) == [("(gzip header)", ("metadata",))]
    assert result.differences[0].detail == "mtime 1700000000 vs 1700000060"
    assert result.note == "the decompressed contents are identical: only the compressed streams differ"


def test_tar_owner_mode_type_and_only_in_one(tmp_path: Path) -> None:
    def build(path: Path, second: bool) -> Path:
        with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
            info = tarfile.TarInfo("bin/tool")
            data = b"\x7fELF"
            info.size, info.mode, info.mtime = len(data), 0o4755 if second else 0o755, T
            info.uid, info.uname = (1000, "builder") if second else (0, "root")
            info.gname = "root"
            tar.addfile(info, io.BytesIO(data))
            link = tarfile.TarInfo("bin/sh")
            link.mtime = T
            if second:
                link.type, link.linkname = tarfile.SYMTYPE, "dash"
            else:
                link.size = 1
            tar.addfile(link, None if second else io.BytesIO(b"x"))
            extra = tarfile.TarInfo("var/log/build.log" if second else "var/cache/x")
            extra.mtime = T
            tar.addfile(extra, io.BytesIO(b""))
        return path

    result = check(build(tmp_path / "a.tar", False), build(tmp_path / "b.tar", True))
    assert found(result) == [
        ("bin/sh", ("type",)),
        ("var/cache/x", ("only-in-first",)),
        ("var/log/build.log", ("only-in-second",)),
        ("bin/tool", ("mode", "owner")),
    ]
    assert "mode 0755 vs 4755" in result.differences[3].detail
    assert "owner 0:0 (root:root) vs 1000:0 (builder:root)" in result.differences[3].detail


def test_hostile_member_names_are_compared_never_extracted(tmp_path: Path) -> None:
    names = ["../../escape", "/etc/abs", "a/../../b", "dir/\x1b[31mred"]
    first = make_tar(tmp_path / "a.tar", [(n, b"one", T) for n in names])
    second = make_tar(tmp_path / "b.tar", [(n, b"two", T) for n in names])
    before = sorted(p.name for p in tmp_path.parent.iterdir())
    result = check(first, second)
    assert [p for p, _ in found(result)] == ["../../escape", "/etc/abs", "a/../../b", "dir/\\x1b[31mred"]
    assert sorted(p.name for p in tmp_path.parent.iterdir()) == before
    assert not (tmp_path.parent / "escape").exists()


# ---- cpio ------------------------------------------------------------------------------------


def newc(members: list[tuple[str, int, bytes, int]]) -> bytes:
    """A cpio newc archive of (name, mode with its type bits, content, mtime), as the kernel reads."""
    out = bytearray()

    def pad() -> None:
        out.extend(b"\0" * (-len(out) % 4))

    for ino, (name, mode, data, mtime) in enumerate([*members, ("TRAILER!!!", 0, b"", 0)], start=1):
        raw = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, 1, mtime, len(data), 0, 0, 0, 0, len(raw), 0]
        out += b"070701" + b"".join(b"%08X" % f for f in fields) + raw
        pad()
        out += data
        pad()
    out.extend(b"\0" * (-len(out) % 512))
    return bytes(out)


INITRD = [
    (".", 0o40755, b"", T),
    ("init", 0o100755, b"#!/bin/sh\nexec /sbin/init\n", T),
    ("etc", 0o40755, b"", T),
    ("etc/hostname", 0o100644, b"cip-one\n", T),
    ("bin/sh", 0o120777, b"busybox", T),
]


def test_gzip_cpio_names_the_file_that_differs(tmp_path: Path) -> None:
    first, second = tmp_path / "initrd-a.img", tmp_path / "initrd-b.img"
    first.write_bytes(gzip.compress(newc(INITRD), mtime=0))
    changed = [(n, m, b"cip-two\n" if n == "etc/hostname" else d, t) for n, m, d, t in INITRD]
    second.write_bytes(gzip.compress(newc(changed), mtime=0))
    result = check(first, second)
    assert result.format == "cpio.gz"
    assert found(result) == [("etc/hostname", ("content",))]


def test_cpio_symlink_target_mode_and_inode_numbers(tmp_path: Path) -> None:
    first, second = tmp_path / "a.cpio", tmp_path / "b.cpio"
    first.write_bytes(newc(INITRD))
    changed = [
        ("init", 0o100700, INITRD[1][2], T),
        (".", 0o40755, b"", T),
        ("etc", 0o40755, b"", T),
        ("etc/hostname", 0o100644, b"cip-one\n", T),
        ("bin/sh", 0o120777, b"dash", T),
    ]
    second.write_bytes(newc(changed))
    result = check(first, second)
    assert result.format == "cpio"
    assert found(result) == [
        ("bin/sh", ("size", "link-target")),
        ("init", ("mode", "inode")),
        (".", ("order", "inode")),
    ]


@integration
def test_an_initramfs_of_an_early_cpio_and_a_zstd_cpio_made_by_cpio(tmp_path: Path) -> None:
    def initramfs(name: str, hostname: bytes) -> Path:
        early = tree(tmp_path / name / "early", {"kernel/x86/microcode/GenuineIntel.bin": b"\x01" * 64})
        main = tree(tmp_path / name / "main", {"init": b"#!/bin/sh\n", "etc/hostname": hostname})
        out = tmp_path / f"{name}.img"
        with out.open("wb") as f:
            for root, compress in ((early, None), (main, ["zstd", "-q", "-c"])):
                names = "\n".join(sorted(str(p.relative_to(root)) for p in [root, *root.rglob("*")])) + "\n"
                cpio = subprocess.run(
                    ["cpio", "-o", "-H", "newc", "--reproducible", "--quiet"],
                    input=names.encode(),
                    cwd=root,
                    capture_output=True,
                    check=True,
                ).stdout
                f.write(
                    subprocess.run(compress, input=cpio, capture_output=True, check=True).stdout if compress else cpio
                )
        return out

    result = check(initramfs("a", b"cip-one\n"), initramfs("b", b"cip-two\n"))
    assert result.format == "cpio+cpio.zst"
    assert found(result) == [("etc/hostname", ("content",))]


# ---- file systems ------------------------------------------------------------------------------


def tree(root: Path, files: dict[str, bytes], mtimes: dict[str, int] | None = None) -> Path:
    """Files (a name ending in "@" is a symlink to the content) with pinned times."""
    for name, data in files.items():
        if name.endswith("@"):
            link = root / name[:-1]
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(data.decode())
            continue
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if name.startswith("usr/bin/"):
            path.chmod(0o755)
    for path in sorted([root, *root.rglob("*")], key=lambda p: -len(p.parts)):
        when = (mtimes or {}).get(str(path.relative_to(root)), T)
        os.utime(path, (T, when), follow_symlinks=False)
    return root


def make_ext(src: Path, image: Path, size: str = "8M", fs: str = "ext4", extra: tuple[str, ...] = ()) -> Path:
    """mke2fs -d as Isar's image classes run it, with the UUID, hash seed and clock pinned; the
    inode change times, which mke2fs copies from the source files, pinned after it."""
    env = {**os.environ, "E2FSPROGS_FAKE_TIME": str(T)}
    argv = ["mke2fs", "-q", "-F", "-t", fs, *extra, "-U", FS_UUID, "-E", f"root_owner=0:0,hash_seed={HASH_SEED}"]
    subprocess.run([*argv, "-d", str(src), str(image), size], env=env, check=True)
    names = ["/"] + ["/" + str(p.relative_to(src)) for p in src.rglob("*")]
    script = "".join(f"sif {name} ctime {T}\n" for name in names)
    subprocess.run(
        ["debugfs", "-w", "-f", "-", str(image)], input=script, text=True, env=env, capture_output=True, check=True
    )
    return image


def rootfs(root: Path, hostname: bytes, doc_mtime: int = T) -> Path:
    tool = random.Random(1).randbytes(300_000)  # past 12 blocks of 1 KiB: indirect blocks on ext2
    files = {
        "etc/hostname": hostname,
        "etc/os-release": b'NAME="CIP Core"\n',
        "usr/bin/tool": tool,
        "usr/share/doc/x/changelog": b"changes\n",
        "usr/lib/os-release@": b"../../etc/os-release",
        "var/empty.txt": b"",
    }
    return tree(root, files, {"usr/share/doc/x/changelog": doc_mtime})


@integration
@pytest.mark.parametrize(
    ("fs", "extra"),
    [
        ("ext4", ()),
        ("ext2", ("-b", "1024")),
        ("ext3", ()),
        ("ext4", ("-O", "^extent,^64bit")),
        ("ext4", ("-O", "inline_data")),
        ("ext4", ("-I", "128")),
    ],
)
def test_ext_image_names_the_file_with_other_content_and_the_one_with_another_mtime(
    tmp_path: Path, fs: str, extra: tuple[str, ...]
) -> None:
    first = make_ext(rootfs(tmp_path / "r1", b"cip-one\n"), tmp_path / "a.img", fs=fs, extra=extra)
    second = make_ext(rootfs(tmp_path / "r2", b"cip-two\n", T + 100), tmp_path / "b.img", fs=fs, extra=extra)
    result = check(first, second)
    assert result.format == fs
    assert found(result) == [("/etc/hostname", ("content",)), ("/usr/share/doc/x/changelog", ("mtime",))]
    assert result.differences[1].detail == "mtime 1700000000 vs 1700000100"


@integration
def test_ext_superblock_and_inode_times(tmp_path: Path) -> None:
    first = make_ext(rootfs(tmp_path / "r1", b"cip\n"), tmp_path / "a.img")
    second = make_ext(rootfs(tmp_path / "r2", b"cip\n"), tmp_path / "b.img")
    script = f"ssv uuid 0e9b3a52-1111-4222-8333-944455556666\nsif /etc/hostname ctime {T + 5}\n"
    env = {**os.environ, "E2FSPROGS_FAKE_TIME": str(T)}
    subprocess.run(
        ["debugfs", "-w", "-f", "-", str(second)], input=script, text=True, env=env, capture_output=True, check=True
    )
    result = check(first, second)
    assert found(result) == [("(superblock)", ("metadata",)), ("/etc/hostname", ("ctime",))]
    assert result.differences[0].detail.startswith(f"uuid {FS_UUID} vs 0e9b3a52-1111-4222-8333-944455556666")
    assert result.differences[1].detail == "ctime 1700000000 vs 1700000005"


@integration
def test_ext_bytes_no_file_explains_are_located(tmp_path: Path) -> None:
    first = make_ext(rootfs(tmp_path / "r", b"cip\n"), tmp_path / "a.img")
    with first.open("rb") as f:
        block_size = ExtFs(Span(first, f.fileno(), 0, first.stat().st_size)).block_size
    bmap = subprocess.run(
        ["debugfs", "-R", "bmap /etc/hostname 0", str(first)], capture_output=True, text=True, check=True
    )
    second = tmp_path / "b.img"
    slack, free = int(bmap.stdout) * block_size + 100, 8 * MIB - 10  # past the end of a file's data; free space
    for offset, text in (
        (slack, "a block of inode "),
        (free, f"block {free // block_size}, which no listed file uses"),
    ):
        shutil.copyfile(first, second)
        with second.open("r+b") as f:
            f.seek(offset)
            f.write(b"junk")
        result = compare_files(first, second, "rootfs.ext4")
        assert not result.identical and not result.differences
        assert result.note.startswith(f"the bytes differ from byte {offset}, in {text}"), result.note
        assert ("(/etc/hostname)" in result.note) == (offset == slack)
    env = {**os.environ, "E2FSPROGS_FAKE_TIME": str(T)}
    shutil.copyfile(first, second)
    script = "sif /etc/hostname generation 7\n"
    subprocess.run(
        ["debugfs", "-w", "-f", "-", str(second)], input=script, text=True, env=env, capture_output=True, check=True
    )
    result = compare_files(first, second, "rootfs.ext4")
    assert found(result) == [("/etc/hostname", ("inode",))]
    assert result.differences[0].detail == "generation 0 vs 7"


@integration
def test_the_ext_reader_agrees_with_debugfs(tmp_path: Path) -> None:
    image = make_ext(rootfs(tmp_path / "r", b"cip\n"), tmp_path / "a.img", fs="ext2", extra=("-b", "1024"))
    with image.open("rb") as f:
        listing = ExtFs(Span(image, f.fileno(), 0, image.stat().st_size)).listing()
    entries = {e.path: e for e in listing.entries}
    assert set(entries) >= {"/", "/etc/hostname", "/usr/bin/tool", "/usr/lib/os-release", "/lost+found"}
    for path in ("/etc/hostname", "/usr/bin/tool"):
        dumped = tmp_path / "dump"
        subprocess.run(["debugfs", "-R", f"dump {path} {dumped}", str(image)], capture_output=True, check=True)
        assert entries[path].digest == hashlib.sha256(dumped.read_bytes()).hexdigest()
        dumped.unlink()
    assert entries["/usr/bin/tool"].mode == 0o755 and entries["/usr/bin/tool"].size == 300_000
    assert entries["/usr/lib/os-release"].target == "../../etc/os-release"
    listed = subprocess.run(["debugfs", "-R", "ls -p /etc", str(image)], capture_output=True, text=True, check=True)
    names = [line.split("/")[5] for line in listed.stdout.splitlines() if line.startswith("/")]
    assert [e.path.rpartition("/")[2] for e in listing.entries if e.path.startswith("/etc/")] == [
        n for n in names if n not in (".", "..")
    ]


def make_fat(src: Path, image: Path, size_kib: int = 8192, reverse: bool = False) -> Path:
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(T)}
    subprocess.run(
        ["mkfs.vfat", "--invariant", "-C", "-i", "12345678", "-n", "EFI", str(image), str(size_kib)],
        env=env,
        check=True,
        capture_output=True,
    )
    items = [str(p) for p in sorted(src.iterdir(), reverse=reverse)]
    subprocess.run(["mcopy", "-s", "-m", "-i", str(image), *items, "::/"], env=env, check=True)
    return image


def esp(root: Path, loader: bytes, mtime: int = T) -> Path:
    files = {
        "EFI/BOOT/bootx64.efi": loader,
        "EFI/BOOT/grub.cfg": b"set timeout=0\n",
        "startup.nsh": b"bootx64.efi\n",
        "A Long File Name.txt": b"long\n",
    }
    return tree(root, files, {"startup.nsh": mtime})


@integration
def test_fat_image_names_the_file_that_differs(tmp_path: Path) -> None:
    first = make_fat(esp(tmp_path / "e1", b"MZ-one"), tmp_path / "a.vfat")
    second = make_fat(esp(tmp_path / "e2", b"MZ-two", T + 100), tmp_path / "b.vfat")
    result = check(first, second)
    assert result.format == "vfat"
    # mcopy -m gives a file the source's mtime as both its write and its creation time
    assert found(result) == [("/EFI/BOOT/bootx64.efi", ("content",)), ("/startup.nsh", ("mtime", "ctime"))]
    assert result.differences[1].detail == (
        "mtime 2023-11-14 22:13:20 vs 2023-11-14 22:15:00; created 2023-11-14 22:13:20 vs 2023-11-14 22:15:00"
    )
    assert "/A Long File Name.txt" not in {p for p, _ in found(result)}


@integration
def test_fat_image_names_the_files_copied_in_another_order(tmp_path: Path) -> None:
    first = make_fat(esp(tmp_path / "e1", b"MZ"), tmp_path / "a.vfat")
    second = make_fat(esp(tmp_path / "e2", b"MZ"), tmp_path / "b.vfat", reverse=True)
    result = check(first, second)
    # copied as A..., EFI, startup.nsh and then the other way round: one of them is taken as
    # keeping its place (a longest run in the same order), the two others moved
    assert found(result) == [("/A Long File Name.txt", ("order",)), ("/EFI", ("order",))]
    assert result.differences[0].detail == "position in its directory 1 vs 3"


@integration
def test_fat_long_names_are_read(tmp_path: Path) -> None:
    from orchestrator.reprodiff.fatfs import FatFs

    image = make_fat(esp(tmp_path / "e", b"MZ"), tmp_path / "a.vfat")
    with image.open("rb") as f:
        listing = FatFs(Span(image, f.fileno(), 0, image.stat().st_size)).listing()
    paths = {e.path for e in listing.entries}
    assert paths == {
        "/A Long File Name.txt",
        "/EFI",
        "/EFI/BOOT",
        "/EFI/BOOT/bootx64.efi",
        "/EFI/BOOT/grub.cfg",
        "/startup.nsh",
    }
    assert listing.metadata["serial"] == "12345678" and listing.metadata["label"] == "EFI"


def make_squashfs(src: Path, image: Path) -> Path:
    argv = ["mksquashfs", str(src), str(image), "-noappend", "-quiet", "-all-root", "-mkfs-time", str(T)]
    subprocess.run(argv, check=True, capture_output=True)
    return image


@integration
def test_squashfs_image_names_the_file_that_differs(tmp_path: Path) -> None:
    first = make_squashfs(rootfs(tmp_path / "r1", b"cip-one\n"), tmp_path / "a.squashfs")
    second = make_squashfs(rootfs(tmp_path / "r2", b"cip-two\n", T + 100), tmp_path / "b.squashfs")
    result = check(first, second)
    assert result.format == "squashfs"
    assert found(result) == [("/etc/hostname", ("content",)), ("/usr/share/doc/x/changelog", ("mtime",))]


# ---- disk images -------------------------------------------------------------------------------


def make_disk(path: Path, parts: list[tuple[Path, str]], label: str = "gpt", label_id: str = "") -> Path:
    """A disk image: a partition table (sfdisk) and each file system copied into its partition,
    every partition starting on a MiB; holes where the file systems have them."""
    starts, at = [], MIB
    for image, _ in parts:
        starts.append(at)
        at += -(-image.stat().st_size // MIB) * MIB
    with path.open("wb") as f:
        f.truncate(at + MIB)
    lines = [f"label: {label}", "unit: sectors"]
    if label_id:
        lines.append(f"label-id: {label_id}")
    for n, ((image, kind), start) in enumerate(zip(parts, starts, strict=True), start=1):
        size = -(-image.stat().st_size // MIB) * MIB
        uuid = f", uuid=3f0c8a6e-0000-4000-8000-00000000000{n}" if label == "gpt" else ""
        lines.append(f"start={start // 512}, size={size // 512}, type={kind}{uuid}")
    script = "\n".join(lines) + "\n"
    subprocess.run(
        ["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(path)], input=script, text=True, check=True
    )
    with path.open("r+b") as f:
        for (image, _), start in zip(parts, starts, strict=True):
            with image.open("rb") as src:
                offset = 0
                while chunk := src.read(MIB):
                    if chunk.count(0) != len(chunk):
                        f.seek(start + offset)
                        f.write(chunk)
                    offset += len(chunk)
    return path


ESP_GUID = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_GUID = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"


@integration
def test_gpt_disk_names_the_file_inside_each_partition_that_differs(tmp_path: Path) -> None:
    def disk(name: str, hostname: bytes, motd: bytes) -> Path:
        fat = make_fat(esp(tmp_path / name / "esp", b"MZ"), tmp_path / name / "esp.vfat")
        ext = make_ext(rootfs(tmp_path / name / "root", hostname), tmp_path / name / "root.ext4", size="16M")
        sq = make_squashfs(tree(tmp_path / name / "ro", {"etc/motd": motd}), tmp_path / name / "ro.squashfs")
        parts = [(fat, ESP_GUID), (ext, LINUX_GUID), (sq, LINUX_GUID)]
        return make_disk(tmp_path / f"{name}.wic", parts, label_id="5a3c1e2d-0000-4000-8000-0000000000aa")

    result = check(disk("a", b"cip-one\n", b"hi\n"), disk("b", b"cip-two\n", b"ho\n"))
    assert result.format == "disk"
    assert found(result) == [("p2:/etc/hostname", ("content",)), ("p3:/etc/motd", ("content",))]


@integration
def test_mbr_disk_table_and_the_bytes_outside_the_partitions(tmp_path: Path) -> None:
    ext = make_ext(rootfs(tmp_path / "root", b"cip\n"), tmp_path / "root.ext4")
    first = make_disk(tmp_path / "a.img", [(ext, "83")], label="dos", label_id="0x11223344")
    second = make_disk(tmp_path / "b.img", [(ext, "83")], label="dos", label_id="0x55667788")
    with second.open("r+b") as f:  # a boot loader written at 32 KiB, as on many ARM boards
        f.seek(32 * 1024)
        f.write(b"U-Boot SPL")
    result = check(first, second)
    assert result.format == "disk"
    assert found(result) == [("(partition table)", ("metadata",)), ("(outside partitions)", ("content",))]
    assert result.differences[0].detail == "disk_id 11223344 vs 55667788"
    assert "from byte 32768" in result.differences[1].detail


@integration
def test_compressed_disk_images(tmp_path: Path) -> None:
    ext = make_ext(rootfs(tmp_path / "r1", b"cip-one\n"), tmp_path / "a.ext4")
    other = make_ext(rootfs(tmp_path / "r2", b"cip-two\n"), tmp_path / "b.ext4")
    for path in (ext, other):
        subprocess.run(["zstd", "-q", "-3", str(path), "-o", f"{path}.zst"], check=True)
    result = check(Path(f"{ext}.zst"), Path(f"{other}.zst"))
    assert result.format == "ext4.zst"
    assert found(result) == [("/etc/hostname", ("content",))]
    # the same image compressed at another level: only the compressed streams differ
    subprocess.run(["zstd", "-q", "-19", str(ext), "-o", f"{ext}.19.zst"], check=True)
    result = compare_files(Path(f"{ext}.zst"), Path(f"{ext}.19.zst"), "image.ext4.zst", scratch=tmp_path)
    assert not result.identical and not result.differences
    assert "only the compressed streams differ" in result.note


# ---- tools that are missing ----------------------------------------------------------------------


@integration
def test_a_missing_tool_is_named_and_the_artifact_still_differs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = make_tar(tmp_path / "a.tar", TAR_FIRST), make_tar(tmp_path / "b.tar", TAR_SECOND)
    for path in (first, second):
        subprocess.run(["zstd", "-q", str(path), "-o", f"{path}.zst"], check=True)
    sq = [make_squashfs(rootfs(tmp_path / f"r{i}", b"%d\n" % i), tmp_path / f"{i}.squashfs") for i in (1, 2)]
    empty = tmp_path / "no-tools"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    result = compare_files(Path(f"{first}.zst"), Path(f"{second}.zst"), "rootfs.tar.zst")
    assert not result.identical and not result.differences
    assert "zstd is not installed (package zstd)" in result.note
    result = compare_files(sq[0], sq[1], "ro.squashfs")
    assert not result.identical and result.format == "squashfs"
    assert "unsquashfs is not installed (package squashfs-tools)" in result.note


# ---- bytes, sets and the summary -------------------------------------------------------------------


def test_sparse_files_compare_by_their_data(tmp_path: Path) -> None:
    first, second = tmp_path / "a.img", tmp_path / "b.img"
    for path in (first, second):
        with path.open("wb") as f:
            f.truncate(4 << 30)  # 4 GiB, nearly all hole
            f.seek(3 << 30)
            f.write(b"data")
    assert compare_files(first, second, "a.img").identical
    with second.open("r+b") as f:
        f.seek((3 << 30) + 2)
        f.write(b"X")
    result = compare_files(first, second, "a.img")
    assert not result.identical and result.format == "raw"
    assert result.note == f"the bytes differ from byte {(3 << 30) + 2}"


def test_text_files_name_the_first_line_that_differs(tmp_path: Path) -> None:
    first, second = tmp_path / "a.manifest", tmp_path / "b.manifest"
    first.write_text("base-files 12.4\nbash 5.2\n")
    second.write_text("base-files 12.4\nbash 5.3\n")
    result = compare_files(first, second, "a.manifest")
    assert result.note == "the bytes differ from byte 23; text: line 2 differs: 'bash 5.2' vs 'bash 5.3'"


def test_recorded_digests_settle_identical_without_reading(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.write_bytes(b"one")
    second.write_bytes(b"two")
    assert compare_files(first, second, "x", digests=("d" * 64, "d" * 64)).identical
    assert not compare_files(first, second, "x", digests=("d" * 64, "e" * 64)).identical


def test_sets_missing_refused_and_summary(tmp_path: Path) -> None:
    a, b = tmp_path / "one", tmp_path / "two"
    for root in (a, b):
        (root / "artifacts").mkdir(parents=True)
    make_tar(a / "artifacts" / "rootfs.tar", TAR_FIRST)
    make_tar(b / "artifacts" / "rootfs.tar", TAR_SECOND)
    for root in (a, b):
        (root / "artifacts" / "vmlinuz").write_bytes(b"kernel")
    (a / "artifacts" / "only-first").write_bytes(b"x")
    names = ["artifacts/rootfs.tar", "artifacts/vmlinuz", "artifacts/only-first", "../outside"]
    results = compare_sets(a, b, names)
    assert [r.identical for r in results] == [False, True, False, False]
    assert results[2].note == "missing from the second build"
    assert results[3].note.startswith("refused")
    lines = summary_lines(results, per_artifact=2)
    one, two = (hashlib.sha256(data).hexdigest()[:12] for data in (b"cip-one\n", b"cip-two\n"))
    assert lines == [
        "1 of 4 artifacts are identical; 3 differ:",
        "  artifacts/rootfs.tar (tar): 3 differences (content 1, mtime 1, order 1)",
        f"    etc/hostname: content (sha256 {one}… vs {two}…)",
        "    etc/timestamp: mtime (mtime 1700000000 vs 1700000100)",
        "    ... and 1 more",
        "  artifacts/only-first: missing from the second build",
        "  ../outside: refused: the name leads out of the build folder",
    ]
    assert summary_lines(results[1:2]) == ["1 of 1 artifacts are identical"]


def test_the_list_is_capped_and_the_rest_counted(tmp_path: Path) -> None:
    members = [(f"f{i:04d}", b"%d" % i, T) for i in range(MAX_DIFFERENCES + 50)]
    first = make_tar(tmp_path / "a.tar", members)
    second = make_tar(tmp_path / "b.tar", [(n, d, T + 1) for n, d, _ in members])
    result = check(first, second)
    assert len(result.differences) == MAX_DIFFERENCES and result.omitted == 50
    assert result.kind_counts == {"mtime": MAX_DIFFERENCES + 50}


def test_a_damaged_archive_is_reported_not_raised(tmp_path: Path) -> None:
    first, second = tmp_path / "a.cpio", tmp_path / "b.cpio"
    first.write_bytes(newc(INITRD))
    second.write_bytes(newc(INITRD)[:300] + b"garbage" * 10)
    result = compare_files(first, second, "initrd")
    assert not result.identical and result.note.startswith("could not unpack: ")
