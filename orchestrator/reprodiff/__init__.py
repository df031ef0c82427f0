"""Compare the artifacts of two builds of one job, for `build --check-reproducible`.

Bytes first: two artifacts are identical when their bytes are (read in large chunks, holes
that both sparse files have skipped; equal sizes and recorded sha256s settle it without a
read). Only an artifact that differs is unpacked, to say which file inside it differs and how
(content, size, type, link target, mode, owner, extended attributes, mtime, the other times,
order, inode bookkeeping, only in one build), most telling first:

- tar (plain, gz, xz, bz2, zst) and cpio newc (plain, gz, xz, bz2, zst, lz4; an initramfs made
  of several archives end to end) are read as streams, each member's content hashed as it
  passes: nothing is extracted, so a hostile member name never becomes a path; a gzip
  header's time and name are compared too;
- ext2/3/4 and FAT file systems are read in Python from the image (no root, no mount, no
  tool); when no file differs, the first differing byte is placed (an inode, a bitmap, the
  journal, a file's slack, free space);
- squashfs through ``unsquashfs -pf`` (squashfs-tools), its data streamed and hashed;
- a disk image's GPT or MBR table is compared entry by entry, then each partition whose bytes
  differ as the file system its magic names, and the bytes outside the partitions;
- a compressed disk or file-system image is decompressed (sparsely) into a scratch folder.

A format that cannot be read (a tool missing, a damaged image) still reports the artifact as
differing, with a note that says why it could not be explained. Nothing here raises for a
file's content; the module never writes outside its scratch folders.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .archives import CPIO_MAGICS, cpio_listing, tar_listing
from .disk import compare_disks, is_disk
from .entries import KINDS, InnerDifference, Listing, diff_listings, diff_metadata, printable
from .extfs import ExtFs, ext_name, is_ext
from .fatfs import FatFs, is_fat
from .spans import FormatError, MissingToolError, Span, first_difference
from .squashfs import is_squashfs, squashfs_listing
from .streams import compression_of, decompress_to, decompressed, gzip_header, head_of, stream_difference

__all__ = [
    "KINDS",
    "MAX_DIFFERENCES",
    "ArtifactComparison",
    "InnerDifference",
    "compare_files",
    "compare_sets",
    "summary_lines",
]

MAX_DIFFERENCES = 200  # listed per artifact; the rest are counted
_SNIFF = 1 << 16
_TEXT_MAX = 1 << 20
_FILESYSTEMS = ("ext2", "ext3", "ext4", "vfat", "squashfs")
_SAME_CONTENT = "the decompressed contents are identical: only the compressed streams differ"


@dataclass(frozen=True)
class ArtifactComparison:
    """How one artifact of the first build compares with the same artifact of the second."""

    path: str  # the artifact, as named to compare_sets (e.g. "artifacts/image.wic")
    identical: bool
    format: str  # tar, tar.gz, cpio, cpio.zst, cpio+cpio.zst, ext4, vfat, squashfs, disk, ext4.zst, raw, ...
    differences: list[InnerDifference] = field(default_factory=list)  # most telling first, at most MAX_DIFFERENCES
    note: str = ""  # what could not be explained and why, or where the bytes first differ
    omitted: int = 0  # differences beyond MAX_DIFFERENCES
    kind_counts: dict[str, int] = field(default_factory=dict)  # over all differences, omitted ones too

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "identical": self.identical,
            "format": self.format,
            "differences": [d.to_json() for d in self.differences],
            "omitted": self.omitted,
            "kind_counts": self.kind_counts,
            "note": self.note,
        }


def _result(name: str, format_name: str, found: list[InnerDifference], note: str) -> ArtifactComparison:
    counts = Counter(kind for d in found for kind in d.kinds)
    return ArtifactComparison(
        path=name,
        identical=False,
        format=format_name,
        differences=found[:MAX_DIFFERENCES],
        note=note,
        omitted=max(0, len(found) - MAX_DIFFERENCES),
        kind_counts={k: counts[k] for k in KINDS if counts[k]},
    )


def _kind_of(head: bytes) -> str:
    """What the (decompressed) bytes starting with ``head`` hold, by their magic numbers."""
    if head[:6] in CPIO_MAGICS:
        return "cpio"
    if head[257:262] == b"ustar":
        return "tar"
    if head[512:520] == b"EFI PART" or head[4096:4104] == b"EFI PART":
        return "disk"
    if is_ext(head):
        return ext_name(head)
    if is_squashfs(head):
        return "squashfs"
    if is_fat(head):
        return "vfat"
    if is_disk(head):
        return "disk"
    return "raw"


def _format_name(compression: str, kind: str) -> str:
    return f"{kind}.{compression}" if compression else kind


def _sniff(path: Path) -> tuple[str, str, str]:
    """(compression, kind, why the kind is unknown) of the file at ``path``."""
    with path.open("rb") as f:
        head = f.read(_SNIFF)
    compression = compression_of(head)
    if not compression:
        return "", _kind_of(head), ""
    try:
        inner = head_of(path, compression, _SNIFF)
    except MissingToolError as err:
        return compression, "unknown", str(err)
    except (OSError, EOFError, ValueError, FormatError):
        return "", "raw", ""  # a compressor's magic, but not its stream
    return compression, _kind_of(inner), ""


def _span_kind(span: Span) -> str:
    return _kind_of(span.read(0, min(span.length, _SNIFF)))


def _listing(span: Span, kind: str) -> Listing:
    if kind.startswith("ext"):
        return ExtFs(span).listing()
    if kind == "vfat":
        return FatFs(span).listing()
    return squashfs_listing(span)


def _compare_spans(a: Span, b: Span, prefix: str) -> tuple[list[InnerDifference], str, str]:
    """The differences between two images of the same size class (a whole artifact, with
    ``prefix`` "", or a partition, with ``prefix`` "p2:"), a note of what could not be read,
    and the format found."""
    kind, kind_b = _span_kind(a), _span_kind(b)
    where = prefix.rstrip(":")
    if kind != kind_b:
        if prefix:
            return [InnerDifference(where, ("type",), f"{kind} vs {kind_b}")], "", kind
        return [], f"the first build's file is {kind}, the second's {kind_b}", kind
    place = ""
    try:
        if kind in _FILESYSTEMS:
            first = _listing(a, kind)
            found = diff_listings(first, _listing(b, kind), prefix)
            if not found:
                at = first_difference(a, b) or 0
                place = f"the bytes differ from byte {at}" + (f", in {first.locate(at)}" if first.locate else "")
                place += "; no file or metadata compared differs"
        elif kind == "disk" and not prefix:
            found, note = compare_disks(a, b, _compare_spans)
            return found, note, kind
        else:
            found = []
    except FormatError as err:
        note = _could_not(err)
        return ([InnerDifference(where, ("content",), note)] if prefix else []), note, kind
    if prefix and not found:
        place = place or f"the bytes differ from byte {first_difference(a, b)}"
        found = [InnerDifference(where, ("content",), f"{kind}: {place}")]
    return found, "" if prefix else place, kind


def _could_not(err: FormatError) -> str:
    if isinstance(err, MissingToolError):
        return f"could not unpack: {err}; it would explain the difference"
    return f"could not unpack: {err}"


def _text_note(a: Span, b: Span) -> str:
    """The first differing line of two small text files, else ""."""
    if max(a.length, b.length) > _TEXT_MAX:
        return ""
    try:
        lines = [s.read(0, s.length).decode("utf-8").splitlines() for s in (a, b)]
    except UnicodeDecodeError:
        return ""
    for number, (x, y) in enumerate(zip(*lines, strict=False), start=1):
        if x != y:
            return f"text: line {number} differs: {printable(x)[:80]!r} vs {printable(y)[:80]!r}"
    return f"text: {len(lines[0])} vs {len(lines[1])} lines"


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[Span]:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO in its place must not block
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FormatError(f"{path} is not a regular file")
        yield Span(path, fd, 0, info.st_size)
    finally:
        os.close(fd)


def _explain(
    a: Span, b: Span, compression: str, kind: str, scratch: Path | None
) -> tuple[list[InnerDifference], str, str]:
    """(differences, note, format) of two artifacts of the same format whose bytes differ."""
    format_name = _format_name(compression, kind)
    header = diff_metadata(gzip_header(a.path), gzip_header(b.path), "(gzip header)") if compression == "gz" else []
    if kind in ("tar", "cpio"):
        if kind == "tar":
            with decompressed(a.path, 0, compression) as stream:
                first = tar_listing(stream)
            with decompressed(b.path, 0, compression) as stream:
                second = tar_listing(stream)
        else:
            (first, format_name), (second, _) = cpio_listing(a.path), cpio_listing(b.path)
        found = diff_listings(first, second)
        note = ""
        if compression and not found:
            at = stream_difference(a.path, b.path, compression)
            note = _SAME_CONTENT if at is None else f"the decompressed contents differ from byte {at}"
        return header + found, note, format_name
    if not compression:
        found, note, _ = _compare_spans(a, b, "")
        return found, note, format_name
    with tempfile.TemporaryDirectory(prefix="reprodiff-", dir=scratch) as tmp:
        paths = [Path(tmp) / "first", Path(tmp) / "second"]
        for span, dest in zip((a, b), paths, strict=True):
            decompress_to(span.path, compression, dest)
        with _opened(paths[0]) as da, _opened(paths[1]) as db:
            if first_difference(da, db) is None:
                return header, _SAME_CONTENT, format_name
            found, note, _ = _compare_spans(da, db, "")
            if not found and kind == "raw":
                note = f"the decompressed contents differ from byte {first_difference(da, db)}"
            return header + found, note, format_name


def compare_files(
    first: Path,
    second: Path,
    name: str,
    *,
    digests: tuple[str, str] | None = None,
    scratch: Path | None = None,
) -> ArtifactComparison:
    """Compare one artifact of two builds. ``digests`` are the sha256s the builds recorded,
    if known: equal sizes and digests are identical without a read. ``scratch`` is where a
    compressed image is decompressed (default: the temporary folder)."""
    try:
        return _compare_files(first, second, name, digests, scratch)
    except Exception as err:  # a report, never a crash: what went wrong is the note
        return ArtifactComparison(name, False, "", note=f"could not compare: {type(err).__name__}: {err}")


def _compare_files(
    first: Path, second: Path, name: str, digests: tuple[str, str] | None, scratch: Path | None
) -> ArtifactComparison:
    with _opened(first) as a, _opened(second) as b:
        same_digest = digests is not None and digests[0] == digests[1] and a.length == b.length
        compression, kind, unknown = _sniff(first)
        format_name = _format_name(compression, kind)
        if same_digest or first_difference(a, b) is None:
            return ArtifactComparison(name, True, format_name)
        other = _sniff(second)
        if other[:2] != (compression, kind):
            note = f"the first build's file is {format_name}, the second's {_format_name(*other[:2])}"
            return _result(name, format_name, [], note)
        if unknown:
            return _result(name, format_name, [], f"could not unpack: {unknown}; it would explain the difference")
        try:
            found, note, format_name = _explain(a, b, compression, kind, scratch)
        except FormatError as err:
            found, note = [], _could_not(err)
        if not found and not note.startswith("the "):
            at = first_difference(a, b)
            text = _text_note(a, b) if kind == "raw" and not compression else ""
            where = f"the bytes differ from byte {at}" + (f"; {text}" if text else "")
            if kind not in ("raw", "unknown") and not note:
                where += "; no entry or metadata compared differs (layout, padding or free space)"
            note = f"{note}; {where}" if note else where
        return _result(name, format_name, found, note)


def _inside(folder: Path, name: str) -> Path | None:
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts:
        return None
    return folder / pure


def compare_sets(
    first_dir: Path,
    second_dir: Path,
    names: Sequence[str],
    *,
    digests: Mapping[str, tuple[str, str]] | None = None,
    scratch: Path | None = None,
) -> list[ArtifactComparison]:
    """Compare each artifact ``names`` lists (relative to both folders, e.g. "artifacts/x.wic")
    of two builds; ``digests`` maps a name to the two recorded sha256s where known."""
    results = []
    for name in names:
        a, b = _inside(first_dir, name), _inside(second_dir, name)
        if a is None or b is None:
            results.append(ArtifactComparison(name, False, "", note="refused: the name leads out of the build folder"))
            continue
        missing = [which for which, path in (("first", a), ("second", b)) if not path.exists()]
        if missing:
            where = " and ".join(missing)
            results.append(ArtifactComparison(name, False, "", note=f"missing from the {where} build"))
            continue
        results.append(compare_files(a, b, name, digests=(digests or {}).get(name), scratch=scratch))
    return results


def summary_lines(results: Sequence[ArtifactComparison], per_artifact: int = 5) -> list[str]:
    """A short human summary: the count, then each differing artifact with its first few
    differences and its note."""
    differing = [r for r in results if not r.identical]
    lines = [f"{len(results) - len(differing)} of {len(results)} artifacts are identical"]
    if not differing:
        return lines
    lines[0] += f"; {len(differing)} differ{'s' if len(differing) == 1 else ''}:"
    for r in differing:
        total = len(r.differences) + r.omitted
        counts = ", ".join(f"{k} {n}" for k, n in r.kind_counts.items())
        head = f"  {r.path}" + (f" ({r.format})" if r.format else "")
        if not total:
            lines.append(f"{head}: {r.note or 'differs'}")
            continue
        lines.append(f"{head}: {total} difference{'s' if total != 1 else ''}" + (f" ({counts})" if counts else ""))
        for d in r.differences[:per_artifact]:
            lines.append(f"    {d.path}: {', '.join(d.kinds)}" + (f" ({d.detail})" if d.detail else ""))
        if total > per_artifact:
            lines.append(f"    ... and {total - per_artifact} more")
        if r.note:
            lines.append(f"    note: {r.note}")
    return lines
