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
    # deby: poky warrior (Yocto 2.7), as its reference manual lists the host packages for Debian
    # ("python" is python2 now; gcc-multilib left out, as only amd64 has it), plus what warrior's
    # HOSTTOOLS and sanity checks want of a Debian 11 host: python2.7 and distutils
    "deby": [
        *BASE,
        "gawk",
        "wget",
        "diffstat",
        "unzip",
        "texinfo",
        "build-essential",
        "chrpath",
        "socat",
        "cpio",
        "python2",
        "python3-pexpect",
        "python3-distutils",
        "xz-utils",
        "debianutils",
        "iputils-ping",
        "file",
        "bzip2",
        "gcc-9",
        "g++-9",
    ],
}

# Commands a profile's image runs once its packages and kas are in.
PROFILE_STEPS: dict[str, list[str]] = {
    # warrior reads the host compiler's version with r".* (\d\.\d)\.\d.*" (oe.utils.host_gcc_version,
    # fixed for gcc 10 only in later branches) and stops with "Can't get compiler version from gcc
    # --version output" on Debian 11's gcc 10, whose -fno-common default also breaks native
    # recipes of warrior's time; gcc 9, of Debian 11 too, is the host compiler instead (diverted in
    # /usr/bin: kas runs bitbake with PATH=/usr/sbin:/usr/bin:/sbin:/bin)
    "deby": [
        "for tool in gcc g++ cpp gcc-ar gcc-nm gcc-ranlib; do"
        " dpkg-divert --local --rename --divert /usr/bin/$tool.debian --add /usr/bin/$tool >/dev/null"
        " && ln -s $tool-9 /usr/bin/$tool; done",
        "PATH=/usr/bin gcc --version | grep -q ' 9\\.'",
    ],
}

# The Debian suites a profile's image can be made of, its default first (others: DEFAULT_SUITE).
# deby's poky warrior (bitbake 1.42) imports the collections ABCs that Python 3.10 removed and
# lists python2 in HOSTTOOLS, which Debian 12 no longer has; kas 5 needs Python 3.9, more than
# Debian 10's 3.7. Debian 11 (Python 3.9, python2.7) is the one suite where both run.
DEFAULT_SUITE = "bookworm"
PROFILE_SUITES: dict[str, tuple[str, ...]] = {"deby": ("bullseye",)}

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
RUN python3 -m pip install --no-index --no-cache-dir{pip_flags} /tmp/wheels/*.whl \\
    && rm -rf /tmp/wheels \\
    && (sed -i 's/^# *en_US.UTF-8/en_US.UTF-8/' /etc/locale.gen && locale-gen >/dev/null || true)
{steps}COPY cipbuild-entry /usr/local/bin/cipbuild-entry
RUN chmod 755 /usr/local/bin/cipbuild-entry
ENV LANG=en_US.UTF-8 LC_ALL=en_US.UTF-8
LABEL org.cip-project.cipbuild.profile="{profile}" org.cip-project.cipbuild.suite="{suite}" \\
    org.cip-project.cipbuild.kas="{kas}"
ENTRYPOINT ["/usr/local/bin/cipbuild-entry"]
"""


# The Python of each Debian suite, so wheels fit the image, not the host.
SUITE_PYTHON = {"bullseye": "3.9", "bookworm": "3.11", "trixie": "3.13"}
# Suites whose Python is marked externally managed (PEP 668); bullseye's pip 20.3 does not know
# the flag that installs over it.
EXTERNALLY_MANAGED = {"bookworm", "trixie"}


def suite_of(profile: str, suite: str | None) -> str:
    """The Debian suite of ``profile``'s image: ``suite`` when the profile runs on it, else the
    profile's own."""
    suites = PROFILE_SUITES.get(profile)
    if suite is None:
        return suites[0] if suites else DEFAULT_SUITE
    if suites and suite not in suites:
        raise UserError(
            f"profile '{profile}' needs Debian {' or '.join(suites)}, not {suite}",
            where="--suite",
            hint=f"leave --suite out, or pass --suite {suites[0]}",
        )
    return suite


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


def default_tag(profile: str, suite: str | None = None) -> str:
    """cipbuild-builder:<profile>, with -<suite> when the image is not of the profile's own suite."""
    own = PROFILE_SUITES.get(profile, (DEFAULT_SUITE,))[0]
    chosen = own if suite is None else suite
    return f"cipbuild-builder:{profile}" if chosen == own else f"cipbuild-builder:{profile}-{chosen}"


def build_image(
    engine: str,
    tag: str,
    profile: str,
    *,
    suite: str | None = None,
    mirror: str | None = None,
    extra: list[str] | None = None,
    say: Callable[[str], None] = print,
) -> str:
    """Make the builder image ``tag`` with ``engine`` (docker or podman); returns the image id.
    ``suite`` defaults to the profile's own (bookworm but for deby)."""
    if profile not in PROFILES:
        from .catalog import suggest

        raise UserError(f"unknown profile '{profile}'", where="--profile", hint=suggest(profile, PROFILES))
    suite = suite_of(profile, suite)
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
        pip_flags = " --break-system-packages" if suite in EXTERNALLY_MANAGED else ""
        steps = "".join(f"RUN {step}\n" for step in PROFILE_STEPS.get(profile, []))
        dockerfile = DOCKERFILE.format(
            base=base, profile=profile, suite=suite, kas=kas_version, pip_flags=pip_flags, steps=steps
        )
        (context / "Dockerfile").write_text(dockerfile)
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
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        # apt and mmdebstrap say why on their first "E:" line, then clean up at length
        errors = [line for line in lines if line.startswith("E: ")]
        said = errors[:1] + lines[-2:] if errors else lines[-3:]
        raise InfrastructureError(f"{what} failed ({proc.returncode}): {' | '.join(said)}")
    return proc.stdout
