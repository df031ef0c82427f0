"""`cipbuild test run` against a real LAVA: a kernel and a busybox initramfs stand in for an
image, are signed, published to the real SeaweedFS store and downloaded by LAVA over HTTP."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from bootpayload import PROMPT, kernel_path, make_initramfs
from lavafixtures import LavaInstance
from s3fixtures import FaultProxyFactory, S3Bucket
from test_signing import (
    Keys,
    keys,  # noqa: F401  (the session fixture)
    make_job,
)

from orchestrator.signing import KEY_ENV
from orchestrator.teststage.lava import TOKEN_ENV

pytestmark = pytest.mark.integration

Cli = Callable[..., Any]
JOB = "isar-bookworm-qemu-amd64"
ROOT = Path(__file__).resolve().parent.parent

PLANS = {
    "payload-pass": ["lava-test-case kernel --shell uname -a", "lava-test-case marker --shell test -d /proc/1"],
    "payload-fail": ["lava-test-case kernel --shell uname -a", "lava-test-case always-fails --shell false"],
    "payload-slow": ["lava-test-case slow --shell sleep 150"],  # still under way when Ctrl-C comes
}


SECOND = f"{JOB}--swu-v2"
# The shipped swupdate plan's update stage, on the payload: its shell needs no login.
SHIPPED_UPDATE: dict[str, Any] = yaml.safe_load((ROOT / "testplans" / "swupdate.yml").read_text())["update"]
UPDATE_PLAN = {
    "summary": "the test payload, updated",
    "needs": ["kernel", "initrd"],
    "login": {"login_prompt": "", "prompt": PROMPT},
    "timeouts": {"job": 15, "deploy": 3, "boot": 3, "test": 3},
    "update": {
        **SHIPPED_UPDATE,
        # the payload boots no EFI Boot Guard to name a partition
        "boots": [{**boot, "boot_message": "Linux version [0-9]"} for boot in SHIPPED_UPDATE["boots"]],
    },
}
# Stand-ins for SWUpdate and EFI Boot Guard's tools on the payload, the one part that cannot run
# here. swupdate accepts only the second build's update (published under <board>/swu-v2/) and marks
# the running system as just updated; bg_printenv then says "installed" (1) until a fresh boot,
# where the update is "testing" (2). An update plan that did not boot again reads 1 and fails.
DEVICE_TOOLS = {
    "/usr/bin/swupdate": """#!/bin/sh
[ "$1" = -d ] || { echo "swupdate: want -d, got $*"; exit 2; }
case "$2" in
    "-u http"*/qemu-amd64/swu-v2/update.swu) echo "SWUPDATE successful !"; : > /run/just-updated ;;
    *) echo "swupdate: not the second build's update: $2"; exit 1 ;;
esac
""",
    "/usr/bin/bg_printenv": """#!/bin/sh
state=2; [ -e /run/just-updated ] && state=1
printf 'Config Partition #0 Values:\nustate:\t\t0 (OK)\n\nConfig Partition #1 Values:\nustate:\t\t%s\n' "$state"
""",
    "/usr/bin/bg_setenv": '#!/bin/sh\n[ "$1" = -c ] && echo "confirmed"\n',
}


@pytest.fixture
def lab_catalog(catalog_copy: Path) -> Path:
    """The shipped catalogue, with qemu-amd64 running two plans made for the busybox payload:
    no login (its init keeps a root shell on the console)."""
    for name, steps in PLANS.items():
        plan = {
            "summary": f"the test payload, {name}",
            "needs": ["kernel", "initrd"],
            "login": {"login_prompt": "", "prompt": PROMPT},
            "timeouts": {"job": 10, "deploy": 3, "boot": 3, "test": 3},
            "definitions": [{"name": name, "steps": steps}],
        }
        (catalog_copy / "testplans" / f"{name}.yml").write_text(json.dumps(plan))
    (catalog_copy / "testplans" / "payload-update.yml").write_text(json.dumps(UPDATE_PLAN))
    board = catalog_copy / "boards" / "qemu-amd64.yml"
    lab = "plans: [payload-pass, payload-fail, payload-slow, payload-update]"
    board.write_text(re.sub(r"plans: \[[^]]*\]", lab, board.read_text(), count=1))
    assert lab in board.read_text()
    return catalog_copy


@pytest.fixture
def signed_out(
    cli: Cli,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    keys: Keys,  # noqa: F811
) -> Path:
    """The payload as a signed job's out folder."""
    out = tmp_path / "out"
    initrd = make_initramfs(tmp_path / "initramfs.cpio.gz")
    job_dir = make_job(out, JOB, {"vmlinuz": kernel_path().read_bytes(), "initramfs.cpio.gz": initrd.read_bytes()})
    meta = json.loads((job_dir / "metadata.json").read_text())
    for art in meta["artifacts"]:
        if art["path"].endswith(".cpio.gz"):
            art["type"] = "initrd"
    (job_dir / "metadata.json").write_text(json.dumps(meta))
    monkeypatch.setenv(KEY_ENV, str(keys.good.secret))
    assert cli("sign", str(out)).code == 0
    return out


def publish_payload(cli: Cli, out: Path, s3: S3Bucket, endpoint: str, ref: str) -> Path:
    """``out`` published to a public-read bucket (a lab fetches anonymously) through ``endpoint``;
    the `publish --json` output's path."""
    s3.client().put_bucket_acl(Bucket=s3.bucket, ACL="public-read")
    result = cli("publish", str(out), "--to", f"{s3.url}/cip-core", "--endpoint-url", endpoint, "--ref", ref, "--json")
    assert result.code == 0, result.err
    path = out.parent / f"published-{ref}.json"
    path.write_text(result.out)
    return path


@pytest.fixture
def published(cli: Cli, signed_out: Path, s3: S3Bucket) -> Path:
    return publish_payload(cli, signed_out, s3, s3.endpoint, "master")


def set_types(job_dir: Path, types: dict[str, str]) -> None:
    """Artifact types by file-name suffix in the job's metadata.json."""
    meta = json.loads((job_dir / "metadata.json").read_text())
    for art in meta["artifacts"]:
        art["type"] = next((t for suffix, t in types.items() if art["path"].endswith(suffix)), art["type"])
    (job_dir / "metadata.json").write_text(json.dumps(meta))


@pytest.fixture
def update_published(
    cli: Cli,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    keys: Keys,  # noqa: F811
    s3: S3Bucket,
) -> Path:
    """The payload as a first build with its own .swu, and its second build with the update."""
    out = tmp_path / "out"
    initrd = make_initramfs(tmp_path / "device.cpio.gz", extra_files=DEVICE_TOOLS).read_bytes()
    kernel = kernel_path().read_bytes()
    for job_id, swu in ((JOB, b"version 1.0"), (SECOND, b"version 2.0, a delta from 1.0")):
        job_dir = make_job(out, job_id, {"vmlinuz": kernel, "initramfs.cpio.gz": initrd, "update.swu": swu})
        set_types(job_dir, {".cpio.gz": "initrd", ".swu": "swu"})
    meta = json.loads((out / SECOND / "metadata.json").read_text())
    meta["job"].update(board="qemu-amd64", follow_up={"name": "swu-v2", "of": JOB})
    (out / SECOND / "metadata.json").write_text(json.dumps(meta))
    monkeypatch.setenv(KEY_ENV, str(keys.good.secret))
    assert cli("sign", str(out)).code == 0
    return publish_payload(cli, out, s3, s3.endpoint, "update")


def lava_job_count(lava: LavaInstance) -> int:
    count: int = lava.api("GET", "jobs/?limit=1").json()["count"]
    return count


def run_tests(
    catalog: Path, published: Path, lava: LavaInstance, results: Path, *args: str, token: str | None = None
) -> subprocess.Popen[str]:
    env = {**os.environ, TOKEN_ENV: lava.token if token is None else token}
    argv = [sys.executable, "-m", "orchestrator", "--catalog", str(catalog), "test", "run", str(published)]
    argv += ["--lava", lava.url, "--results", str(results), "--json", *args]
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen[str], timeout: float = 300) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def test_a_passing_plan_exits_0_with_junit_and_the_handoff(
    lab_catalog: Path, published: Path, lava: LavaInstance, tmp_path: Path
) -> None:
    results = tmp_path / "results"
    code, out, err = finish(run_tests(lab_catalog, published, lava, results, "--plan", "payload-pass"))
    assert code == 0, err + lava.logs()
    handoff = json.loads((results / "handoff.json").read_text())
    assert handoff == json.loads(out)
    jsonschema.validate(handoff, json.loads((ROOT / "schemas" / "handoff.schema.json").read_text()))
    (run,) = handoff["runs"]
    assert (run["job"], run["plan"], run["status"], run["health"]) == (JOB, "payload-pass", "success", "Complete")
    assert {c["name"] for c in run["cases"] if c["result"] == "pass"} >= {"kernel", "marker"}
    assert Path(run["junit"]) == results / JOB / "payload-pass.xml"
    assert "<testcase" in Path(run["junit"]).read_text()
    record = json.loads(published.read_text())
    kernel = next(o for o in record["jobs"][0]["objects"] if o["type"] == "kernel")
    assert kernel["url"] in run["artifacts"]
    definition = lava.api("GET", f"jobs/{run['lava_jobs'][-1]}/").json()["definition"]
    assert kernel["sha256"] in definition  # LAVA checked what it downloaded against the signed sha256
    assert hashlib.sha256(kernel_path().read_bytes()).hexdigest() == kernel["sha256"]


def test_a_failing_case_exits_3_and_names_it(
    lab_catalog: Path, published: Path, lava: LavaInstance, tmp_path: Path
) -> None:
    code, out, err = finish(run_tests(lab_catalog, published, lava, tmp_path / "r", "--plan", "payload-fail"))
    assert code == 3, err
    assert "always-fails" in err.strip().splitlines()[-1]
    (run,) = json.loads(out)["runs"]
    assert run["health"] == "Complete"
    assert len(run["lava_jobs"]) == 1  # a failing test is never resubmitted


def test_an_artifact_lava_cannot_fetch_stops_the_job_before_submission(
    lab_catalog: Path, published: Path, lava: LavaInstance, tmp_path: Path, s3: S3Bucket
) -> None:
    s3.client().put_bucket_acl(Bucket=s3.bucket, ACL="private")  # the lab's anonymous fetch now gets 403
    before = lava_job_count(lava)
    code, out, err = finish(run_tests(lab_catalog, published, lava, tmp_path / "r", "--plan", "payload-pass"))
    assert code == 4, err
    assert "HTTP 403" in err and "vmlinuz" in err
    assert lava_job_count(lava) == before  # nothing was submitted
    (run,) = json.loads(out)["runs"]
    assert run["lava_jobs"] == []


def test_lava_gone_during_the_wait_is_waited_for(
    lab_catalog: Path, published: Path, lava: LavaInstance, tmp_path: Path
) -> None:
    before = lava_job_count(lava)
    process = run_tests(lab_catalog, published, lava, tmp_path / "r", "--plan", "payload-pass")
    deadline = time.monotonic() + 60
    while lava_job_count(lava) == before and time.monotonic() < deadline:
        time.sleep(0.3)
    lava.stop_server()
    try:
        time.sleep(15)
    finally:
        lava.start_server()
    code, out, err = finish(process)
    assert code == 0, err
    assert json.loads(out)["runs"][0]["health"] == "Complete"


def test_a_wrong_token_is_one_line_and_exit_4(
    lab_catalog: Path, published: Path, lava: LavaInstance, tmp_path: Path
) -> None:
    code, _, err = finish(
        run_tests(lab_catalog, published, lava, tmp_path / "r", "--plan", "payload-pass", token="nope")
    )
    assert code == 4, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("cipbuild: error:") and "CIPBUILD_LAVA_TOKEN" in last
    assert "Traceback" not in err


def test_a_download_the_lab_broke_is_resubmitted_and_a_failing_test_never(
    cli: Cli,
    lab_catalog: Path,
    signed_out: Path,
    s3: S3Bucket,
    fault_proxy: FaultProxyFactory,
    lava: LavaInstance,
    tmp_path: Path,
) -> None:
    """The store in front of the lab loses the kernel for one download (HEAD still answers, so
    the preflight and LAVA's validation pass): LAVA ends the job Incomplete with an
    Infrastructure error. With --retries 0 that is exit 4; by default it is resubmitted."""
    vanish = {"left": 0}

    def kernel_vanishes(method: str, target: str, headers: list[tuple[str, str]]) -> str | None:
        ranged = any(name.lower() == "range" for name, _ in headers)
        if method == "GET" and target.endswith("/vmlinuz") and not ranged and vanish["left"] > 0:
            vanish["left"] -= 1
            return "404"
        return None

    front = fault_proxy(rule=kernel_vanishes)
    published = publish_payload(cli, signed_out, s3, front.endpoint, "flaky")
    assert front.endpoint in published.read_text()  # the lab downloads through the flaky front

    vanish["left"] = 1
    code, out, err = finish(
        run_tests(lab_catalog, published, lava, tmp_path / "once", "--plan", "payload-pass", "--retries", "0")
    )
    assert code == 4, err
    (run,) = json.loads(out)["runs"]
    assert (run["health"], len(run["lava_jobs"])) == ("Incomplete", 1)
    assert "Infrastructure" in run["error"] and "vmlinuz" in run["error"]
    assert "Infrastructure" in err.strip().splitlines()[-1]

    vanish["left"] = 1
    code, out, err = finish(run_tests(lab_catalog, published, lava, tmp_path / "again", "--plan", "payload-pass"))
    assert code == 0, err + lava.logs()
    (run,) = json.loads(out)["runs"]
    assert (run["status"], run["health"], len(run["lava_jobs"])) == ("success", "Complete", 2)
    assert "resubmitting" in err
    assert vanish["left"] == 0


def test_ctrl_c_cancels_the_lava_jobs_under_way(
    lab_catalog: Path, published: Path, lava: LavaInstance, tmp_path: Path
) -> None:
    before = lava_job_count(lava)
    results = tmp_path / "r"
    process = run_tests(lab_catalog, published, lava, results, "--plan", "payload-slow")
    deadline = time.monotonic() + 60
    while lava_job_count(lava) < before + 1 and time.monotonic() < deadline:
        time.sleep(0.3)
    assert lava_job_count(lava) == before + 1
    process.send_signal(signal.SIGINT)
    code, _, err = finish(process, timeout=60)
    assert code == 130, err
    handoff = json.loads((results / "handoff.json").read_text())
    assert {r["status"] for r in handoff["runs"]} == {"interrupted"}
    for run in handoff["runs"]:
        deadline = time.monotonic() + 60
        while (job := lava.api("GET", f"jobs/{run['lava_jobs'][-1]}/").json())["state"] != "Finished":
            assert time.monotonic() < deadline, job
            time.sleep(0.5)
        assert job["health"] == "Canceled"


@pytest.fixture(autouse=True)
def _needs_qemu() -> None:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.fail("qemu-system-x86 is not installed") if os.environ.get("CI") else pytest.skip("no qemu")


def test_an_update_plan_installs_the_second_builds_update_and_checks_it_after_booting_again(
    lab_catalog: Path, update_published: Path, lava: LavaInstance, tmp_path: Path
) -> None:
    results = tmp_path / "results"
    process = run_tests(lab_catalog, update_published, lava, results, "--plan", "payload-update")
    code, out, err = finish(process, timeout=600)
    assert code == 0, err + lava.logs()
    (run,) = json.loads(out)["runs"]
    assert (run["job"], run["plan"]) == (JOB, "payload-update")
    assert (run["status"], run["health"]) == ("success", "Complete")
    passed = {c["name"] for c in run["cases"] if c["result"] == "pass"}
    assert {"install", "update-state", "confirm"} <= passed, run["cases"]
    record = json.loads(update_published.read_text())
    second = next(j for j in record["jobs"] if j["id"] == SECOND)
    swu = next(o for o in second["objects"] if o["type"] == "swu")
    assert swu["path"] == "qemu-amd64/swu-v2/update.swu" and swu["url"] in run["artifacts"]
    definition = lava.api("GET", f"jobs/{run['lava_jobs'][-1]}/").json()["definition"]
    assert swu["url"] in definition and "manual_kill" in definition
