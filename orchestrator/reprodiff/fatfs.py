"""FAT12/16/32 file systems read in Python, as a listing: long names, attributes, the write,
creation and access times as recorded (two-second, 10 ms and one-day steps, local time), and
the sha256 of each file's cluster chain. Bounded like the ext reader: a crafted image gives an
`FormatError`, never a hang."""

from __future__ import annotations

import calendar
import hashlib
import struct
from collections.abc import Iterator

from .entries import Entry, Listing, local_text
from .spans import CHUNK, FormatError, Span

_ATTR_DIR = 0x10
_ATTR_VOLUME = 0x08
_ATTR_LFN = 0x0F
_SECTOR_SIZES = (512, 1024, 2048, 4096)
_FS_MARKERS = ((54, b"FAT"), (82, b"FAT32"), (3, b"mkfs.fat"), (3, b"mkdosfs"), (3, b"MSDOS"), (3, b"MSWIN"))


def is_fat(head: bytes) -> bool:
    """A FAT boot sector: the jump, a sane BIOS parameter block and a marker."""
    if len(head) < 512 or head[510:512] != b"\x55\xaa" or head[0] not in (0xEB, 0xE9):
        return False
    bps, spc, reserved, fats = struct.unpack_from("<HBHB", head, 11)
    sane = bps in _SECTOR_SIZES and spc and not spc & (spc - 1) and reserved and fats in (1, 2)
    return bool(sane) and any(head[at : at + len(mark)] == mark for at, mark in _FS_MARKERS)


def _stamp(date: int, time: int = 0, hundredths: int = 0) -> int:
    """A FAT date and time (local, no zone) as nanoseconds, counting them as UTC; 0 if unset."""
    year, month, day = 1980 + (date >> 9), date >> 5 & 0xF, date & 0x1F
    hour, minute, second = time >> 11, time >> 5 & 0x3F, (time & 0x1F) * 2
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 60):
        return 0
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    return seconds * 1_000_000_000 + hundredths * 10_000_000


def _checksum(short: bytes) -> int:
    total = 0
    for c in short:
        total = ((total & 1) << 7) + (total >> 1) + c & 0xFF
    return total


def _short_name(raw: bytes, case: int) -> str:
    base, ext = raw[:8].rstrip(b" "), raw[8:11].rstrip(b" ")
    if base[:1] == b"\x05":
        base = b"\xe5" + base[1:]
    text_base, text_ext = base.decode("cp437"), ext.decode("cp437")
    if case & 0x08:
        text_base = text_base.lower()
    if case & 0x10:
        text_ext = text_ext.lower()
    return f"{text_base}.{text_ext}" if text_ext else text_base


def _attributes(attr: int) -> str:
    names = [n for bit, n in ((1, "R"), (2, "H"), (4, "S"), (0x20, "A")) if attr & bit]
    return f"{attr:#04x}" + (f" ({''.join(names)})" if names else "")


class FatFs:
    """A FAT file system in ``span``."""

    def __init__(self, span: Span) -> None:
        self.span = span
        boot = span.read(0, 512)
        if not is_fat(boot):
            raise FormatError("no FAT boot sector")
        self.boot = boot
        bps, spc, reserved, fats, root_entries, total16, _, fat16 = struct.unpack_from("<HBHBHHBH", boot, 11)
        total32, fat32 = struct.unpack_from("<II", boot, 32)
        self.bps, self.spc = bps, spc
        fat_sectors = fat16 or fat32
        total = total16 or total32
        root_sectors = -(-root_entries * 32 // bps)
        self.data_start = (reserved + fats * fat_sectors + root_sectors) * bps
        clusters = (total * bps - self.data_start) // (spc * bps) if total * bps > self.data_start else 0
        self.bits = 12 if clusters < 4085 else 16 if clusters < 65525 else 32
        self.clusters = clusters
        self.cluster_size = spc * bps
        self.fat = span.read(reserved * bps, fat_sectors * bps)
        self.reserved, self.fats = reserved, fats
        self._owners: list[tuple[int, int, str]] = []  # (first cluster, count, name) of what was read
        if self.bits == 32:
            self.root: tuple[int, int] | int = struct.unpack_from("<I", boot, 44)[0]
            self.serial, label, fs_type = struct.unpack_from("<I11s8s", boot, 67)
        else:
            self.root = ((reserved + fats * fat_sectors) * bps, root_entries * 32)
            self.serial, label, fs_type = struct.unpack_from("<I11s8s", boot, 39)
        self.label = label.decode("cp437").rstrip()
        self.fs_type = fs_type.decode("cp437").rstrip()
        self.volume_label = self.volume_label_time = ""

    def metadata(self) -> dict[str, str]:
        return {
            "fat": f"FAT{self.bits}",
            "oem": self.boot[3:11].decode("cp437").rstrip(),
            "serial": f"{self.serial:08X}",
            "label": self.label,
            "volume_label": self.volume_label,
            "volume_label_time": self.volume_label_time,
            "sector_size": str(self.bps),
            "cluster_size": str(self.cluster_size),
            "clusters": str(self.clusters),
        }

    def _next(self, cluster: int) -> int | None:
        if self.bits == 12:
            at = cluster + cluster // 2
            if at + 2 > len(self.fat):
                raise FormatError(f"cluster {cluster} is past the FAT")
            value = struct.unpack_from("<H", self.fat, at)[0]
            value = value >> 4 if cluster & 1 else value & 0xFFF
            return None if value >= 0xFF8 else value
        width = self.bits // 8
        if (cluster + 1) * width > len(self.fat):
            raise FormatError(f"cluster {cluster} is past the FAT")
        if self.bits == 16:
            value = struct.unpack_from("<H", self.fat, cluster * 2)[0]
            return None if value >= 0xFFF8 else value
        value = struct.unpack_from("<I", self.fat, cluster * 4)[0] & 0x0FFFFFFF
        return None if value >= 0x0FFFFFF8 else value

    def _chain(self, first: int) -> Iterator[int]:
        cluster: int | None = first
        for _ in range(self.clusters + 1):
            if cluster is None:
                return
            if not 2 <= cluster < self.clusters + 2:
                raise FormatError(f"a cluster chain leads to cluster {cluster}")
            yield cluster
            cluster = self._next(cluster)
        raise FormatError("a cluster chain loops")

    def _read(self, first: int, size: int | None, owner: str) -> Iterator[bytes]:
        """The bytes of the chain from ``first``: ``size`` of them, or the whole chain; clusters
        that follow each other on disk are read together. ``owner`` names them for `locate`."""
        cs = self.cluster_size
        needed = self.clusters if size is None else -(-size // cs)
        left = needed * cs if size is None else size
        runs: list[list[int]] = []
        for i, cluster in enumerate(self._chain(first)):
            if i >= needed:
                break
            if runs and cluster == runs[-1][0] + runs[-1][1] and runs[-1][1] * cs < CHUNK:
                runs[-1][1] += 1
            else:
                runs.append([cluster, 1])
        for start, count in runs:
            self._owners.append((start, count, owner))
            n = min(count * cs, left)
            yield self.span.read(self.data_start + (start - 2) * cs, n)
            left -= n
        if size is not None and left > 0:
            raise FormatError(f"a file's cluster chain from {first} ends {left} bytes early")

    def _directory(self, where: tuple[int, int] | int, path: str) -> list[tuple[str, bytes]]:
        """A directory's names and 32-byte records, in their order on disk."""
        data = self.span.read(*where) if isinstance(where, tuple) else b"".join(self._read(where, None, path or "/"))
        out: list[tuple[str, bytes]] = []
        long_parts: list[bytes] = []
        expected_sum = -1
        for at in range(0, len(data) - 31, 32):
            record = data[at : at + 32]
            if record[0] == 0:
                break
            if record[0] == 0xE5:
                long_parts = []
                continue
            attr = record[11]
            if attr == _ATTR_LFN:
                if record[0] & 0x40:
                    long_parts, expected_sum = [], record[13]
                long_parts.append(record[1:11] + record[14:26] + record[28:32])
                continue
            if attr & _ATTR_VOLUME:
                if isinstance(where, tuple) or where == self.root:
                    self.volume_label = record[:11].decode("cp437").rstrip()
                    wtime, wdate = struct.unpack_from("<HH", record, 22)
                    self.volume_label_time = local_text(_stamp(wdate, wtime))
                long_parts = []
                continue
            name = _short_name(record[:11], record[12])
            if long_parts and expected_sum == _checksum(record[:11]):
                text = b"".join(reversed(long_parts)).decode("utf-16-le", "surrogatepass")
                name = text.split("\0", 1)[0]
            long_parts = []
            if name not in (".", ".."):
                out.append((name, record))
        return out

    def listing(self) -> Listing:
        entries: list[Entry] = []
        stack: list[tuple[str, tuple[int, int] | int]] = [("", self.root)]
        seen: set[int] = set()
        while stack:
            path, where = stack.pop()
            for name, record in self._directory(where, path):
                attr = record[11]
                (ctenth, ctime, cdate, adate, hi, wtime, wdate, lo, size) = struct.unpack_from("<BHHHHHHHI", record, 13)
                first = hi << 16 | lo
                child = f"{path}/{name}"
                is_dir = bool(attr & _ATTR_DIR)
                digest = ""
                if not is_dir:
                    digest_of = hashlib.sha256()
                    if size and first:
                        for piece in self._read(first, size, child):
                            digest_of.update(piece)
                    digest = digest_of.hexdigest()
                entries.append(
                    Entry(
                        path=child,
                        type="dir" if is_dir else "file",
                        mode=attr & ~(_ATTR_DIR | _ATTR_VOLUME) & 0xFF,
                        mtime_ns=_stamp(wdate, wtime),
                        size=0 if is_dir else size,
                        digest=digest,
                        times=(("created", _stamp(cdate, ctime, ctenth)), ("accessed", _stamp(adate))),
                    )
                )
                if is_dir and first and first not in seen:
                    seen.add(first)
                    stack.append((child, first))
        return Listing(
            entries,
            metadata=self.metadata(),
            metadata_path="(volume)",
            per_directory_order=True,
            mode_label="attributes",
            mode_text=_attributes,
            time_text=local_text,
            locate=self.locate,
        )

    def locate(self, offset: int) -> str:
        """What the byte at ``offset`` of the image belongs to, in a few words."""
        fat_start = self.reserved * self.bps
        fat_bytes = len(self.fat)
        if offset < fat_start:
            return "the boot sector or reserved sectors, in a field not compared"
        if offset < fat_start + self.fats * fat_bytes:
            copy, at = divmod(offset - fat_start, fat_bytes)
            return f"the FAT (copy {copy + 1}), at the entry of cluster {at * 8 // self.bits}"
        if offset < self.data_start:
            return "the root directory, in a field not compared (a deleted or unused record)"
        cluster = (offset - self.data_start) // self.cluster_size + 2
        for start, count, owner in self._owners:
            if start <= cluster < start + count:
                return f"cluster {cluster}, of {owner} (past its end, or an unused directory record)"
        return f"cluster {cluster}, which no listed file uses (free space)"
