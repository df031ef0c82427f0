"""The shipped SWUpdate refusal plans' steps, run as LAVA runs them: a run.sh under `set -e`, with
LAVA's `$1`..`$9` escaping and `lava-test-case --shell` evaluating its arguments. The device is a
busybox root (chroot) with a stand-in `swupdate` that refuses as SWUpdate does: a broken CPIO
header, an image whose sha256 is not sw-description's, an os-release that already carries the
update's IMAGE_UUID. A real SWUpdate on a real A/B image is the one part that cannot run here."""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml
from bootpayload import CpioEntry, busybox_path, write_cpio

ROOT = Path(__file__).resolve().parent.parent
CHROOT = shutil.which("chroot") or "/usr/sbin/chroot"
URL = "http://store.invalid/cip-core/master/qemu-amd64/swu-v2/update.swu"
APPLETS = ["sh", "cat", "cp", "cut", "dd", "echo", "grep", "head", "ls", "mkdir", "mktemp", "rm", "sed"]
APPLETS += ["sha256sum", "tr"]

LAVA_TEST_CASE = """#!/bin/sh
name="$1"; shift
[ "$1" = --shell ] || exit 2
shift
eval "$*"
if [ $? -eq 0 ]; then echo "$name pass" >> /results; else echo "$name fail" >> /results; fi
exit 0
"""
CURL = f"""#!/bin/sh
# curl -sSf URL --output FILE, the second build's update only
[ "$2" = "{URL}" ] && [ "$3" = --output ] && cp /srv/update.swu "$4"
"""
# SWUpdate's refusals, in its order: the archive, the image's sha256, then configfilecheck
SWUPDATE = """#!/bin/sh
[ "$1 $2 $3" = "-l 5 -i" ] || { echo "swupdate: unexpected arguments $*"; exit 2; }
case "$(head -c 6 "$4")" in
    070701|070702) ;;
    *) echo "ERROR : CPIO Header corrupted, cannot be parsed"; exit 1 ;;
esac
work=$(mktemp -d)
(cd "$work" && cpio -i < "$4") 2>/dev/null
want=$(grep 'sha256' "$work/sw-description" | head -n 1 | cut -d '"' -f 2)
have=$(sha256sum "$work/image.delta_update" | cut -d ' ' -f 1)
[ "$want" = "$have" ] || { echo "ERROR : Image invalid or corrupted. Not installing ..."; exit 1; }
uuid=$(grep IMAGE_UUID "$work/sw-description" | cut -d '=' -f 3 | cut -c 1-36)
if grep -q "IMAGE_UUID=\\"$uuid\\"" /etc/os-release; then echo "ERROR : 'configfilecheck()' failed"; exit 1; fi
echo "SWUPDATE successful !"
"""
V1_UUID = "11111111-2222-3333-4444-555555555555"
V2_UUID = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"


def update_swu() -> bytes:
    """A .swu shaped as isar-cip-core's: sw-description first, then its signature, the delta, the kernel."""
    delta = os.urandom(4096)
    kernel = os.urandom(1024)
    description = (
        "software = {\n"
        '    images: ({ filename = "image.delta_update";\n'
        f'        properties: {{ configfilecheck = "/etc/os-release@not_match@IMAGE_UUID={V2_UUID}"; }};\n'
        f'        sha256 = "{hashlib.sha256(delta).hexdigest()}"; }});\n'
        f'    files: ({{ filename = "linux.efi"; sha256 = "{hashlib.sha256(kernel).hexdigest()}"; }});\n'
        "}\n"
    )
    members = [
        ("sw-description", description.encode()),
        ("sw-description.sig", b"signature"),
        ("image.delta_update", delta),
        ("linux.efi", kernel),
    ]
    out = io.BytesIO()
    write_cpio([CpioEntry(name, stat.S_IFREG | 0o644, data) for name, data in members], out)
    return out.getvalue()


def device(root: Path) -> Path:
    """A busybox root with the stand-ins, the published update and the running image's os-release."""
    (root / "bin").mkdir(parents=True)
    shutil.copy(busybox_path(), root / "bin" / "busybox")
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    copy_with_libraries(Path(shutil.which("cpio") or "/usr/bin/cpio"), root)  # the device's GNU cpio, as upstream's
    for name, text in (("lava-test-case", LAVA_TEST_CASE), ("curl", CURL), ("swupdate", SWUPDATE)):
        (root / "bin" / name).write_text(text)
        (root / "bin" / name).chmod(0o755)
    for folder in ("dev", "etc", "srv", "root", "tmp"):
        (root / folder).mkdir()
    for name, minor in (("null", 3), ("zero", 5)):
        os.mknod(root / "dev" / name, stat.S_IFCHR | 0o666, os.makedev(1, minor))
    (root / "etc" / "os-release").write_text(f'ID=debian\nIMAGE_UUID="{V1_UUID}"\n')
    (root / "srv" / "update.swu").write_bytes(update_swu())
    return root


def copy_with_libraries(binary: Path, root: Path) -> None:
    """``binary`` into ``root``'s /bin with the shared libraries ldd names, at their own paths."""
    shutil.copy(binary, root / "bin" / binary.name)
    listed = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
    for library in re.findall(r"(/\S+) \(0x", listed):
        target = root / library.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(library, target)


def run_as_lava(root: Path, steps: list[str]) -> tuple[int, dict[str, str], str]:
    """``steps`` as LAVA's run.sh runs them in ``root``: its exit code, each case's result, output."""
    lines = ["set -e", "set -x", "cd /root"]
    for step in steps:
        escaped = re.sub(r"\$(\d+)\b", r"\\$\1", step) if "--shell" in step or "--cmd" in step else step
        lines.append(escaped.replace("{url}", URL))  # the escaping is lava_dispatcher's testdef's
    (root / "run.sh").write_text("\n".join(lines) + "\n")
    proc = subprocess.run(
        [CHROOT, str(root), "/bin/sh", "/run.sh"],
        env={"PATH": "/bin", "HOME": "/root"},
        capture_output=True,
        text=True,
        check=False,
    )
    results = root / "results"
    cases = dict(line.split() for line in results.read_text().splitlines()) if results.exists() else {}
    results.unlink(missing_ok=True)
    return proc.returncode, cases, proc.stdout + proc.stderr


def install_steps(plan: str) -> list[str]:
    steps: list[str] = yaml.safe_load((ROOT / "testplans" / f"{plan}.yml").read_text())["update"]["install"]
    return steps


@pytest.fixture
def chroot_root(tmp_path: Path) -> Path:
    if os.geteuid() != 0 or not Path(CHROOT).exists():
        pytest.skip("chroot needs root")
    return tmp_path


@pytest.mark.parametrize(
    ("plan", "step_that_breaks_it"),
    [
        ("swupdate-corrupt-swu", "dd if=/dev/zero"),
        ("swupdate-corrupt-artifact", "dd if=/dev/zero"),
        ("swupdate-same-image", "sed -i"),
    ],
)
def test_a_refusal_plan_records_the_refusal_under_lavas_run_sh(
    chroot_root: Path, plan: str, step_that_breaks_it: str
) -> None:
    steps = install_steps(plan)
    code, cases, output = run_as_lava(device(chroot_root / "device"), steps)
    assert code == 0, output  # set -e: a refused update must not end the run before its check
    assert cases == {"fetch": "pass", "swupdate-fails": "pass", "refused": "pass"}, output

    # without the step that breaks the update, swupdate installs it and the plan says so
    kept = [step for step in steps if step_that_breaks_it not in step]
    assert len(kept) == len(steps) - 1
    code, cases, output = run_as_lava(device(chroot_root / "intact"), kept)
    assert code == 0, output
    assert cases == {"fetch": "pass", "swupdate-fails": "fail", "refused": "fail"}, output
