"""A LAVA server over REST v0.2: validate, submit, read a job. Token from CIPBUILD_LAVA_TOKEN,
sent as ``Authorization: Token``; every request says ``Connection: close`` (LAVA's gunicorn with
eventlet resets reused keep-alive connections)."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from ..errors import InfrastructureError, UserError

TOKEN_ENV = "CIPBUILD_LAVA_TOKEN"
ATTEMPTS = 4


@dataclass
class Lava:
    url: str  # the server's root, e.g. https://lava.example.org/
    token: str | None = None

    @classmethod
    def from_env(cls, url: str) -> Lava:
        if not url.startswith(("http://", "https://")):
            raise UserError("is not an http(s) URL", where=f"--lava {url}")
        return cls(url.rstrip("/") + "/", os.environ.get(TOKEN_ENV) or None)

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        """(status, parsed JSON or text); retries refused connections and 5xx on reads."""
        url = self.url + "api/v0.2/" + path.lstrip("/")
        headers = {"Connection": "close", "Accept": "application/json", "User-Agent": "cipbuild"}
        if self.token:
            headers["Authorization"] = f"Token {self.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        for attempt in range(1, ATTEMPTS + 1):
            request = urllib.request.Request(url, data=data, headers=headers, method=method)
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    return response.status, _parse(response.read())
            except urllib.error.HTTPError as exc:
                if exc.code < 500 or attempt == ATTEMPTS:
                    return exc.code, _parse(exc.read())
            except (urllib.error.URLError, OSError) as exc:
                if attempt == ATTEMPTS:
                    why = getattr(exc, "reason", exc)
                    raise InfrastructureError(f"LAVA at {self.url} does not answer: {why}") from None
            time.sleep(min(2.0 * attempt, 8.0))
        raise AssertionError("unreachable")

    def validate(self, definition: str) -> str | None:
        """None when LAVA calls the job definition valid, else its reason."""
        status, answer = self.request("POST", "jobs/validate/", {"definition": definition, "strict": False})
        message = answer.get("message") if isinstance(answer, dict) else None
        if status == 200 and message == "Job valid.":
            return None
        if status >= 500 and not isinstance(answer, dict):
            return "LAVA could not parse it (HTTP 500)"
        return str(message or answer)[:500]


def _parse(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return data.decode("utf-8", "replace")
