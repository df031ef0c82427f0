"""Whole-disk images (.wic): the GPT or MBR partition table read here, compared field by field,
then each partition that differs compared as the file system its magic says it holds, and the
bytes outside the partitions (a boot loader written at a fixed offset) compared as bytes."""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from .entries import InnerDifference, diff_metadata
from .spans import FormatError, Span, first_difference

_GPT = b"EFI PART"
_EXTENDED = (0x05, 0x0F, 0x85)
_MAX_ENTRIES = 4096
_MAX_LOGICAL = 128

# compare two partitions, names prefixed -> (differences, note, the format found)
SpanCompare = Callable[[Span, Span, str], tuple[list[InnerDifference], str, str]]


@dataclass(frozen=True)
class Partition:
    number: int
    start: int  # bytes
    size: int  # bytes
    facts: dict[str, str] = field(default_factory=dict)  # type, uuid, name, attributes, bootable


@dataclass
class Table:
    scheme: str  # gpt, mbr
    facts: dict[str, str]
    partitions: list[Partition]
    ranges: list[tuple[int, int]]  # the byte ranges that hold the table itself (not the boot code)


def is_disk(head: bytes) -> bool:
    if head[512:520] == _GPT or head[4096:4104] == _GPT:
        return True
    if len(head) < 512 or head[510:512] != b"\x55\xaa":
        return False
    entries = [head[446 + 16 * i : 462 + 16 * i] for i in range(4)]
    return any(e[4] for e in entries) and all(e[0] in (0, 0x80) for e in entries)


def _guid(raw: bytes) -> str:
    return str(uuid.UUID(bytes_le=raw))


def _gpt(span: Span, sector: int) -> Table:
    header = span.read(sector, 92)
    (_, revision, header_size, _, _, current, backup, first_usable, last_usable) = struct.unpack_from(
        "<8sIIIIQQQQ", header
    )
    disk_guid = _guid(header[56:72])
    entries_lba, count, entry_size = struct.unpack_from("<QII", header, 72)
    if not 0 < count <= _MAX_ENTRIES or not 128 <= entry_size <= 4096:
        raise FormatError(f"a GPT header with {count} entries of {entry_size} bytes")
    table = span.read(entries_lba * sector, count * entry_size)
    partitions = []
    for i in range(count):
        raw = table[i * entry_size : (i + 1) * entry_size]
        if raw[:16] == bytes(16):
            continue
        first, last, attributes = struct.unpack_from("<QQQ", raw, 32)
        facts = {
            "type": _guid(raw[:16]),
            "uuid": _guid(raw[16:32]),
            "name": raw[56:128].decode("utf-16-le", "replace").split("\0", 1)[0],
            "attributes": f"{attributes:#x}",
        }
        partitions.append(Partition(i + 1, first * sector, (last - first + 1) * sector, facts))
    entries_bytes = -(-count * entry_size // sector) * sector
    ranges = [(440, 512), (sector, 2 * sector), (entries_lba * sector, entries_lba * sector + entries_bytes)]
    if 0 < backup * sector < span.length:
        ranges.append((backup * sector, (backup + 1) * sector))
        backup_entries = backup * sector - entries_bytes
        ranges.append((backup_entries, backup_entries + entries_bytes))
    facts = {
        "scheme": "gpt",
        "sector_size": str(sector),
        "revision": f"{revision:#x}",
        "header_size": str(header_size),
        "disk_guid": disk_guid,
        "current_lba": str(current),
        "backup_lba": str(backup),
        "first_usable": str(first_usable),
        "last_usable": str(last_usable),
        "entries": f"{count} x {entry_size} at LBA {entries_lba}",
    }
    return Table("gpt", facts, partitions, ranges)


def _mbr(span: Span) -> Table:
    sector0 = span.read(0, 512)
    partitions: list[Partition] = []
    ranges = [(440, 512)]

    def entry(raw: bytes, base: int, number: int) -> tuple[int, int]:
        status, kind = raw[0], raw[4]
        lba, count = struct.unpack_from("<II", raw, 8)
        if kind and kind not in _EXTENDED:
            facts = {"type": f"{kind:#04x}", "bootable": "yes" if status == 0x80 else "no"}
            partitions.append(Partition(number, (base + lba) * 512, count * 512, facts))
        return kind, lba

    extended: tuple[int, int] | None = None
    for i in range(4):
        kind, lba = entry(sector0[446 + 16 * i : 462 + 16 * i], 0, i + 1)
        if kind in _EXTENDED:
            extended = (lba, i + 1)
    if extended is not None:
        start, number, at = extended[0], 5, extended[0]
        for _ in range(_MAX_LOGICAL):
            ebr = span.read(at * 512, 512)
            ranges.append((at * 512 + 440, at * 512 + 512))
            entry(ebr[446:462], at, number)
            number += 1
            link = ebr[462:478]
            link_lba = struct.unpack_from("<I", link, 8)[0]
            if link[4] not in _EXTENDED or not link_lba:
                break
            at = start + link_lba
        else:
            raise FormatError("an MBR chain of logical partitions that does not end")
    facts = {"scheme": "mbr", "disk_id": f"{struct.unpack_from('<I', sector0, 440)[0]:08x}"}
    return Table("mbr", facts, partitions, ranges)


def read_table(span: Span) -> Table:
    for sector in (512, 4096):
        if span.length >= sector + 92 and span.read(sector, 8) == _GPT:
            return _gpt(span, sector)
    return _mbr(span)


def _outside(tables: list[Table], length: int) -> list[tuple[int, int]]:
    """The byte ranges of [0, length) that neither table gives to a partition or to itself."""
    taken = sorted(
        [(p.start, p.start + p.size) for t in tables for p in t.partitions] + [r for t in tables for r in t.ranges]
    )
    out: list[tuple[int, int]] = []
    pos = 0
    for start, end in taken:
        if start > pos:
            out.append((pos, min(start, length)))
        pos = max(pos, end)
    if pos < length:
        out.append((pos, length))
    return [(s, e) for s, e in out if s < e]


def compare_disks(a: Span, b: Span, compare: SpanCompare) -> tuple[list[InnerDifference], str]:
    """The differences between two disk images: the tables, each partition, the rest; and the
    notes of partitions that could not be read."""
    first, second = read_table(a), read_table(b)
    found = diff_metadata(first.facts, second.facts, "(partition table)")
    if not found:
        for start, end in sorted(set(first.ranges + second.ranges)):
            at = first_difference(a.sub(start, end - start), b.sub(start, end - start))
            if at is not None:
                detail = f"bytes differ from byte {start + at} (checksums or reserved fields)"
                found.append(InnerDifference("(partition table)", ("content",), detail))
                break
    notes: list[str] = []
    by_number = {p.number: p for p in second.partitions}
    numbers = {p.number for p in first.partitions}
    for pa in first.partitions:
        pb = by_number.get(pa.number)
        name = f"p{pa.number}"
        if pb is None:
            found.append(InnerDifference(name, ("only-in-first",), "partition"))
            continue
        facts_a = {"start": str(pa.start), "size": str(pa.size), **pa.facts}
        facts_b = {"start": str(pb.start), "size": str(pb.size), **pb.facts}
        found += diff_metadata(facts_a, facts_b, f"{name} (table entry)")
        span_a, span_b = a.sub(pa.start, pa.size), b.sub(pb.start, pb.size)
        if first_difference(span_a, span_b) is None:
            continue
        inner, note, format_name = compare(span_a, span_b, name + ":")
        found += inner
        if note:
            notes.append(f"{name} ({format_name}): {note}")
    found += [
        InnerDifference(f"p{p.number}", ("only-in-second",), "partition")
        for p in second.partitions
        if p.number not in numbers
    ]
    for start, end in _outside([first, second], max(a.length, b.length)):
        at = first_difference(a.sub(start, end - start), b.sub(start, end - start))
        if at is not None:
            detail = f"bytes {start}-{end - 1} differ from byte {start + at}"
            found.append(InnerDifference("(outside partitions)", ("content",), detail))
    return found, "; ".join(notes)
