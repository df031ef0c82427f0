"""What a build deployed -> Artifact records (type, size, sha256), by the board's artifact rules.

The deploy folder is written by the build, so it is untrusted: every file is reached from the
deploy folder's descriptor one component at a time without following a symlink, must be a
regular file, and is copied (never hard-linked: the build folder may change later) into a fresh
``artifacts/`` folder opened by descriptor, with O_EXCL.

A copy is as cheap as the hardware allows: only the source's data extents are copied
(SEEK_DATA/SEEK_HOLE), by the kernel (copy_file_range, which reflinks where the filesystem can),
and the destination is truncated to the source's size, so holes stay holes and a sparse image
takes no more disk than it did in the deploy folder. The sha256 is of the copy itself, read back
from the page cache while the kernel copies the next extents; holes are hashed as zeros without
reading them. Several files are collected at once (hashlib releases the GIL), largest first.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .catalog import Catalog
from .kasfile import job_facts
from .matrix import Expander, Job
from .models import ArtifactRule

COPY_CHUNK = 8 << 20  # bytes the kernel copies per call; the hash trails one chunk behind
READ_CHUNK = 1 << 20  # bytes read back per hash update
ZEROS = bytes(READ_CHUNK)  # what a hole hashes as, never written to
WORKERS = 4  # files collected at once, at most (and at most one per CPU)
OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
OPEN_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # a fifo must not block
# copy_file_range cannot do this pair of files (old kernel, another filesystem, a quirk): read/write
NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.ETXTBSY, errno.EPERM}


@dataclass(frozen=True)
class Artifact:
    type: str
    path: str  # relative to the job folder
    size: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Copy:
    """One file to collect: ``source`` relative to the deploy folder, ``target`` in artifacts/."""

    type: str
    name: str
    source: str
    target: str


def rules_for(catalog: Catalog, job: Job) -> list[ArtifactRule]:
    """The artifact rules that apply to ``job``: distro-wide, then the board's, filtered by options."""
    have = set(Expander(catalog).closure_names(job))
    rules = [*catalog.distros[job.distro].artifacts, *catalog.boards[job.board].distros[job.distro].artifacts]
    return [r for r in rules if set(r.when) <= have and not set(r.unless) & have]


def deploy_dir_of(job_dir: Path, machine: str) -> Path:
    return job_dir / "build" / "tmp" / "deploy" / "images" / machine


def collect(catalog: Catalog, job: Job, job_dir: Path, *, link: bool = False) -> tuple[list[Artifact], list[str]]:
    """Copy what the rules name from the job's deploy folder into ``job_dir/artifacts`` (with
    ``link``, when the deploy folder goes next: hard-link what only the deploy folder names).

    Returns the artifacts and the problems (missing required files, refused files), in rule
    order whatever order the copies finished in. A name that leads outside the deploy folder (a
    symlinked file or folder on the way) is refused; a symlink to another file of the deploy
    folder (Yocto's stable names) is followed.
    """
    facts = job_facts(catalog, job)
    trusted = Path(os.path.realpath(job_dir))
    deploy = deploy_dir_of(trusted, facts.machine)
    problems: list[str] = []
    out_fd = fresh_dir(trusted, "artifacts")
    try:
        if os.path.lexists(deploy) and not _plain_dir(trusted, deploy):
            problems.append("the deploy folder is a symlink: refused")
        steps = _plan(catalog, job, deploy, _plain_dir(trusted, deploy))
        copies = [s for s in steps if isinstance(s, _Copy)]
        done: dict[str, tuple[int, str] | OSError] = {}
        if copies:
            try:
                deploy_fd = _open_below(trusted, deploy.relative_to(trusted))
            except OSError as exc:  # swapped for a symlink since it was looked at
                done = dict.fromkeys((c.target for c in copies), exc)
            else:
                try:
                    done = _copy_all(deploy_fd, out_fd, copies, link)
                finally:
                    os.close(deploy_fd)
    finally:
        os.close(out_fd)
    found: list[Artifact] = []
    for step in steps:
        if isinstance(step, str):
            problems.append(step)
            continue
        outcome = done[step.target]
        if isinstance(outcome, OSError):
            problems.append(f"{step.name}: {outcome.strerror}: refused")
        else:
            size, digest = outcome
            found.append(Artifact(step.type, f"artifacts/{step.target}", size, digest))
    return found, problems


def _plan(catalog: Catalog, job: Job, deploy: Path, usable: bool) -> list[_Copy | str]:
    """What to copy, and the problems found on the way, in rule order."""
    facts = job_facts(catalog, job)
    steps: list[_Copy | str] = []
    seen: set[str] = set()
    targets: set[str] = set()
    for rule in rules_for(catalog, job):
        pattern = rule.glob.format(image=facts.image, rootfs=facts.rootfs, machine=facts.machine)
        if pattern.startswith("/") or ".." in Path(pattern).parts:
            steps.append(f"artifact rule '{rule.glob}' leaves the deploy folder: refused")
            continue
        names = []
        for match in sorted(deploy.glob(pattern)) if usable else []:
            if match.is_dir() and not match.is_symlink():
                continue  # a folder is never an artifact
            names.append(str(match.relative_to(deploy)))
        if not names and rule.required:
            steps.append(f"missing {rule.type} artifact {pattern}")
        for name in names:
            if name in seen:
                continue
            seen.add(name)
            source = _inside(deploy, name)
            if source is None:
                steps.append(f"{name} leads outside the deploy folder (symlink): refused")
                continue
            target = name.replace("/", "_")
            if target in targets:  # a/b and a_b: the first one named keeps the name
                steps.append(f"{name}: {os.strerror(errno.EEXIST)}: refused")
                continue
            targets.add(target)
            steps.append(_Copy(rule.type, name, source, target))
    return steps


def _copy_all(deploy_fd: int, out_fd: int, copies: list[_Copy], link: bool) -> dict[str, tuple[int, str] | OSError]:
    """Copy and hash every file, several at once, largest first; by target name."""

    def one(item: _Copy) -> tuple[int, str] | OSError:
        try:
            return copy_hashing(deploy_fd, item.source, out_fd, item.target, link=link)
        except OSError as exc:
            return exc

    workers = min(len(copies), WORKERS, os.cpu_count() or 1)
    if workers <= 1:
        return {c.target: one(c) for c in copies}
    largest_first = sorted(copies, key=lambda c: -_size_of(deploy_fd, c.source))
    with ThreadPoolExecutor(workers, thread_name_prefix="collect") as pool:
        futures = {c.target: pool.submit(one, c) for c in largest_first}
        return {target: future.result() for target, future in futures.items()}


def _size_of(deploy_fd: int, source: str) -> int:
    try:
        return os.stat(source, dir_fd=deploy_fd, follow_symlinks=False).st_size
    except OSError:
        return 0


def _plain_dir(base: Path, folder: Path) -> bool:
    """``folder`` exists below ``base`` with no symlink on the way."""
    return os.path.realpath(folder) == str(folder) and folder.is_dir() and folder.is_relative_to(base)


def _inside(deploy: Path, name: str) -> str | None:
    """deploy/name's real path relative to the deploy folder, when it is a regular file in it."""
    real = os.path.realpath(deploy / name)
    if not real.startswith(str(deploy) + os.sep):
        return None
    return os.path.relpath(real, deploy) if os.path.isfile(real) else None


def _open_below(base: Path, rel: Path) -> int:
    """The folder ``base/rel`` as an fd, reached one component at a time, no symlink followed."""
    fd = os.open(base, OPEN_DIR)
    try:
        for part in rel.parts:
            nxt = os.open(part, OPEN_DIR, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_source(deploy_fd: int, source: str) -> int:
    """deploy/source for reading: every folder on the way and the file itself without a symlink."""
    *folders, leaf = source.split("/")
    fd = os.dup(deploy_fd)
    try:
        for part in folders:
            nxt = os.open(part, OPEN_DIR, dir_fd=fd)
            os.close(fd)
            fd = nxt
        return os.open(leaf, OPEN_FILE, dir_fd=fd)
    finally:
        os.close(fd)


def fresh_dir(parent: Path, name: str) -> int:
    """An empty ``parent/name`` made by us (whatever a build left there is removed), as an fd."""
    parent_fd = os.open(parent, OPEN_DIR)
    try:
        try:
            st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(parent / name)
            else:
                os.unlink(name, dir_fd=parent_fd)
        except FileNotFoundError:
            pass
        os.mkdir(name, 0o755, dir_fd=parent_fd)
        return os.open(name, OPEN_DIR, dir_fd=parent_fd)
    finally:
        os.close(parent_fd)


def copy_hashing(dir_fd: int, source: str, out_fd: int, name: str, *, link: bool = False) -> tuple[int, str]:
    """Copy ``source`` (below ``dir_fd``, no symlink followed) to a new ``name`` in ``out_fd``,
    sparsely; the copy's size and sha256. On failure nothing is left under ``name``.

    With ``link``, a file of the deploy folder itself that no other name shares becomes ``name``
    by a hard link, and is only read: the caller removes the deploy folder's name right after."""
    src = _open_source(dir_fd, source)
    try:
        st = os.fstat(src)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        if link and "/" not in source and st.st_nlink == 1 and _linked(dir_fd, source, out_fd, name, st):
            return st.st_size, _hash_file(src, st.st_size)
        dst = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=out_fd)
        try:
            digest = _copy_sparse(src, dst, st.st_size)
        except BaseException:
            os.close(dst)
            os.unlink(name, dir_fd=out_fd)
            raise
        os.close(dst)
    finally:
        os.close(src)
    return st.st_size, digest


def _linked(dir_fd: int, source: str, out_fd: int, name: str, st: os.stat_result) -> bool:
    """Whether ``name`` in ``out_fd`` is now a hard link to the file ``st`` describes, owned by
    the caller as a copy would be; where the kernel refuses the link (another filesystem,
    protected_hardlinks), or the name leads to another file since it was opened, nothing is left
    under ``name``."""
    try:
        os.link(source, name, src_dir_fd=dir_fd, dst_dir_fd=out_fd, follow_symlinks=False)
    except OSError:
        return False
    try:
        fd = os.open(name, OPEN_FILE, dir_fd=out_fd)
        try:
            made = os.fstat(fd)
            if (made.st_dev, made.st_ino) != (st.st_dev, st.st_ino) or not stat.S_ISREG(made.st_mode):
                raise OSError(errno.ESTALE, "not the file that was opened")
            if (made.st_uid, made.st_gid) != (os.getuid(), os.getgid()):  # whoever the build ran as
                os.fchown(fd, os.getuid(), os.getgid())
            os.fchmod(fd, 0o644)
        finally:
            os.close(fd)
    except OSError:
        os.unlink(name, dir_fd=out_fd)
        return False
    return True


def _hash_file(fd: int, size: int) -> str:
    """The sha256 of ``size`` bytes of ``fd``, its holes hashed without reading them."""
    digest = hashlib.sha256()
    view = memoryview(bytearray(READ_CHUNK))
    for off, length, data in _pieces(fd, size):
        if data:
            _hash_range(digest, fd, view, off, off + length)
        else:
            _hash_zeros(digest, length)
    return digest.hexdigest()


def _copy_sparse(src: int, dst: int, size: int) -> str:
    """Copy ``size`` bytes' data extents from ``src`` to the empty ``dst`` and hash ``dst``.

    The kernel copies extent after extent on a helper thread while this one hashes what is
    already copied (read back from ``dst``: the record is of the bytes we keep) and the holes."""
    digest = hashlib.sha256()
    pieces = list(_pieces(src, size))
    view = memoryview(bytearray(READ_CHUNK))
    with ThreadPoolExecutor(1, thread_name_prefix="copy") as copier:
        copy = _Copier(src, dst).copy
        copied: list[Future[None] | None] = [
            copier.submit(copy, off, length) if data else None for off, length, data in pieces
        ]
        try:
            for (off, length, _), done in zip(pieces, copied, strict=True):
                if done is None:
                    _hash_zeros(digest, length)
                    continue
                done.result()
                _hash_range(digest, dst, view, off, off + length)
        finally:
            for future in copied:
                if future is not None:
                    future.cancel()
    os.ftruncate(dst, size)  # a trailing hole, and never more than the size we record
    return digest.hexdigest()


def _pieces(fd: int, size: int) -> Iterator[tuple[int, int, bool]]:
    """(offset, length, is_data) covering [0, size): holes whole, data in COPY_CHUNK pieces."""
    off = 0
    while off < size:
        try:
            data = min(os.lseek(fd, off, os.SEEK_DATA), size)
            hole = min(os.lseek(fd, data, os.SEEK_HOLE), size) if data < size else size
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                data = hole = size  # nothing but a hole from here on
            elif exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                data, hole = off, size  # a filesystem that cannot tell: all data
            else:
                raise
        if hole <= data < size:  # a hole punched between the two looks: copy what is there
            hole = min(data + COPY_CHUNK, size)
        if data > off:
            yield off, data - off, False
        while data < hole:
            step = min(COPY_CHUNK, hole - data)
            yield data, step, True
            data += step
        off = hole


class _Copier:
    """Copies ranges of ``src`` to the same place in ``dst``: by the kernel while it can (a copy
    in the page cache, or a reflink), else by read and write for the rest of the file."""

    def __init__(self, src: int, dst: int) -> None:
        self.src, self.dst = src, dst
        self.kernel = True

    def copy(self, off: int, length: int) -> None:
        end = off + length
        while off < end and self.kernel:
            try:
                done = os.copy_file_range(self.src, self.dst, end - off, off, off)
            except OSError as exc:
                if exc.errno not in NO_KERNEL_COPY:
                    raise
                done = 0
            if done == 0:  # refused, or a filesystem whose copy_file_range copies nothing
                self.kernel = False
            off += done
        if off < end:
            self._read_write(off, end)

    def _read_write(self, off: int, end: int) -> None:
        view = memoryview(bytearray(min(READ_CHUNK, end - off)))
        while off < end:
            got = os.preadv(self.src, [view[: min(end - off, len(view))]], off)
            if got == 0:
                raise OSError(errno.EIO, "the file shrank while it was copied")
            part = view[:got]
            while part:
                wrote = os.pwrite(self.dst, part, off)
                part = part[wrote:]
                off += wrote


def _hash_range(digest: hashlib._Hash, fd: int, view: memoryview, off: int, end: int) -> None:
    """Hash [off, end) of ``fd``, read through ``view``."""
    while off < end:
        got = os.preadv(fd, [view[: min(end - off, len(view))]], off)
        if got == 0:
            raise OSError(errno.EIO, "the copy is shorter than its source")
        digest.update(view[:got])
        off += got


def _hash_zeros(digest: hashlib._Hash, length: int) -> None:
    """Hash ``length`` zero bytes (a hole) without reading them."""
    while length >= len(ZEROS):
        digest.update(ZEROS)
        length -= len(ZEROS)
    if length:
        digest.update(ZEROS[:length])
