from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import Result

Cli = Callable[..., Result]


def test_boards_lists_machines(cli: Cli) -> None:
    res = cli("boards", "--json")
    assert res.code == 0
    data = json.loads(res.out)
    assert data["bbb"]["distros"]["deby"]["machine"] == "beaglebone"
    table = cli("boards")
    assert "isar:qemu-amd64" in table.out and "deby:qemux86-64" in table.out


def test_options_and_recipes(cli: Cli) -> None:
    assert "implies swupdate, secure-boot, encrypt" in cli("options").out
    recipes = {r["name"]: r["jobs"] for r in json.loads(cli("recipes", "--json").out)}
    assert recipes["cip-core-ci"] == 26 + 4 and set(recipes) >= {"ci", "release", "hands-on"}


def test_plan_json_of_cip_core_ci(cli: Cli) -> None:
    res = cli("plan", "-r", "cip-core-ci", "--json")
    assert res.code == 0
    data = json.loads(res.out)
    assert len(data["jobs"]) == 26 + 4  # upstream CI's 26 jobs, 4 of which build a second time
    riscv = next(j for j in data["jobs"] if j["board"] == "qemu-riscv64")
    assert riscv == {
        "id": "isar-trixie-qemu-riscv64",
        "distro": "isar",
        "release": "trixie",
        "board": "qemu-riscv64",
        "kernel": "6.12",
        "options": [],
        "machine": "qemu-riscv64",
        "bitbake_distro": "cip-core-trixie",
        "target": "cip-core-image",
        "image": "cip-core-image-cip-core-trixie-qemu-riscv64",
        "waived": [],
        "follow_up": None,
    }


def test_plan_explain_shows_exclusions_and_waivers(cli: Cli) -> None:
    res = cli("plan", "-r", "release", "--explain")
    assert "isar-bookworm-bbb-security" in res.out and "security-boards" in res.out
    waived = cli("plan", "-r", "cip-core-ci", "--explain")
    assert "builds although rule targz-swupdate excludes it" in waived.out


def test_plan_all_explain_counts_by_rule(cli: Cli) -> None:
    res = cli("plan", "--all", "--explain", "-b", "qemu-riscv64", "--json")
    data = json.loads(res.out)
    assert data["candidates"] > 1000
    assert all(j["release"] == "trixie" for j in data["jobs"])
    assert "riscv64-trixie-only" in data["rules"]


def test_plan_flags_name_one_job(cli: Cli) -> None:
    res = cli("plan", "-b", "qemu-amd64", "-o", "security", "--json")
    assert [j["id"] for j in json.loads(res.out)["jobs"]] == ["isar-bookworm-qemu-amd64-security"]


def test_kas_prints_the_kas_file(cli: Cli, tmp_path: Path) -> None:
    res = cli("kas", "deby-buster-iwg20m-security")
    assert res.code == 0
    data = yaml.safe_load(res.out)
    assert data["machine"] == "iwg20m"
    assert set(data["repos"]) == {"meta-cip-core", "meta-iwg20m", "meta-cip-security"}
    out = tmp_path / "job.yml"
    assert cli("kas", "isar-bookworm-qemu-amd64", "-O", str(out)).code == 0
    assert yaml.safe_load(out.read_text())["target"] == "cip-core-image"


def one_line_error(res: Result) -> str:
    assert res.code == 2, res
    assert "Traceback" not in res.err
    lines = res.err.strip().splitlines()
    assert len(lines) == 1, res.err
    return lines[0]


def test_bad_input_is_one_line_and_exit_2(cli: Cli) -> None:
    assert (
        one_line_error(cli("plan", "-b", "qemu-amd46"))
        == "cipbuild: error: --board: unknown board 'qemu-amd46' (did you mean 'qemu-amd64'?)"
    )
    assert "did you mean 'release'?" in one_line_error(cli("plan", "-r", "relase"))
    impossible = one_line_error(cli("plan", "-b", "qemu-riscv64", "-R", "bookworm"))
    assert "isar-bookworm-qemu-riscv64 cannot be built: riscv64-trixie-only" in impossible
    assert "cannot be built: security-boards" in one_line_error(cli("kas", "isar-bookworm-bbb-security"))
    assert "is not a job id" in one_line_error(cli("kas", "yocto-bookworm-bbb"))


def test_broken_catalogue_names_file_and_line(cli: Cli, catalog_copy: Path) -> None:
    board = catalog_copy / "boards" / "bbb.yml"
    board.write_text(board.read_text().replace("arch: armhf", "arch: [armhf"))
    line = one_line_error(cli("--catalog", str(catalog_copy), "boards"))
    assert line.startswith(f"cipbuild: error: {board}:") and "invalid YAML" in line
    assert "does not exist" in one_line_error(cli("--catalog", str(catalog_copy / "nope"), "plan"))


def test_unwritable_output_is_a_user_error(cli: Cli) -> None:
    assert "cannot write /nonexistent/dir/x.yml" in one_line_error(
        cli("kas", "isar-bookworm-qemu-amd64", "-O", "/nonexistent/dir/x.yml")
    )


def test_kas_of_a_waived_job_says_why_it_builds(cli: Cli) -> None:
    res = cli("kas", "isar-bookworm-qemu-arm64-security-targz-separate-home-iec-testing")
    assert res.code == 0
    assert "# Builds although rule targz-swupdate excludes it" in res.out


def test_build_without_a_selection_asks_what_to_build(cli: Cli) -> None:
    assert "say what to build" in one_line_error(cli("build"))


def test_write_error_on_stdout_is_one_line() -> None:
    import subprocess
    import sys

    with open("/dev/full", "w") as full:
        res = subprocess.run(
            [sys.executable, "-m", "orchestrator", "boards"],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
        )
    assert res.returncode == 4
    assert res.stderr == "cipbuild: error: cannot write to standard output: No space left on device\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["plan", "-r", ""], "--recipe: an empty recipe name"),
        (["build", "-r", " "], "--recipe: an empty recipe name"),
        (["plan", "--all", "-r", "ci"], "--recipe: --all expands the whole catalogue, --recipe one recipe"),
        (["plan", "-b", ""], "--board: an empty value selects nothing"),
        (["plan", "-o", "security", "-o", ""], "--option: an empty value selects nothing"),
        (["plan", ""], "JOB_ID: an empty value selects nothing"),
        (["--catalog", "", "boards"], "--catalog: is empty"),
    ],
)
def test_empty_or_contradictory_selectors_name_the_flag(cli: Cli, args: list[str], message: str) -> None:
    res = cli(*args)
    assert res.code == 2 and res.err.startswith(f"cipbuild: error: {message}") and res.err.count("\n") == 1


def test_empty_catalogue_variable_is_refused(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIPBUILD_CATALOG", "")
    res = cli("boards")
    assert res.code == 2
    assert res.err == (
        "cipbuild: error: CIPBUILD_CATALOG: is empty (name a catalogue folder, or unset CIPBUILD_CATALOG for the "
        "built-in one)\n"
    )
