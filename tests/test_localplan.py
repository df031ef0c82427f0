"""`cipbuild boot JOB --plan PLAN`: the catalogue's test plans without a lab, run as LAVA's test
shell runs them (parameters, set -e, the steps, lava-test-case's signals), on the Debian kernel
and busybox payload of the boot tests under qemu."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from xml.etree import ElementTree

import pytest
from conftest import Result
from test_boot import AMD64, POWEROFF, boot_job, make_job, one_line_error, payload  # noqa: F401

import orchestrator.cli.boot  # noqa: F401  (registers the verb)

Cli = Callable[..., Result]

# LAVA's own idioms: a parameter, a `$2` that belongs to the case's shell, a measurement, a failing
# case, and a failing step that ends the definition under set -e (the next case never runs)
PROBE_PLAN = {
    "summary": "lava-test-case the way LAVA runs it",
    "needs": ["kernel"],
    "login": {"login_prompt": "login:", "username": "root", "password_prompt": "Password:", "password": "root",
              "prompt": "root@"},
    "timeouts": {"test": 2},
    "definitions": [
        {
            "name": "probe",
            "parameters": {"GREETING": "hello world"},
            "steps": [
                # run.sh expands the (unexported) parameter, lava-test-case evals the rest
                'lava-test-case greeting --shell "[ \\"$GREETING\\" = \'hello world\' ]"',
                "lava-test-case awk-field --shell \"echo a b | awk '{print $2}' | grep -qx b\"",
                "lava-test-case boot-time --result pass --measurement 4.2 --units s",
                "lava-test-case always-fails --result fail",
            ],
        },
        {
            "name": "stops",
            "steps": ["lava-test-case before --shell true", "false", "lava-test-case never-reached --result pass"],
        },
    ],
}  # fmt: skip


@pytest.fixture
def probe_catalog(catalog_copy: Path) -> Path:
    (catalog_copy / "testplans" / "probe.yml").write_text(json.dumps(PROBE_PLAN))
    board = catalog_copy / "boards" / "qemu-amd64.yml"
    board.write_text(board.read_text().replace("plans: [boot, ltp,", "plans: [probe, boot, ltp,"))
    return catalog_copy


@pytest.mark.integration
def test_the_boot_plan_runs_without_a_lab(cli: Cli, tmp_path: Path, payload: dict[str, Path]) -> None:  # noqa: F811
    folder = boot_job(tmp_path / "out", payload)
    result = cli("boot", AMD64, "--out", str(tmp_path / "out"), "--plan", "boot", "--json", *POWEROFF)
    assert result.code == 0, result.err
    (report,) = json.loads(result.out)["plans"]
    assert report["plan"] == "boot" and report["result"] == "ok"
    assert [(c["suite"], c["name"], c["result"]) for c in report["cases"]] == [
        ("0_smoke", "uname", "pass"),
        ("0_smoke", "proc-version", "pass"),
    ]
    assert report["boot"]["powered_off"] is True and report["boot"]["log"] == str(folder / "boot-boot.log")
    junit = ElementTree.parse(folder / "results" / "boot.xml").getroot()
    assert [c.get("name") for c in junit.iter("testcase")] == ["uname", "proc-version"]
    assert junit.find("testsuite").get("failures") == "0"  # type: ignore[union-attr]
    assert "] 0_smoke: 2 of 2 case(s) passed" in result.err


@pytest.mark.integration
def test_a_plan_runs_as_lavas_test_shell_would(
    cli: Cli,
    tmp_path: Path,
    probe_catalog: Path,
    payload: dict[str, Path],  # noqa: F811
) -> None:
    folder = boot_job(tmp_path / "out", payload)
    args = ("--catalog", str(probe_catalog), "boot", AMD64, "--out", str(tmp_path / "out"))
    result = cli(*args, "-p", "probe", "-p", "boot", *POWEROFF)
    error = one_line_error(result, 3)
    assert error.endswith(f"{AMD64} probe: failed: 0_probe/always-fails, 1_stops/run")  # boot passed
    rows = {line.split()[0]: line.split() for line in result.out.splitlines() if line.split()}
    assert rows["probe"][1:3] == ["failed", "4/6"] and rows["boot"][1:3] == ["ok", "2/2"]
    junit = ElementTree.parse(folder / "results" / "probe.xml").getroot()
    cases = {(c.get("classname"), c.get("name")): c for c in junit.iter("testcase")}
    assert sorted(cases) == [
        ("0_probe", "always-fails"),
        ("0_probe", "awk-field"),
        ("0_probe", "boot-time"),
        ("0_probe", "greeting"),
        ("1_stops", "before"),
        ("1_stops", "run"),
    ]  # never-reached never ran: set -e ended the definition at `false`
    failed = {key for key, case in cases.items() if case.find("failure") is not None}
    assert failed == {("0_probe", "always-fails"), ("1_stops", "run")}


@pytest.mark.integration
def test_the_plans_measurement_reaches_the_json(
    cli: Cli,
    tmp_path: Path,
    probe_catalog: Path,
    payload: dict[str, Path],  # noqa: F811
) -> None:
    boot_job(tmp_path / "out", payload)
    args = ("--catalog", str(probe_catalog), "boot", AMD64, "--out", str(tmp_path / "out"))
    result = cli(*args, "-p", "probe", "--json", *POWEROFF)
    assert result.code == 3
    (report,) = json.loads(result.out)["plans"]
    measured = next(c for c in report["cases"] if c["name"] == "boot-time")
    assert measured == {"suite": "0_probe", "name": "boot-time", "result": "pass", "measurement": "4.2", "units": "s"}


def test_plans_that_cannot_run_here_are_refused_before_booting(cli: Cli, tmp_path: Path) -> None:
    make_job(tmp_path, AMD64, {"vmlinuz": ("kernel", b"k"), "initrd": ("initrd", b"i")})
    out = ("--out", str(tmp_path))
    unknown = cli("boot", AMD64, *out, "--plan", "bot")
    assert unknown.code == 2 and "unknown test plan 'bot'" in unknown.err and "boot" in unknown.err
    elsewhere = cli("boot", AMD64, *out, "--plan", "ltp")
    assert elsewhere.code == 2
    assert f"plan ltp does not apply to {AMD64} (board qemu-amd64 runs boot on it)" in elsewhere.err

    secure = "isar-bookworm-qemu-amd64-security"
    make_job(tmp_path, secure, {"vmlinuz": ("kernel", b"k")}, options=["security"])
    lab_only = cli("boot", secure, *out, "--plan", "security")
    assert lab_only.code == 2 and "runs in a lab only" in lab_only.err and "cip-security-tests" in lab_only.err
    update = cli("boot", secure, *out, "--plan", "swupdate")  # security implies swupdate
    assert update.code == 2 and "plan swupdate installs swu-v2's swu and boots the disk again" in update.err
    for result in (unknown, elsewhere, lab_only, update):
        assert result.err.count("\n") <= 2 and "Traceback" not in result.err
