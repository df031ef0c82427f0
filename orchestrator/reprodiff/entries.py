"""What an archive or a file system holds, one `Entry` per name, and how two listings differ.

Every reader (tar, cpio, ext, FAT, squashfs) turns its format into a `Listing`; `diff_listings`
is the one comparison, so a file's difference is named the same way whatever held it.
"""

from __future__ import annotations

import datetime as dt
import stat
from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

# Every kind of difference, in the order they are listed within one difference.
KINDS = (
    "only-in-first",
    "only-in-second",
    "type",
    "size",
    "content",
    "link-target",
    "mode",
    "owner",
    "xattr",
    "mtime",
    "order",
    "ctime",
    "inode",
    "metadata",
)
# How early a difference of a kind is listed: what the files hold first, inode bookkeeping last.
_RANK = {
    "metadata": 0,
    "only-in-first": 1,
    "only-in-second": 1,
    "type": 1,
    "size": 1,
    "content": 1,
    "link-target": 1,
    "mode": 2,
    "owner": 2,
    "xattr": 2,
    "mtime": 3,
    "order": 4,
    "ctime": 5,
    "inode": 5,
}
_DETAIL_MAX = 300


@dataclass(frozen=True)
class InnerDifference:
    """One name inside an artifact that differs, the kinds of difference and a short text."""

    path: str
    kinds: tuple[str, ...]
    detail: str = ""

    def to_json(self) -> dict[str, object]:
        return {"path": self.path, "kinds": list(self.kinds), "detail": self.detail}


@dataclass(frozen=True)
class Entry:
    """One name of an archive or file system and what is recorded about it."""

    path: str
    type: str  # file, dir, symlink, hardlink, char, block, fifo, socket
    mode: int = 0  # permission bits; FAT: the attribute byte
    uid: int = 0
    gid: int = 0
    owner_names: str = ""  # "user:group" where the format records names (tar)
    mtime_ns: int = 0
    size: int = 0
    digest: str = ""  # sha256 of a regular file's content
    target: str = ""  # a link's target, a device's "major,minor"
    xattrs: tuple[tuple[str, str], ...] = ()
    times: tuple[tuple[str, int], ...] = ()  # the other timestamps (ctime, atime, crtime), ns
    inode: tuple[tuple[str, int], ...] = ()  # inode bookkeeping an archive records (cpio: ino, nlink)


def epoch_text(ns: int) -> str:
    seconds, frac = divmod(ns, 1_000_000_000)
    return str(seconds) if not frac else f"{seconds}.{frac:09d}".rstrip("0")


def local_text(ns: int) -> str:
    """A FAT time stamp (local time, no zone), stored as if it were UTC."""
    when = dt.datetime.fromtimestamp(ns / 1e9, tz=dt.UTC)
    return when.strftime("%Y-%m-%d %H:%M:%S") + (f".{when.microsecond // 10000:02d}" if when.microsecond else "")


@dataclass
class Listing:
    entries: list[Entry]
    metadata: dict[str, str] = field(default_factory=dict)  # facts about the whole (superblock, header)
    metadata_path: str = "(superblock)"
    per_directory_order: bool = False  # file systems: order within each directory; archives: one order
    mode_label: str = "mode"  # FAT: "attributes"
    mode_text: Callable[[int], str] = field(default=lambda mode: f"{mode:04o}")
    time_text: Callable[[int], str] = field(default=epoch_text)
    locate: Callable[[int], str] | None = None  # what a byte offset of the image belongs to


def printable(name: str) -> str:
    """A name as text that prints anywhere: undecodable bytes and control characters escaped."""
    raw = name.encode("utf-8", "surrogateescape")
    text = raw.decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


def _keys(entries: Iterable[Entry]) -> list[tuple[str, int]]:
    """Each entry's name with its occurrence number (an archive may hold a name twice)."""
    seen: dict[str, int] = {}
    keys = []
    for entry in entries:
        n = seen.get(entry.path, 0)
        seen[entry.path] = n + 1
        keys.append((entry.path, n))
    return keys


def _longest_increasing(values: list[int]) -> set[int]:
    """Indices of a longest strictly increasing subsequence of ``values`` (distinct numbers)."""
    tail_values: list[int] = []
    tail_index: list[int] = []
    previous = [-1] * len(values)
    for i, value in enumerate(values):
        j = bisect_left(tail_values, value)
        if j == len(tail_values):
            tail_values.append(value)
            tail_index.append(i)
        else:
            tail_values[j] = value
            tail_index[j] = i
        previous[i] = tail_index[j - 1] if j else -1
    keep: set[int] = set()
    i = tail_index[-1] if tail_index else -1
    while i >= 0:
        keep.add(i)
        i = previous[i]
    return keep


def _positions(keys: list[tuple[str, int]], per_directory: bool) -> dict[tuple[str, int], int]:
    """Each name's place (from 1) in the archive, or in its directory."""
    counts: dict[str, int] = {}
    places = {}
    for key in keys:
        group = key[0].rstrip("/").rpartition("/")[0] if per_directory else ""
        counts[group] = counts.get(group, 0) + 1
        places[key] = counts[group]
    return places


def _moved(first: list[tuple[str, int]], second: list[tuple[str, int]], per_directory: bool) -> set[tuple[str, int]]:
    """The common names that are out of order: all but a longest run that keeps its order."""
    where = {key: i for i, key in enumerate(second)}
    groups: dict[str, list[tuple[str, int]]] = {}
    for key in first:
        if key in where:
            group = key[0].rstrip("/").rpartition("/")[0] if per_directory else ""
            groups.setdefault(group, []).append(key)
    moved: set[tuple[str, int]] = set()
    for keys in groups.values():
        keep = _longest_increasing([where[key] for key in keys])
        moved.update(key for i, key in enumerate(keys) if i not in keep)
    return moved


def _show(key: tuple[str, int]) -> str:
    path, n = key
    return printable(path) if n == 0 else f"{printable(path)} (entry {n + 1} of that name)"


def _compare(a: Entry, b: Entry, first: Listing) -> tuple[list[str], list[str]]:
    kinds: list[str] = []
    details: list[str] = []
    if a.type != b.type:
        return ["type"], [f"{a.type} vs {b.type}"]
    if a.type not in ("dir",) and a.size != b.size:
        kinds.append("size")
        details.append(f"size {a.size} vs {b.size}")
    if a.digest != b.digest:
        kinds.append("content")
        details.append(f"sha256 {a.digest[:12]}… vs {b.digest[:12]}…")
    if a.target != b.target:
        if a.type in ("char", "block"):
            kinds.append("content")
            details.append(f"device {a.target} vs {b.target}")
        else:
            kinds.append("link-target")
            details.append(f"target {printable(a.target)!r} vs {printable(b.target)!r}")
    if a.mode != b.mode:
        kinds.append("mode")
        details.append(f"{first.mode_label} {first.mode_text(a.mode)} vs {first.mode_text(b.mode)}")
    if (a.uid, a.gid, a.owner_names) != (b.uid, b.gid, b.owner_names):
        kinds.append("owner")
        shown = (f" ({a.owner_names})", f" ({b.owner_names})") if a.owner_names != b.owner_names else ("", "")
        details.append(f"owner {a.uid}:{a.gid}{shown[0]} vs {b.uid}:{b.gid}{shown[1]}")
    if a.xattrs != b.xattrs:
        kinds.append("xattr")
        xa, xb = dict(a.xattrs), dict(b.xattrs)
        names = sorted(k for k in xa.keys() | xb.keys() if xa.get(k) != xb.get(k))
        details.append("xattrs " + ", ".join(printable(n) for n in names))
    if a.mtime_ns != b.mtime_ns:
        kinds.append("mtime")
        details.append(f"mtime {first.time_text(a.mtime_ns)} vs {first.time_text(b.mtime_ns)}")
    if a.times != b.times:
        kinds.append("ctime")
        ta, tb = dict(a.times), dict(b.times)
        for name in sorted(ta.keys() | tb.keys()):
            if ta.get(name) != tb.get(name):
                show = [first.time_text(t[name]) if name in t else "none" for t in (ta, tb)]
                details.append(f"{name} {show[0]} vs {show[1]}")
    if a.inode != b.inode:
        kinds.append("inode")
        ia, ib = dict(a.inode), dict(b.inode)
        details += [f"{n} {ia.get(n)} vs {ib.get(n)}" for n in sorted(ia.keys() | ib.keys()) if ia.get(n) != ib.get(n)]
    return kinds, details


def _ordered(kinds: Iterable[str]) -> tuple[str, ...]:
    have = set(kinds)
    return tuple(k for k in KINDS if k in have)


def _clip(text: str) -> str:
    return text if len(text) <= _DETAIL_MAX else text[: _DETAIL_MAX - 1] + "…"


def diff_metadata(first: dict[str, str], second: dict[str, str], path: str) -> list[InnerDifference]:
    names = [n for n in dict.fromkeys([*first, *second]) if first.get(n) != second.get(n)]
    if not names:
        return []
    detail = "; ".join(f"{n} {first.get(n, 'none')} vs {second.get(n, 'none')}" for n in names)
    return [InnerDifference(path, ("metadata",), _clip(detail))]


def diff_listings(first: Listing, second: Listing, prefix: str = "") -> list[InnerDifference]:
    """Every name that differs between the listings, most telling first (metadata, then what
    the files hold, then permissions, times, order, inode bookkeeping); ``prefix`` is put
    before each name (a partition's)."""
    keys_a, keys_b = _keys(first.entries), _keys(second.entries)
    by_a = dict(zip(keys_a, first.entries, strict=True))
    by_b = dict(zip(keys_b, second.entries, strict=True))
    pos_a = _positions(keys_a, first.per_directory_order)
    pos_b = _positions(keys_b, first.per_directory_order)
    moved = _moved(keys_a, keys_b, first.per_directory_order)
    found: list[tuple[int, int, InnerDifference]] = []

    def add(key: tuple[str, int], kinds: list[str], details: list[str], at: int) -> None:
        ordered = _ordered(kinds)
        rank = min(_RANK[k] for k in ordered)
        found.append((rank, at, InnerDifference(prefix + _show(key), ordered, _clip("; ".join(details)))))

    for at, key in enumerate(keys_a):
        if key not in by_b:
            add(key, ["only-in-first"], [by_a[key].type], at)
            continue
        kinds, details = _compare(by_a[key], by_b[key], first)
        if key in moved:
            kinds.append("order")
            noun = "position in its directory" if first.per_directory_order else "position"
            details.append(f"{noun} {pos_a[key]} vs {pos_b[key]}")
        if kinds:
            add(key, kinds, details, at)
    for at, key in enumerate(keys_b):
        if key not in by_a:
            add(key, ["only-in-second"], [by_b[key].type], len(keys_a) + at)
    found.sort(key=lambda item: (item[0], item[1]))
    meta = diff_metadata(first.metadata, second.metadata, prefix + first.metadata_path)
    return meta + [d for _, _, d in found]


# the file types an archive's or a file system's mode bits name
FILE_TYPES = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "char",
    stat.S_IFBLK: "block",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}
