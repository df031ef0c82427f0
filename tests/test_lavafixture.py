"""The real LAVA instance of tests/lavafixtures.py: a qemu job with the busybox payload, REST v0.2."""

from __future__ import annotations

import functools
import http.server
import io
import tarfile
import threading
import time
import urllib.error
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from bootpayload import KERNEL_ARGS, PROMPT, boot_in_qemu, kernel_path, make_initramfs
from lavafixtures import LavaInstance, unavailable

pytestmark = pytest.mark.integration

MARKER = "CIPBUILD-LAVA-FIXTURE-MARKER"


@dataclass(frozen=True)
class Payload:
    kernel_url: str
    initrd_url: str
    artifacts_url: str  # a tar.gz LAVA unpacks into the ramdisk at /opt/artifacts
    kernel: Path
    initrd: Path


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def payload(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Payload]:
    """Kernel and initramfs served over HTTP on loopback (later tests serve them from S3)."""
    try:
        kernel = kernel_path()
    except FileNotFoundError as exc:
        unavailable(str(exc))
    root = tmp_path_factory.mktemp("payload")
    (root / "vmlinuz").write_bytes(kernel.read_bytes())
    make_initramfs(root / "initramfs.cpio.gz", marker=MARKER, extra_files={"/etc/cipbuild-marker": MARKER + "\n"})
    with tarfile.open(root / "artifacts.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("./build/manifest.txt")
        content = f"{MARKER} artifact\n".encode()
        info.size, info.mode = len(content), 0o644
        tar.addfile(info, io.BytesIO(content))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield Payload(
            f"{base}/vmlinuz", f"{base}/initramfs.cpio.gz", f"{base}/artifacts.tar.gz",
            root / "vmlinuz", root / "initramfs.cpio.gz",
        )  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()


def job_definition(payload: Payload, *, name: str = "cipbuild lava fixture") -> str:
    return f"""\
device_type: qemu
job_name: {name}
priority: medium
visibility: public
context:
  arch: amd64
timeouts:
  job: {{minutes: 10}}
  action: {{minutes: 5}}
  connection: {{minutes: 2}}
actions:
- deploy:
    to: tmpfs
    os: oe
    timeout: {{minutes: 3}}
    images:
      kernel:
        url: {payload.kernel_url}
        image_arg: -kernel {{kernel}} -append "{KERNEL_ARGS}"
      initrd:
        url: {payload.initrd_url}
        image_arg: -initrd {{initrd}}
        compression: gz
        format: cpio.newc
        overlays:
          lava: true
          artifacts:
            url: {payload.artifacts_url}
            format: tar
            compression: gz
            path: /opt/artifacts
- boot:
    method: qemu
    media: tmpfs
    timeout: {{minutes: 3}}
    prompts:
    - "{PROMPT}"
- test:
    timeout: {{minutes: 3}}
    definitions:
    - from: inline
      name: smoke
      path: inline/smoke.yaml
      repository:
        metadata:
          format: Lava-Test Test Definition 1.0
          name: smoke
          description: one case that passes, one that fails
        run:
          steps:
          - lava-test-case marker-present --shell grep -q {MARKER} /etc/cipbuild-marker
          - lava-test-case artifact-present --shell grep -q {MARKER} /opt/artifacts/build/manifest.txt
          - lava-test-case always-fails --shell false
"""


def test_payload_boots_to_the_prompt(payload: Payload) -> None:
    result = boot_in_qemu(payload.kernel, payload.initrd, send="cat /etc/cipbuild-marker; echo sum=$((40+2))")
    assert "Linux version" in result.console
    assert MARKER in result.console
    assert "sum=42" in result.console
    assert result.seconds < 60


def test_qemu_job_reports_pass_and_fail(lava: LavaInstance, payload: Payload) -> None:
    start = time.monotonic()
    job_id = lava.submit(job_definition(payload))
    job = lava.wait_job(job_id, timeout=300)
    elapsed = time.monotonic() - start
    assert job["health"] == "Complete", f"{lava.failure_reason(job_id)}\n{lava.logs()}"

    tests = lava.api("GET", f"jobs/{job_id}/tests/?limit=200").json()["results"]
    by_name = {t["name"]: t["result"] for t in tests}
    assert by_name["marker-present"] == "pass"
    assert by_name["artifact-present"] == "pass"
    assert by_name["always-fails"] == "fail"
    assert by_name["job"] == "pass"  # suite "lava": the job itself

    suites = {s["name"] for s in lava.api("GET", f"jobs/{job_id}/suites/").json()["results"]}
    assert suites == {"lava", "0_smoke"}

    junit = lava.api("GET", f"jobs/{job_id}/junit/")
    assert junit.status == 200
    cases = {case.get("name"): case for case in ET.fromstring(junit.body).iter("testcase")}
    assert cases["marker-present"].find("failure") is None
    assert cases["always-fails"].find("failure") is not None
    print(f"qemu job {job_id}: submit to Finished in {elapsed:.1f} s")


def test_validate_endpoint(lava: LavaInstance, payload: Payload) -> None:
    """``POST jobs/validate/ {"definition": yaml, "strict": bool}``: a schema check only (no device, no URL),
    anonymous, and its verdict is in the message of a 200 answer."""
    good = lava.api("POST", "jobs/validate/", {"definition": job_definition(payload)})
    assert (good.status, good.json()) == (200, {"message": "Job valid."})

    broken = job_definition(payload).replace("    to: tmpfs\n", "    to: nowhere\n")
    bad = lava.api("POST", "jobs/validate/", {"definition": broken})
    assert bad.status == 200
    assert bad.json()["message"].startswith("Job invalid:")

    unknown_type = job_definition(payload).replace("device_type: qemu", "device_type: no-such-type")
    assert lava.api("POST", "jobs/validate/", {"definition": unknown_type}).json() == {"message": "Job valid."}

    extra = job_definition(payload) + "not_a_job_key: 1\n"
    assert lava.api("POST", "jobs/validate/", {"definition": extra}).json() == {"message": "Job valid."}
    strict = lava.api("POST", "jobs/validate/", {"definition": extra, "strict": True}).json()
    assert strict == {"message": "Job invalid: extra keys not allowed"}

    assert lava.api("POST", "jobs/validate/", {"definition": "- a list"}).json() == {
        "message": "Job invalid: expected a dictionary"
    }
    assert lava.api("POST", "jobs/validate/", {"definition": "a: [unclosed"}).status == 500  # LAVA does not catch it
    empty = lava.api("POST", "jobs/validate/", {"definition": ""})
    assert (empty.status, empty.json()) == (400, {"definition": "Test job definition is required."})
    anonymous = lava.api("POST", "jobs/validate/", {"definition": job_definition(payload)}, token="")
    assert anonymous.json() == {"message": "Job valid."}

    # submitting is where the rest is checked: 400 with the reason
    refused = lava.api("POST", "jobs/", {"definition": unknown_type})
    assert refused.status == 400
    assert "no-such-type" in refused.json()["message"]


def test_wrong_token_is_refused(lava: LavaInstance, payload: Payload) -> None:
    # 403, not 401: LAVA lists SessionAuthentication first, and DRF takes the first class's (absent)
    # WWW-Authenticate header to choose between the two
    wrong = lava.api("GET", "jobs/", token="not-a-token")
    assert (wrong.status, wrong.json()) == (403, {"detail": "Invalid token."})
    refused = lava.api("POST", "jobs/", {"definition": job_definition(payload)}, token="not-a-token")
    assert refused.status == 403
    anonymous = lava.api("POST", "jobs/", {"definition": job_definition(payload)}, token="")
    assert anonymous.status == 403
    assert lava.api("GET", "jobs/?limit=1").status == 200


def test_server_can_stop_and_come_back(lava: LavaInstance) -> None:
    lava.stop_server()
    with pytest.raises((ConnectionError, urllib.error.URLError)):
        lava.api("GET", "system/version/", retries=0)
    lava.start_server()
    assert lava.api("GET", "system/version/").status == 200
