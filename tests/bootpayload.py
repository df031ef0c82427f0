"""A tiny bootable payload for LAVA's qemu device: a Debian kernel and a busybox initramfs.

The kernel is the host's own Debian kernel (``/boot/vmlinuz-*``, from ``linux-image-cloud-amd64`` on CI).
The initramfs is written here from scratch in ``cpio.newc`` format (gzip), so building it needs no root
and no ``cpio`` tool: the static ``/bin/busybox`` of Debian's ``busybox-static``, its applet links, a few
device nodes, ``/init`` and ``/etc/profile``. ``/init`` mounts the usual file systems, prints the marker
and then keeps an interactive shell on the serial console whose prompt is :data:`PROMPT`, which is what
LAVA's ``boot`` action waits for (``prompts: [PROMPT]``, no ``auto_login``). That is all LAVA's
lava-test-shell overlay needs: ``/bin/sh``, ``mkdir``, ``cat``, ``date``, ``grep``, ``mv``, ``basename``…
(all busybox applets), a writable ``/`` (the initramfs is a tmpfs) and ``/tmp``.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import select
import shutil
import stat
import struct
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = [
    "DEFAULT_MARKER",
    "KERNEL_ARGS",
    "PROMPT",
    "BootResult",
    "CpioEntry",
    "boot_in_qemu",
    "busybox_path",
    "kernel_path",
    "make_initramfs",
    "write_cpio",
]

PROMPT: Final = "cipbuild-lava# "
DEFAULT_MARKER: Final = "CIPBUILD-PAYLOAD-UP"
# no `quiet`: LAVA waits for the kernel's "Linux version" line; rdinit names our /init explicitly
KERNEL_ARGS: Final = "console=ttyS0,115200 rdinit=/init panic=-1"
KERNEL_ENV: Final = "CIPBUILD_TEST_KERNEL"
BUSYBOX_ENV: Final = "CIPBUILD_TEST_BUSYBOX"

_INIT: Final = """#!/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=vt100
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec 0</dev/console 1>/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs tmpfs /tmp
mkdir -p /dev/pts /run && mount -t devpts devpts /dev/pts
hostname cipbuild-payload
ip link set lo up 2>/dev/null
for hook in /etc/init.d/S*; do [ -x "$hook" ] && "$hook"; done
echo "{marker}"
# PID 1 must not exit: give the console a new login shell whenever the last one ends
while true; do
    setsid cttyhack /bin/sh -l
    sleep 1
done
"""

_PROFILE: Final = f"""export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
PS1='{PROMPT}'
export PS1
cd /
"""


@dataclass(frozen=True)
class CpioEntry:
    """One archive member: path without a leading ``/``, full ``st_mode``, content (a link's target), device."""

    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def kernel_path() -> Path:
    """The kernel to boot: ``$CIPBUILD_TEST_KERNEL``, else the newest readable ``/boot/vmlinuz-*``."""
    override = os.environ.get(KERNEL_ENV)
    if override:
        path = Path(override)
        if not path.is_file():
            raise FileNotFoundError(f"{KERNEL_ENV}={override} is not a file")
        return path
    found = [p for p in Path("/boot").glob("vmlinuz-*") if p.is_file() and os.access(p, os.R_OK)]
    if not found:
        raise FileNotFoundError("no readable /boot/vmlinuz-*: apt-get install linux-image-cloud-amd64")
    return max(found, key=lambda p: _version_key(p.name))


def _version_key(name: str) -> tuple[int | str, ...]:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def busybox_path() -> Path:
    """A statically linked busybox (``$CIPBUILD_TEST_BUSYBOX`` or ``/bin/busybox`` of ``busybox-static``)."""
    candidates = [os.environ.get(BUSYBOX_ENV, ""), "/bin/busybox", "/usr/bin/busybox", shutil.which("busybox") or ""]
    for candidate in filter(None, candidates):
        path = Path(candidate)
        if path.is_file() and os.access(path, os.X_OK):
            if not _is_static_elf(path):
                raise FileNotFoundError(f"{path} is dynamically linked: apt-get install busybox-static")
            return path
    raise FileNotFoundError("no busybox: apt-get install busybox-static")


def _is_static_elf(path: Path) -> bool:
    """True for a 64-bit little-endian ELF with no PT_INTERP (no dynamic loader needed)."""
    with path.open("rb") as f:
        header = f.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
            return False
        (phoff,) = struct.unpack_from("<Q", header, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", header, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))  # 3: PT_INTERP


def _applets(busybox: Path) -> list[str]:
    """The applets' install paths (``bin/sh``, ``sbin/ip``…), as the binary itself lists them."""
    listed = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True, check=True).stdout
    return [line.strip().lstrip("/") for line in listed.splitlines() if line.strip()]


def write_cpio(entries: Iterable[CpioEntry], out: io.BufferedIOBase | io.BytesIO) -> None:
    """Write ``entries`` as a cpio "newc" archive (what the kernel unpacks into its initramfs)."""

    def header(ino: int, entry: CpioEntry, size: int, name: bytes) -> bytes:
        nlink = 2 if stat.S_ISDIR(entry.mode) else 1
        fields = (ino, entry.mode, 0, 0, nlink, 0, size, 0, 0, entry.rdev[0], entry.rdev[1], len(name) + 1, 0)
        return b"070701" + b"".join(b"%08X" % value for value in fields)

    def pad(length: int) -> bytes:
        return b"\0" * (-length % 4)

    for ino, entry in enumerate([*entries, CpioEntry("TRAILER!!!", 0)], start=1):
        name = entry.name.encode()
        head = header(ino if entry.name != "TRAILER!!!" else 0, entry, len(entry.data), name) + name + b"\0"
        out.write(head + pad(len(head)))
        out.write(entry.data + pad(len(entry.data)))


def make_initramfs(
    dest: Path,
    *,
    marker: str = DEFAULT_MARKER,
    extra_files: Mapping[str, bytes | str | Path] | None = None,
    busybox: Path | None = None,
) -> Path:
    """Write a gzip'd cpio.newc initramfs to ``dest`` and return ``dest``.

    ``extra_files`` maps absolute guest paths to content (bytes, text or a host file to copy); they are
    added executable, so ``/etc/init.d/S50-something`` runs at boot before the marker is printed.
    """
    box = busybox or busybox_path()
    entries: dict[str, CpioEntry] = {}

    def add_dir(name: str) -> None:
        parts = name.strip("/").split("/")
        for depth in range(1, len(parts) + 1):
            path = "/".join(parts[:depth])
            if path and path not in entries:
                entries[path] = CpioEntry(path, stat.S_IFDIR | 0o755)

    def add_file(name: str, data: bytes, mode: int = 0o755) -> None:
        path = name.strip("/")
        add_dir(os.path.dirname(path))
        entries[path] = CpioEntry(path, stat.S_IFREG | mode, data)

    for top in ("bin", "sbin", "usr/bin", "usr/sbin", "etc/init.d", "proc", "sys", "tmp", "run", "root", "mnt"):
        add_dir(top)
    add_dir("dev")
    entries["dev/console"] = CpioEntry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
    entries["dev/null"] = CpioEntry("dev/null", stat.S_IFCHR | 0o666, rdev=(1, 3))
    entries["dev/ttyS0"] = CpioEntry("dev/ttyS0", stat.S_IFCHR | 0o660, rdev=(4, 64))
    entries["tmp"] = CpioEntry("tmp", stat.S_IFDIR | 0o1777)

    add_file("bin/busybox", box.read_bytes())
    for applet in _applets(box):
        if applet in ("bin/busybox", "linuxrc", "init") or "/" not in applet:
            continue
        add_dir(os.path.dirname(applet))
        target = os.path.relpath("bin/busybox", os.path.dirname(applet))
        entries[applet] = CpioEntry(applet, stat.S_IFLNK | 0o777, target.encode())

    add_file("init", _INIT.replace("{marker}", marker).encode())
    add_file("etc/profile", _PROFILE.encode(), 0o644)
    add_file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644)
    add_file("etc/group", b"root:x:0:\n", 0o644)
    add_file("etc/hostname", b"cipbuild-payload\n", 0o644)
    for name, content in (extra_files or {}).items():
        if isinstance(content, Path):
            data = content.read_bytes()
        elif isinstance(content, str):
            data = content.encode()
        else:
            data = content
        add_file(name, data)

    raw = io.BytesIO()
    write_cpio(sorted(entries.values(), key=lambda e: e.name), raw)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with dest.open("wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0, compresslevel=6) as gz:
        gz.write(raw.getvalue())
    return dest


@dataclass(frozen=True)
class BootResult:
    console: str
    seconds: float


def boot_in_qemu(
    kernel: Path,
    initrd: Path,
    *,
    expect: str = PROMPT,
    send: str = "",
    timeout: float = 120.0,
    memory_mb: int = 512,
) -> BootResult:
    """Boot under ``qemu-system-x86_64`` (TCG), wait for ``expect`` on the serial console (then, if ``send``
    is given, type it and wait for ``expect`` once more), then kill qemu and return the console text."""
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        raise FileNotFoundError("qemu-system-x86_64 missing: apt-get install qemu-system-x86")
    command = [
        qemu, "-machine", "pc,accel=tcg", "-m", str(memory_mb), "-nographic", "-no-reboot", "-monitor", "none",
        "-net", "none", "-kernel", str(kernel), "-initrd", str(initrd), "-append", KERNEL_ARGS,
    ]  # fmt: skip
    start = time.monotonic()
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdin is not None and proc.stdout is not None
    stdout_fd, console = proc.stdout.fileno(), bytearray()

    def wait_for(text: bytes, after: int) -> int:
        while (found := console.find(text, after)) < 0:
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"no {text!r} after {timeout:.0f} s; console:\n{console.decode(errors='replace')}")
            ready, _, _ = select.select([stdout_fd], [], [], 0.5)
            if ready:
                chunk = os.read(stdout_fd, 65536)
                if not chunk:
                    raise RuntimeError(f"qemu exited ({proc.wait()}); console:\n{console.decode(errors='replace')}")
                console.extend(chunk)
        return found + len(text)

    try:
        seen = wait_for(expect.encode(), 0)
        if send:
            proc.stdin.write(send.encode() + b"\n")
            proc.stdin.flush()
            wait_for(expect.encode(), seen)
        return BootResult(console.decode(errors="replace"), time.monotonic() - start)
    finally:
        proc.kill()
        proc.wait()
