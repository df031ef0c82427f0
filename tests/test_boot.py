"""`cipbuild boot`: start-qemu.sh's command lines per architecture (pure, --dry-run), and `boot
--check` on a Debian kernel with a busybox initramfs under qemu-system-x86_64 (software emulation),
whose console offers a real getty + login with root's password, as isar-cip-core's images do."""

from __future__ import annotations

import hashlib
import json
import os
import re
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from bootpayload import PROMPT, kernel_path, make_initramfs
from conftest import Result
from lavafixtures import unavailable

import orchestrator.cli.boot  # noqa: F401  (registers the verb, whether or not cli/__init__ lists it yet)
from orchestrator.teststage.boot import kvm_usable

Cli = Callable[..., Result]
AMD64 = "isar-bookworm-qemu-amd64"
# root's password "root" (openssl passwd -6 -salt cipbuildsalt root), as isar-cip-core's kas-cip.yml sets it
ROOT_HASH = "$6$cipbuildsalt$I092LWQU00uhuZaHOfulv9xj18rlY8ruzs8sEbFvw1Q.FEhquKmYxjTspctfMqfnhSoenFuImu51dfmk9g3aV1"
# PID 1 (the payload's /init) runs the hooks before its own shell: this one never returns, so the console
# only ever offers a login, as a getty does on an image's serial console
GETTY_HOOK = "#!/bin/sh\nwhile true; do setsid getty -L 115200 ttyS0 vt100; sleep 1; done\n"
LOGIN_FILES = {
    "/etc/init.d/S90getty": GETTY_HOOK,
    "/etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
    "/etc/shadow": f"root:{ROOT_HASH}:19000:0:99999:7:::\n",
    "/etc/profile": "PS1='root@cipbuild-payload:~# '\n",  # the prompt Debian's bash gives root
}
# the payload's init has no init system to ask: power off the machine itself (ACPI, then qemu exits)
POWEROFF = ("--poweroff", "poweroff -f")


def make_job(
    out: Path, job_id: str, files: dict[str, tuple[str, bytes | Path]], options: list[str] | None = None
) -> Path:
    """A job folder as `build` (and `sign --compress`) leave it: metadata.json and artifacts/."""
    folder = out / job_id
    (folder / "artifacts").mkdir(parents=True)
    records = []
    for name, (kind, content) in files.items():
        path = folder / "artifacts" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        data = content.read_bytes() if isinstance(content, Path) else content
        path.write_bytes(data)
        records.append(
            {"type": kind, "path": f"artifacts/{name}", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        )
    distro, release, board = job_id.split("-", 2)
    for option in options or []:
        board = board.removesuffix(f"-{option}")
    job = {"id": job_id, "distro": distro, "release": release, "board": board, "options": options or []}
    meta = {"schema": 1, "job": job, "status": "success", "artifacts": records}
    (folder / "metadata.json").write_text(json.dumps(meta))
    return folder


def words(result: Result) -> list[str]:
    assert result.code == 0, result.err
    command: list[str] = json.loads(result.out)["command"]
    return command


def option(command: list[str], flag: str) -> list[str]:
    return [command[i + 1] for i, word in enumerate(command) if word == flag]


# --- command lines, as start-qemu.sh v1.8 builds them ------------------------------------------------


def test_dry_run_arm64(cli: Cli, tmp_path: Path) -> None:
    job = "isar-bookworm-qemu-arm64"
    folder = make_job(
        tmp_path,
        job,
        {"rootfs.ext4": ("ext4", b"\0" * 4096), "vmlinux": ("kernel", b"Image"), "initrd.img": ("initrd", b"x")},
    )
    art = folder / "artifacts"
    command = words(cli("boot", job, "--out", str(tmp_path), "--dry-run", "--json"))
    assert command == [
        "qemu-system-aarch64", "-cpu", "cortex-a57", "-smp", "4", "-machine", "virt,accel=tcg",
        "-device", "virtio-serial-device", "-device", "virtconsole,chardev=con", "-chardev", "null,id=con",
        "-device", "virtio-net-device,netdev=net",
        "-drive", f"file={art / 'rootfs.ext4'},discard=unmap,if=none,id=disk,format=raw,snapshot=on",
        "-kernel", str(art / "vmlinux"), "-initrd", str(art / "initrd.img"), "-append", "root=/dev/vda rw",
        "-device", "virtio-blk-device,drive=disk", "-m", "1G",
        "-netdev", "user,id=net,hostfwd=tcp:127.0.0.1:22222-:22", "-nographic", "-serial", "mon:stdio",
    ]  # fmt: skip
    plain = cli("boot", job, "--out", str(tmp_path), "--dry-run", "--check", "--append", "loglevel=3")
    assert plain.code == 0 and plain.out.count("\n") == 1
    assert "-display none -monitor none -serial stdio -no-reboot" in plain.out
    assert "'root=/dev/vda rw loglevel=3'" in plain.out and "hostfwd" not in plain.out


@pytest.mark.parametrize(
    ("board", "binary", "machine", "cpu", "smp", "append", "disk"),
    [
        (
            "qemu-amd64", "qemu-system-x86_64", "q35", "qemu64", "4",
            "console=ttyS0 root=/dev/sda rw", "ide-hd,drive=disk",
        ),
        ("qemu-arm", "qemu-system-arm", "virt", "cortex-a15", "2", "root=/dev/vda rw", "virtio-blk-device,drive=disk"),
        (
            "qemu-riscv64", "qemu-system-riscv64", "virt", "rv64", "4",
            "console=hvc1 console=ttyS0 root=/dev/vda rw", "virtio-blk-device,drive=disk",
        ),
    ],
)  # fmt: skip
def test_dry_run_per_arch(
    cli: Cli, tmp_path: Path, board: str, binary: str, machine: str, cpu: str, smp: str, append: str, disk: str
) -> None:
    job = f"isar-bookworm-{board}"
    make_job(tmp_path, job, {"rootfs.ext4": ("ext4", b"\0" * 4096), "kernel": ("kernel", b"k")})
    command = words(cli("boot", job, "--out", str(tmp_path), "--dry-run", "--json", "--accel", "tcg"))
    assert command[0] == binary
    assert option(command, "-machine") == [f"{machine},accel=tcg"] and option(command, "-cpu") == [cpu]
    assert option(command, "-smp") == [smp] and option(command, "-append") == [append]
    assert disk in option(command, "-device") and option(command, "-m") == ["1G"]
    assert ("virtio-net-pci,netdev=net" if board == "qemu-amd64" else "virtio-net-device,netdev=net") in command


def test_dry_run_wic_with_firmware(cli: Cli, tmp_path: Path) -> None:
    """swupdate and secure-boot images boot their wic through the firmware the job deployed."""
    ovmf = {f"OVMF/{name}": ("firmware", name.encode()) for name in (
        "OVMF_CODE_4M.fd", "OVMF_CODE_4M.secboot.fd", "OVMF_VARS_4M.fd", "OVMF_VARS_4M.snakeoil.fd")}  # fmt: skip
    secure = "isar-bookworm-qemu-amd64-secure-boot"
    art = make_job(tmp_path, secure, {"image.wic": ("wic", b"\0" * 512), "vmlinuz": ("kernel", b"k"), **ovmf},
                   ["secure-boot"]) / "artifacts"  # fmt: skip
    command = words(cli("boot", secure, "--out", str(tmp_path), "--dry-run", "--json"))
    assert option(command, "-drive") == [
        f"if=pflash,format=raw,unit=0,readonly=on,file={art}/OVMF/OVMF_CODE_4M.secboot.fd",
        f"if=pflash,format=raw,unit=1,snapshot=on,file={art}/OVMF/OVMF_VARS_4M.snakeoil.fd",
        f"file={art}/image.wic,discard=unmap,if=none,id=disk,format=raw,snapshot=on",
    ]
    assert option(command, "-global") == ["ICH9-LPC.noreboot=off", "ICH9-LPC.disable_s3=1", "isa-fdc.driveA="]
    assert "ide-hd,drive=disk,bootindex=0" in command and "-kernel" not in command

    swu = "isar-bookworm-qemu-amd64-swupdate"
    art = make_job(tmp_path, swu, {"image.wic": ("wic", b"\0"), **ovmf}, ["swupdate"]) / "artifacts"
    command = words(cli("boot", swu, "--out", str(tmp_path), "--dry-run", "--json"))
    assert option(command, "-drive")[0] == f"if=pflash,format=raw,unit=0,readonly=on,file={art}/OVMF/OVMF_CODE_4M.fd"
    assert len(option(command, "-drive")) == 2 and "ide-hd,drive=disk" in command

    arm = "isar-bookworm-qemu-arm64-swupdate"
    art = make_job(tmp_path, arm, {"image.wic.zst": ("wic", b"zst"), "firmware.bin": ("firmware", b"u-boot")},
                   ["swupdate"]) / "artifacts"  # fmt: skip
    data = json.loads(cli("boot", arm, "--out", str(tmp_path), "--dry-run", "--json").out)
    assert option(data["command"], "-bios") == [f"{art}/firmware.bin"]
    unpacked = data["unpack"][0]["to"]  # a compressed image is booted from its unpacked copy in the cache
    assert data["unpack"][0]["from"] == f"{art}/image.wic.zst" and unpacked.endswith("-image.wic")
    assert f"file={unpacked},discard=unmap,if=none,id=disk,format=raw,snapshot=on" in data["command"]


# --- what cannot be booted ---------------------------------------------------------------------------


def one_line_error(result: Result, code: int) -> str:
    """The error line, the last of stderr (after --check's progress lines, each `[ seconds] step`)."""
    assert result.code == code, (result.code, result.out, result.err)
    *progress, error = result.err.splitlines()
    assert error.startswith("cipbuild: error: ") and all(line.startswith("[") for line in progress), result.err
    assert "Traceback" not in result.err
    return error


def test_unknown_job(cli: Cli, tmp_path: Path) -> None:
    make_job(tmp_path, AMD64, {"vmlinuz": ("kernel", b"k"), "initrd": ("initrd", b"i")})
    err = one_line_error(cli("boot", "isar-bookworm-qemu-amd46", "--out", str(tmp_path), "--check"), 2)
    assert "no job 'isar-bookworm-qemu-amd46'" in err and f"did you mean '{AMD64}'" in err
    one_line_error(cli("boot", "../etc", "--out", str(tmp_path)), 2)


def test_nothing_to_boot(cli: Cli, tmp_path: Path) -> None:
    make_job(tmp_path, AMD64, {"vmlinuz": ("kernel", b"k"), "image.dpkg_status": ("dpkg_status", b"")})
    err = one_line_error(cli("boot", AMD64, "--out", str(tmp_path), "--check"), 2)
    assert "has nothing to boot" in err and "dpkg_status, kernel" in err
    make_job(tmp_path, "isar-bookworm-bbb", {"image.wic": ("wic", b"\0")})
    assert "not a QEMU machine" in one_line_error(cli("boot", "isar-bookworm-bbb", "--out", str(tmp_path)), 2)
    (tmp_path / AMD64 / "artifacts" / "vmlinuz").unlink()
    make_job(tmp_path, "isar-bookworm-qemu-arm64", {"vmlinux": ("kernel", b"k"), "rootfs.ext4": ("ext4", b"")})
    (tmp_path / "isar-bookworm-qemu-arm64" / "artifacts" / "vmlinux").unlink()
    err = one_line_error(cli("boot", "isar-bookworm-qemu-arm64", "--out", str(tmp_path), "--dry-run"), 2)
    assert "vmlinux is missing" in err


def test_qemu_missing(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_job(tmp_path, AMD64, {"vmlinuz": ("kernel", b"k"), "initrd": ("initrd", b"i")})
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    err = one_line_error(cli("boot", AMD64, "--out", str(tmp_path), "--check"), 4)
    assert "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)" in err


def test_kvm_usable_needs_a_kvm_device(tmp_path: Path) -> None:
    (tmp_path / "kvm").write_bytes(b"")
    assert not kvm_usable(str(tmp_path / "kvm"))
    assert not kvm_usable(str(tmp_path / "missing"))


# --- boot --check under qemu -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def payload(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The host's Debian kernel, an initramfs whose console offers a login, and one that never does."""
    if shutil.which("qemu-system-x86_64") is None:
        unavailable("qemu-system-x86_64 missing: apt-get install qemu-system-x86")
    try:
        kernel = kernel_path()
        root = tmp_path_factory.mktemp("boot-payload")
        login = make_initramfs(root / "login.cpio.gz", extra_files=LOGIN_FILES)
        shell = make_initramfs(root / "shell.cpio.gz")
    except FileNotFoundError as exc:
        unavailable(str(exc))
    return {"kernel": kernel, "login": login, "shell": shell}


def boot_job(out: Path, payload: dict[str, Path], initrd: str = "login") -> Path:
    """The built qemu-amd64 job: kernel, initrd, and an ext4 that `sign --compress zstd` compressed."""
    if shutil.which("zstd") is None:
        unavailable("zstd missing: apt-get install zstd")
    raw = out.parent / "rootfs.ext4"
    raw.write_bytes(b"\0" * (1 << 20))  # any bytes: the initramfs's /init never mounts root=/dev/sda
    subprocess.run(["zstd", "-q", "-f", str(raw)], check=True)
    files: dict[str, tuple[str, bytes | Path]] = {
        "cip-core-image-cip-core-bookworm-qemu-amd64-vmlinuz": ("kernel", payload["kernel"]),
        "cip-core-image-cip-core-bookworm-qemu-amd64-initrd.img": ("initrd", payload[initrd]),
        "cip-core-image-cip-core-bookworm-qemu-amd64.ext4.zst": ("ext4", raw.with_name("rootfs.ext4.zst")),
    }
    return make_job(out, AMD64, files)


@pytest.mark.integration
def test_check_logs_in_and_runs_the_command(cli: Cli, tmp_path: Path, payload: dict[str, Path]) -> None:
    folder = boot_job(tmp_path / "out", payload)
    before = {p.name: p.read_bytes() for p in (folder / "artifacts").iterdir()}
    started = time.monotonic()
    result = cli("boot", AMD64, "--out", str(tmp_path / "out"), "--check", "--json", "--timeout", "120", *POWEROFF)
    took = time.monotonic() - started
    assert result.code == 0, result.err
    report: dict[str, Any] = json.loads(result.out)
    assert report["result"] == "ok" and report["job"] == AMD64 and report["exit_status"] == 0
    assert report["output"].startswith("Linux cipbuild-payload ") and report["powered_off"] is True
    assert 0 < report["seconds_to_login_prompt"] < report["seconds_total"] <= took
    assert report["accel"] in ("tcg", "kvm:tcg") and report["log"] == str(folder / "boot.log")
    steps = ["login prompt", "logged in as root", "command ok: uname -a", "powered off"]
    assert [s["step"] for s in report["steps"]][1:] == steps and report["steps"][0]["step"].startswith("booting")
    assert report["steps"][1]["seconds"] == report["seconds_to_login_prompt"]
    for step in ["booting", *steps]:
        assert f"] {step}" in result.err
    log = (folder / "boot.log").read_text()
    assert "cipbuild-payload login: root" in log and "Password:" in log and "root login on 'ttyS0'" in log
    assert "root=/dev/sda rw" in log.splitlines()[0]  # the ext4 was attached, as start-qemu.sh does
    # the artifacts are as they were: the ext4 was unpacked into the cache and booted with snapshot=on
    assert {p.name: p.read_bytes() for p in (folder / "artifacts").iterdir()} == before
    assert list((Path(os.environ["XDG_CACHE_HOME"]) / "cipbuild" / "boot").glob("*-*-qemu-amd64.ext4"))


@pytest.mark.integration
def test_check_failing_command(cli: Cli, tmp_path: Path, payload: dict[str, Path]) -> None:
    folder = boot_job(tmp_path / "out", payload)
    result = cli("boot", AMD64, "--out", str(tmp_path / "out"), "--check", "-c", "ls /no/such/dir", "--timeout", "120")
    err = one_line_error(result, 3)
    assert "`ls /no/such/dir` exited with 1; its last line: 'ls: /no/such/dir: No such file or directory'" in err
    assert f"console in {folder / 'boot.log'}" in err
    assert "No such file or directory" in (folder / "boot.log").read_text()
    assert "] logged in as root" in result.err and "command ok" not in result.err


@pytest.mark.integration
def test_check_wrong_password(cli: Cli, tmp_path: Path, payload: dict[str, Path]) -> None:
    boot_job(tmp_path / "out", payload)
    result = cli("boot", AMD64, "--out", str(tmp_path / "out"), "--check", "--password", "CIPsecurity@123")
    assert "login as root refused" in one_line_error(result, 3)


@pytest.mark.integration
def test_check_without_login_prompt(cli: Cli, tmp_path: Path, payload: dict[str, Path]) -> None:
    folder = boot_job(tmp_path / "out", payload, initrd="shell")
    started = time.monotonic()
    # long enough for the shell to be up under load (TCG on a busy 2-core runner took over 8 s once)
    result = cli("boot", AMD64, "--out", str(tmp_path / "out"), "--check", "--timeout", "20", "--json")
    took = time.monotonic() - started
    err = one_line_error(result, 3)
    assert 20 <= took < 20 + 5, took
    assert r"no login prompt /login:\s*$/ within 20 s" in err and "last console line: 'cipbuild-lava#" in err
    report = json.loads(result.out)
    assert report["result"] == "failed" and report["seconds_to_login_prompt"] is None
    assert "CIPBUILD-PAYLOAD-UP" in (folder / "boot.log").read_text()


@pytest.mark.integration
def test_check_console_without_login(cli: Cli, tmp_path: Path, payload: dict[str, Path]) -> None:
    """--user '': the console offers a shell straight away (the payload's own /init)."""
    boot_job(tmp_path / "out", payload, initrd="shell")
    # the payload's own prompt: the generic one could match a kernel line before the shell is up
    shell = re.escape(PROMPT)
    args = ("--check", "--user", "", "--shell-prompt", shell, "-c", "cat /proc/version", "--json", *POWEROFF)
    result = cli("boot", AMD64, "--out", str(tmp_path / "out"), *args)
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["output"].startswith("Linux version ") and report["seconds_to_login_prompt"] > 0
    assert "] shell prompt" in result.err and "logged in" not in result.err


@pytest.mark.integration
def test_interactive_boot_quits_with_ctrl_a_x(tmp_path: Path, payload: dict[str, Path]) -> None:
    """Without --check qemu runs on the terminal (here pipes): the command line first, then the console."""
    boot_job(tmp_path / "out", payload)
    command = [sys.executable, "-m", "orchestrator", "boot", AMD64, "--out", str(tmp_path / "out"), "--ssh-port", "0"]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    seen, deadline = b"", time.monotonic() + 120
    try:
        while b" login: " not in seen:
            assert time.monotonic() < deadline and proc.poll() is None, seen.decode(errors="replace")[-2000:]
            if select.select([proc.stdout], [], [], 0.5)[0]:
                seen += os.read(proc.stdout.fileno(), 65536)
        proc.stdin.write(b"\x01x")  # the serial console's escape: Ctrl-A X quits qemu
        proc.stdin.flush()
        assert proc.wait(20) == 0
    finally:
        proc.kill()
        proc.wait()
    first = seen.decode(errors="replace").splitlines()[0]
    assert first.startswith("qemu-system-x86_64 -cpu qemu64 -smp 4 -machine q35,accel=")
    assert "-netdev user,id=net -nographic -serial mon:stdio" in first
