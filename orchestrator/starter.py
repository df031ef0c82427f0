"""A starter catalogue for `cipbuild catalog new`: plain Isar's isar-image-base for QEMU x86-64 with
Debian's own kernel. docs/catalogue.md shows these very files as its worked example (a test
checks that the two agree), so the guide and the command cannot drift apart.
"""

from __future__ import annotations

from pathlib import Path

from .errors import UserError

# Isar v1.1. A full commit id: cipbuild refuses branch names and short ids.
ISAR_COMMIT = "cc5a5d98a89ca19049575b94b71a0beeafa61c71"

FILES: dict[str, str] = {
    "kas/repos.yml": f"""\
# yaml-language-server: $schema=../schemas/repos.schema.json
# Every repository the jobs check out, pinned by URL and full commit.
header:
  version: 14
repos:
  isar:
    url: https://github.com/ilbers/isar.git
    commit: {ISAR_COMMIT}
    tag: v1.1
    layers:
      meta:
      meta-isar:
""",
    "kas/isar/base.yml": """\
# Merged into every job's kas file: what Isar's local.conf.sample gives a build, trimmed.
header:
  version: 14
bblayers_conf_header:
  standard: |
    BBPATH = "${TOPDIR}"
    BBFILES ?= ""
local_conf_header:
  standard: |
    CONF_VERSION = "1"
    PATCHRESOLVE = "noop"
  root-login: |
    USERS += "root"
    USER_root[password] = "root"
    USER_root[flags] = "clear-text-password"
  # Isar's own SBOM step fetches its tool's sources while building; leaving it out, a build needs
  # only the pinned repositories and the Debian mirror. `cipbuild sign` writes an SBOM anyway.
  no-sbom: |
    ROOTFS_FEATURES:remove = "generate-sbom"
# cipbuild sets these for each build (shared downloads and sstate, the pinned commit's date);
# null passes them through from the environment.
env:
  DL_DIR: null
  SSTATE_DIR: null
  SOURCE_DATE_EPOCH: null
""",
    "distros/isar.yml": """\
# yaml-language-server: $schema=../schemas/distro.schema.json
description: plain Isar, with Debian's own kernel
build_system: isar
repos: [isar]
base: [kas/isar/base.yml]
target: isar-image-base
# made by `cipbuild image build --profile isar`; kas's own kas-isar image works as well
builder: cipbuild-builder:isar
artifacts:
  - {type: kernel, glob: "{image}-vmlinuz"}
  - {type: initrd, glob: "{image}-initrd.img"}
  - {type: manifest, glob: "{image}.manifest"}
  - {type: dpkg_status, glob: "{image}.dpkg_status"}
default_release: bookworm
releases:
  bookworm: {debian: "12", distro: debian-bookworm}
# No kernels: the jobs build Debian's kernel package, and their ids name no kernel.
order: [board, release]
""",
    "boards/qemu-amd64.yml": """\
# yaml-language-server: $schema=../schemas/board.schema.json
description: QEMU x86-64 machine (Isar's qemuamd64)
arch: amd64
distros:
  isar:
    machine: qemuamd64
    artifacts:
      - {type: wic, glob: "{image}.wic"}
      - {type: wic.bmap, glob: "{image}.wic.bmap"}
test: {device_type: qemu, boot_method: qemu, qemu: {arch: x86_64, machine: q35}, plans: [boot]}
""",
    "recipes/qemu.yml": """\
# yaml-language-server: $schema=../schemas/recipe.schema.json
description: the plain Isar image for QEMU x86-64
matrix: {board: [qemu-amd64]}
""",
    "testplans/boot.yml": """\
# yaml-language-server: $schema=../schemas/testplan.schema.json
summary: boot, log in as root and run uname -a
definitions:
  - name: smoke
    steps: [lava-test-case uname --shell uname -a]
""",
}

# The one job of the starter catalogue.
JOB_ID = "isar-bookworm-qemu-amd64"


def write_starter(folder: Path, *, force: bool = False) -> list[Path]:
    """Write the starter catalogue and the catalogue's JSON Schemas into ``folder``; the files
    written. A folder that has anything in it is refused unless ``force`` (then the starter's
    files are written over, and other files are left alone)."""
    from .schemas import write_schemas

    if folder.exists() and not folder.is_dir():
        raise UserError("is a file, not a folder", where=str(folder), hint="name a new or empty folder")
    if folder.is_dir() and not force and any(folder.iterdir()):
        raise UserError(
            "is not empty",
            where=str(folder),
            hint="name a new or empty folder, or add --force to write the starter files over it",
        )
    written: list[Path] = []
    try:
        for name, text in FILES.items():
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            written.append(path)
        written += write_schemas(folder / "schemas")
    except OSError as exc:
        raise UserError(f"cannot write {exc.filename or folder}: {exc.strerror}", where=str(folder)) from None
    return written
