"""ext2/3/4 file systems read in Python, as a listing: no root, no mount, no tool, nothing
extracted. Every inode's type, mode, owner, times (with nanoseconds), extended attributes and
the sha256 of its content, from the superblock, the group descriptors, the inode tables,
extent trees or block maps, inline data and linear or hashed directories.

The image is untrusted: every read is bounds-checked by `Span.read`, every loop is bounded
and a directory is walked once, so a crafted image gives a `FormatError`, never a hang."""

from __future__ import annotations

import hashlib
import stat
import struct
import uuid
from collections.abc import Iterator

from .entries import FILE_TYPES, Entry, Listing
from .spans import CHUNK, FormatError, Span

EXT_MAGIC = 0xEF53
_SB = 1024
_ROOT = 2
_EXTENTS_FL = 0x80000
_INLINE_FL = 0x10000000
_INCOMPAT_FILETYPE = 0x2
_INCOMPAT_META_BG = 0x10
_INCOMPAT_EXTENTS = 0x40
_INCOMPAT_64BIT = 0x80
_INCOMPAT_ENCRYPT = 0x10000
_COMPAT_JOURNAL = 0x4
_RO_SPARSE_SUPER = 0x1
_EXTENT_MAGIC = 0xF30A
_XATTR_MAGIC = 0xEA020000
_XATTR_PREFIX = {
    1: "user.",
    2: "system.posix_acl_access",
    3: "system.posix_acl_default",
    4: "trusted.",
    6: "security.",
    7: "system.",
    8: "system.richacl",
}
_MAX_DEPTH = 5  # of an extent tree
_MAX_DIR = 256 << 20  # bytes of one directory
_HASH_SLACK = 1 << 30


def is_ext(head: bytes) -> bool:
    return len(head) >= _SB + 0x3A and struct.unpack_from("<H", head, _SB + 0x38)[0] == EXT_MAGIC


def ext_name(head: bytes) -> str:
    """ext2, ext3 or ext4, as the superblock's features say."""
    compat, incompat = struct.unpack_from("<II", head, _SB + 0x5C)
    if incompat & (_INCOMPAT_EXTENTS | _INCOMPAT_64BIT | 0x200):
        return "ext4"
    return "ext3" if compat & _COMPAT_JOURNAL else "ext2"


def _time(seconds: int, extra: int | None) -> int:
    if extra is None:
        return seconds * 1_000_000_000
    return (seconds + ((extra & 3) << 32)) * 1_000_000_000 + (extra >> 2)


class _Inode:
    def __init__(self, number: int, raw: bytes, inode_size: int) -> None:
        self.number = number
        self.raw = raw
        (self.mode, uid_lo, size_lo, atime, ctime, mtime, _, gid_lo, self.links, _, self.flags) = struct.unpack_from(
            "<HHIiiiiHHII", raw, 0
        )
        acl_lo, size_hi = struct.unpack_from("<II", raw, 0x68)
        acl_hi, uid_hi, gid_hi = struct.unpack_from("<HHH", raw, 0x76)
        self.size = size_lo | size_hi << 32
        self.uid = uid_lo | uid_hi << 16
        self.gid = gid_lo | gid_hi << 16
        self.file_acl = acl_lo | acl_hi << 32
        extra = struct.unpack_from("<H", raw, 0x80)[0] if inode_size > 128 else 0
        self.extra_end = 128 + extra

        def field(offset: int) -> int | None:
            return struct.unpack_from("<I", raw, offset)[0] if offset + 4 <= min(self.extra_end, len(raw)) else None

        self.mtime = _time(mtime, field(0x88))
        self.times: list[tuple[str, int]] = [("atime", _time(atime, field(0x8C))), ("ctime", _time(ctime, field(0x84)))]
        crtime = field(0x90)
        if crtime is not None:
            self.times.append(("crtime", _time(struct.unpack_from("<i", raw, 0x90)[0], field(0x94))))
        self.i_block = raw[0x28:0x64]
        self.generation = struct.unpack_from("<I", raw, 0x64)[0]

    @property
    def type(self) -> str:
        return FILE_TYPES.get(stat.S_IFMT(self.mode), f"mode {self.mode:o}")


def _xattr_entries(data: bytes, start: int, base: int, end: int) -> list[tuple[str, bytes]]:
    """Extended attributes of a table whose entries begin at ``start``, values at ``base`` +
    their offset, all within ``data[:end]``."""
    out: list[tuple[str, bytes]] = []
    at = start
    while at + 16 <= end and struct.unpack_from("<I", data, at)[0] != 0:
        name_len, index, value_offs, value_inum, value_size = struct.unpack_from("<BBHII", data, at)
        name = data[at + 16 : at + 16 + name_len].decode("utf-8", "surrogateescape")
        full = _XATTR_PREFIX.get(index, f"index{index}.") + name
        if value_inum:
            value = f"(in inode {value_inum}, {value_size} bytes)".encode()
        else:
            lo = base + value_offs
            if lo + value_size > len(data):
                raise FormatError("an extended attribute's value leaves its table")
            value = data[lo : lo + value_size]
        out.append((full, value))
        at += (16 + name_len + 3) & ~3
    return out


class ExtFs:
    """An ext2/3/4 file system in ``span``."""

    def __init__(self, span: Span) -> None:
        self.span = span
        sb = span.read(_SB, 1024)
        if struct.unpack_from("<H", sb, 0x38)[0] != EXT_MAGIC:
            raise FormatError("no ext2/3/4 superblock")
        self.sb = sb
        log_block = struct.unpack_from("<I", sb, 0x18)[0]
        if log_block > 6:
            raise FormatError("an ext block size past 64 KiB")
        self.block_size = 1024 << log_block
        self.compat, self.incompat, self.ro_compat = struct.unpack_from("<III", sb, 0x5C)
        if self.incompat & _INCOMPAT_META_BG:
            raise FormatError("ext meta_bg group descriptors are not supported")
        if self.incompat & _INCOMPAT_ENCRYPT:
            raise FormatError("encrypted ext file systems are not supported")
        self.inodes_count, blocks_lo = struct.unpack_from("<II", sb, 0)
        blocks_hi = struct.unpack_from("<I", sb, 0x150)[0] if self.incompat & _INCOMPAT_64BIT else 0
        self.blocks = blocks_lo | blocks_hi << 32
        first_data_block, _, _, blocks_per_group, _, self.inodes_per_group = struct.unpack_from("<IIIIII", sb, 0x14)
        rev = struct.unpack_from("<I", sb, 0x4C)[0]
        self.inode_size = struct.unpack_from("<H", sb, 0x58)[0] if rev >= 1 else 128
        if (
            self.inode_size < 128
            or self.inode_size > self.block_size
            or not blocks_per_group
            or not self.inodes_per_group
        ):
            raise FormatError("an ext superblock with impossible sizes")
        desc_size = struct.unpack_from("<H", sb, 0xFE)[0] if self.incompat & _INCOMPAT_64BIT else 32
        desc_size = max(desc_size, 32)
        groups = -(-(self.blocks - first_data_block) // blocks_per_group)
        if groups <= 0 or groups * desc_size > span.length:
            raise FormatError("an ext superblock with an impossible group count")
        table = span.read((first_data_block + 1) * self.block_size, groups * desc_size)
        self.first_data_block, self.blocks_per_group = first_data_block, blocks_per_group
        self.descriptor_blocks = -(-groups * desc_size // self.block_size)
        self.groups: list[tuple[int, int, int]] = []  # block bitmap, inode bitmap, inode table
        for g in range(groups):
            at = g * desc_size
            lo = struct.unpack_from("<III", table, at)
            hi = struct.unpack_from("<III", table, at + 0x20) if desc_size >= 64 else (0, 0, 0)
            self.groups.append((lo[0] | hi[0] << 32, lo[1] | hi[1] << 32, lo[2] | hi[2] << 32))
        self.inode_tables = [g[2] for g in self.groups]
        self.paths: dict[int, str] = {}  # inode -> its first name, for `locate`
        self._owners: list[tuple[int, int, int]] = []  # (first block, count, inode) of what was read
        self.filetype = bool(self.incompat & _INCOMPAT_FILETYPE)
        self._digests: dict[int, str] = {}  # by inode: a file's hard links are hashed once
        # bytes hashed at most (holes of sparse files count): a corrupt size must not make a hang
        self._budget = 4 * span.length + _HASH_SLACK

    def metadata(self) -> dict[str, str]:
        sb = self.sb

        def u32(offset: int) -> str:
            return str(struct.unpack_from("<I", sb, offset)[0])

        return {
            "uuid": str(uuid.UUID(bytes=sb[0x68:0x78])),
            "label": sb[0x78:0x88].rstrip(b"\0").decode("utf-8", "backslashreplace"),
            "hash_seed": str(uuid.UUID(bytes=sb[0xEC:0xFC])),
            "features": f"{self.compat:#x}/{self.incompat:#x}/{self.ro_compat:#x}",
            "block_size": str(self.block_size),
            "blocks": str(self.blocks),
            "inodes": str(self.inodes_count),
            "free_blocks": u32(0x0C),
            "free_inodes": u32(0x10),
            "mkfs_time": u32(0x108),
            "write_time": u32(0x30),
            "mount_time": u32(0x2C),
            "lastcheck": u32(0x40),
            "mount_count": str(struct.unpack_from("<H", sb, 0x34)[0]),
            "journal_uuid": str(uuid.UUID(bytes=sb[0xD0:0xE0])),
        }

    def inode(self, number: int) -> _Inode:
        if not 0 < number <= self.inodes_count:
            raise FormatError(f"a directory names inode {number}, past the {self.inodes_count} there are")
        group, index = divmod(number - 1, self.inodes_per_group)
        if group >= len(self.inode_tables):
            raise FormatError(f"inode {number} is past the last group")
        offset = self.inode_tables[group] * self.block_size + index * self.inode_size
        return _Inode(number, self.span.read(offset, self.inode_size), self.inode_size)

    def _block(self, number: int) -> bytes:
        return self.span.read(number * self.block_size, self.block_size)

    def _extents(self, node: bytes, depth_left: int, out: list[tuple[int, int | None, int]]) -> None:
        magic, count, _, depth = struct.unpack_from("<HHHH", node, 0)
        if magic != _EXTENT_MAGIC or depth > depth_left or 12 + 12 * count > len(node):
            raise FormatError("a broken ext extent tree")
        for i in range(count):
            at = 12 + 12 * i
            if depth == 0:
                logical, length, start_hi, start_lo = struct.unpack_from("<IHHI", node, at)
                initialised = length <= 32768
                out.append(
                    (
                        logical,
                        (start_hi << 32 | start_lo) if initialised else None,
                        length if initialised else length - 32768,
                    )
                )
            else:
                _, leaf_lo, leaf_hi = struct.unpack_from("<IIH", node, at)
                self._extents(self._block(leaf_hi << 32 | leaf_lo), depth - 1, out)

    def _block_map(self, i_block: bytes, count: int) -> list[tuple[int, int | None, int]]:
        pointers = struct.unpack("<15I", i_block)
        per_block = self.block_size // 4
        out: list[tuple[int, int | None, int]] = []
        logical = 0

        def walk(pointer: int, level: int) -> None:
            nonlocal logical
            if logical >= count:
                return
            if pointer == 0:
                logical += per_block**level
                return
            if level == 0:
                if (
                    out
                    and out[-1][1] is not None
                    and out[-1][0] + out[-1][2] == logical
                    and out[-1][1] + out[-1][2] == pointer
                ):
                    out[-1] = (out[-1][0], out[-1][1], out[-1][2] + 1)
                else:
                    out.append((logical, pointer, 1))
                logical += 1
                return
            for child in struct.unpack(f"<{per_block}I", self._block(pointer)):
                walk(child, level - 1)
                if logical >= count:
                    return

        for i in range(12):
            walk(pointers[i], 0)
        for level, pointer in enumerate(pointers[12:], start=1):
            walk(pointer, level)
        return out

    def _xattrs(self, inode: _Inode) -> list[tuple[str, bytes]]:
        out: list[tuple[str, bytes]] = []
        raw = inode.raw
        at = inode.extra_end
        if at + 4 <= len(raw) and struct.unpack_from("<I", raw, at)[0] == _XATTR_MAGIC:
            out += _xattr_entries(raw, at + 4, at + 4, len(raw))
        if inode.file_acl:
            block = self._block(inode.file_acl)
            if struct.unpack_from("<I", block, 0)[0] != _XATTR_MAGIC:
                raise FormatError(f"inode {inode.number}'s extended attribute block is broken")
            out += _xattr_entries(block, 32, 0, len(block))
        return out

    def content(self, inode: _Inode) -> Iterator[bytes]:
        """The ``inode.size`` bytes of a file, directory or slow symlink, a piece at a time."""
        size = inode.size
        if inode.flags & _INLINE_FL:
            extra = dict(self._xattrs(inode)).get("system.data", b"")
            yield (inode.i_block + extra)[:size]
            return
        bs = self.block_size
        count = -(-size // bs)
        if inode.flags & _EXTENTS_FL:
            runs: list[tuple[int, int | None, int]] = []
            self._extents(inode.i_block, _MAX_DEPTH, runs)
            runs.sort()
        else:
            runs = self._block_map(inode.i_block, count)
        self._owners += [(physical, length, inode.number) for _, physical, length in runs if physical is not None]
        pos = 0
        for logical, physical, length in runs:
            start = logical * bs
            if start >= size:
                break
            if start < pos:
                raise FormatError(f"inode {inode.number} maps a block twice")
            yield from _zeros(start - pos)
            end = min(size, start + length * bs)
            at = start
            while at < end:
                n = min(CHUNK, end - at)
                yield bytes(n) if physical is None else self.span.read(physical * bs + (at - start), n)
                at += n
            pos = end
        yield from _zeros(size - pos)

    def _entries_of(self, data: bytes) -> Iterator[tuple[str, int]]:
        at = 0
        while at + 8 <= len(data):
            number, rec_len, name_len = struct.unpack_from("<IHB" if self.filetype else "<IHH", data, at)
            if rec_len < 8 or at + rec_len > len(data):
                break
            if number and 8 + name_len <= rec_len:
                name = data[at + 8 : at + 8 + name_len].decode("utf-8", "surrogateescape")
                if name not in (".", ".."):
                    yield name, number
            at += rec_len

    def children(self, inode: _Inode) -> list[tuple[str, int]]:
        """A directory's names and inode numbers, in their order on disk."""
        if inode.size > _MAX_DIR:
            raise FormatError(f"directory inode {inode.number} is {inode.size} bytes")
        if inode.flags & _INLINE_FL:
            extra = dict(self._xattrs(inode)).get("system.data", b"")
            return [*self._entries_of(inode.i_block[4:]), *self._entries_of(extra)]
        data = b"".join(self.content(inode))
        out: list[tuple[str, int]] = []
        for at in range(0, len(data), self.block_size):
            out += self._entries_of(data[at : at + self.block_size])
        return out

    def _entry(self, path: str, inode: _Inode) -> Entry:
        kind = inode.type
        digest = target = ""
        if kind == "file":
            digest = self._digests.get(inode.number, "")
            if not digest:
                self._budget -= inode.size
                if self._budget < 0:
                    raise FormatError(f"its files claim far more data than the image holds (inode {inode.number})")
                digest_of = hashlib.sha256()
                for piece in self.content(inode):
                    digest_of.update(piece)
                digest = self._digests[inode.number] = digest_of.hexdigest()
        elif kind == "symlink":
            if inode.size < 60 and not inode.flags & (_EXTENTS_FL | _INLINE_FL):
                raw = inode.i_block[: inode.size]
            else:
                raw = b"".join(self.content(inode))
            target = raw.decode("utf-8", "surrogateescape")
        elif kind in ("char", "block"):
            old, new = struct.unpack_from("<II", inode.i_block, 0)
            if old:
                target = f"{old >> 8 & 0xFF},{old & 0xFF}"
            else:
                target = f"{(new & 0xFFF00) >> 8},{(new & 0xFF) | (new >> 12 & 0xFFF00)}"
        xattrs = tuple(sorted((k, _show_value(v)) for k, v in self._xattrs(inode) if k != "system.data"))
        return Entry(
            path=path,
            type=kind,
            mode=inode.mode & 0o7777,
            uid=inode.uid,
            gid=inode.gid,
            mtime_ns=inode.mtime,
            size=inode.size,
            digest=digest,
            target=target,
            xattrs=xattrs,
            times=tuple(inode.times),
            inode=(("flags", inode.flags), ("generation", inode.generation)),
        )

    def listing(self) -> Listing:
        """Every name from the root down, each directory's names in their order on disk."""
        root = self.inode(_ROOT)
        entries = [self._entry("/", root)]
        seen = {_ROOT}
        stack: list[tuple[str, _Inode]] = [("/", root)]
        while stack:
            path, directory = stack.pop()
            for name, number in self.children(directory):
                inode = self.inode(number)
                child = path + name if path.endswith("/") else f"{path}/{name}"
                self.paths.setdefault(number, child)
                entries.append(self._entry(child, inode))
                if inode.type == "dir" and number not in seen:
                    seen.add(number)
                    stack.append((child, inode))
        return Listing(entries, metadata=self.metadata(), per_directory_order=True, locate=self.locate)

    def _has_backup(self, group: int) -> bool:
        if group <= 1 or not self.ro_compat & _RO_SPARSE_SUPER:
            return True
        for base in (3, 5, 7):
            n = base
            while n < group:
                n *= base
            if n == group:
                return True
        return False

    def locate(self, offset: int) -> str:
        """What the byte at ``offset`` of the image belongs to, in a few words."""
        if offset < _SB:
            return "the boot block"
        if offset < 2 * _SB:
            return "the superblock, in a field not compared (a checksum or a counter)"
        bs = self.block_size
        block = offset // bs
        table_blocks = -(-self.inodes_per_group * self.inode_size // bs)
        for g, (block_bitmap, inode_bitmap, inode_table) in enumerate(self.groups):
            first = self.first_data_block + g * self.blocks_per_group
            if self._has_backup(g) and first <= block <= first + self.descriptor_blocks:
                return f"the superblock or group descriptors of group {g}"
            if block == block_bitmap:
                return f"the block bitmap of group {g}"
            if block == inode_bitmap:
                return f"the inode bitmap of group {g}"
            if inode_table <= block < inode_table + table_blocks:
                number = g * self.inodes_per_group + (offset - inode_table * bs) // self.inode_size + 1
                name = self.paths.get(number) or {_ROOT: "/", 8: "the journal"}.get(number, "not in use or not listed")
                return f"inode {number} ({name}), in a field not compared (a checksum or a reserved field)"
        for start, count, number in self._owners:
            if start <= block < start + count:
                return f"a block of inode {number} ({self.paths.get(number, 'a directory or the root')})"
        if self.compat & _COMPAT_JOURNAL:
            journal = self.inode(8)
            if not journal.flags & _INLINE_FL:
                count = -(-journal.size // bs)
                if journal.flags & _EXTENTS_FL:
                    runs: list[tuple[int, int | None, int]] = []
                    self._extents(journal.i_block, _MAX_DEPTH, runs)
                else:
                    runs = self._block_map(journal.i_block, count)
                if any(p is not None and p <= block < p + n for _, p, n in runs):
                    return "the journal"
        return f"block {block}, which no listed file uses (free space, an extent tree or indirect block)"


def _zeros(count: int) -> Iterator[bytes]:
    while count > 0:
        n = min(CHUNK, count)
        yield bytes(n)
        count -= n


def _show_value(value: bytes) -> str:
    return value.hex() if len(value) <= 32 else "sha256:" + hashlib.sha256(value).hexdigest()[:16]
