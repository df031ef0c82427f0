"""Boot a built job in QEMU on this host, as isar-cip-core's start-qemu.sh (v1.8) does: the same
binary, machine, cpu, devices, kernel command line and firmware per architecture, held here as
data. Interactively on the terminal (the serial console, Ctrl-A X quits), or headless for `boot
--check`: wait for the login prompt, log in, run a smoke command, power off, all within one
deadline.

A job's artifacts are never written: disks boot with ``snapshot=on`` (the guest's writes go to a
temporary overlay) and compressed ones are unpacked once into the user's cache.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import os
import platform
import re
import secrets
import select
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any, Literal

from ..errors import InfrastructureError, UserError

if TYPE_CHECKING:
    from ..catalog import Catalog

JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
MEMORY = re.compile(r"[1-9][0-9]*[KMGT]?")
KVM_GET_API_VERSION = 0xAE00
KVM_API_VERSION = 12
UNPACKERS = (".zst", ".xz", ".gz", ".bz2")
# Debian's ovmf package: the firmware for an x86 wic when the job deployed none of its own
HOST_OVMF = Path("/usr/share/OVMF")
POWEROFF_GRACE = 30.0  # seconds a guest gets to power itself off before qemu is killed
PROMPT_SETTLE = 0.5  # seconds of console quiet after a password prompt before typing
SSH_PORT = 22222  # start-qemu.sh's hostfwd=tcp:127.0.0.1:22222-:22


@dataclass(frozen=True)
class ArchProfile:
    """One architecture's branch of start-qemu.sh."""

    qemu: str  # the binary
    package: str  # the Debian package that has it
    cpu: str
    machine: str
    smp: int
    root: str  # root= of a kernel boot (the ext4 is drive `disk`)
    disk: str  # the -device that shows drive `disk` to the guest
    net: str  # the -device of netdev `net`
    extra: tuple[str, ...]  # further words of QEMU_EXTRA_ARGS
    console: tuple[str, ...]  # console= arguments: the serial port is the console cipbuild reads
    firmware: Literal["pflash", "bios"]  # how a wic image's firmware is given
    kvm: bool  # start-qemu.sh asks for accel=kvm:tcg (amd64 only: the others run on another host arch)


# start-qemu.sh's virtio console is a `vc` chardev, which shows nothing without a display: null
# says so. The serial port stays the console (ttyAMA0 by the device tree's stdout-path, ttyS0).
VIRTIO_CONSOLE = ("-device", "virtio-serial-device", "-device", "virtconsole,chardev=con", "-chardev", "null,id=con")
VIRTIO_DISK, VIRTIO_NET = "virtio-blk-device,drive=disk", "virtio-net-device,netdev=net"

ARCHES: dict[str, ArchProfile] = {
    "x86_64": ArchProfile(
        "qemu-system-x86_64", "qemu-system-x86", "qemu64", "q35", 4, "/dev/sda", "ide-hd,drive=disk",
        "virtio-net-pci,netdev=net", ("-global", "ICH9-LPC.noreboot=off"), ("console=ttyS0",), "pflash", True,
    ),
    "aarch64": ArchProfile(
        "qemu-system-aarch64", "qemu-system-arm", "cortex-a57", "virt", 4, "/dev/vda", VIRTIO_DISK, VIRTIO_NET,
        VIRTIO_CONSOLE, (), "bios", False,
    ),
    "arm": ArchProfile(
        "qemu-system-arm", "qemu-system-arm", "cortex-a15", "virt", 2, "/dev/vda", VIRTIO_DISK, VIRTIO_NET,
        VIRTIO_CONSOLE, (), "bios", False,
    ),
    "riscv64": ArchProfile(
        "qemu-system-riscv64", "qemu-system-misc", "rv64", "virt", 4, "/dev/vda", VIRTIO_DISK, VIRTIO_NET,
        VIRTIO_CONSOLE, ("console=hvc1", "console=ttyS0"), "bios", False,
    ),
}  # fmt: skip
# the names start-qemu.sh and the catalogue use for them
ARCH_NAMES = {"amd64": "x86_64", "x86": "x86_64", "arm64": "aarch64", "armhf": "arm", "rv64": "riscv64"}


@dataclass(frozen=True)
class JobArtifact:
    type: str
    path: Path  # inside the job folder
    sha256: str


@dataclass(frozen=True)
class BootJob:
    """What metadata.json and the catalogue say about booting one built job."""

    id: str
    folder: Path
    board: str
    profile: ArchProfile
    options: frozenset[str]  # with the options they imply
    artifacts: tuple[JobArtifact, ...]

    def of_type(self, kind: str) -> list[JobArtifact]:
        return [a for a in self.artifacts if a.type == kind]

    def first(self, kind: str) -> JobArtifact | None:
        found = self.of_type(kind)
        return found[0] if found else None


@dataclass(frozen=True)
class Settings:
    """How to run qemu, besides what the job and its board decide."""

    headless: bool = False  # --check: console on qemu's stdio pipes, no monitor, no reboot
    memory: str = "1G"
    append: str = ""  # more kernel arguments
    accel: str = "auto"  # auto, kvm or tcg
    ssh_port: int = SSH_PORT  # host port forwarded to the guest's 22 (interactive only); 0: none
    qemu_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class BootPlan:
    job: BootJob
    mode: Literal["kernel", "firmware"]
    accel: str
    command: list[str]
    unpack: tuple[tuple[Path, Path], ...] = ()  # compressed artifact -> the file qemu is given

    def command_line(self) -> str:
        return shlex.join(self.command)


def load_job(out: Path, job_id: str, catalog: Catalog) -> BootJob:
    """The job ``job_id`` of the build folder ``out``; a UserError when it cannot be booted here."""
    if not JOB_ID.fullmatch(job_id):
        raise UserError(f"'{job_id}' is not a job id", where="JOB", hint="`cipbuild plan` lists them")
    folder = out / job_id
    meta_path = folder / "metadata.json"
    if not meta_path.is_file():
        from ..catalog import suggest

        known = [p.parent.name for p in out.glob("*/metadata.json")] if out.is_dir() else []
        raise UserError(
            f"no job '{job_id}' in {out}", where="JOB", hint=suggest(job_id, known) or "`cipbuild build` it first"
        )
    meta = _read_metadata(meta_path)
    record: dict[str, Any] = meta["job"] if isinstance(meta.get("job"), dict) else {}
    status = str(meta.get("status", ""))
    if status not in ("success", "up-to-date", "published"):
        raise UserError(f"job {job_id} has not built (status {status or 'unknown'})", hint="`cipbuild build` it first")
    board_name, distro = str(record.get("board", "")), str(record.get("distro", ""))
    if board_name not in catalog.boards:
        raise UserError(
            f"job {job_id}: board '{board_name}' is not in the catalogue",
            hint="--catalog names the one it was built with",
        )
    board = catalog.boards[board_name]
    qemu = board.test.qemu
    if not qemu:
        machines = sorted(n for n, b in catalog.boards.items() if b.test.qemu)
        raise UserError(
            f"board {board_name} is not a QEMU machine: boot job {job_id} on the board itself",
            hint="QEMU boards: " + ", ".join(machines),
        )
    arch = ARCH_NAMES.get(qemu.get("arch", ""), qemu.get("arch", "")) or ARCH_NAMES.get(board.arch, board.arch)
    if arch not in ARCHES:
        raise UserError(
            f"board {board_name}: cipbuild cannot boot qemu arch '{arch}'", hint="known: " + ", ".join(ARCHES)
        )
    profile = replace(
        ARCHES[arch], machine=qemu.get("machine") or ARCHES[arch].machine, cpu=qemu.get("cpu") or ARCHES[arch].cpu
    )
    options: list[Any] = record["options"] if isinstance(record.get("options"), list) else []
    return BootJob(
        job_id,
        folder,
        board_name,
        profile,
        catalog.with_implied(distro, [str(o) for o in options]),
        _artifacts(folder, meta.get("artifacts")),
    )


def _read_metadata(path: Path) -> dict[str, Any]:
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a job record ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a job record (a JSON object expected)")
    return data


def _artifacts(folder: Path, records: object) -> tuple[JobArtifact, ...]:
    """The artifact records, each path checked to stay inside the job folder."""
    found = []
    inside = Path(os.path.realpath(folder))
    for rec in records if isinstance(records, list) else []:
        if not isinstance(rec, dict) or not isinstance(rec.get("path"), str) or not isinstance(rec.get("type"), str):
            continue
        rel = PurePosixPath(rec["path"])
        if rel.is_absolute() or ".." in rel.parts:
            raise UserError(f"{folder / 'metadata.json'}: artifact path {rec['path']!r} leaves the job folder")
        path = folder / rel
        if not Path(os.path.realpath(path)).is_relative_to(inside):
            raise UserError(f"{path} leads outside the job folder", hint="rebuild the job")
        found.append(JobArtifact(rec["type"], path, str(rec.get("sha256", ""))))
    return tuple(found)


def kvm_usable(device: str = "/dev/kvm", cpuinfo: str = "/proc/cpuinfo") -> bool:
    """/dev/kvm opens read-write and speaks KVM's API, and the CPU has hardware virtualisation
    (vmx or svm): a sandbox may offer a /dev/kvm that creates VMs whose guests never run."""
    import fcntl

    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if fcntl.ioctl(fd, KVM_GET_API_VERSION) != KVM_API_VERSION:
            return False
    except OSError:
        return False
    finally:
        os.close(fd)
    try:
        flags = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return re.search(r"^flags\s*:.*\b(vmx|svm)\b", flags, re.MULTILINE) is not None


def choose_accel(profile: ArchProfile, wanted: str) -> str:
    """start-qemu.sh's accel=kvm:tcg where KVM really works, else software emulation (tcg)."""
    if wanted not in ("auto", "kvm", "tcg"):
        raise UserError(f"unknown accelerator '{wanted}'", where="--accel", hint="use auto, kvm or tcg")
    if wanted == "tcg":
        return "tcg"
    works = profile.kvm and platform.machine() == "x86_64" and kvm_usable()
    if wanted == "kvm" and not works:
        raise InfrastructureError(
            "--accel kvm: KVM is not usable here (no read-write /dev/kvm, no vmx/svm, or another architecture)"
        )
    return ("kvm" if wanted == "kvm" else "kvm:tcg") if works else "tcg"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cipbuild" / "boot"


def plan_boot(job: BootJob, settings: Settings, *, cache: Path | None = None) -> BootPlan:
    """The qemu command that boots ``job``: its kernel with its ext4 (or initrd) as start-qemu.sh
    does for a plain image, else its wic through the firmware (swupdate, secure boot)."""
    if not MEMORY.fullmatch(settings.memory):
        raise UserError(f"'{settings.memory}' is not a memory size", where="--memory", hint="e.g. 1G or 512M")
    p = job.profile
    unpack: list[tuple[Path, Path]] = []

    def media(art: JobArtifact) -> str:
        if not art.path.is_file():
            raise UserError(f"job {job.id}: artifact {art.path} is missing", hint="rebuild the job")
        path = art.path
        if path.suffix in UNPACKERS:
            key = art.sha256[:16] or _stat_key(path)
            path = (cache or cache_dir()) / f"{key}-{path.stem}"
            unpack.append((art.path, path))
        return str(path.absolute()).replace(",", ",,")  # qemu's option syntax doubles commas

    kernel, initrd, ext4, wic = (job.first(t) for t in ("kernel", "initrd", "ext4", "wic"))
    accel = choose_accel(p, settings.accel)
    words = [p.qemu, "-cpu", p.cpu, "-smp", str(p.smp), "-machine", f"{p.machine},accel={accel}", *p.extra]
    words += ["-device", p.net]
    disk_device = p.disk
    mode: Literal["kernel", "firmware"]
    # a wic without an ext4 is a whole disk with its own boot loader: boot it as a PC does
    if kernel is not None and (ext4 is not None or (initrd is not None and wic is None)):
        mode = "kernel"
        args = list(p.console)
        if ext4 is not None:
            words += ["-drive", _disk(media(ext4))]
            args += [f"root={p.root}", "rw"]
        words += ["-kernel", media(kernel)]
        if initrd is not None:
            words += ["-initrd", media(initrd)]
        words += ["-append", " ".join([*args, *settings.append.split()])]
    elif wic is not None:
        mode = "firmware"
        if p.firmware == "pflash":
            secure = "secure-boot" in job.options
            code, variables = _ovmf(job, secure)
            if secure:
                words += ["-global", "ICH9-LPC.disable_s3=1", "-global", "isa-fdc.driveA="]
                disk_device += ",bootindex=0"  # the disk, not the EFI shell
            words += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={media(code)}"]
            if variables is not None:  # written by the firmware: into the snapshot, never the artifact
                words += ["-drive", f"if=pflash,format=raw,unit=1,snapshot=on,file={media(variables)}"]
        else:
            firmware = job.first("firmware")
            if firmware is None:
                raise UserError(
                    f"job {job.id}: no firmware artifact to boot its wic image", hint="the board collects firmware.bin"
                )
            words += ["-bios", media(firmware)]
        words += ["-drive", _disk(media(wic))]
    else:
        have = ", ".join(sorted({a.type for a in job.artifacts})) or "none"
        raise UserError(
            f"job {job.id} has nothing to boot: a kernel with an ext4 or initrd, or a wic image (it has: {have})"
        )
    words += ["-device", disk_device] if ext4 is not None or mode == "firmware" else []
    words += ["-m", settings.memory]
    if settings.headless:
        words += ["-netdev", "user,id=net", "-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot"]
    else:
        port = f",hostfwd=tcp:127.0.0.1:{settings.ssh_port}-:22" if settings.ssh_port else ""
        words += ["-netdev", f"user,id=net{port}", "-nographic", "-serial", "mon:stdio"]
    return BootPlan(job, mode, accel, [*words, *settings.qemu_args], tuple(unpack))


def _disk(path: str) -> str:
    return f"file={path},discard=unmap,if=none,id=disk,format=raw,snapshot=on"


def _stat_key(path: Path) -> str:
    info = path.stat()
    return hashlib.sha256(f"{path.absolute()}\0{info.st_size}\0{info.st_mtime_ns}".encode()).hexdigest()[:16]


def _ovmf(job: BootJob, secure: bool) -> tuple[JobArtifact, JobArtifact | None]:
    """OVMF code (and, for secure boot, the snakeoil-enrolled variables): the job's own, else the host's."""
    own = job.of_type("firmware")
    if not own:
        own = [JobArtifact("firmware", p, "") for p in sorted(HOST_OVMF.glob("OVMF_*.fd"))]
    codes = sorted(
        (
            a
            for a in own
            if "CODE" in a.path.name and ("secboot" in a.path.name) == secure and ".ms." not in a.path.name
        ),
        key=lambda a: len(a.path.name),
    )
    variables = [a for a in own if "VARS" in a.path.name and "snakeoil" in a.path.name]
    if not codes or (secure and not variables):
        wanted = "OVMF_CODE_4M.secboot.fd and OVMF_VARS_4M.snakeoil.fd" if secure else "OVMF_CODE_4M.fd"
        raise UserError(
            f"job {job.id}: no {wanted} to boot its wic image (not among its artifacts, nor in {HOST_OVMF})",
            hint="apt-get install ovmf",
        )
    return codes[0], (variables[0] if secure else None)


def unpack(plan: BootPlan) -> None:
    """Unpack the plan's compressed artifacts into the cache (once: the name holds their sha256)."""
    for source, dest in plan.unpack:
        if dest.is_file():
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        try:
            _unpack_one(source, tmp)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)


def _unpack_one(source: Path, dest: Path) -> None:
    if source.suffix == ".zst":
        if shutil.which("zstd") is None:
            raise InfrastructureError(f"{source.name}: the zstd tool is not installed (apt-get install zstd)")
        done = subprocess.run(
            ["zstd", "-d", "-q", "-f", "-o", str(dest), str(source)], check=False, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise UserError(f"cannot unpack {source}: {done.stderr.strip() or 'zstd failed'}", hint="rebuild the job")
        return
    import bz2
    import gzip
    import lzma

    openers: dict[str, Callable[[Path], Any]] = {".xz": lzma.LZMAFile, ".gz": gzip.GzipFile, ".bz2": bz2.BZ2File}
    try:
        with openers[source.suffix](source) as src, dest.open("wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise UserError(f"cannot unpack {source}: {exc}", hint="rebuild the job") from None


def qemu_binary(plan: BootPlan) -> str:
    name = plan.command[0]
    found = shutil.which(name)
    if found is None:
        raise InfrastructureError(f"{name} is not installed (apt-get install {plan.job.profile.package})")
    return found


def run_interactive(plan: BootPlan) -> None:
    """qemu on this terminal until the guest powers off or the user quits (Ctrl-A X)."""
    binary = qemu_binary(plan)
    unpack(plan)
    code = subprocess.run([binary, *plan.command[1:]], check=False).returncode
    if code != 0:
        raise InfrastructureError(f"{plan.command[0]} exited with {code}")


# ------------------------------------------------------------------------------------------------
# boot --check


@dataclass(frozen=True)
class Login:
    """How to log in on the console; the prompts are regular expressions matched at a line's end."""

    user: str = "root"  # empty: the image offers a shell without a login
    password: str = "root"
    login_prompt: str = r"login:\s*$"
    password_prompt: str = r"[Pp]assword:\s*$"
    shell_prompt: str = r"[#$]\s*$"


def default_password(job: BootJob) -> str:
    """isar-cip-core v1.8: kas-cip.yml sets root's password to root, kas/opt/security.yml to CIPsecurity@123."""
    return "CIPsecurity@123" if "security" in job.options else "root"


REFUSED = re.compile(r"Login incorrect|Authentication failure|Permission denied", re.IGNORECASE)
# CSI and OSC sequences and two-character escapes: what getty, ash and systemd add to the console
ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")


class ConsoleClosedError(Exception):
    """qemu closed the console."""


class Console:
    """The guest's serial console on qemu's stdio: what it printed (escape sequences and carriage
    returns removed), how far the expected patterns consumed it, and a way to type."""

    def __init__(self, proc: subprocess.Popen[bytes], echo: IO[str] | None = None):
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        self.proc = proc
        self.text = ""
        self.pos = 0
        self.errors = bytearray()
        self._stdin = proc.stdin
        self._out: int | None = proc.stdout.fileno()
        self._err: int | None = proc.stderr.fileno()
        self._pending = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._echo = echo

    def expect(self, patterns: Mapping[str, re.Pattern[str]], deadline: float) -> tuple[str, re.Match[str]] | None:
        """The first of ``patterns`` to appear after what was consumed; None at the deadline.
        Raises ConsoleClosedError when qemu closes the console first."""
        while True:
            found = [(m.start(), name, m) for name, pat in patterns.items() if (m := pat.search(self.text, self.pos))]
            if found:
                _, name, match = min(found, key=lambda f: f[0])
                self.pos = match.end()
                return name, match
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if not self.read(min(remaining, 0.5)):
                raise ConsoleClosedError

    def read(self, timeout: float) -> bool:
        """Take what qemu wrote within ``timeout``; False once the console is closed."""
        if self._out is None:
            return False
        fds = [fd for fd in (self._out, self._err) if fd is not None]
        ready, _, _ = select.select(fds, [], [], max(timeout, 0))
        for fd in ready:
            chunk = os.read(fd, 65536)
            if fd == self._err:
                self.errors += chunk
                self._err = self._err if chunk else None
            elif chunk:
                self._absorb(chunk)
            else:
                self._out = None
                return False
        return True

    def settle(self, quiet: float, deadline: float) -> None:
        """Wait until the console has been quiet for ``quiet`` seconds (or the deadline)."""
        while time.monotonic() < deadline:
            before = len(self.text)
            if not self.read(min(quiet, max(deadline - time.monotonic(), 0))) or len(self.text) == before:
                return

    def _absorb(self, chunk: bytes) -> None:
        text = self._decoder.decode(chunk)
        if self._echo is not None:
            self._echo.write(text)
            self._echo.flush()
        data = self._pending + text
        cut = data.rfind("\x1b")
        if cut >= 0 and len(data) - cut < 64 and not ANSI.match(data, cut):
            data, self._pending = data[:cut], data[cut:]  # an escape sequence cut in two
        else:
            self._pending = ""
        self.text += ANSI.sub("", data).replace("\r", "")

    def send(self, line: str) -> None:
        try:
            self._stdin.write(line.encode() + b"\n")
            self._stdin.flush()
        except OSError:
            pass  # qemu is gone: the next expect says so

    def last_line(self) -> str:
        lines = [line.strip() for line in self.text.splitlines() if line.strip()]
        return lines[-1] if lines else ""


@dataclass
class CheckResult:
    job: str
    ok: bool
    accel: str
    command: str
    log: Path
    to_login: float | None = None  # seconds from starting qemu to the login prompt
    total: float = 0.0
    exit_status: int | None = None
    output: str = ""
    powered_off: bool = False
    error: str = ""
    events: list[tuple[float, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "result": "ok" if self.ok else "failed",
            "seconds_to_login_prompt": None if self.to_login is None else round(self.to_login, 3),
            "seconds_total": round(self.total, 3),
            "accel": self.accel,
            "command": self.command,
            "exit_status": self.exit_status,
            "output": self.output,
            "powered_off": self.powered_off,
            "log": str(self.log),
            "error": self.error or None,
            "steps": [{"seconds": round(at, 3), "step": step} for at, step in self.events],
        }


class CheckFailedError(Exception):
    """The check failed: the message says what was expected, ``seen`` what came instead."""

    def __init__(self, message: str, seen: str | None = None):
        super().__init__(message)
        self.seen = seen


# what runs once logged in instead of the smoke command: (console, deadline, event); raises CheckFailedError
Session = Callable[[Console, float, Callable[[str], None]], None]


def check(
    plan: BootPlan,
    login: Login,
    *,
    command: str = "uname -a",
    session: Session | None = None,
    log_name: str = "boot.log",
    poweroff: str = "poweroff",
    timeout: float = 300.0,
    on_event: Callable[[float, str], None] = lambda _t, _e: None,
    echo: IO[str] | None = None,
) -> CheckResult:
    """Boot headless, log in, run ``command``, power off; all within ``timeout`` seconds. The
    console goes to boot.log in the job folder. A failed check is a result (ok False, error);
    qemu that cannot run raises InfrastructureError."""
    binary = qemu_binary(plan)
    unpack(plan)
    log = plan.job.folder / log_name
    result = CheckResult(plan.job.id, False, plan.accel, command, log)
    start = time.monotonic()
    deadline = start + timeout

    def event(text: str) -> None:
        now = time.monotonic() - start
        result.events.append((now, text))
        on_event(now, text)

    event(f"booting {plan.job.id} ({plan.job.profile.qemu}, {plan.job.profile.machine}, {plan.accel})")
    proc = subprocess.Popen(
        [binary, *plan.command[1:]],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # Ctrl-C reaches cipbuild, which stops qemu itself
    )
    console = Console(proc, echo)
    try:
        try:
            _log_in(console, login, start, timeout, result, event)
            if session is None:
                _run_smoke(console, command, deadline, timeout, result, event)
            else:
                session(console, deadline, event)
            result.ok = True
            result.powered_off = _power_off(console, proc, poweroff, deadline, event)
        except ConsoleClosedError:
            code = proc.wait()
            if code != 0 and not console.text.strip():
                errors = [ln for ln in console.errors.decode(errors="replace").splitlines() if ln.strip()]
                raise InfrastructureError(
                    f"{plan.command[0]} failed (exit {code}): {errors[-1] if errors else 'no message'}"
                ) from None
            stage = "the login prompt" if result.to_login is None else "the command's result"
            raise CheckFailedError(f"qemu stopped (exit {code}) before {stage}") from None
    except CheckFailedError as failed:
        seen = f"last console line: {_quoted(console.last_line())}" if failed.seen is None else failed.seen
        result.error = f"{plan.job.id}: {failed}; {seen}; console in {log}"
    finally:
        _stop(proc)
        result.total = time.monotonic() - start
        _save_log(log, plan, console)
    return result


def _log_in(
    console: Console,
    login: Login,
    start: float,
    timeout: float,
    result: CheckResult,
    event: Callable[[str], None],
) -> None:
    """Wait for the login prompt (or, without a user, the shell prompt) and log in."""
    deadline = start + timeout
    flags = re.MULTILINE
    shell = re.compile(login.shell_prompt, flags)
    if not login.user:
        if console.expect({"shell": shell}, deadline) is None:
            raise CheckFailedError(f"no shell prompt /{login.shell_prompt}/ within {timeout:g} s")
        event("shell prompt")
        result.to_login = result.events[-1][0]  # the step's own time, so the two read alike
        return
    prompt = re.compile(login.login_prompt, flags)
    if console.expect({"login": prompt}, deadline) is None:
        raise CheckFailedError(f"no login prompt /{login.login_prompt}/ within {timeout:g} s")
    event("login prompt")
    result.to_login = result.events[-1][0]
    console.send(login.user)
    asked = {"password": re.compile(login.password_prompt, flags), "shell": shell, "refused": REFUSED}
    seen = console.expect(asked, deadline)
    if seen is not None and seen[0] == "password":
        # PAM turns echo off with TCSAFLUSH after printing the prompt: a password typed before that is lost
        console.settle(PROMPT_SETTLE, deadline)
        console.send(login.password)
        seen = console.expect({"shell": shell, "refused": REFUSED, "login": prompt}, deadline)
    if seen is None:
        raise CheckFailedError(
            f"no shell prompt /{login.shell_prompt}/ after logging in as {login.user} within {timeout:g} s"
        )
    if seen[0] != "shell":
        raise CheckFailedError(f"login as {login.user} refused (check --user and --password)")
    event(f"logged in as {login.user}")


def run_marked(console: Console, line: str, deadline: float) -> tuple[int, str] | None:
    """Type ``line`` and wait for it to finish: its exit status and what it printed, or None at the deadline."""
    marker = f"CIPBUILD-RC-{secrets.token_hex(4)}"
    # the typed line shows `$?`, only the shell's output shows the number
    console.send(f'{line}; echo "{marker}=$?"')
    sent = console.pos
    found = console.expect({"rc": re.compile(re.escape(marker) + r"=(\d+)")}, deadline)
    if found is None:
        return None
    lines = console.text[sent : found[1].start()].splitlines()
    return int(found[1][1]), "\n".join(ln for ln in lines[1:] if marker not in ln).strip()  # past the echo


def _run_smoke(
    console: Console, command: str, deadline: float, timeout: float, result: CheckResult, event: Callable[[str], None]
) -> None:
    done = run_marked(console, command, deadline)
    if done is None:
        raise CheckFailedError(f"`{command}` did not finish within {timeout:g} s")
    result.exit_status, result.output = done
    if result.exit_status != 0:
        last = result.output.splitlines()[-1] if result.output else ""
        raise CheckFailedError(f"`{command}` exited with {result.exit_status}", f"its last line: {_quoted(last)}")
    event(f"command ok: {command}")


def _power_off(
    console: Console, proc: subprocess.Popen[bytes], poweroff: str, deadline: float, event: Callable[[str], None]
) -> bool:
    """Ask the guest to power off; True when qemu ended by itself in time."""
    if not poweroff:
        return False
    console.send(poweroff)
    until = min(time.monotonic() + POWEROFF_GRACE, deadline)
    while proc.poll() is None and time.monotonic() < until:
        if not console.read(min(0.5, max(until - time.monotonic(), 0))):
            proc.wait()
            break
    if proc.poll() is None:
        event("the guest did not power off: stopping qemu")
        return False
    event("powered off")
    return True


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def _save_log(log: Path, plan: BootPlan, console: Console) -> None:
    from ..buildjob import write_file

    errors = console.errors.decode(errors="replace")
    text = f"# {plan.command_line()}\n{console.text}\n" + (f"# qemu's messages:\n{errors}" if errors else "")
    try:
        write_file(log, text)
    except OSError as exc:
        raise InfrastructureError(f"cannot write {log}: {exc.strerror or exc}") from None


def _quoted(line: str, limit: int = 120) -> str:
    line = line if len(line) <= limit else line[: limit - 3] + "..."
    return "'" + "".join(c if c.isprintable() else repr(c)[1:-1] for c in line) + "'"
