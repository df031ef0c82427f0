"""`cipbuild cache push` / `cache pull` against a real SeaweedFS S3 server and a folder store:
identical trees, nothing moved twice, concurrent pushers, a pull racing a push, corrupted and
hostile objects, symlinks, Ctrl-C."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from faultproxy import FaultProxy
from s3fixtures import S3Bucket

from orchestrator.cachesync import CACHE, parse_key, sstate_mirrors, temporary
from orchestrator.errors import UserError
from orchestrator.publish import check_ref

pytestmark = pytest.mark.integration

Cli = Callable[..., Any]
ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20
SSTATE = "universal/{h:.2}/sstate:{pn}:x86_64-linux:1.0:r0:x86_64:11:{h}_populate_sysroot.tar.zst"

# What a runner's cache looks like after a build, and what must never leave it.
WORK_IN_PROGRESS = {
    "downloads/zlib-1.3.tar.xz.lock": b"",
    "downloads/busybox-1.36.tar.bz2.tmp": b"half a download",
    "downloads/git2/github.com.foo.git/packed-refs.lock": b"",
    "downloads/git2/github.com.foo.git/objects/pack/tmp_pack_Ab12Cd": b"half a pack",
    "downloads/tmpk3j_x9q2/partial": b"a shallow tarball in the making",
    "sstate/universal/4f/sstate:zlib:x86_64-linux:1.0:r0:x86_64:11:4f00_package.tar.zst.Ab12Cd34": b"mktemp",
    "sstate/universal/4f/sigtask.ab12cd34": b"siggen's temporary file",
    "sstate/universal/4f/sstate:zlib:x86_64-linux:1.0:r0:x86_64:11:4f00_package.tar.zst.lock": b"",
}


def sstate_name(pn: str, seed: int) -> str:
    return "sstate/" + SSTATE.format(pn=pn, h=hashlib.sha256(f"{pn}{seed}".encode()).hexdigest())


def cache_files(seed: int, *, sstate: int = 40, downloads: int = 20, big: int = 0) -> dict[str, bytes]:
    """A cache after a build: sstate objects with their siginfo, downloads with their .done stamps,
    a bare git clone; ``big`` bytes make one file large enough to go up in parts."""
    rng = random.Random(seed)
    files: dict[str, bytes] = {}
    for i in range(sstate):
        name = sstate_name(f"pkg{i}", seed * 1000 + i)
        files[name] = rng.randbytes(rng.randrange(100, 20000))
        files[name + ".siginfo"] = rng.randbytes(300)
    for i in range(downloads):
        name = f"downloads/src{seed}-{i}-1.0.tar.gz"
        files[name] = rng.randbytes(rng.randrange(100, 50000))
        files[name + ".done"] = b""
    git = f"downloads/git2/github.com.proj{seed}.git"
    files[f"{git}/HEAD"] = b"ref: refs/heads/master\n"
    files[f"{git}/packed-refs"] = rng.randbytes(200)
    files[f"{git}/objects/pack/pack-{seed:040d}.pack"] = rng.randbytes(5000)
    files[f"downloads/git2/github.com.proj{seed}.git.done"] = b""
    if big:
        files[sstate_name("linux-cip", seed) + "_deploy"] = rng.randbytes(big)
    return files


def make_cache(root: Path, files: dict[str, bytes], empty: tuple[str, ...] = ()) -> Path:
    for name, data in {**files, **WORK_IN_PROGRESS}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for folder in empty:
        (root / folder).mkdir(parents=True, exist_ok=True)
    return root


def tree(root: Path) -> dict[str, str]:
    """Every regular file of the cache's shared folders with its sha256 (symlinks are not files)."""
    found: dict[str, str] = {}
    for area in ("downloads", "sstate"):
        for folder, _dirs, names in os.walk(root / area):
            for name in names:
                path = Path(folder, name)
                if not path.is_symlink():
                    found[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def digests(files: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}


def s3_store(s3: S3Bucket, endpoint: str | None = None) -> list[str]:
    return ["--to", f"{s3.url}/cip-core", "--endpoint-url", endpoint or s3.endpoint]


def sync(cli: Cli, verb: str, cache: Path, store: list[str], *, code: int = 0) -> dict[str, Any]:
    result = cli("cache", verb, "--cache", str(cache), *store, "--json")
    assert result.code == code, result.err
    if code:
        return {"err": result.err}
    data: dict[str, Any] = json.loads(result.out)
    return data


def run_cipbuild(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def finished(process: subprocess.Popen[bytes], timeout: float = 300) -> dict[str, Any]:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err.decode()
    data: dict[str, Any] = json.loads(out)
    return data


def wait_for(condition: Callable[[], bool], process: subprocess.Popen[bytes], timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if condition():
            return True
        time.sleep(0.005)
    return False


# --- pure ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "zlib-1.3.tar.xz.lock",
        "busybox.tar.bz2.tmp",
        "sstate:zlib::1.0:r0::11:abc_package.tar.zst.Ab12Cd34",
        "sstate:zlib::1.0:r0::11:abc_package.tar.zst.siginfo.x1Y2z3W4",
        "sigtask.k2j_3l4m",
        "tmpk3j_x9q2",
        "tmp_pack_Ab12Cd",
        ".cipbuild-pull-0123456789abcdef",
    ],
)
def test_locks_and_work_in_progress_are_recognised(name: str) -> None:
    assert temporary(name)


@pytest.mark.parametrize(
    "name",
    ["zlib-1.3.tar.xz", "zlib-1.3.tar.xz.done", "sstate:zlib::1.0:r0::11:abc_package.tar.zst.siginfo", "pack-1.pack"],
)
def test_finished_files_and_done_stamps_are_kept(name: str) -> None:
    assert not temporary(name)


@pytest.mark.parametrize(
    "key",
    [
        f"{CACHE}/downloads/../../etc/{'0' * 64}",
        f"{CACHE}/sstate/../../../home/user/.bashrc",
        f"{CACHE}/sstate/./x",
        f"/{CACHE}/sstate/x",
        f"{CACHE}/sstate//x",
        f"{CACHE}/sstate/a\\..\\..\\x",
        f"{CACHE}/sstate/\x1b]0;pwned\x07",
    ],
)
def test_a_key_that_could_leave_the_cache_is_refused(key: str) -> None:
    found = parse_key(key, 1, None, None)
    assert isinstance(found, str) and "lead out of the cache" in found


def test_keys_that_are_not_the_caches_are_ignored_and_the_prefix_is_never_a_release() -> None:
    assert parse_key("master/index.json", 1, None, None) == "foreign"
    assert parse_key(f"{CACHE}/downloads/no-digest.tar.gz", 1, None, None) == "foreign"
    assert parse_key(f"{CACHE}/sstate/a/x.lock", 1, None, None) == "foreign"
    assert parse_key(f"{CACHE}/repo-ref/x", 1, None, None) == "foreign"
    with pytest.raises(UserError):
        check_ref(CACHE)  # no `publish --ref` can write into the cache


def test_sstate_mirrors_points_bitbake_at_the_stores_sstate() -> None:
    assert sstate_mirrors("https://s3.example.org/bucket/cip-core/") == (
        f"file://.* https://s3.example.org/bucket/cip-core/{CACHE}/sstate/PATH;downloadfilename=PATH"
    )
    for bad in ("s3://bucket/prefix", "https://host/a b", "https://host/x;y=1", "https://host/p?x=1"):
        with pytest.raises(UserError):
            sstate_mirrors(bad)


# --- S3 ------------------------------------------------------------------------------------------


def test_push_then_pull_into_an_empty_cache_gives_the_same_tree(cli: Cli, s3: S3Bucket, tmp_path: Path) -> None:
    files = cache_files(1, big=20 * MIB)
    refs = "downloads/git2/github.com.proj1.git/refs/heads"
    source = make_cache(tmp_path / "a", files, empty=(refs, "downloads/git2/github.com.proj1.git/refs/tags"))
    pushed = sync(cli, "push", source, s3_store(s3))
    assert pushed["sent_objects"] == len(files)
    assert pushed["sent_bytes"] == sum(len(d) for d in files.values())
    assert pushed["folders"] == 2
    assert pushed["skipped"]["temporary"] == len(WORK_IN_PROGRESS)
    keys = s3.keys("cip-core/")
    assert all(k.startswith(f"cip-core/{CACHE}/") for k in keys)
    assert not any(".lock" in k or ".tmp" in k or "tmp_pack" in k or "sigtask" in k for k in keys)
    zst = [k for k in keys if ".tar.zst." in k and not k.endswith(".siginfo")]
    assert zst == [], "sstate's temporary files were pushed"

    pulled = sync(cli, "pull", tmp_path / "b", s3_store(s3))
    assert pulled["received_objects"] == len(files)
    assert pulled["refused"] == []
    assert tree(tmp_path / "b") == digests(files)
    assert (tmp_path / "b" / refs).is_dir()  # a bare git clone keeps its empty refs/
    assert (tmp_path / "b" / "downloads/src1-0-1.0.tar.gz.done").is_file()


def test_an_unchanged_push_and_a_complete_pull_move_nothing_from_one_listing(
    cli: Cli, s3: S3Bucket, tmp_path: Path
) -> None:
    files = cache_files(2)
    source = make_cache(tmp_path / "a", files)
    sync(cli, "push", source, s3_store(s3))
    sync(cli, "pull", tmp_path / "b", s3_store(s3))
    with FaultProxy(s3.endpoint, rate=0) as proxy:
        again = sync(cli, "push", source, s3_store(s3, proxy.endpoint))
        complete = sync(cli, "pull", tmp_path / "b", s3_store(s3, proxy.endpoint))
        requests = [request for request, _ in proxy.history]
    assert (again["sent_objects"], again["sent_bytes"]) == (0, 0)
    assert again["present_objects"] == len(files)
    assert (complete["received_objects"], complete["received_bytes"]) == (0, 0)
    assert complete["present_objects"] == len(files)
    # each: one HEAD of the bucket (credentials, existence) and one page of listing; nothing per file
    assert len(requests) == 4, requests
    assert sorted(r.split(" ")[0] for r in requests) == ["GET", "GET", "HEAD", "HEAD"]
    assert all("list-type=2" in r for r in requests if r.startswith("GET"))


def test_two_concurrent_pushes_lose_nothing_and_mix_nothing(cli: Cli, s3: S3Bucket, tmp_path: Path) -> None:
    shared = cache_files(3, sstate=30, downloads=10)
    rng = random.Random(4)
    one = {**shared, **cache_files(5, sstate=30, downloads=10)}
    two = {**shared, **cache_files(6, sstate=30, downloads=10)}
    # one download name, different bytes on each runner (big enough to go up in parts on one)
    one["downloads/linux-cip-6.1.tar.gz"] = rng.randbytes(18 * MIB)
    two["downloads/linux-cip-6.1.tar.gz"] = rng.randbytes(3 * MIB)
    one["downloads/linux-cip-6.1.tar.gz.done"] = two["downloads/linux-cip-6.1.tar.gz.done"] = b""
    same = sstate_name("gcc", 7)  # one task output, not bit-identical on the two runners
    one[same], two[same] = rng.randbytes(9000), rng.randbytes(9000)
    caches = [make_cache(tmp_path / "one", one), make_cache(tmp_path / "two", two)]
    args = ["--to", f"{s3.url}/cip-core", "--endpoint-url", s3.endpoint, "--json"]
    pushers = [run_cipbuild("cache", "push", "--cache", str(cache), *args) for cache in caches]
    summaries = [finished(p) for p in pushers]
    assert sum(s["sent_objects"] for s in summaries) >= len({**one, **two})

    variants = [k for k in s3.keys("cip-core/") if "/linux-cip-6.1.tar.gz/" in k]
    assert len(variants) in (1, 2)  # two when both listed before either sent it: nothing is overwritten
    for key in variants:
        assert hashlib.sha256(s3.get(key)).hexdigest() == key.rsplit("/", 1)[1], "an object mixes two contents"
    wanted = {name: {digests(one).get(name), digests(two).get(name)} - {None} for name in {**one, **two}}
    for target in ("three", "four"):
        pulled = sync(cli, "pull", tmp_path / target, s3_store(s3))
        assert pulled["refused"] == []
        got = tree(tmp_path / target)
        assert got.keys() == wanted.keys(), "an entry was lost"
        for name, sha in got.items():
            assert sha in wanted[name], f"{name} is neither runner's copy"
    # every runner picks the same content for a contested name
    assert tree(tmp_path / "three") == tree(tmp_path / "four")


def test_a_pull_during_a_push_installs_only_whole_checked_files(cli: Cli, s3: S3Bucket, tmp_path: Path) -> None:
    files = cache_files(8, sstate=150, downloads=60, big=40 * MIB)
    source = make_cache(tmp_path / "a", files)
    want = digests(files)
    pusher = run_cipbuild("cache", "push", "--cache", str(source), *s3_store(s3), "--json")
    rounds = 0
    while pusher.poll() is None or rounds == 0:
        target = tmp_path / f"pull{rounds}"
        sync(cli, "pull", target, s3_store(s3))
        for name, sha in tree(target).items():
            assert sha == want[name], f"{name} was installed half-written or wrong"
        rounds += 1
    finished(pusher)
    assert rounds > 1


def test_a_corrupted_object_is_refused_and_not_installed(cli: Cli, s3: S3Bucket, tmp_path: Path) -> None:
    files = cache_files(9)
    sync(cli, "push", make_cache(tmp_path / "a", files), s3_store(s3))
    admin = s3.client()
    sstate = next(n for n in files if n.endswith(".tar.zst"))
    sstate_key = f"cip-core/{CACHE}/{sstate}"
    metadata = s3.head(sstate_key)["Metadata"]  # the sha256 it was sent with, kept: only the bytes change
    admin.put_object(Bucket=s3.bucket, Key=sstate_key, Body=b"not the task output", Metadata=metadata)
    download = "downloads/src9-0-1.0.tar.gz"
    [download_key] = [k for k in s3.keys(f"cip-core/{CACHE}/{download}/")]
    admin.put_object(Bucket=s3.bucket, Key=download_key, Body=b"<html>a captive portal</html>")
    unsigned = "sstate/universal/00/sstate:other:::::11:00_package.tar.zst"
    admin.put_object(Bucket=s3.bucket, Key=f"cip-core/{CACHE}/{unsigned}", Body=b"written by another tool")

    result = cli("cache", "pull", "--cache", str(tmp_path / "b"), *s3_store(s3))
    assert result.code == 5, result.err
    error = result.err.splitlines()[-1]  # one line, after the progress lines
    assert error.startswith("cipbuild: error: ") and "refused" in error and "(and 2 more)" in error
    got = tree(tmp_path / "b")
    assert sstate not in got and download not in got and unsigned not in got
    assert download + ".done" not in got  # no stamp vouches for a download that is not there
    assert got == {n: s for n, s in digests(files).items() if n not in (sstate, download, download + ".done")}
    assert not any(".cipbuild-pull-" in name for name in got)

    data = sync(cli, "pull", tmp_path / "c", s3_store(s3), code=5)
    assert "sha256" in data["err"]


def test_a_hostile_key_is_refused_and_nothing_is_written_outside_the_cache(
    cli: Cli, s3: S3Bucket, tmp_path: Path
) -> None:
    files = cache_files(10, sstate=3, downloads=2)
    sync(cli, "push", make_cache(tmp_path / "a", files), s3_store(s3))
    admin = s3.client()
    escape = f"cip-core/{CACHE}/sstate/\x1b]0;owned\x07"  # a terminal escape in a key
    admin.put_object(Bucket=s3.bucket, Key=escape, Body=b"x")
    outside = tmp_path / "outside"
    outside.mkdir()
    body = b"through a symlink"
    sha = hashlib.sha256(body).hexdigest()
    admin.put_object(Bucket=s3.bucket, Key=f"cip-core/{CACHE}/downloads/link/planted/{sha}", Body=body)
    target = tmp_path / "b"
    (target / "downloads").mkdir(parents=True)
    (target / "downloads" / "link").symlink_to(outside)

    result = cli("cache", "pull", "--cache", str(target), *s3_store(s3))
    assert result.code == 5, result.err
    assert "lead out of the cache" in result.err and "\x1b" not in result.err
    assert list(outside.iterdir()) == []
    assert tree(target) == digests(files)


def test_a_symlink_out_of_the_cache_is_not_followed_on_push(cli: Cli, s3: S3Bucket, tmp_path: Path) -> None:
    secret = tmp_path / "home" / ".aws" / "credentials"
    secret.parent.mkdir(parents=True)
    secret.write_bytes(b"aws_secret_access_key = hunter2")
    files = cache_files(11, sstate=3, downloads=2)
    source = make_cache(tmp_path / "a", files)
    (source / "downloads" / "credentials").symlink_to(secret)
    (source / "downloads" / "home").symlink_to(secret.parent.parent, target_is_directory=True)
    (source / "sstate" / "universal" / "creds.tar.zst").symlink_to(secret)
    pushed = sync(cli, "push", source, s3_store(s3))
    assert pushed["skipped"]["symlinks"] == 3
    assert pushed["sent_objects"] == len(files)
    stored = list(s3.keys())
    assert not any("credentials" in k or "/home/" in k or "creds" in k for k in stored)
    assert all(b"hunter2" not in s3.get(k) for k in stored)

    elsewhere = make_cache(tmp_path / "elsewhere", cache_files(12, sstate=2, downloads=0))
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "sstate").symlink_to(elsewhere / "sstate", target_is_directory=True)
    refused = cli("cache", "push", "--cache", str(linked), *s3_store(s3))
    assert refused.code == 2
    assert "symlink" in refused.err


def test_the_sstate_objects_serve_bitbake_over_http_as_an_sstate_mirror(cli: Cli, s3: S3Bucket, tmp_path: Path) -> None:
    s3.client().put_bucket_acl(Bucket=s3.bucket, ACL="public-read")
    files = cache_files(13, sstate=2, downloads=0)
    sync(cli, "push", make_cache(tmp_path / "a", files), [*s3_store(s3), "--acl", "public-read"])
    mirror = sstate_mirrors(f"{s3.endpoint}/{s3.bucket}/cip-core")
    pattern, url = mirror.split(" ")
    assert pattern == "file://.*"
    for name, data in files.items():
        if name.startswith("sstate/"):
            path = name.removeprefix("sstate/")  # bitbake's PATH: the object's path below SSTATE_DIR
            fetched = url.split(";")[0].replace("PATH", urllib.parse.quote(path))
            with urllib.request.urlopen(fetched, timeout=10) as answer:  # no credentials
                assert answer.read() == data


def test_ctrl_c_stops_a_push_and_a_pull_leaving_nothing_half_written(s3: S3Bucket, tmp_path: Path) -> None:
    files = cache_files(14, sstate=20, downloads=5)
    rng = random.Random(14)
    for i in range(4):
        files[sstate_name(f"big{i}", i) + "_deploy"] = rng.randbytes(48 * MIB)
    source = make_cache(tmp_path / "a", files)
    pusher = run_cipbuild("cache", "push", "--cache", str(source), *s3_store(s3), "--jobs", "2")
    assert wait_for(lambda: bool(s3.multipart_uploads()), pusher), "no multipart upload was seen"
    pusher.send_signal(signal.SIGINT)
    _, err = pusher.communicate(timeout=60)
    assert pusher.returncode == 130, err
    assert b"Traceback" not in err
    assert s3.multipart_uploads() == []

    pusher = run_cipbuild("cache", "push", "--cache", str(source), *s3_store(s3), "--json")
    assert finished(pusher)["present_objects"] > 0  # what landed before Ctrl-C is not sent again
    target = tmp_path / "b"
    puller = run_cipbuild("cache", "pull", "--cache", str(target), *s3_store(s3), "--jobs", "2")

    def receiving() -> bool:
        return any(".cipbuild-pull-" in p.name and p.stat().st_size > 0 for p in target.rglob("*"))

    assert wait_for(receiving, puller), "no file was seen arriving"
    puller.send_signal(signal.SIGINT)
    _, err = puller.communicate(timeout=60)
    assert puller.returncode == 130, err
    assert b"Traceback" not in err
    got = tree(target)
    assert not any(".cipbuild-pull-" in name for name in got), "a temporary file was left"
    want = digests(files)
    assert len(got) < len(want)
    for name, sha in got.items():
        assert sha == want[name], f"{name} was left half-written"


# --- a folder store --------------------------------------------------------------------------------


def test_the_folder_store_works_too(cli: Cli, tmp_path: Path) -> None:
    files = cache_files(15, sstate=10, downloads=5)
    source = make_cache(tmp_path / "a", files)
    store = tmp_path / "store"
    assert sync(cli, "pull", tmp_path / "empty", ["--to", str(store)])["received_objects"] == 0
    pushed = sync(cli, "push", source, ["--to", str(store)])
    assert pushed["sent_objects"] == len(files)
    assert all(p.is_relative_to(store / CACHE) for p in store.rglob("*"))
    assert sync(cli, "push", source, ["--to", str(store)])["sent_objects"] == 0
    pulled = sync(cli, "pull", tmp_path / "b", ["--from", store.as_uri()])
    assert pulled["received_objects"] == len(files)
    assert tree(tmp_path / "b") == digests(files)
    assert sync(cli, "pull", tmp_path / "b", ["--to", str(store)])["received_objects"] == 0

    # a runner with other bytes under a name the store has keeps its own copy, and sends nothing
    other = dict(files)
    other["downloads/src15-0-1.0.tar.gz"] = b"re-rolled upstream"
    again = sync(cli, "push", make_cache(tmp_path / "c", other), ["--to", str(store)])
    assert again["sent_objects"] == 0
    assert (tmp_path / "c" / "downloads/src15-0-1.0.tar.gz").read_bytes() == b"re-rolled upstream"


def test_a_done_stamp_only_travels_with_the_download_it_vouches_for(cli: Cli, tmp_path: Path) -> None:
    store = ["--to", str(tmp_path / "store")]
    runner = tmp_path / "runner"
    tarball = runner / "downloads" / "linux-cip-6.1.tar.xz"
    tarball.parent.mkdir(parents=True)
    tarball.write_bytes(b"the first half")  # an older bitbake's wget writes in place, without a stamp yet
    assert sync(cli, "push", runner, store)["sent_objects"] == 1
    tarball.write_bytes(b"the first half and the rest")
    (runner / "downloads" / "linux-cip-6.1.tar.xz.done").write_bytes(b"pickled checksums of the whole file")
    later = sync(cli, "push", runner, store)
    assert later["sent_objects"] == 0  # the stamp would vouch for the half the store has
    assert later["skipped"]["unvouched stamps"] == 1

    other = tmp_path / "other"
    sync(cli, "push", make_cache(other, cache_files(16, sstate=0, downloads=3)), store)
    partial = tmp_path / "partial"
    (partial / "downloads").mkdir(parents=True)
    (partial / "downloads" / "src16-0-1.0.tar.gz").write_bytes(b"an interrupted download of its own")
    pulled = sync(cli, "pull", partial, store)
    assert pulled["skipped"]["unvouched stamps"] == 1
    assert not (partial / "downloads" / "src16-0-1.0.tar.gz.done").exists()  # bitbake checks its own copy
    assert (partial / "downloads" / "src16-1-1.0.tar.gz.done").is_file()
    assert (partial / "downloads" / "git2" / "github.com.proj16.git.done").is_file()
    assert not (partial / "downloads" / "linux-cip-6.1.tar.xz.done").exists()
