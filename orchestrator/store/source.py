"""A published release read back for `verify`: files fetched from a store or over HTTP(S), and
``published.json`` mapping each signed name (``<job>/<path>``) to where the layout put it."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, urlsplit

from ..errors import InfrastructureError, UserError
from ..publish import PUBLISHED
from ..verify import SMALL_LIMIT, Entry, Source, SourceError
from .local import LocalStore
from .s3 import S3Store

HTTP_ATTEMPTS = 4


class StoreSource:
    """Names relative to a store's prefix."""

    def __init__(self, store: LocalStore | S3Store):
        self.store = store
        self.label = store.url

    def list(self, name: str) -> list[Entry]:
        raise SourceError("cannot be listed in a store: read it through published.json")

    def open(self, name: str) -> BinaryIO:
        try:
            return self.store.open(name)
        except KeyError:
            raise SourceError("is missing") from None

    def size(self, name: str) -> int:
        found = self.store.head(name)
        if found is None:
            raise SourceError("is missing")
        return found.size

    def exists(self, name: str) -> bool:
        return self.store.head(name) is not None


class HttpSource:
    """Names below a base URL, fetched with plain GETs (what a lab or a browser does)."""

    def __init__(self, base: str):
        self.base = base.rstrip("/") + "/"
        self.label = self.base

    def _request(self, name: str, method: str) -> Any:
        request = urllib.request.Request(self.base + quote(name), method=method, headers={"User-Agent": "cipbuild"})
        for attempt in range(1, HTTP_ATTEMPTS + 1):
            try:
                return urllib.request.urlopen(request, timeout=30)
            except urllib.error.HTTPError as exc:
                if exc.code in (403, 404):
                    raise SourceError(f"is missing (HTTP {exc.code})") from None
                if exc.code < 500 or attempt == HTTP_ATTEMPTS:
                    raise SourceError(f"cannot be fetched (HTTP {exc.code})") from None
            except (urllib.error.URLError, OSError) as exc:
                if attempt == HTTP_ATTEMPTS:
                    why = getattr(exc, "reason", exc)
                    raise InfrastructureError(f"{self.base}{name} cannot be fetched: {why}") from None
            time.sleep(0.5 * attempt)
        raise AssertionError("unreachable")

    def list(self, name: str) -> list[Entry]:
        raise SourceError("cannot be listed over HTTP: read it through published.json")

    def open(self, name: str) -> BinaryIO:
        response: BinaryIO = self._request(name, "GET")
        return response

    def size(self, name: str) -> int:
        with self._request(name, "HEAD") as response:
            return int(response.headers.get("Content-Length", "0"))

    def exists(self, name: str) -> bool:
        try:
            self._request(name, "HEAD").close()
        except SourceError:
            return False
        return True


def raw_source(location: str, endpoint_url: str | None = None) -> Source:
    """The files at ``location`` by relative name: over HTTP(S), in a store (s3://, file://) or
    in a local folder."""
    from ..verify import LocalFolder
    from . import open_store

    scheme = urlsplit(location).scheme
    if scheme in ("https", "http"):
        return HttpSource(location)
    if scheme in ("s3", "file"):
        return StoreSource(open_store(location, endpoint_url=endpoint_url))
    if endpoint_url:
        raise UserError("--endpoint-url only applies to s3:// locations", where=location)
    if not Path(location).is_dir():
        raise UserError("is not a folder", where=location)
    return LocalFolder(Path(location))


class PublishedRelease:
    """The signed release's names over a published layout: ``published.json`` says where each is."""

    def __init__(self, inner: Source):
        self.inner = inner
        self.label = inner.label
        try:
            with inner.open(PUBLISHED) as handle:
                data = handle.read(SMALL_LIMIT + 1)
            record = json.loads(data)
            objects = [record["index"], record["index_signature"]]
            objects += [obj for job in record["jobs"] for obj in job["objects"]]
            self.paths: dict[str, str] = {str(obj["name"]): str(obj["path"]) for obj in objects}
        except SourceError as exc:
            raise UserError(f"{PUBLISHED} {exc}", where=inner.label) from None
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{PUBLISHED} is not a cipbuild published record", where=inner.label) from None

    def _path(self, name: str) -> str:
        path = self.paths.get(name)
        if path is None:
            raise SourceError(f"is not in {PUBLISHED}")
        return path

    def list(self, name: str) -> list[Entry]:
        prefix = f"{name.strip('/')}/" if name.strip("/") else ""
        children: dict[str, str] = {}
        for known in self.paths:
            if known.startswith(prefix):
                head, _, rest = known[len(prefix) :].partition("/")
                children[head] = "dir" if rest else children.get(head, "file")
        if not children:
            raise SourceError(f"is not in {PUBLISHED}")
        return [Entry(child, kind) for child, kind in sorted(children.items())]

    def open(self, name: str) -> BinaryIO:
        return self.inner.open(self._path(name))

    def size(self, name: str) -> int:
        return self.inner.size(self._path(name))

    def exists(self, name: str) -> bool:
        return name in self.paths and self.inner.exists(self.paths[name])
