"""Builder images: make a kas builder offline from Debian packages (mmdebstrap) and kas from PyPI.

For air-gapped hosts and for CI where no registry is reachable. The image runs its command as
the caller's uid/gid (``cipbuild-entry``), with passwordless sudo when the profile has sudo.
"""

from __future__ import annotations

import importlib.metadata
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import InfrastructureError, UserError

BASE = ["python3", "python3-pip", "git", "ca-certificates", "passwd", "util-linux", "locales"]
PROFILES: dict[str, list[str]] = {
    # enough for kas itself and the test fixtures
    "minimal": BASE,
    # isar's host packages (isar user manual) plus sudo, as kas-isar has
    "isar": [
        *BASE,
        "sudo",
        "binfmt-support",
        "bubblewrap",
        "bzip2",
        "mmdebstrap",
        "arch-test",
        "apt-utils",
        "dpkg-dev",
        "gettext-base",
        "quilt",
        "qemu-user-static",
        "reprepro",
        "unzip",
        "xz-utils",
        "git-buildpackage",
        "pristine-tar",
        "sbuild",
        "schroot",
        "zstd",
        "python3-venv",
        "python3-distutils",
        "debootstrap",
        "fdisk",
        "dosfstools",
        "e2fsprogs",
        "parted",
        "bmap-tools",
        "file",
        "cpio",
        "lz4",
    ],
    # the Yocto Project's host packages for Debian
    "openembedded": [
        *BASE,
        "gawk",
        "wget",
        "diffstat",
        "unzip",
        "texinfo",
        "gcc",
        "build-essential",
        "chrpath",
        "socat",
        "cpio",
        "xz-utils",
        "debianutils",
        "iputils-ping",
        "python3-git",
        "python3-jinja2",
        "python3-subunit",
        "zstd",
        "lz4",
        "file",
        "bzip2",
        "rsync",
    ],
}

ENTRYPOINT = """#!/bin/sh
# cipbuild builder entrypoint: started as root, runs the command as CIPBUILD_UID/GID. Works with
# cipbuild's own images and with the official kas images (whose 'builder' account it reuses).
set -e
uid=${CIPBUILD_UID:-0}
gid=${CIPBUILD_GID:-$uid}
if [ "$(id -u)" != 0 ]; then
    exec "$@"
fi
# the mounted folders (upstream mirrors, job folder) may belong to another uid than the builder
git config --system --add safe.directory '*' 2>/dev/null || true
# foreign-architecture isar builds need qemu's binfmt handlers, as kas-isar's entrypoint registers
if ls /usr/lib/binfmt.d/qemu-*.conf >/dev/null 2>&1; then
    misc=/proc/sys/fs/binfmt_misc
    [ -f $misc/status ] || mount -t binfmt_misc binfmt_misc $misc 2>/dev/null || true
    for conf in /usr/lib/binfmt.d/qemu-*.conf; do
        [ -e "$misc/$(basename "$conf" .conf)" ] || cat "$conf" > $misc/register 2>/dev/null || true
    done
fi
if [ "$uid" = 0 ]; then
    exec "$@"
fi
if getent passwd builder >/dev/null; then
    groupmod -o -g "$gid" builder 2>/dev/null || true
    usermod -o -u "$uid" -g "$gid" builder
    user=builder
else
    getent group "$gid" >/dev/null || groupadd -o -g "$gid" builder
    getent passwd "$uid" >/dev/null || useradd -o -u "$uid" -g "$gid" -M -d /home/builder -s /bin/sh builder
    user=$(getent passwd "$uid" | cut -d: -f1)
fi
home=$(getent passwd "$user" | cut -d: -f6)
mkdir -p "$home" && chown "$uid:$gid" "$home"
if [ -d /etc/sudoers.d ]; then
    echo "$user ALL=(ALL) NOPASSWD: ALL" > /etc/sudoers.d/cipbuild
fi
if getent group sbuild >/dev/null; then usermod -a -G sbuild "$user"; fi
export HOME="$home" USER="$user" LOGNAME="$user"
exec setpriv --reuid="$uid" --regid="$gid" --init-groups "$@"
"""

DOCKERFILE = """FROM {base}
COPY wheels /tmp/wheels
RUN python3 -m pip install --no-index --no-cache-dir --break-system-packages /tmp/wheels/*.whl \\
    && rm -rf /tmp/wheels \\
    && (sed -i 's/^# *en_US.UTF-8/en_US.UTF-8/' /etc/locale.gen && locale-gen >/dev/null || true)
COPY cipbuild-entry /usr/local/bin/cipbuild-entry
RUN chmod 755 /usr/local/bin/cipbuild-entry
ENV LANG=en_US.UTF-8 LC_ALL=en_US.UTF-8
LABEL org.cip-project.cipbuild.profile="{profile}" org.cip-project.cipbuild.kas="{kas}"
ENTRYPOINT ["/usr/local/bin/cipbuild-entry"]
"""


# The Python of each Debian suite, so wheels fit the image, not the host.
SUITE_PYTHON = {"bullseye": "3.9", "bookworm": "3.11", "trixie": "3.13"}


def wheel_target(suite: str) -> list[str]:
    if suite not in SUITE_PYTHON:
        from .catalog import suggest

        raise UserError(f"no known Python for Debian {suite}", where="--suite", hint=suggest(suite, SUITE_PYTHON))
    arch = platform.machine()
    return [
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        SUITE_PYTHON[suite],
        "--platform",
        f"manylinux_2_17_{arch}",
        "--platform",
        f"manylinux2014_{arch}",
        "--platform",
        "any",
    ]


def default_tag(profile: str, suite: str) -> str:
    return f"cipbuild-builder:{profile}" if suite == "bookworm" else f"cipbuild-builder:{profile}-{suite}"


def build_image(
    engine: str,
    tag: str,
    profile: str,
    *,
    suite: str = "bookworm",
    mirror: str | None = None,
    extra: list[str] | None = None,
    say: Callable[[str], None] = print,
) -> str:
    """Make the builder image ``tag`` with ``engine`` (docker or podman); returns the image id."""
    if profile not in PROFILES:
        from .catalog import suggest

        raise UserError(f"unknown profile '{profile}'", where="--profile", hint=suggest(profile, PROFILES))
    for tool in ("mmdebstrap", engine if engine == "podman" else "python3"):
        if not shutil.which(tool):
            raise InfrastructureError(f"{tool} is not installed (apt-get install {tool})")
    kas_version = importlib.metadata.version("kas")
    with tempfile.TemporaryDirectory(prefix="cipbuild-image-") as tmp:
        work = Path(tmp)
        rootfs = work / "rootfs.tar"
        packages = ",".join(PROFILES[profile] + (extra or []))
        say(f"mmdebstrap {suite} ({profile}: {len(PROFILES[profile]) + len(extra or [])} packages)")
        cmd = ["mmdebstrap", "--variant=minbase", f"--include={packages}", suite, str(rootfs)]
        if mirror:
            cmd.append(mirror)
        _run(cmd, "mmdebstrap")
        context = work / "context"
        (context / "wheels").mkdir(parents=True)
        say(f"download kas {kas_version} and its dependencies as wheels")
        _run(
            [
                "python3",
                "-m",
                "pip",
                "download",
                "--quiet",
                *wheel_target(suite),
                "--dest",
                str(context / "wheels"),
                f"kas=={kas_version}",
            ],
            "pip download",
        )
        (context / "cipbuild-entry").write_text(ENTRYPOINT, encoding="utf-8")
        name, _, version = tag.rpartition(":") if ":" in tag.rsplit("/", 1)[-1] else (tag, "", "latest")
        base = f"{name}-rootfs:{version}"
        (context / "Dockerfile").write_text(DOCKERFILE.format(base=base, profile=profile, kas=kas_version))
        say(f"import the rootfs as {base}, build {tag}")
        if engine == "podman":
            _run(["podman", "import", str(rootfs), base], "podman import")
            _run(["podman", "build", "--network", "none", "-t", tag, str(context)], "podman build")
            image_id = _run(["podman", "image", "inspect", "--format", "{{.Id}}", tag], "podman inspect").strip()
            _run(["podman", "rmi", base], "podman rmi")
            return image_id
        return _docker_build(rootfs, base, tag, context)


def _docker_build(rootfs: Path, base: str, tag: str, context: Path) -> str:
    import docker

    try:
        client = docker.from_env(timeout=600)
        repo, _, base_tag = base.rpartition(":")
        client.api.import_image(src=str(rootfs), repository=repo, tag=base_tag)
        image, _ = client.images.build(path=str(context), tag=tag, rm=True, network_mode="none")
        client.images.remove(base)
    except docker.errors.BuildError as exc:
        raise InfrastructureError(f"docker build of {tag} failed: {exc.msg}") from None
    except docker.errors.DockerException as exc:
        raise InfrastructureError(f"docker engine: {exc}") from None
    return str(image.id)


def _run(cmd: list[str], what: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise InfrastructureError(f"{what} failed ({proc.returncode}): {' | '.join(tail)}")
    return proc.stdout
