"""Share bitbake's download and sstate caches between CI runners through a store.

Keys. Everything lives under ``_cache/`` in the store, beside the releases; ``_cache`` can never be
a release ref (a ref starts with a letter or a digit), so a publish never writes into it.

- ``_cache/sstate/<path>``: a file of SSTATE_DIR under its own name. The name carries bitbake's
  task hash, so one name is one task's output: the first copy stored stays (a push never sends a
  name the store has). The object's sha256 rides in its metadata and is checked on pull. Being
  under their own names, the objects also serve bitbake directly as an HTTP SSTATE_MIRRORS
  (``sstate_mirrors``).
- ``_cache/downloads/<path>/<sha256>``: a file of DL_DIR, content-addressed. Download names carry
  no hash and two runners can hold different bytes under one (a re-rolled upstream tarball, a git
  mirror fetched on another day). Each content is an object of its own, so pushes never overwrite
  one another and an object never mixes two contents. A name the store holds in any content is not
  pushed again. A pull installs the name's oldest content (ties: the lowest sha256), the same on
  every runner, and never replaces a file the cache has: a runner's own copy wins.
- ``_cache/downloads/<path>/.cipbuild-dir``: an empty folder of DL_DIR (a bare git clone needs
  its empty ``refs/``).

Only new objects move: a push lists the store once and sends the files whose names it lacks; a
pull walks the cache once and fetches the names the cache lacks; neither asks about each file.

Safety. A push reads the cache through folder descriptors and never follows a symlink (symlinks
are not pushed); it skips bitbake's and git's lock and temporary files, and a file that changes
while it is read is skipped (what was read must match what was hashed, or nothing is stored).
Objects appear whole or not at all (an S3 PUT or completed multipart upload; a folder store
renames a checked file into place). A pull checks every key from the store, writes each file to
a temporary name in its folder (never through a symlink), checks its sha256, syncs it and links
it into place only if the name is still free; a file that fails is refused and the pull exits 5
after installing the rest.

A ``.done`` stamp tells bitbake a download is complete (and records its checksums, which bitbake
then trusts), so it moves after its download and only with it: a push sends it when the store
holds the very content it vouches for, a pull installs it only beside the download it installed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import re
import secrets
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol
from urllib.parse import urlsplit

from .cancel import CancelToken
from .errors import InfrastructureError, InterruptError, UserError, VerificationError
from .store import LocalStore, S3Store, Store, check_key
from .store.s3 import META

Direction = Literal["push", "pull"]
Area = Literal["downloads", "sstate"]

CACHE = "_cache"  # the store's sub-prefix; never a valid release ref
AREAS: tuple[Area, ...] = ("downloads", "sstate")  # the cache's folders that are shared (repo-ref/ is not)
FOLDER_MARK = ".cipbuild-dir"
PULL_TEMP = ".cipbuild-pull-"
DONE = ".done"
WORKERS = 8
ATTEMPTS = 4  # per object, on top of botocore's retries of each request
CHUNK = 1 << 20
# a folder store writes ".<name>.cipbuild-partial-XXXXXXXX" first, within the 255 bytes of a name
LOCAL_NAME_MAX = 255 - len(".cipbuild-partial-") - 9
STALE_TEMP = 86400  # a pull's temporary file older than this was left by a killed pull
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Files being written: bitbake's and git's locks and temporary names, sstate's `mktemp
# <pkg>.XXXXXXXX`, siggen's `sigtask.XXXXXXXX`, Python's tempfile names, wget's `.tmp`.
_TEMPORARY = re.compile(
    r".*\.lock|.*\.tmp|.*\.(?:tar\.\w+|tgz|siginfo|sig)\.[A-Za-z0-9]{8}|sigtask\.\w{8}|tmp[a-z0-9_]{8}"
    r"|tmp_(?:pack|idx|obj|rev|mtimes)_.*|\.cipbuild-.*|.*\.cipbuild-partial-.*"
)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PROC_FD = Path("/proc/self/fd")


def temporary(name: str) -> bool:
    """Whether a file or folder ``name`` (one path component) is a lock or work in progress."""
    return _TEMPORARY.fullmatch(name) is not None


def sstate_mirrors(base_url: str) -> str:
    """The SSTATE_MIRRORS value that lets bitbake fetch the sstate objects `cache push` sent to the
    store whose HTTP(S) address is ``base_url`` (the store's prefix, e.g.
    https://s3.example.org/bucket/cip-core); the objects must be readable without credentials."""
    parts = urlsplit(base_url)
    if (
        parts.scheme not in ("http", "https")
        or not parts.netloc
        or parts.query
        or parts.fragment
        or any(c.isspace() or c in ';"\\' or not c.isprintable() for c in base_url)
    ):
        raise UserError(
            f"{base_url!r} is not an http(s) URL bitbake can use as a mirror",
            hint="the store's prefix over HTTP, e.g. https://s3.example.org/bucket/cip-core",
        )
    return f"file://.* {base_url.rstrip('/')}/{CACHE}/sstate/PATH;downloadfilename=PATH"


# --- records ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One object to move: a file (or an empty folder's mark) and its key in the store."""

    area: Area
    name: str  # relative to the area's folder
    key: str  # relative to the store
    size: int
    sha256: str | None  # None: a pushed file not hashed yet, or an sstate object listed without it
    folder: bool = False
    modified: datetime | None = None
    identity: tuple[int, int, int] = (0, 0, 0)  # a local file's inode, size and mtime when scanned

    @property
    def stamp(self) -> bool:
        return self.area == "downloads" and self.name.endswith(DONE) and not self.folder


@dataclass
class Tally:
    direction: Direction
    store: str
    cache: str
    listed: int = 0  # objects in the store's listing of the cache
    local: int = 0  # files in the cache's folders
    moved_objects: int = 0
    moved_bytes: int = 0
    present_objects: int = 0
    present_bytes: int = 0
    folders: int = 0  # empty folders marked (push) or made (pull)
    skipped: Counter[str] = field(default_factory=Counter)
    refused: list[tuple[str, str]] = field(default_factory=list)
    retried: int = 0
    requests: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, name: str, *, skipped: bool = False, amount: int = 1) -> None:
        if amount:
            with self.lock:
                (self.skipped if skipped else self.requests)[name] += amount

    def to_json(self) -> dict[str, Any]:
        verb = "sent" if self.direction == "push" else "received"
        return {
            "direction": self.direction,
            "store": self.store,
            "cache": self.cache,
            "listed": self.listed,
            "local": self.local,
            f"{verb}_objects": self.moved_objects,
            f"{verb}_bytes": self.moved_bytes,
            "present_objects": self.present_objects,
            "present_bytes": self.present_bytes,
            "folders": self.folders,
            "skipped": dict(sorted(self.skipped.items())),
            "refused": [{"key": key, "reason": reason} for key, reason in self.refused],
            "retried": self.retried,
            "requests": dict(sorted(self.requests.items())),
            "seconds": self.seconds,
        }


class Watcher(Protocol):
    """What a sync reports as it goes; the CLI draws it."""

    def start(self, direction: Direction, objects: int, size: int) -> None: ...

    def begin(self, entry: Entry) -> None: ...

    def advance(self, entry: Entry, count: int) -> None: ...

    def done(self, entry: Entry) -> None: ...


class Silent:
    def start(self, direction: Direction, objects: int, size: int) -> None:
        pass

    def begin(self, entry: Entry) -> None:
        pass

    def advance(self, entry: Entry, count: int) -> None:
        pass

    def done(self, entry: Entry) -> None:
        pass


# --- the store's side ---------------------------------------------------------------------------


@dataclass
class Remote:
    files: dict[Area, dict[str, list[Entry]]]  # name -> its contents (downloads may have several)
    folders: dict[Area, dict[str, Entry]]  # empty-folder marks
    refused: list[tuple[str, str]]

    def under(self, area: Area) -> set[str]:
        """Every folder that holds something in the store."""
        found: set[str] = set()
        for name in [*self.files[area], *self.folders[area]]:
            folder = name
            while "/" in folder:
                folder = folder.rsplit("/", 1)[0]
                if folder in found:
                    break
                found.add(folder)
        return found


def listing(store: Store, tally: Tally, token: CancelToken | None = None) -> Remote:
    """The cache's objects in ``store``, from one listing; keys that are not ours are counted
    (``foreign``) and ignored, keys that would leave the cache are refused."""
    remote = Remote({a: {} for a in AREAS}, {a: {} for a in AREAS}, [])
    tally.count("list")
    for info in store.objects(CACHE):
        tally.listed += 1
        if token is not None and tally.listed % 1000 == 0:
            token.check()
        parsed = parse_key(info.key, info.size, info.sha256, info.modified)
        if isinstance(parsed, Entry):
            if parsed.folder:
                remote.folders[parsed.area][parsed.name] = parsed
            else:
                remote.files[parsed.area].setdefault(parsed.name, []).append(parsed)
        elif parsed == "foreign":
            tally.count("foreign", skipped=True)
        elif parsed:
            remote.refused.append((info.key, parsed))
    return remote


def parse_key(key: str, size: int, sha256: str | None, modified: datetime | None) -> Entry | str:
    """The entry ``key`` holds; else why not: "foreign" (not a cache key cipbuild writes), "" (an
    S3 folder placeholder), or why it is refused."""
    if key.endswith("/") and size == 0:
        return ""
    try:
        check_key(key)
    except UserError:
        return "not a plain relative key: it could lead out of the cache"
    top, _, rest = key.partition("/")
    area, _, rel = rest.partition("/")
    if top != CACHE or area not in AREAS or not rel:
        return "foreign"
    parts = rel.split("/")
    folder = False
    if area == "sstate":
        name = rel
    elif len(parts) > 1 and _SHA256.fullmatch(parts[-1]):
        name, sha256 = "/".join(parts[:-1]), parts[-1]
    elif len(parts) > 1 and parts[-1] == FOLDER_MARK:
        name, folder = "/".join(parts[:-1]), True
    else:
        return "foreign"
    if any(temporary(part) for part in name.split("/")) or any(len(p.encode()) > 255 for p in name.split("/")):
        return "foreign"
    return Entry(area, name, key, size, sha256, folder, modified)


def key_of(area: Area, name: str, sha256: str | None, *, folder: bool = False) -> str:
    if folder:
        return f"{CACHE}/{area}/{name}/{FOLDER_MARK}"
    if area == "downloads":
        assert sha256 is not None
        return f"{CACHE}/{area}/{name}/{sha256}"
    return f"{CACHE}/{area}/{name}"


# --- the cache's side ---------------------------------------------------------------------------


@dataclass
class LocalTree:
    files: dict[str, Entry] = field(default_factory=dict)
    empty: list[str] = field(default_factory=list)  # empty folders
    folders: set[str] = field(default_factory=set)  # real folders (not symlinks)
    names: set[str] = field(default_factory=set)  # everything there: files, folders, symlinks
    stale: list[str] = field(default_factory=list)  # temporary files a killed pull left


def open_area(cache: Path, area: Area, *, create: bool) -> int | None:
    """A descriptor of the cache's ``area`` folder (None when it is missing and not ``create``);
    UserError when it is a symlink or not a folder."""
    where = cache / area
    try:
        if create:
            cache.mkdir(parents=True, exist_ok=True)
        root = os.open(cache, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UserError(f"cannot open the cache folder: {exc.strerror or exc}", where=str(cache)) from None
    try:
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(area, dir_fd=root)
        return os.open(area, _DIR_FLAGS, dir_fd=root)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UserError(
                "is a symlink or a file, not a folder: refused (cipbuild never reads or writes the cache through one)",
                where=str(where),
            ) from None
        raise UserError(f"cannot open: {exc.strerror or exc}", where=str(where)) from None
    finally:
        os.close(root)


def scan(area_fd: int | None, area: Area, tally: Tally, token: CancelToken | None = None) -> LocalTree:
    """Every file and empty folder under the area, read through descriptors (no symlink followed);
    locks and files in progress are counted in ``skipped`` and left out."""
    tree = LocalTree()
    if area_fd is None:
        return tree
    now = time.time()
    stack: list[tuple[str, int]] = [("", os.dup(area_fd))]
    while stack:
        prefix, fd = stack.pop()
        try:
            if token is not None:
                token.check()
            with os.scandir(fd) as found:
                entries = list(found)
            for item in entries:
                name = prefix + item.name
                tree.names.add(name)
                info = item.stat(follow_symlinks=False)
                if stat.S_ISLNK(info.st_mode):
                    tally.count("symlinks", skipped=True)
                elif item.name.startswith(PULL_TEMP):
                    if now - info.st_mtime > STALE_TEMP:
                        tree.stale.append(name)
                elif temporary(item.name) or item.name == FOLDER_MARK:
                    tally.count("temporary", skipped=True)
                elif stat.S_ISDIR(info.st_mode):
                    tree.folders.add(name)
                    try:
                        stack.append((name + "/", os.open(item.name, _DIR_FLAGS, dir_fd=fd)))
                    except OSError:
                        tally.count("unreadable", skipped=True)
                elif stat.S_ISREG(info.st_mode):
                    identity = (info.st_ino, info.st_size, info.st_mtime_ns)
                    tree.files[name] = Entry(area, name, "", info.st_size, None, identity=identity)
                else:
                    tally.count("special", skipped=True)
            if not entries and prefix:
                tree.empty.append(prefix[:-1])
        finally:
            os.close(fd)
    return tree


class _ConflictError(Exception):
    pass


def _folder(area_fd: int, parts: list[str], *, create: bool) -> int:
    """A descriptor of the folder ``parts`` below the area, made when ``create``; _ConflictError when a
    symlink, a file or nothing stands where a folder should be."""
    fd = os.dup(area_fd)
    try:
        for part in parts:
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise _ConflictError(f"{part} vanished") from None
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, dir_fd=fd)
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError:
                    raise _ConflictError(f"{part} is not a folder") from None
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENAMETOOLONG):
                    raise _ConflictError(f"{part} is a symlink or a file, not a folder") from None
                raise
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


# --- running many transfers ---------------------------------------------------------------------


@dataclass
class _Run:
    """One push or pull under way: what every transfer shares."""

    store: Store
    token: CancelToken
    tally: Tally
    watcher: Watcher
    moved: set[tuple[Area, str]] = field(default_factory=set)  # names sent or installed
    failed: set[tuple[Area, str]] = field(default_factory=set)  # names that changed (push) or were not installed

    def note(self, into: set[tuple[Area, str]], entry: Entry) -> None:
        with self.tally.lock:
            into.add((entry.area, entry.name))

    def retrying(self, attempt: int) -> None:
        """Before another attempt after an infrastructure error."""
        with self.tally.lock:
            self.tally.retried += 1
        if self.token.sleep(min(2.0**attempt / 4, 4.0)):
            self.token.check()

    def closed(self) -> tuple[set[tuple[Area, str]], set[tuple[Area, str]]]:
        """The names moved and failed so far, each with every folder above it."""
        with self.tally.lock:
            return _with_folders(self.moved), _with_folders(self.failed)


def _with_folders(names: set[tuple[Area, str]]) -> set[tuple[Area, str]]:
    found = set(names)
    for area, name in names:
        folder = name
        while "/" in folder:
            folder = folder.rsplit("/", 1)[0]
            if (area, folder) in found:
                break
            found.add((area, folder))
    return found


def _run_all(pool: ThreadPoolExecutor, calls: Iterable[Callable[[], None]]) -> None:
    """Run ``calls`` on ``pool``; the first error (an interruption last) is raised once every call
    has ended."""
    futures = [pool.submit(call) for call in calls]
    errors = [e for e in (f.exception() for f in futures) if e is not None]
    first = next((e for e in errors if not isinstance(e, InterruptError)), None) or next(iter(errors), None)
    if first is not None:
        raise first


def _call(function: Callable[..., None], *args: Any) -> Callable[[], None]:
    return lambda: function(*args)


def _start(store: Store, cache: Path, direction: Direction, token: CancelToken, watcher: Watcher | None) -> _Run:
    tally = Tally(direction, store.url.rstrip("/") + "/" + CACHE, str(cache.absolute()))
    return _Run(store, token, tally, watcher or Silent())


# --- push ---------------------------------------------------------------------------------------


def push(
    store: Store, cache: Path, token: CancelToken, *, watcher: Watcher | None = None, workers: int = WORKERS
) -> Tally:
    """Send the files of the cache's downloads/ and sstate/ whose names the store lacks."""
    run = _start(store, cache, "push", token, watcher)
    started = time.monotonic()
    store.check()
    run.tally.count("check")
    fds = {area: open_area(cache, area, create=False) for area in AREAS}
    try:
        remote = listing(store, run.tally, token)
        files: list[tuple[Entry, int, LocalTree]] = []
        marks: list[Entry] = []
        for area, fd in fds.items():
            tree = scan(fd, area, run.tally, token)
            run.tally.local += len(tree.files)
            held = remote.files[area]
            for name, entry in sorted(tree.files.items()):
                if name in held:
                    run.tally.present_objects += 1
                    run.tally.present_bytes += entry.size
                elif fd is not None:
                    files.append((entry, fd, tree))
            if area == "downloads":
                full = remote.under(area)
                for name in tree.empty:
                    if name not in remote.folders[area] and name not in full:
                        marks.append(Entry(area, name, key_of(area, name, None, folder=True), 0, None, True))
        run.watcher.start("push", len(files) + len(marks), sum(e.size for e, _, _ in files))
        with token.on_cancel(store.cancel), ThreadPoolExecutor(workers, thread_name_prefix="cache-push") as pool:
            calls = [_call(_send, run, e, fd) for e, fd, _ in files if not e.stamp]
            _run_all(pool, calls + [_call(_mark, run, e) for e in marks])
            # a stamp vouches for its download: it goes last, and only for content the store has
            _, failed = run.closed()
            stamps = [_call(_send_stamp, run, e, fd, tree, remote, failed) for e, fd, tree in files if e.stamp]
            _run_all(pool, stamps)
    finally:
        for fd in fds.values():
            if fd is not None:
                os.close(fd)
    run.tally.seconds = round(time.monotonic() - started, 3)
    return run.tally


def _send_stamp(
    run: _Run, stamp: Entry, area_fd: int, tree: LocalTree, remote: Remote, failed: set[tuple[Area, str]]
) -> None:
    """Send a ``.done`` stamp when the store holds the very download it vouches for: sent now, or
    stored before with the same sha256 (a file written in place and pushed before it was complete
    must not be vouched for), or a folder (a git clone, which git checks itself)."""
    base = stamp.name[: -len(DONE)]
    vouched = False
    if (stamp.area, base) in failed:
        pass
    elif base in tree.files:
        stored = {v.sha256 for v in remote.files[stamp.area].get(base, [])}
        vouched = (stamp.area, base) in run.moved or (
            bool(stored) and _local_sha256(run, tree.files[base], area_fd) in stored
        )
    elif base in tree.folders:
        vouched = True
    if vouched:
        _send(run, stamp, area_fd)
    else:
        run.tally.count("unvouched stamps", skipped=True)


def _open_scanned(entry: Entry, area_fd: int) -> int | None:
    """The scanned file, opened without following a symlink; None when it is gone or replaced."""
    parts = entry.name.split("/")
    try:
        folder = _folder(area_fd, parts[:-1], create=False)
    except _ConflictError:
        return None
    try:
        return os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder)
    except OSError:
        return None
    finally:
        os.close(folder)


def _local_sha256(run: _Run, entry: Entry, area_fd: int) -> str | None:
    fd = _open_scanned(entry, area_fd)
    if fd is None:
        return None
    try:
        return _hash_unchanged(fd, entry, run.token)
    finally:
        os.close(fd)


def _send(run: _Run, entry: Entry, area_fd: int) -> None:
    run.token.check()
    fd = _open_scanned(entry, area_fd)
    if fd is None:
        return _changing(run, entry)
    try:
        sha256 = _hash_unchanged(fd, entry, run.token)
        if sha256 is None:
            return _changing(run, entry)
        item = Entry(entry.area, entry.name, key_of(entry.area, entry.name, sha256), entry.size, sha256)
        if isinstance(run.store, LocalStore) and len(item.key.rsplit("/", 1)[-1].encode()) > LOCAL_NAME_MAX:
            run.tally.count("names too long for a folder store", skipped=True)
            return None
        run.watcher.begin(item)
        # the file read is the one scanned and hashed, whatever happens to its path meanwhile
        path = str(_PROC_FD / str(fd)) if _PROC_FD.is_dir() else _path_of(fd)
        for attempt in range(1, ATTEMPTS + 1):
            run.token.check()
            sent = 0

            def progress(count: int) -> None:
                nonlocal sent
                sent += count
                run.watcher.advance(item, count)

            try:
                run.tally.count("put")
                run.store.put_file(item.key, path, size=entry.size, sha256=sha256, progress=progress)
            except VerificationError:  # it changed after it was hashed: nothing was stored
                run.watcher.advance(item, -sent)
                run.watcher.done(item)
                return _changing(run, entry)
            except InfrastructureError:
                run.watcher.advance(item, -sent)
                if attempt == ATTEMPTS:
                    raise
                run.retrying(attempt)
                continue
            with run.tally.lock:
                run.tally.moved_objects += 1
                run.tally.moved_bytes += entry.size
                run.moved.add((entry.area, entry.name))
            run.watcher.done(item)
            return
    finally:
        os.close(fd)


def _path_of(fd: int) -> str:
    return os.readlink(_PROC_FD / str(fd))


def _changing(run: _Run, entry: Entry) -> None:
    run.tally.count("changing", skipped=True)
    run.note(run.failed, entry)


def _hash_unchanged(fd: int, entry: Entry, token: CancelToken) -> str | None:
    """The sha256 of the open file, or None when it is not the file scanned or changed while read."""
    before = os.fstat(fd)
    if (before.st_ino, before.st_size, before.st_mtime_ns) != entry.identity or not stat.S_ISREG(before.st_mode):
        return None
    digest = hashlib.sha256()
    offset = 0
    while data := os.pread(fd, CHUNK, offset):
        token.check()
        digest.update(data)
        offset += len(data)
    after = os.fstat(fd)
    if offset != entry.size or (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        return None
    return digest.hexdigest()


def _mark(run: _Run, entry: Entry) -> None:
    for attempt in range(1, ATTEMPTS + 1):
        run.token.check()
        try:
            run.tally.count("put")
            run.store.put_bytes(entry.key, b"", content_type="application/octet-stream")
        except InfrastructureError:
            if attempt == ATTEMPTS:
                raise
            run.retrying(attempt)
            continue
        with run.tally.lock:
            run.tally.folders += 1
        run.watcher.done(entry)
        return


# --- pull ---------------------------------------------------------------------------------------


def pull(
    store: Store, cache: Path, token: CancelToken, *, watcher: Watcher | None = None, workers: int = WORKERS
) -> Tally:
    """Fetch the store's files whose names the cache's downloads/ and sstate/ lack; VerificationError
    (after installing the rest) when the store holds keys or contents that were refused."""
    run = _start(store, cache, "pull", token, watcher)
    tally = run.tally
    started = time.monotonic()
    if not isinstance(store, LocalStore):  # a folder store that does not exist yet is an empty one
        store.check()
        tally.count("check")
    remote = listing(store, tally, token)
    tally.refused.extend(remote.refused)
    fds = {area: open_area(cache, area, create=True) for area in AREAS}
    try:
        wanted: list[tuple[Entry, int, LocalTree]] = []
        folders: list[tuple[Entry, int]] = []
        for area, fd in fds.items():
            assert fd is not None
            tree = scan(fd, area, tally, token)
            tally.local += len(tree.files)
            _remove_stale(fd, tree.stale)
            for name, variants in sorted(remote.files[area].items()):
                if name in tree.names:
                    tally.present_objects += 1
                    tally.present_bytes += tree.files[name].size if name in tree.files else 0
                    continue
                wanted.append((min(variants, key=_age), fd, tree))
            folders += [(mark, fd) for name, mark in sorted(remote.folders[area].items()) if name not in tree.names]
        run.watcher.start("pull", len(wanted), sum(e.size for e, _, _ in wanted))
        with token.on_cancel(store.cancel), ThreadPoolExecutor(workers, thread_name_prefix="cache-pull") as pool:
            _run_all(pool, [_call(_fetch, run, e, fd) for e, fd, _ in wanted if not e.stamp])
            moved, failed = run.closed()
            stamps = [(e, fd) for e, fd, tree in wanted if e.stamp and _vouches(e, tree, moved, failed)]
            tally.count("unvouched stamps", skipped=True, amount=sum(e.stamp for e, _, _ in wanted) - len(stamps))
            _run_all(pool, [_call(_fetch, run, e, fd) for e, fd in stamps])
        for mark, fd in folders:
            token.check()
            try:
                os.close(_folder(fd, mark.name.split("/"), create=True))
                tally.folders += 1
            except _ConflictError:
                tally.count("conflicts", skipped=True)
    finally:
        for fd in fds.values():
            if fd is not None:
                os.close(fd)
    tally.seconds = round(time.monotonic() - started, 3)
    if tally.refused:
        key, reason = tally.refused[0]
        more = f" (and {len(tally.refused) - 1} more)" if len(tally.refused) > 1 else ""
        raise VerificationError(
            f"{tally.store}: refused {key!r}: {reason}{more}; nothing refused was installed "
            "(remove the object from the store: the next push sends it again)",
        )
    return tally


def _vouches(stamp: Entry, tree: LocalTree, moved: set[tuple[Area, str]], failed: set[tuple[Area, str]]) -> bool:
    """Whether the store's ``.done`` stamp may be installed: only beside the download this pull
    installed whole. A copy the cache had before is its own, and bitbake would trust the checksums
    the stamp records instead of checking that copy."""
    base = stamp.name[: -len(DONE)]
    key = (stamp.area, base)
    return base not in tree.names and key in moved and key not in failed


def _age(entry: Entry) -> tuple[float, str]:
    """Order of a name's contents: the oldest first, then by sha256."""
    return (entry.modified.timestamp() if entry.modified else 0.0, entry.sha256 or "")


def _remove_stale(area_fd: int, names: list[str]) -> None:
    for name in names:
        parts = name.split("/")
        with contextlib.suppress(OSError, _ConflictError):
            folder = _folder(area_fd, parts[:-1], create=False)
            try:
                os.unlink(parts[-1], dir_fd=folder)
            finally:
                os.close(folder)


def _fetch(run: _Run, entry: Entry, area_fd: int) -> None:
    run.token.check()
    run.watcher.begin(entry)
    try:
        outcome = _fetch_one(run, entry, area_fd)
    finally:
        run.watcher.done(entry)
    with run.tally.lock:
        if outcome == "installed":
            run.moved.add((entry.area, entry.name))
            return
        run.failed.add((entry.area, entry.name))
        if outcome != "refused":
            run.tally.skipped[outcome] += 1


def _fetch_one(run: _Run, entry: Entry, area_fd: int) -> str:
    """Fetch, check and install one file: "installed", "appeared" (the name was taken meanwhile),
    "conflicts" (no folder can be made for it), "vanished" (gone from the store) or "refused"."""
    parts = entry.name.split("/")
    differed = False
    for attempt in range(1, ATTEMPTS + 1):
        run.token.check()
        received = 0

        def progress(count: int) -> None:
            nonlocal received
            received += count
            run.watcher.advance(entry, count)

        try:
            folder = _folder(area_fd, parts[:-1], create=True)
        except _ConflictError:
            return "conflicts"
        try:
            run.tally.count("get")
            want, actual, size, installed = _receive(run, entry, folder, parts[-1], progress)
        except KeyError:
            return "vanished"
        except _ConflictError:
            return "conflicts"
        except InfrastructureError:
            run.watcher.advance(entry, -received)
            if attempt == ATTEMPTS:
                raise
            run.retrying(attempt)
            continue
        finally:
            os.close(folder)
        if want is None:
            return _refuse(run, entry, "it carries no sha256 (it was not sent by `cipbuild cache push`)")
        if actual != want:
            run.watcher.advance(entry, -received)
            if not differed:  # a folder store's object replaced while read: once more
                differed = True
                continue
            return _refuse(run, entry, f"its content has sha256 {actual}, not the {want} it is stored with")
        if not installed:
            return "appeared"
        with run.tally.lock:
            run.tally.moved_objects += 1
            run.tally.moved_bytes += size
        return "installed"
    raise AssertionError("unreachable")


def _refuse(run: _Run, entry: Entry, reason: str) -> str:
    with run.tally.lock:
        run.tally.refused.append((entry.key, reason))
    return "refused"


def _source(store: Store, entry: Entry) -> tuple[BinaryIO, str | None]:
    """The object's content and the sha256 it must have. A download's is its key; an sstate
    object's is its metadata, which S3 answers with the content itself (no HEAD first, and no
    content of one push with the sha256 of another)."""
    if entry.area == "downloads" or (entry.sha256 is not None and not isinstance(store, S3Store)):
        return store.open(entry.key), entry.sha256
    if not isinstance(store, S3Store):
        found = store.head(entry.key)
        if found is None:
            raise KeyError(entry.key)
        return store.open(entry.key), found.sha256
    try:
        answer = store.client.get_object(Bucket=store.bucket, Key=store.key(entry.key))
    except Exception as exc:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code")
        if code in ("404", "NoSuchKey", "NotFound"):
            raise KeyError(entry.key) from None
        raise store.error(exc, f"reading {entry.key}") from None
    sha256 = answer.get("Metadata", {}).get(META)
    body = io.BufferedReader(_Body(store, entry.key, answer["Body"]), buffer_size=CHUNK)
    return body, sha256 if isinstance(sha256, str) else None


class _Body(io.RawIOBase):
    """An S3 GET's streaming body whose failures are cipbuild's errors."""

    def __init__(self, store: S3Store, key: str, body: Any):
        self.store = store
        self.key = key
        self.body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self.body.read(len(buffer))
        except Exception as exc:
            raise self.store.error(exc, f"reading {self.key}") from None
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self.body.close()
        super().close()


def _receive(
    run: _Run, entry: Entry, folder: int, name: str, progress: Callable[[int], None]
) -> tuple[str | None, str, int, bool]:
    """Write the object to a temporary file in ``folder``, then link it to ``name`` when its sha256 is
    the one it must have and the name is still free: (that sha256, its sha256, its size, whether
    it was installed)."""
    source, want = _source(run.store, entry)
    with source:
        if want is None or not _SHA256.fullmatch(want):
            return None, "", 0, False
        temp = PULL_TEMP + secrets.token_hex(8)
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            with os.fdopen(os.open(temp, flags, 0o666, dir_fd=folder), "wb") as out:
                digest = hashlib.sha256()
                size = 0
                while data := source.read(CHUNK):
                    run.token.check()
                    digest.update(data)
                    out.write(data)
                    size += len(data)
                    progress(len(data))
                out.flush()
                os.fsync(out.fileno())
            actual = digest.hexdigest()
            if actual != want:
                return want, actual, size, False
            return want, actual, size, _install(folder, temp, name)
        except OSError as exc:
            if exc.errno in (errno.ENAMETOOLONG, errno.EINVAL, errno.EILSEQ, errno.EISDIR):
                raise _ConflictError(str(exc)) from None
            raise InfrastructureError(f"cannot write {entry.name} in the cache: {exc.strerror or exc}") from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=folder)


def _install(folder: int, temp: str, name: str) -> bool:
    """Give the checked temporary file its name unless something took it meanwhile."""
    try:
        os.link(temp, name, src_dir_fd=folder, dst_dir_fd=folder, follow_symlinks=False)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
    # a file system without hard links: a small window where a file made meanwhile is replaced
    try:
        os.lstat(name, dir_fd=folder)
        return False
    except FileNotFoundError:
        os.rename(temp, name, src_dir_fd=folder, dst_dir_fd=folder)
        return True


def describe(tally: Tally) -> Iterator[str]:
    """The summary lines a person reads."""
    from .progress import size_text

    verb = "sent" if tally.direction == "push" else "received"
    yield (
        f"{verb} {tally.moved_objects} object(s), {size_text(tally.moved_bytes)}; {tally.present_objects} already "
        f"there, {size_text(tally.present_bytes)}; {tally.seconds:.1f} s"
    )
    if tally.folders:
        yield f"{'marked' if tally.direction == 'push' else 'made'} {tally.folders} empty folder(s)"
    if tally.skipped:
        yield "skipped: " + ", ".join(f"{count} {why}" for why, count in sorted(tally.skipped.items()))


__all__ = [
    "AREAS",
    "CACHE",
    "Entry",
    "Silent",
    "Tally",
    "Watcher",
    "describe",
    "key_of",
    "listing",
    "parse_key",
    "pull",
    "push",
    "scan",
    "sstate_mirrors",
    "temporary",
]
