"""Disk a job takes: what its folder holds, removing bitbake's temporary folder after a good build,
and what the selected jobs are expected to need before they start.

A build wrote the folder, so it is walked as hostile: by file descriptor, never through a symlink,
never onto another filesystem (a mount a native build left behind is not ours to empty).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
EUID = os.geteuid()
TRASH = ".cipbuild-trash"  # in --out: trees being removed in the background
LOCK = ".lock"  # in the trash: held by the one remover at work
GIB = 1 << 30

# What one job takes when nothing of it was built before, by build system: its folder at the peak
# (build/tmp and the artifacts, while bitbake runs), its folder once build/tmp is removed, and the
# shared cache it fills (downloads, sstate). isar: measured on the real isar-image-base for
# qemuamd64/bookworm (3.6 GB at the peak, 1.2 GB of artifacts, 1.2 GB of cache), rounded up;
# openembedded: the Yocto Project's stated need for a build.
EXPECTED: dict[str, tuple[int, int, int]] = {
    "isar": (4 * GIB, 3 * GIB // 2, 2 * GIB),
    "openembedded": (50 * GIB, 5 * GIB, 40 * GIB),
}
UNKNOWN_SYSTEM = (10 * GIB, 2 * GIB, 10 * GIB)


@dataclass
class Tally:
    """Bytes on disk (allocated blocks, each hard-linked file once) and what could not be done."""

    bytes: int = 0
    files: int = 0
    seen: set[tuple[int, int]] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)
    foreign: int = 0  # folders this process may not empty (another owner's, this process not root)

    def count(self, st: os.stat_result) -> None:
        self.files += 1
        key = (st.st_dev, st.st_ino)
        if key in self.seen:  # asked even at one link left: removing the first link lowered it
            return
        if st.st_nlink > 1:
            self.seen.add(key)
        self.bytes += st.st_blocks * 512


def usage(path: Path) -> int:
    """Bytes ``path`` takes on disk (0 when it is not there)."""
    tally = Tally()
    _walk(path, tally, remove=False)
    return tally.bytes


def remove_tree(path: Path) -> Tally:
    """Remove ``path`` and everything below it that can be removed, counting what was freed;
    ``problems`` says what was left (another owner's files, a mount point)."""
    tally = Tally()
    _walk(path, tally, remove=True)
    return tally


def _walk(path: Path, tally: Tally, *, remove: bool) -> None:
    try:
        parent_fd = os.open(path.parent, OPEN_DIR)
    except OSError:
        return
    try:
        top = os.stat(path.name, dir_fd=parent_fd, follow_symlinks=False)
        _visit(parent_fd, path.name, top.st_dev, tally, remove, str(path))
    except FileNotFoundError:
        pass
    finally:
        os.close(parent_fd)


def _visit(parent_fd: int, name: str, dev: int, tally: Tally, remove: bool, shown: str) -> None:
    # An explicit stack, not recursion: a build may nest folders deeper than Python's stack.
    stack: list[tuple[int, str, str, list[str] | None]] = [(parent_fd, name, shown, None)]
    opened: list[int] = []
    while stack:
        at_fd, entry, where, pending = stack[-1]
        if pending is None:
            try:
                st = os.stat(entry, dir_fd=at_fd, follow_symlinks=False)
            except FileNotFoundError:
                stack.pop()
                continue
            if not stat.S_ISDIR(st.st_mode):
                stack.pop()
                tally.count(st)
                if remove:
                    _unlink(at_fd, entry, where, tally)
                continue
            if st.st_dev != dev:
                stack.pop()
                tally.problems.append(f"{where} is another filesystem (a mount point): left alone")
                continue
            try:
                fd = os.open(entry, OPEN_DIR, dir_fd=at_fd)
                names = [e.name for e in os.scandir(fd)]
            except OSError as exc:
                stack.pop()
                tally.problems.append(f"{where}: {exc.strerror}")
                continue
            tally.bytes += st.st_blocks * 512
            if EUID not in (st.st_uid, 0):
                tally.foreign += 1
            elif remove and st.st_mode & 0o300 != 0o300:  # ours, read-only (Go's module cache is)
                with contextlib.suppress(OSError):
                    os.fchmod(fd, stat.S_IMODE(st.st_mode) | 0o700)
            opened.append(fd)
            stack[-1] = (at_fd, entry, where, names)
            continue
        if pending:
            child = pending.pop()
            stack.append((opened[-1], child, f"{where}/{child}", None))
            continue
        stack.pop()
        os.close(opened.pop())
        if remove:
            try:
                os.rmdir(entry, dir_fd=at_fd)
            except OSError as exc:
                if not tally.problems:  # its content already said why
                    tally.problems.append(f"{where}: {exc.strerror}")


def _unlink(at_fd: int, entry: str, where: str, tally: Tally) -> None:
    try:
        os.unlink(entry, dir_fd=at_fd)
    except FileNotFoundError:
        pass
    except OSError as exc:
        tally.problems.append(f"{where}: {exc.strerror}")


def remove_later(path: Path, out_dir: Path) -> Tally | None:
    """Take ``path`` out of its job folder now and free its disk in the background: its usage is
    counted, it is renamed into ``out_dir/.cipbuild-trash/`` (one filesystem: no data moves), and
    a process of its own session removes the trash, so neither the next job nor the caller waits
    for it. None, with nothing moved, when this process could not remove all of it (another
    owner's folders, a mount point) or it cannot be renamed there: remove it the slow way."""
    try:  # the build wrote the folders on the way: a symlink among them is not followed
        parent_fd = os.open(path.parent, OPEN_DIR)
    except OSError:
        return None
    try:
        tally = Tally()
        top = os.stat(path.name, dir_fd=parent_fd, follow_symlinks=False)
        if not stat.S_ISDIR(top.st_mode):
            return None
        _visit(parent_fd, path.name, top.st_dev, tally, False, str(path))
        if tally.foreign or tally.problems:
            return None
        with contextlib.suppress(FileExistsError):
            os.mkdir(out_dir / TRASH, 0o700)
        trash_fd = os.open(out_dir / TRASH, OPEN_DIR)
        try:
            name = f"{path.parent.parent.name}.{uuid.uuid4().hex[:12]}"
            os.rename(path.name, name, src_dir_fd=parent_fd, dst_dir_fd=trash_fd)
        finally:
            os.close(trash_fd)
    except OSError:
        return None
    finally:
        os.close(parent_fd)
    empty_trash_later(out_dir)
    return tally


def empty_trash_later(out_dir: Path) -> None:
    """Start the process that empties ``out_dir``'s trash, when there is something in it."""
    trash = out_dir / TRASH
    try:
        if not any(e.name != LOCK for e in os.scandir(trash)):
            return
    except OSError:
        return
    here = str(Path(__file__).resolve().parent.parent)  # this orchestrator package, installed or not
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)
    subprocess.Popen(
        [sys.executable, "-m", "orchestrator.diskuse", str(trash.resolve())],
        cwd="/",
        env={**os.environ, "PYTHONPATH": path},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # not in the caller's process group: a Ctrl-C after the run spares it
        close_fds=True,
    )


def empty_trash(trash: Path) -> None:
    """Remove everything in ``trash`` but its lock; one process at a time (another one running
    sees what is added while it runs)."""
    fd = os.open(trash / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # the one that holds it looks again before it goes
            entries = [e.name for e in os.scandir(trash) if e.name != LOCK]
            for name in entries:
                remove_tree(trash / name)
            fcntl.flock(fd, fcntl.LOCK_UN)
            if not any(e.name != LOCK and e.name not in entries for e in os.scandir(trash)):
                return
    finally:
        os.close(fd)


@dataclass(frozen=True)
class TrashState:
    """Build folders waiting in ``--out``'s trash, and whether a remover is at work on them."""

    trees: int
    bytes: int
    removing: bool


def trash_state(out_dir: Path) -> TrashState | None:
    """What ``out_dir``'s trash holds; None when it holds nothing."""
    trash = out_dir / TRASH
    try:
        names = [e.name for e in os.scandir(trash) if e.name != LOCK]
    except OSError:
        return None
    if not names:
        return None
    return TrashState(len(names), sum(usage(trash / name) for name in names), _flock_held(trash / LOCK))


def _flock_held(path: Path) -> bool:
    """Whether some process holds a flock on ``path``. Read from /proc/locks: trying the lock
    would make a remover starting at that moment think another one is at work, and go."""
    try:
        st = os.stat(path, follow_symlinks=False)
        locks = Path("/proc/locks").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    # by inode only: on btrfs and overlayfs st_dev is not the device /proc/locks prints
    inode = str(st.st_ino)
    for line in locks.splitlines():
        fields = line.split()
        if fields[1:2] == ["FLOCK"] and len(fields) > 5 and fields[5].rsplit(":", 1)[-1] == inode:
            return True
    return False


@dataclass(frozen=True)
class Need:
    """What the selected jobs are expected to take: under --out and under --cache."""

    out: int
    cache: int
    measured: int  # how many jobs' figures come from their own last build


def expected_need(
    jobs: Iterable[tuple[str, str]], out_dir: Path, cache_dir: Path, *, parallel: int = 1, keep_build: bool = False
) -> Need:
    """``jobs`` as (job id, build system). A job built here before counts what its metadata.json
    recorded (its folder is there already; only build/tmp comes back), others count EXPECTED.
    Without --keep-build a job's build/tmp is gone when it ends, so only ``parallel`` of them are
    on disk at once; the cache is filled once per build system."""
    kept: list[int] = []
    extra: list[int] = []  # what a running job takes beyond what it keeps
    cache_by_system: dict[str, int] = {}
    measured = 0
    for job_id, system in jobs:
        peak, after, cache = EXPECTED.get(system, UNKNOWN_SYSTEM)
        recorded = recorded_disk(out_dir / job_id)
        if recorded is not None:  # built here before: its folder is on disk already, build/tmp comes back
            measured += 1
            peak, after = recorded.get("build_tmp_bytes", 0), 0
            cache = 0 if _has_content(cache_dir) else cache
        kept.append(peak if keep_build else after)
        extra.append(0 if keep_build else peak - after)
        cache_by_system[system] = max(cache_by_system.get(system, 0), cache)
    busiest = sorted(extra, reverse=True)[: max(1, parallel)]
    return Need(sum(kept) + sum(busiest), sum(cache_by_system.values()), measured)


def recorded_disk(job_dir: Path) -> dict[str, int] | None:
    import json

    try:
        meta: Any = json.loads((job_dir / "metadata.json").read_text(encoding="utf-8"))
        disk = meta.get("disk") if isinstance(meta, dict) else None
    except (OSError, ValueError):
        return None
    if not isinstance(disk, dict):
        return None
    return {k: v for k, v in disk.items() if isinstance(v, int)}


def _has_content(folder: Path) -> bool:
    try:
        return any(folder.iterdir())
    except OSError:
        return False


def free_bytes(folder: Path) -> tuple[int, Path]:
    """Free bytes of the filesystem ``folder`` is (or will be) on, and the folder measured."""
    probe = folder if folder.exists() else next((p for p in folder.parents if p.exists()), Path("/"))
    return shutil.disk_usage(probe).free, probe


if __name__ == "__main__":  # the background remover that empty_trash_later starts
    empty_trash(Path(sys.argv[1]))
