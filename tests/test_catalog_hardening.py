"""A careless or hostile catalogue author gets one line naming file and line, never a traceback,
a hang, a wrong plan or a write outside --out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Result
from test_catalog import edit, error_of, line_of

from orchestrator.catalog import load_catalog

Cli = Callable[..., Result]


def one_line_error(res: Result) -> str:
    assert res.code == 2, res
    assert "Traceback" not in res.err and res.err.count("\n") == 1, res.err
    return res.err.removeprefix("cipbuild: error: ").strip()


# --- .yaml next to .yml -------------------------------------------------------------------------


def test_board_in_a_yaml_file_is_used(catalog_copy: Path, cli: Cli) -> None:
    (catalog_copy / "boards" / "bbb.yml").rename(catalog_copy / "boards" / "bbb.yaml")
    res = cli("--catalog", str(catalog_copy), "plan", "-b", "bbb", "--json")
    assert res.code == 0, res.err
    assert [j["id"] for j in json.loads(res.out)["jobs"]] == ["isar-bookworm-bbb"]


def test_yaml_file_next_to_yml_file_is_refused(catalog_copy: Path) -> None:
    (catalog_copy / "boards" / "bbb.yaml").write_text((catalog_copy / "boards" / "bbb.yml").read_text())
    assert error_of(catalog_copy) == (
        f"{catalog_copy / 'boards' / 'bbb.yml'}: 'bbb' is defined here and in {catalog_copy / 'boards' / 'bbb.yaml'} "
        "(keep one of the two files)"
    )


# --- templates checked at load time -------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("{target}-{nope}", "unknown field {nope}; it may use {target}, {distro}, {machine}, {release}, {suffix}"),
        ("{target.__class__.__mro__}", "{target.__class__.__mro__} uses attribute or index access"),
        ("{machine[0]}", "{machine[0]} uses attribute or index access"),
        ("{target!r}", "{target} takes no conversion or format spec"),
        ("{target", "not a valid template"),
    ],
)
def test_bad_image_name_template_is_refused_at_load(catalog_copy: Path, template: str, problem: str) -> None:
    distro = catalog_copy / "distros" / "isar.yml"
    edit(distro, 'image_name: "{target}-{distro}-{machine}{suffix}"', f'image_name: "{template}"')
    msg = error_of(catalog_copy)
    assert msg.startswith(f"{distro}:{line_of(distro, 'image_name:')}: image_name:") and problem in msg


@pytest.mark.parametrize(
    ("glob", "problem"),
    [
        ("{image}-{nope}.wic", "unknown field {nope}; it may use {image}, {rootfs}, {machine}"),
        ("../../{image}.wic", "must be a relative path inside its folder"),
        ("/etc/{image}", "must be a relative path inside its folder"),
    ],
)
def test_bad_artifact_glob_is_refused_before_any_build(catalog_copy: Path, glob: str, problem: str) -> None:
    board = catalog_copy / "boards" / "qemu-amd64.yml"
    edit(board, 'glob: "{image}-vmlinuz"', f'glob: "{glob}"')
    msg = error_of(catalog_copy)
    assert msg.startswith(f"{board}:{line_of(board, glob)}:") and problem in msg


# --- recipe defaults ---------------------------------------------------------------------------


def test_unknown_default_distro_names_its_line(catalog_copy: Path) -> None:
    recipe = catalog_copy / "recipes" / "hands-on.yml"
    edit(recipe, "defaults: {distro: isar,", "defaults: {distro: isra,")
    assert error_of(catalog_copy, "hands-on") == (
        f"{recipe}:{line_of(recipe, 'defaults')}: unknown distro 'isra' (did you mean 'isar'?)"
    )


def test_unknown_default_release_names_value_and_line(catalog_copy: Path) -> None:
    recipe = catalog_copy / "recipes" / "hands-on.yml"
    edit(recipe, "release: bookworm}", "release: bookwrom}")
    msg = error_of(catalog_copy, "hands-on")
    assert msg.startswith(f"{recipe}:{line_of(recipe, 'bookwrom')}: unknown release 'bookwrom'")
    assert "did you mean 'bookworm'?" in msg


# --- sizes: bounded before parsing, hashed by streaming ----------------------------------------


def test_huge_board_file_is_refused_by_its_size(catalog_copy: Path) -> None:
    board = catalog_copy / "boards" / "huge.yml"
    with board.open("w") as fh:
        fh.write("description: x\narch: amd64\ndistros: {}\n")
        for i in range(1_400_000):
            fh.write(f"k{i}: {i}\n")
    msg = error_of(catalog_copy)
    assert msg.startswith(f"{board}: file is larger than 1 MiB") and "alias" not in msg


def test_many_values_without_aliases_do_not_blame_aliases(catalog_copy: Path) -> None:
    recipe = catalog_copy / "recipes" / "big.yml"
    recipe.write_text("description: x\nx: [" + ",".join("1" for _ in range(120_000)) + "]\n")
    msg = error_of(catalog_copy, "big")
    assert msg == f"{recipe}:2: file has more than 100000 values"


def test_sparse_giant_file_under_kas_is_not_read_into_memory(catalog_copy: Path, tmp_path: Path) -> None:
    with (catalog_copy / "kas" / "giant.img").open("wb") as fh:
        fh.truncate(3 << 30)
    probe = (
        "import resource, subprocess, sys\n"
        "rc = subprocess.run([sys.executable, '-m', 'orchestrator', '--catalog', sys.argv[1], 'boards'],"
        " stdout=subprocess.DEVNULL).returncode\n"
        "print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    out = subprocess.run(
        [sys.executable, "-c", probe, str(catalog_copy)], check=False, capture_output=True, text=True, env=env
    )
    rc, rss_kib = (int(v) for v in out.stdout.split())
    assert rc == 0
    assert rss_kib < 300 * 1024  # a few dozen MiB: the 3 GiB file was neither read nor held


# --- ids that cannot collide -------------------------------------------------------------------


def test_board_named_like_a_board_with_an_option_is_refused(catalog_copy: Path) -> None:
    board = catalog_copy / "boards" / "qemu-amd64-rt.yml"
    board.write_text((catalog_copy / "boards" / "qemu-amd64.yml").read_text())
    msg = error_of(catalog_copy)
    assert "job id 'isar-buster-qemu-amd64-rt' would name two different jobs" in msg
    assert "board qemu-amd64, option rt" in msg and "board qemu-amd64-rt" in msg
    assert str(board) in msg and "options/rt.yml" in msg and "boards/qemu-amd64.yml" in msg


def test_option_named_like_a_kernel_is_refused(catalog_copy: Path) -> None:
    (catalog_copy / "options" / "k6.12.yml").write_text((catalog_copy / "options" / "rt.yml").read_text())
    edit(catalog_copy / "distros" / "isar.yml", "swupdate-2022.12]", "swupdate-2022.12, k6.12]")
    msg = error_of(catalog_copy)
    assert "-k6.12' would name two different jobs" in msg
    assert "kernel 6.12" in msg and "option k6.12" in msg


@pytest.mark.parametrize("keyword", ["board", "release", "kernel"])
def test_option_named_like_an_order_keyword_is_refused(catalog_copy: Path, keyword: str) -> None:
    option = catalog_copy / "options" / f"{keyword}.yml"
    option.write_text((catalog_copy / "options" / "rt.yml").read_text())
    assert error_of(catalog_copy) == (
        f"{option}:2: '{keyword}' cannot name an option: it is a keyword of a distro's order (choose another name)"
    )


def test_overlapping_option_names_are_judged_in_polynomial_time(catalog_copy: Path) -> None:
    """The old check tried every split of every name: 40 such names did not finish."""
    names = ["a-b", "a-b-a", "b-a", "b-a-b", "-".join(["a-b"] * 40 + ["z"])]
    for name in names:
        (catalog_copy / "options" / f"{name}.yml").write_text((catalog_copy / "options" / "rt.yml").read_text())
    edit(catalog_copy / "distros" / "isar.yml", "swupdate-2022.12]", f"swupdate-2022.12, {', '.join(names)}]")
    assert "would name two different jobs" in error_of(catalog_copy)


def test_implies_cycle_is_refused_naming_the_cycle(catalog_copy: Path) -> None:
    option = catalog_copy / "options" / "swupdate.yml"
    text = option.read_text()
    assert "implies" not in text.split("deby")[0]
    edit(option, "  isar:\n", "  isar:\n    implies: [security]\n")
    security = catalog_copy / "options" / "security.yml"
    assert error_of(catalog_copy) == (
        f"{security}:{line_of(security, 'implies: [swupdate')}: implies cycle in isar: security -> swupdate -> "
        "security (an option cannot imply itself through others; drop one of these implies)"
    )


# --- names that become paths -------------------------------------------------------------------


@pytest.mark.parametrize("file", ["../../etc/passwd", "/etc/passwd", "kas/../../../x.yml"])
def test_upstream_kas_reference_must_stay_in_its_repo(catalog_copy: Path, file: str) -> None:
    option = catalog_copy / "options" / "rt.yml"
    edit(option, "file: kas/opt/rt.yml", f"file: {file}")
    msg = error_of(catalog_copy)
    assert msg.startswith(f"{option}:{line_of(option, file)}:") and "must be a relative path inside its folder" in msg


def test_local_fragment_symlinked_outside_is_refused(catalog_copy: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.yml"
    outside.write_text("local_conf_header:\n  evil: 'INHERIT += \"x\"'\n")
    base = catalog_copy / "kas" / "isar" / "base.yml"
    base.unlink()
    base.symlink_to(outside)
    msg = error_of(catalog_copy)
    assert "kas fragment 'kas/isar/base.yml' leads outside the catalogue folder" in msg


def test_board_file_symlinked_outside_is_refused(catalog_copy: Path, tmp_path: Path) -> None:
    outside = tmp_path / "board.yml"
    outside.write_text((catalog_copy / "boards" / "bbb.yml").read_text())
    (catalog_copy / "boards" / "bbb.yml").unlink()
    (catalog_copy / "boards" / "bbb.yml").symlink_to(outside)
    assert "boards/bbb.yml: leads outside the catalogue folder" in error_of(catalog_copy)


@pytest.mark.parametrize("machine", ["../../../tmp/x", "a/b", ".hidden", "x y"])
def test_machine_is_a_name_not_a_path(catalog_copy: Path, machine: str) -> None:
    board = catalog_copy / "boards" / "bbb.yml"
    edit(board, "machine: bbb", f"machine: '{machine}'")
    msg = error_of(catalog_copy)
    assert msg.startswith(f"{board}:{line_of(board, machine)}: distros.isar.machine:")


@pytest.mark.parametrize("name", ["Bbb", "bb--b", "bbb-", "b_b"])
def test_file_names_follow_the_name_pattern(catalog_copy: Path, name: str) -> None:
    (catalog_copy / "boards" / "bbb.yml").rename(catalog_copy / "boards" / f"{name}.yml")
    assert f"file name '{name}' is not a valid name" in error_of(catalog_copy)


def test_the_shipped_catalogue_still_loads() -> None:
    from orchestrator.catalog import default_catalog_dir

    assert load_catalog(default_catalog_dir(), cache=False).boards
