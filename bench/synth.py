"""Synthetic catalogues for benchmarks: the shipped one with more isar options and rules.

The extra options are the kind a CIP Core profile grows (security modules, containers, debug
tools, connectivity), with the rules such options bring: families of mutually exclusive
options (conflicts), options that need another (requires), options that bring another in
(implies), and board, release and kernel limits (distro rules, some with options_any). They
keep the job count printable while the candidate count grows as 2^options.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from orchestrator.catalog import default_catalog_dir

SHIPPED_ISAR_OPTIONS = 12
PARTS = ("boards", "options", "distros", "recipes", "kas")

# In the order they are added; an option only names options listed before it or shipped ones.
EXTRA_OPTIONS: list[tuple[str, dict[str, list[str]]]] = [
    ("selinux", {"conflicts": ["kernelci"]}),
    ("apparmor", {"conflicts": ["selinux"]}),
    ("tpm2", {}),
    ("ima", {"requires": ["tpm2"], "conflicts": ["apparmor"]}),
    ("ostree", {"conflicts": ["swupdate", "targz"]}),
    ("debug-tools", {"conflicts": ["security"]}),
    ("perf", {"requires": ["debug-tools"]}),
    ("wifi", {}),
    ("bluetooth", {"requires": ["wifi"]}),
    ("containerd", {"conflicts": ["ostree"]}),
    ("docker", {"implies": ["containerd"]}),
    ("podman", {"conflicts": ["docker", "containerd"]}),
    ("k3s", {"requires": ["containerd"], "conflicts": ["rt"]}),
    ("weston", {"conflicts": ["kernelci", "test"]}),
    ("chromium", {"requires": ["weston"], "conflicts": ["rt"]}),
    ("zram", {"conflicts": ["separate-home"]}),
    ("swapfile", {"conflicts": ["zram", "encrypt"]}),
    ("gdbserver", {"implies": ["debug-tools"]}),
]

EXTRA_RULES: list[dict[str, Any]] = [
    {"id": "lsm-kernel", "when": {"options_any": ["selinux", "apparmor"], "kernel": {"below": "6.1"}}},
    {"id": "lsm-trixie", "when": {"options_any": ["selinux", "apparmor", "ima"], "release": {"not": "trixie"}}},
    {"id": "tpm-boards", "when": {"options_any": ["tpm2"], "board": {"not": ["qemu-amd64", "x86-uefi"]}}},
    {"id": "ostree-boards", "when": {"options": ["ostree"], "board": {"not": ["qemu-amd64", "qemu-arm64"]}}},
    {"id": "ostree-release", "when": {"options": ["ostree"], "release": {"not": "trixie"}}},
    {"id": "debug-boards", "when": {"options_any": ["debug-tools"], "arch": {"not": ["amd64"]}}},
    {"id": "debug-rt", "when": {"options": ["perf", "rt"]}},
    {"id": "wifi-boards", "when": {"options_any": ["wifi"], "board": {"not": ["hihope-rzg2m", "simatic-ipc227e"]}}},
    {"id": "containers-release", "when": {"options_any": ["containerd", "podman"], "release": {"not": "trixie"}}},
    {"id": "containers-boards", "when": {"options_any": ["containerd", "podman"], "board": {"not": ["qemu-amd64"]}}},
    {"id": "containers-security", "when": {"options_any": ["containerd", "podman"], "options": ["secure-boot"]}},
    {"id": "graphics-boards", "when": {"options_any": ["weston"], "board": {"not": ["x86-uefi", "hihope-rzg2m"]}}},
    {"id": "graphics-kernel", "when": {"options": ["weston"], "kernel": {"below": "6.1"}}},
    {"id": "swap-boards", "when": {"options_any": ["zram", "swapfile"], "board": {"not": ["bbb", "iwg20m"]}}},
    {"id": "debugger-release", "when": {"options": ["gdbserver"], "release": ["buster"]}},
]


def make_catalogue(root: Path, isar_options: int) -> Path:
    """A copy of the shipped catalogue whose isar distro has ``isar_options`` options."""
    extra = isar_options - SHIPPED_ISAR_OPTIONS
    if not 0 <= extra <= len(EXTRA_OPTIONS):
        raise ValueError(f"isar options must be {SHIPPED_ISAR_OPTIONS}..{SHIPPED_ISAR_OPTIONS + len(EXTRA_OPTIONS)}")
    for part in PARTS:
        shutil.copytree(default_catalog_dir() / part, root / part)
    added = EXTRA_OPTIONS[:extra]
    names = {name for name, _ in added}
    for name, relations in added:
        spec = {"kas": [f"kas/isar/opt/{name}.yml"], **relations}
        doc = {"summary": f"{name} (synthetic)", "distros": {"isar": spec}}
        (root / "options" / f"{name}.yml").write_text(yaml.safe_dump(doc, sort_keys=False))
        fragment = root / "kas" / "isar" / "opt" / f"{name}.yml"
        fragment.parent.mkdir(parents=True, exist_ok=True)
        fragment.write_text("header:\n  version: 14\n")
    path = root / "distros" / "isar.yml"
    distro = yaml.safe_load(path.read_text())
    distro["order"] += [name for name, _ in added]
    present = _shipped_options() | names
    for rule in EXTRA_RULES:
        when = _condition_within(rule["when"], present)
        if when is not None:
            distro["rules"].append({"id": rule["id"], "summary": f"{rule['id']} (synthetic)", "when": when})
    path.write_text(yaml.safe_dump(distro, sort_keys=False))
    return root


def _condition_within(when: dict[str, Any], present: set[str]) -> dict[str, Any] | None:
    """The rule condition as far as it names options the catalogue has; None if it cannot match."""
    if not set(when.get("options", [])) <= present:
        return None
    if "options_any" not in when:
        return when
    any_of = [o for o in when["options_any"] if o in present]
    return {**when, "options_any": any_of} if any_of else None


def _shipped_options() -> set[str]:
    return {p.stem for p in (default_catalog_dir() / "options").glob("*.yml")}
