"""`--snapshot`: isar jobs take Debian's packages from the snapshot archive at a fixed time, the
way isar v1.1 expects it (ISAR_USE_APT_SNAPSHOT, ISAR_APT_SNAPSHOT_DATE), recorded in the job's
inputs. No snapshot server is reachable here: the proof is the kas configuration kas itself reads
(`kas dump`) and the local.conf a fixture build gets."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from buildworld import World
from conftest import Result
from kasfixture import Upstreams, kas_dump

from orchestrator.catalog import Catalog
from orchestrator.kasfile import check_snapshot, render, repos_of
from orchestrator.matrix import resolve_job

WHEN = "20240702T082400Z"
LINES = f'ISAR_USE_APT_SNAPSHOT = "1"\nISAR_APT_SNAPSHOT_DATE = "{WHEN}"\n'


def test_kas_shows_the_snapshot_and_how_to_regenerate_it(cli: Callable[..., Result]) -> None:
    out = cli("kas", "isar-bookworm-qemu-amd64-security", "--snapshot", WHEN).out
    assert f"# Regenerate with: cipbuild kas isar-bookworm-qemu-amd64-security --snapshot {WHEN}\n" in out
    assert (
        f'  zz-cipbuild-apt-snapshot: |\n    ISAR_USE_APT_SNAPSHOT = "1"\n    ISAR_APT_SNAPSHOT_DATE = "{WHEN}"\n'
        in out
    )


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["isar-bookworm-qemu-amd64", "--snapshot", "2024-07-02"], "'2024-07-02' is not a snapshot time"),
        (["isar-bookworm-qemu-amd64", "--snapshot", "20241302T000000Z"], "'20241302T000000Z' is not a snapshot time"),
        (["deby-buster-qemu-amd64", "--snapshot", WHEN], "a snapshot applies to isar jobs only"),
    ],
)
def test_a_bad_snapshot_is_one_line_and_exit_2(cli: Callable[..., Result], args: list[str], said: str) -> None:
    result = cli("kas", *args)
    assert result.code == 2
    (line,) = result.err.strip().splitlines()
    assert line.startswith("cipbuild: error: --snapshot: ") and said in line


@pytest.mark.integration
def test_kas_reads_the_snapshot_into_local_conf(catalog: Catalog, upstreams: Upstreams, tmp_path: Path) -> None:
    pinned = dataclasses.replace(catalog)
    job = resolve_job(pinned, "isar-bookworm-qemu-amd64-security")
    check_snapshot(pinned, [job], WHEN)
    kas_file = tmp_path / "job.yml"
    kas_file.write_text(render(pinned, job), encoding="utf-8")
    names = [*repos_of(pinned, job), "isar", "meta-cip-test-support"]
    dumped: dict[str, Any] = kas_dump(upstreams, kas_file, tmp_path / "work", names)
    headers = dumped["local_conf_header"]
    assert headers["zz-cipbuild-apt-snapshot"] == LINES
    assert sorted(headers)[-1] == "zz-cipbuild-apt-snapshot"  # kas writes them sorted: this one last, it wins
    assert len(headers) > 1  # merged with isar-cip-core's own sections, not in place of them


@pytest.mark.integration
def test_a_build_with_a_snapshot_records_it_and_rebuilds_for_it(docker_engine: str, world: World) -> None:
    job = "isar-bookworm-qemu-amd64"
    assert world.build(job).returncode == 0
    before = world.metadata(job)["inputs_digest"]
    proc = world.build(job, "--snapshot", WHEN, env={"CI": "1"})
    assert proc.returncode == 0, proc.stderr
    meta = world.metadata(job)
    assert meta["inputs"]["debian_snapshot"] == WHEN and meta["inputs_digest"] != before
    assert "debian snapshot" in meta["rebuilt_because"]["summary"]
    local_conf = (world.out / job / "build" / "conf" / "local.conf").read_text()
    assert f"# zz-cipbuild-apt-snapshot\n{LINES}" in local_conf
    sections = [line for line in local_conf.splitlines() if line.startswith("# ")]
    assert sections[-1] == "# zz-cipbuild-apt-snapshot"  # the last section: its settings win
    rerun = world.build(job, "--snapshot", WHEN, "--json")
    assert rerun.returncode == 0 and '"up-to-date"' in rerun.stdout
