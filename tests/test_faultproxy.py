"""The S3 fixtures and the fault proxy against a real SeaweedFS server."""

from __future__ import annotations

import http.client
import io
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError
from faultproxy import FAULT_KINDS, FaultProxy
from s3fixtures import Credentials, FaultProxyFactory, S3Bucket, s3_client

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning"),
]

MiB = 1024 * 1024
PARTS_OF_5_MIB = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
RETRYING = Config(retries={"max_attempts": 20, "mode": "standard"}, connect_timeout=2, read_timeout=2)


def test_round_trip_through_the_proxy_is_byte_exact(s3: S3Bucket, fault_proxy: FaultProxyFactory) -> None:
    proxy = fault_proxy(rate=0)
    client = s3.client(endpoint=proxy.endpoint)
    data = os.urandom(12 * MiB + 12345)

    client.put_object(Bucket=s3.bucket, Key="single", Body=data)
    assert client.get_object(Bucket=s3.bucket, Key="single")["Body"].read() == data

    client.upload_fileobj(io.BytesIO(data), s3.bucket, "multi", Config=PARTS_OF_5_MIB)
    assert s3.head("multi")["ETag"].endswith('-3"'), "three parts"
    out = io.BytesIO()
    client.download_fileobj(s3.bucket, "multi", out, Config=PARTS_OF_5_MIB)
    assert out.getvalue() == data

    assert s3.keys() == {"single": len(data), "multi": len(data)}
    assert s3.multipart_uploads() == []
    stats = proxy.stats
    assert stats["forwarded"] == stats["requests"] > 0
    assert sum(stats[kind] for kind in FAULT_KINDS) == stats["client_aborts"] == stats["upstream_errors"] == 0


def test_every_fault_is_survived_with_retries(s3: S3Bucket, fault_proxy: FaultProxyFactory) -> None:
    # One proxy and client per worker keeps each fault sequence deterministic while the workers overlap.
    # With boto3 1.43 these seeds inject 8 x 500, 2 x 503, 5 resets, 6 truncations and a single stall (a stall
    # costs the 2 s read timeout); the same every run.
    seeds = (0, 22, 25, 30, 33)
    workers = [(fault_proxy(rate=0.3, seed=seed), range(n, 30, 5)) for n, seed in enumerate(seeds)]

    def put_and_get(proxy: FaultProxy, numbers: range) -> None:
        client = s3.client(config=RETRYING, endpoint=proxy.endpoint)
        for i in numbers:
            client.put_object(Bucket=s3.bucket, Key=f"k{i}", Body=b"object %d" % i)
        for i in numbers:
            out = io.BytesIO()
            client.download_fileobj(s3.bucket, f"k{i}", out)  # s3transfer retries a truncated body
            assert out.getvalue() == b"object %d" % i

    with ThreadPoolExecutor(len(workers)) as pool:
        for done in [pool.submit(put_and_get, *worker) for worker in workers]:
            done.result()
    stats = [proxy.stats for proxy, _ in workers]
    injected = {kind: sum(s[kind] for s in stats) for kind in FAULT_KINDS}
    assert all(injected.values()), [proxy.history for proxy, _ in workers]
    assert sorted(s3.keys()) == sorted(f"k{i}" for i in range(30))


def test_raw_http_keep_alive_chunked_and_expect(s3: S3Bucket, fault_proxy: FaultProxyFactory) -> None:
    proxy = fault_proxy(rate=0)
    conn = http.client.HTTPConnection(proxy.endpoint.removeprefix("http://"), timeout=5)
    try:
        conn.request("PUT", f"/{s3.bucket}/anon", body=iter([b"abc", b"def"]), encode_chunked=True)
        put = conn.getresponse()
        assert (put.status, b"<Code>AccessDenied</Code>" in put.read()) == (403, True)
        conn.request("PUT", f"/{s3.bucket}/anon", body=b"xyz", headers={"Expect": "100-continue"})
        put = conn.getresponse()
        assert (put.status, b"<Code>AccessDenied</Code>" in put.read()) == (403, True)
        conn.request("HEAD", f"/{s3.bucket}/anon")
        head = conn.getresponse()
        assert (head.status, head.read()) == (403, b"")
    finally:
        conn.close()
    assert proxy.stats["connections"] == 1
    assert proxy.stats["requests"] == proxy.stats["forwarded"] == 3


def test_clients_that_leave_early_are_counted_quietly(s3: S3Bucket, fault_proxy: FaultProxyFactory) -> None:
    proxy = fault_proxy(rate=1, kinds=["stall"], stall_seconds=0.2)
    host, port = proxy.endpoint.removeprefix("http://").split(":")
    request = f"PUT /{s3.bucket}/k HTTP/1.1\r\nHost: {host}\r\nContent-Length: 10\r\n\r\n".encode()
    for partial in (b"", request[:20], request + b"abc", request + b"0123456789"):
        with socket.create_connection((host, int(port))) as client:
            client.sendall(partial)
    deadline = time.monotonic() + 5
    while (proxy.stats["client_aborts"] < 2 or proxy.stats["stall"] < 1) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proxy.stats["client_aborts"] == 2, "a head and a body cut short; an empty connection is no abort"
    assert proxy.stats["stall"] == 1, "the whole request was read, then stalled while its client left"


def test_identities_are_enforced(s3: S3Bucket) -> None:
    s3.client().put_object(Bucket=s3.bucket, Key="k", Body=b"data")
    reader = s3.reader_client()
    assert reader.get_object(Bucket=s3.bucket, Key="k")["Body"].read() == b"data"
    assert list(s3.keys()) == [obj["Key"] for obj in reader.list_objects_v2(Bucket=s3.bucket)["Contents"]]
    with pytest.raises(ClientError) as denied:
        reader.put_object(Bucket=s3.bucket, Key="k2", Body=b"x")
    assert denied.value.response["Error"]["Code"] == "AccessDenied"
    with pytest.raises(ClientError) as forged:
        s3_client(s3.endpoint, Credentials(s3.admin.access_key, "wrong")).get_object(Bucket=s3.bucket, Key="k")
    assert forged.value.response["Error"]["Code"] == "SignatureDoesNotMatch"


def test_s3_fixture_gives_admin_credentials_through_the_environment(s3: S3Bucket) -> None:
    assert s3.url == f"s3://{s3.bucket}"
    assert "AWS_PROFILE" not in os.environ
    assert not any(name.startswith("AWS_ENDPOINT_URL") for name in os.environ)
    client = boto3.client("s3", endpoint_url=s3.endpoint)  # what code under test does: credentials from env
    client.put_object(Bucket=s3.bucket, Key="dir/a", Body=b"12345")
    upload = client.create_multipart_upload(Bucket=s3.bucket, Key="dir/pending")["UploadId"]
    assert s3.keys() == {"dir/a": 5}
    assert s3.keys("other/") == {}
    assert s3.get("dir/a") == b"12345"
    assert s3.head("dir/a")["ContentLength"] == 5
    assert [(u["Key"], u["UploadId"]) for u in s3.multipart_uploads("dir/")] == [("dir/pending", upload)]
