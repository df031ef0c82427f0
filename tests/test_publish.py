"""`cipbuild publish` to a real SeaweedFS S3 server and to a local folder: the commit protocol,
idempotence, crashes, faults, bad input, and `verify` of what was published."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from buildworld import World, open_to_builder
from faultproxy import FAULT_KINDS
from s3fixtures import READER, S3Bucket
from test_signing import (
    IMAGE,
    Keys,
    keys,  # noqa: F401  (the session fixture)
    make_job,
    make_out,
)

from orchestrator.errors import UserError, VerificationError
from orchestrator.manifest import CHECKSUMS
from orchestrator.publish import check_layout, check_ref, parse_duration, slug
from orchestrator.signing import KEY_ENV
from orchestrator.store import HashingReader, check_key

pytestmark = pytest.mark.integration

Cli = Callable[..., Any]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def signed(cli: Cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, keys: Keys) -> Path:  # noqa: F811
    """A signed release of two jobs (and a failed one that is not in it)."""
    out = make_out(tmp_path / "out")
    monkeypatch.setenv(KEY_ENV, str(keys.good.secret))
    assert cli("sign", str(out)).code == 0
    return out


@pytest.fixture
def big_signed(cli: Cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, keys: Keys) -> Path:  # noqa: F811
    """A signed release whose image is big enough to go up in many multipart parts."""
    out = tmp_path / "big"
    image = os.urandom(1 << 20) * 96  # 96 MiB: above the multipart threshold
    make_job(out, "isar-bookworm-qemu-amd64", {"image.wic": image, "vmlinuz": b"kernel" * 1000})
    make_job(out, "isar-bookworm-qemu-arm64", {"image.wic": image[::-1], "Image": b"arm" * 1000})
    monkeypatch.setenv(KEY_ENV, str(keys.good.secret))
    assert cli("sign", str(out)).code == 0
    return out


def publish_json(cli: Cli, out: Path, *args: str) -> dict[str, Any]:
    result = cli("publish", str(out), "--json", *args)
    assert result.code == 0, result.err
    data: dict[str, Any] = json.loads(result.out)
    return data


def s3_args(s3: S3Bucket, prefix: str = "cip-core", endpoint: str | None = None) -> list[str]:
    return ["--to", f"{s3.url}/{prefix}", "--endpoint-url", endpoint or s3.endpoint, "--ref", "master"]


def verify_s3(cli: Cli, s3: S3Bucket, keys: Keys, endpoint: str | None = None) -> Any:  # noqa: F811
    release = f"{s3.url}/cip-core/master"
    return cli("verify", release, "--endpoint-url", endpoint or s3.endpoint, "--keyring", str(keys.good.public))


def all_objects(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [data["index"], data["index_signature"], *(o for job in data["jobs"] for o in job["objects"])]


# --- a local folder: the embedded default ---------------------------------------------------------


def test_publish_to_the_default_folder_then_verify_it(
    cli: Cli,
    signed: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    keys: Keys,  # noqa: F811
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CI_COMMIT_REF_SLUG", "feature-x")
    first = publish_json(cli, signed)
    release = tmp_path / "publish" / "feature-x"
    assert (release / "index.json").read_bytes() == (signed / "index.json").read_bytes()
    wic = release / "qemu-amd64" / "image.wic"
    assert wic.read_bytes() == IMAGE
    assert (release / "qemu-amd64" / "isar-bookworm-qemu-amd64.manifest.json.asc").is_file()
    assert not (release / "bbb").exists()  # the failed job is not in the signed index
    assert first["summary"]["sent_bytes"] == sum(o["size"] for o in all_objects(first)) + len(
        (release / "published.json").read_bytes()
    )
    again = publish_json(cli, signed)
    assert again["summary"]["sent_bytes"] == 0
    assert again["summary"]["sent_objects"] == 0
    verified = cli("verify", str(release), "--keyring", str(keys.good.public))
    assert verified.code == 0, verified.out + verified.err
    assert "24 file(s)" in verified.out


def test_a_changed_object_in_the_folder_store_is_sent_again_and_verify_catches_tampering(
    cli: Cli,
    signed: Path,
    tmp_path: Path,
    keys: Keys,  # noqa: F811
) -> None:
    store = tmp_path / "store"
    publish_json(cli, signed, "--to", str(store), "--ref", "v1.0")
    wic = store / "v1.0" / "qemu-arm64" / "image.wic"
    wic.write_bytes(b"x" * len(IMAGE))  # same size, new content, no sha256 attribute
    broken = cli("verify", f"file://{store}/v1.0", "--keyring", str(keys.good.public))
    assert broken.code == 5
    assert "isar-bookworm-qemu-arm64/artifacts/image.wic" in broken.err
    again = publish_json(cli, signed, "--to", str(store), "--ref", "v1.0")
    assert again["summary"]["sent_objects"] == 1
    assert wic.read_bytes() == IMAGE[::-1]
    assert cli("verify", f"file://{store}/v1.0", "--keyring", str(keys.good.public)).code == 0


HTTPS_SERVER = """
import http.server, ssl, sys, functools
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[2], sys.argv[3])
server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def test_verify_over_https_reads_the_published_layout(
    cli: Cli,
    signed: Path,
    tmp_path: Path,
    keys: Keys,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = tmp_path / "store"
    publish_json(cli, signed, "--to", str(store), "--ref", "master")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        capture_output=True,
        check=True,
    )  # fmt: skip
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trust this server, as a lab trusts its own CA
    server = subprocess.Popen(
        [sys.executable, "-c", HTTPS_SERVER, str(store), str(cert), str(key)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert server.stdout is not None
        base = f"https://127.0.0.1:{server.stdout.readline().strip()}/master/"
        result = cli("verify", base, "--keyring", str(keys.good.public))
        assert result.code == 0, result.err
        assert f"verified {base}" in result.out
        (store / "master" / "qemu-amd64" / "vmlinuz").unlink()
        result = cli("verify", base, "--keyring", str(keys.good.public))
        assert result.code == 5
        assert "isar-bookworm-qemu-amd64/artifacts/vmlinuz" in result.err
    finally:
        server.terminate()
        server.wait()


# --- S3 -------------------------------------------------------------------------------------------


def test_publish_to_s3_keeps_cips_layout_and_sends_nothing_twice(
    cli: Cli,
    signed: Path,
    s3: S3Bucket,
    keys: Keys,  # noqa: F811
) -> None:
    data = publish_json(cli, signed, *s3_args(s3))
    keys_found = s3.keys("cip-core/")
    assert "cip-core/master/index.json" in keys_found
    assert "cip-core/master/qemu-amd64/image.wic" in keys_found
    assert "cip-core/master/qemu-arm64/isar-bookworm-qemu-arm64.SHA256SUMS.asc" in keys_found
    for obj in all_objects(data):
        key = "cip-core/master/" + obj["path"]
        assert keys_found[key] == obj["size"]
        assert s3.head(key)["Metadata"]["sha256"] == obj["sha256"]
        assert obj["url"].endswith(key)
    assert s3.multipart_uploads() == []
    again = publish_json(cli, signed, *s3_args(s3))
    assert (again["summary"]["sent_bytes"], again["summary"]["sent_objects"]) == (0, 0)
    result = cli(
        "verify", f"{s3.url}/cip-core/master", "--endpoint-url", s3.endpoint, "--keyring", str(keys.good.public)
    )
    assert result.code == 0, result.err


def test_presigned_urls_fetch_each_object_from_a_private_bucket(cli: Cli, signed: Path, s3: S3Bucket) -> None:
    data = publish_json(cli, signed, *s3_args(s3), "--presign", "2h")
    for obj in all_objects(data)[:6]:
        with urllib.request.urlopen(obj["url"], timeout=10) as response:  # no credentials: the URL carries them
            assert hashlib.sha256(response.read()).hexdigest() == obj["sha256"]
    assert "X-Amz-Expires=7200" in data["index"]["url"]


def test_a_lab_fetches_the_published_urls_anonymously_from_a_public_bucket(
    cli: Cli, signed: Path, s3: S3Bucket
) -> None:
    # SeaweedFS ignores per-object ACLs (--acl public-read is sent, and AWS honours it), but
    # honours a public-read bucket: the URLs publish prints are what an anonymous lab fetches.
    s3.client().put_bucket_acl(Bucket=s3.bucket, ACL="public-read")
    data = publish_json(cli, signed, *s3_args(s3), "--acl", "public-read")
    for obj in all_objects(data):
        with urllib.request.urlopen(obj["url"], timeout=10) as response:  # no credentials at all
            assert hashlib.sha256(response.read()).hexdigest() == obj["sha256"]


def test_a_big_image_goes_up_in_parts_and_is_checked_against_what_was_signed(
    cli: Cli,
    big_signed: Path,
    s3: S3Bucket,
    keys: Keys,  # noqa: F811
) -> None:
    data = publish_json(cli, big_signed, *s3_args(s3))
    wic = next(o for o in all_objects(data) if o["path"] == "qemu-amd64/image.wic")
    assert wic["size"] == 96 << 20
    assert "-" in s3.head("cip-core/master/qemu-amd64/image.wic")["ETag"]  # a multipart ETag
    # a file that changed after signing (same size) is refused before the upload completes
    image = big_signed / "isar-bookworm-qemu-arm64" / "artifacts" / "image.wic"
    with image.open("r+b") as handle:
        handle.seek((96 << 20) - 1)
        handle.write(b"\0" if handle.read(1) != b"\0" else b"\1")
    result = cli("publish", str(big_signed), *s3_args(s3, prefix="other"))
    assert result.code == 5
    assert "changed since it was signed" in result.err
    assert "Traceback" not in result.err
    assert not any(k.endswith("index.json") for k in s3.keys("other/"))
    assert "other/master/qemu-arm64/image.wic" not in s3.keys("other/")
    assert s3.multipart_uploads() == []


def test_a_reader_never_sees_an_index_naming_a_missing_object(
    cli: Cli, big_signed: Path, s3: S3Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = s3.client()
    seen: list[str] = []
    problems: list[str] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                index = client.get_object(Bucket=s3.bucket, Key="cip-core/master/index.json")["Body"].read()
            except client.exceptions.NoSuchKey:
                continue
            record = json.loads(
                client.get_object(Bucket=s3.bucket, Key="cip-core/master/published.json")["Body"].read()
            )
            assert record["index"]["sha256"] == hashlib.sha256(index).hexdigest()
            present = s3.keys("cip-core/master/")
            for obj in all_objects(record):
                if "cip-core/master/" + obj["path"] not in present:
                    problems.append(obj["path"])
            seen.append("index")

    reader = threading.Thread(target=read)
    reader.start()
    try:
        publish_json(cli, big_signed, *s3_args(s3))
        time.sleep(0.3)
    finally:
        stop.set()
        reader.join()
    assert seen, "the reader never saw the index"
    assert problems == []


def publish_in_process_of_its_own(out: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", "publish", str(out), *args], capture_output=True, text=True, check=False
    )


def run_publisher(out: Path, args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "publish", str(out), *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def wait_for(condition: Callable[[], bool], process: subprocess.Popen[bytes], timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if condition():
            return True
        time.sleep(0.01)
    return False


def test_a_publish_killed_at_several_points_completes_when_rerun(
    cli: Cli,
    big_signed: Path,
    s3: S3Bucket,
    keys: Keys,  # noqa: F811
) -> None:
    args = s3_args(s3)
    points: list[tuple[str, Callable[[], bool]]] = [
        ("during the first multipart upload", lambda: bool(s3.multipart_uploads())),
        ("after the first image", lambda: "cip-core/master/qemu-amd64/image.wic" in s3.keys("cip-core/")),
        ("after the trust files", lambda: any(k.endswith(".manifest.json.asc") for k in s3.keys("cip-core/"))),
    ]
    killed = []
    for what, condition in points:
        process = run_publisher(big_signed, args)
        if wait_for(condition, process):
            process.send_signal(signal.SIGKILL)
            killed.append(what)
        process.wait()
        assert "cip-core/master/index.json" not in s3.keys("cip-core/") or process.returncode == 0
    assert killed, "the publisher finished before any kill point"
    left = len(s3.multipart_uploads())
    final = publish_json(cli, big_signed, *args)
    assert final["summary"]["aborted_uploads"] == left
    assert final["summary"]["skipped_objects"] > 0  # what landed before a kill is not sent again
    assert s3.multipart_uploads() == []
    result = cli(
        "verify", f"{s3.url}/cip-core/master", "--endpoint-url", s3.endpoint, "--keyring", str(keys.good.public)
    )
    assert result.code == 0, result.err


def test_publish_through_a_faulty_network_completes_and_verifies(
    cli: Cli,
    big_signed: Path,
    s3: S3Bucket,
    fault_proxy: Any,
    keys: Keys,  # noqa: F811
) -> None:
    proxy = fault_proxy(rate=0.25, seed=7, stall_seconds=1)
    data = publish_json(cli, big_signed, *s3_args(s3, endpoint=proxy.endpoint))
    stats = proxy.stats
    faults = sum(stats[kind] for kind in FAULT_KINDS)
    assert faults >= 0.2 * stats["requests"] - 2, stats
    assert data["summary"]["sent_objects"] + data["summary"]["skipped_objects"] == len(all_objects(data)) + 1
    result = cli(
        "verify", f"{s3.url}/cip-core/master", "--endpoint-url", s3.endpoint, "--keyring", str(keys.good.public)
    )
    assert result.code == 0, result.err
    # reading through the faults works too: a broken body is picked up where it stopped
    proxy.set_rate(0.2)
    result = cli(
        "verify", f"{s3.url}/cip-core/master", "--endpoint-url", proxy.endpoint, "--keyring", str(keys.good.public)
    )
    assert result.code == 0, result.err


# --- bad input: one line, exit 2 (or 4), nothing behind an index ---------------------------------


def assert_one_line(result: Any, code: int, *words: str) -> None:
    assert result.code == code, (result.code, result.out, result.err)
    lines = [line for line in result.err.splitlines() if line.startswith("cipbuild: error:")]
    assert len(lines) == 1, result.err
    assert "Traceback" not in result.err
    assert result.err.rstrip().endswith(lines[0])
    for word in words:
        assert word in lines[0], lines[0]


def test_an_unknown_bucket(cli: Cli, signed: Path, s3: S3Bucket) -> None:
    result = cli("publish", str(signed), "--to", "s3://no-such-bucket-here/x", "--endpoint-url", s3.endpoint)
    assert_one_line(result, 2, "no-such-bucket-here", "does not exist")


def test_no_credentials(cli: Cli, signed: Path, s3: S3Bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    result = cli("publish", str(signed), *s3_args(s3))
    assert_one_line(result, 2, "no S3 credentials", "AWS_ACCESS_KEY_ID")
    assert s3.keys() == {}


def test_a_read_only_bucket(cli: Cli, signed: Path, s3: S3Bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", READER.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", READER.secret_key)
    result = cli("publish", str(signed), *s3_args(s3))
    assert_one_line(result, 2, "access denied")
    assert s3.keys() == {}


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--layout", "../{file}"], ["not a key inside the store's prefix"]),
        (["--layout", "{board}/{nope}"], ["unknown field {nope}"]),
        (["--layout", "{file}"], ["same key", "{job}"]),
        (["--ref", "../up"], ["not a ref name"]),
        (["--presign", "soon"], ["not a duration"]),
    ],
)
def test_bad_arguments_publish_nothing(cli: Cli, signed: Path, s3: S3Bucket, args: list[str], words: list[str]) -> None:
    base = s3_args(s3)
    if "--ref" in args:
        base = base[:-2]
    result = cli("publish", str(signed), *base, *args)
    assert_one_line(result, 2, *words)
    assert s3.keys() == {}


def test_a_job_that_was_never_signed_publishes_nothing(cli: Cli, signed: Path, s3: S3Bucket) -> None:
    (signed / "isar-bookworm-qemu-arm64" / "manifest.json.asc").unlink()
    result = cli("publish", str(signed), *s3_args(s3))
    assert_one_line(result, 2, "manifest.json.asc", "never signed")
    assert s3.keys() == {}


def test_an_unsigned_release_publishes_nothing(cli: Cli, tmp_path: Path, s3: S3Bucket) -> None:
    out = make_out(tmp_path / "out")
    result = cli("publish", str(out), *s3_args(s3))
    assert_one_line(result, 2, "index.json", "cipbuild sign")
    assert s3.keys() == {}


# --- the small parts --------------------------------------------------------------------------------


def test_keys_and_refs_that_would_leave_the_prefix_are_refused() -> None:
    for key in ("../x", "a/../b", "/abs", "a//b", "a/", "./a", "a\\b", "a\nb", ""):
        with pytest.raises(UserError):
            check_key(key)
    assert check_key("master/qemu-amd64/image.wic") == "master/qemu-amd64/image.wic"
    for ref in ("..", "Master", "a/b", "latest", "-x", "x" * 64):
        with pytest.raises(UserError):
            check_ref(ref)
    assert slug("Feature/New_Thing!") == "feature-new-thing"
    assert slug("v1.2") == "v1.2"
    assert parse_duration("30d", "x") == 30 * 86400
    assert parse_duration("90", "x") == 90
    with pytest.raises(UserError):
        check_layout("{board}/{file!r}")


def test_the_upload_reader_hashes_each_byte_once_however_often_a_retry_seeks_back(tmp_path: Path) -> None:
    data = os.urandom(10_000)
    path = tmp_path / "f"
    path.write_bytes(data)
    with path.open("rb") as handle:
        reader = HashingReader(handle, len(data), hashlib.sha256(data).hexdigest(), str(path))
        reader.read(4000)
        reader.seek(1000)
        reader.read(5000)  # 1000..6000: only 4000..6000 is new
        reader.seek(0)
        while reader.read(3000):
            pass
        reader.finish()
    with path.open("rb") as handle:
        reader = HashingReader(handle, len(data), hashlib.sha256(b"other").hexdigest(), str(path))
        reader.read(9999)
        with pytest.raises(VerificationError):
            reader.read(1)


# --- retention ------------------------------------------------------------------------------------


def test_prune_removes_old_branch_releases_but_never_one_a_pointer_names(cli: Cli, signed: Path, s3: S3Bucket) -> None:
    base = ["--to", f"{s3.url}/cip-core", "--endpoint-url", s3.endpoint]
    for ref in ("feature-a", "feature-b", "feature-c"):
        publish_json(cli, signed, *base, "--ref", ref)
        time.sleep(1.05)  # S3 times have one-second steps: newest first must be well defined
    publish_json(cli, signed, *base, "--ref", "feature-d", "--latest", "demo")
    assert json.loads(s3.get("cip-core/latest/demo.json"))["ref"] == "feature-d"
    prune = ["prune", *base, "--ref-pattern", "feature-*", "--json"]

    too_new = json.loads(cli(*prune, "--older-than", "30d", "--keep", "0").out)
    assert [r["action"] for r in too_new["releases"]].count("remove") == 0
    dry = json.loads(cli(*prune, "--older-than", "0", "--keep", "1", "--dry-run").out)
    assert sorted(r["ref"] for r in dry["releases"] if r["action"] == "remove") == ["feature-a", "feature-b"]
    assert s3.keys("cip-core/feature-a/")  # a dry run removes nothing

    done = json.loads(cli(*prune, "--older-than", "0", "--keep", "1").out)
    actions = {r["ref"]: r["action"] for r in done["releases"]}
    assert actions["feature-d"] == "kept: latest/demo.json names it"
    assert actions["feature-c"].startswith("kept: one of the 1 newest")
    left = {key.split("/")[1] for key in s3.keys("cip-core/")}
    assert left == {"feature-c", "feature-d", "latest"}


def test_prune_needs_a_pattern_and_an_age(cli: Cli, tmp_path: Path) -> None:
    result = cli("prune", "--to", str(tmp_path), "--ref-pattern", "x", "--older-than", "soon")
    assert result.code == 2
    assert "not a duration" in result.err


# --- build avoidance across machines ------------------------------------------------------------


def test_build_skips_a_job_whose_inputs_are_already_published(
    docker_engine: str,
    world: World,
    s3: S3Bucket,
    keys: Keys,  # noqa: F811
    tmp_path: Path,
) -> None:
    job = "isar-bookworm-qemu-amd64"
    first = world.build(job, "--sign", "--json", env={KEY_ENV: str(keys.good.secret)})
    assert first.returncode == 0, first.stderr
    published = publish_in_process_of_its_own(world.out, s3_args(s3))
    assert published.returncode == 0, published.stderr

    (tmp_path / "elsewhere").mkdir()
    elsewhere = dataclasses.replace(world, out=open_to_builder(tmp_path / "elsewhere") / "out")
    release = f"{s3.url}/cip-core/master"
    skipped = elsewhere.build(job, "--skip-published", release, "--json", env={"AWS_ENDPOINT_URL": s3.endpoint})
    assert skipped.returncode == 0, skipped.stderr
    assert json.loads(skipped.stdout)["results"][0]["status"] == "published"
    assert not (elsewhere.out / job / "artifacts").exists()  # nothing was built

    nothing_yet = elsewhere.build(
        job, "--skip-published", f"{s3.url}/cip-core/other", "--json", env={"AWS_ENDPOINT_URL": s3.endpoint}
    )
    assert nothing_yet.returncode == 0, nothing_yet.stderr
    assert json.loads(nothing_yet.stdout)["results"][0]["status"] == "success"

    # A job and its second build, published as one release ...
    env = {"AWS_ENDPOINT_URL": s3.endpoint, KEY_ENV: str(keys.good.secret)}
    (tmp_path / "twice").mkdir()
    twice = dataclasses.replace(world, out=open_to_builder(tmp_path / "twice") / "out")
    both = twice.build(f"{job}--v2", "--sign", "--json", env=env)
    assert both.returncode == 0, both.stderr
    assert [r["status"] for r in json.loads(both.stdout)["results"]] == ["success", "success"]
    published = publish_in_process_of_its_own(twice.out, [*s3_args(s3)[:-1], "twice"])
    assert published.returncode == 0, published.stderr
    # CIP's layout puts files by board: the second build's (same names, version 2.0) go beside
    wic = Path(next(a["path"] for a in twice.metadata(job)["artifacts"] if a["type"] == "wic")).name
    firsts, seconds = s3.get(f"cip-core/twice/qemu-amd64/{wic}"), s3.get(f"cip-core/twice/qemu-amd64/v2/{wic}")
    assert firsts == (twice.out / job / "artifacts" / wic).read_bytes()
    assert seconds == (twice.out / f"{job}--v2" / "artifacts" / wic).read_bytes() != firsts
    # a layout that puts the two on one key is refused for parts too, before anything is sent
    parts = [*s3_args(s3)[:-1], "clash", "--part", "--layout", "{release}/{file}"]
    clash = publish_in_process_of_its_own(twice.out, parts)
    assert clash.returncode == 2 and "(different files) on the same key" in clash.stderr, clash.stderr
    assert not s3.keys("cip-core/clash/")
    # ... then built elsewhere: the second build reads its first's artifacts, so the first is built
    # here although the store has it (and is neither signed nor published again); the second is
    # skipped for the same inputs
    (tmp_path / "again").mkdir()
    again = dataclasses.replace(world, out=open_to_builder(tmp_path / "again") / "out")
    proc = again.build(f"{job}--v2", "--sign", "--skip-published", f"{s3.url}/cip-core/twice", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    assert [(r["id"], r["status"], r["in_store"]) for r in json.loads(proc.stdout)["results"]] == [
        (job, "success", True),  # built for its second build's sake; the store has it: not signed again
        (f"{job}--v2", "published", False),
    ]
    assert not (again.out / job / CHECKSUMS).exists()


def test_ctrl_c_aborts_the_upload_under_way_and_commits_nothing(big_signed: Path, s3: S3Bucket) -> None:
    process = run_publisher(big_signed, s3_args(s3))
    assert wait_for(lambda: bool(s3.multipart_uploads()), process), "no multipart upload was seen"
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert b"Traceback" not in err
    assert s3.multipart_uploads() == []
    assert "cip-core/master/index.json" not in s3.keys("cip-core/")


def test_no_credential_reaches_the_published_record_or_the_output(cli: Cli, signed: Path, s3: S3Bucket) -> None:
    result = cli("publish", str(signed), *s3_args(s3), "--json", "--presign", "1h")
    assert result.code == 0, result.err
    stored = s3.get("cip-core/master/published.json").decode()
    for text in (result.out, result.err, stored):
        assert s3.admin.secret_key not in text
    assert s3.admin.access_key not in stored  # presigned URLs (which name the key id) are never stored
