"""Pytest plugin: a real LAVA instance (Debian's lava-server and lava-dispatcher 2023.01) on loopback.

The session fixture :func:`lava` sets everything up by itself, idempotently, on a machine where .ci/run
only installed the packages (``postgresql lava-server lava-dispatcher qemu-system-x86 busybox-static cpio
linux-image-cloud-amd64``): it starts the PostgreSQL cluster if it is down, creates the database (Debian's
``postinst.py``, which dpkg skipped while PostgreSQL was down) or repairs the role's password, applies
pending migrations, writes its own settings file, makes the user with an API token, the worker, the
``qemu`` device type and one device (``no_kvm``, 512 MiB), cancels jobs an earlier session left unfinished,
and starts gunicorn (eventlet), lava-publisher, lava-scheduler and lava-worker in the background, each in
a session of its own, with pid files under :data:`STATE_DIR`. Processes an earlier run of this fixture
left behind (found by those pid files, checked against their start time) are stopped first. A lock file
keeps two pytest sessions from driving the instance at once. Teardown stops what it started; the database
stays, which makes the next set-up the warm one.

No systemd is needed (none runs here); all of it needs root.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NoReturn

import pytest
import yaml

__all__ = [
    "DEVICE",
    "DEVICE_TYPE",
    "STATE_DIR",
    "USER",
    "WORKER",
    "ApiResponse",
    "LavaError",
    "LavaInstance",
    "lava",
    "unavailable",
]

STATE_DIR: Final = Path(os.environ.get("CIPBUILD_LAVA_STATE", "/var/lib/cipbuild-lava"))
SETTINGS_FILE: Final = Path("/etc/lava-server/settings.d/50-cipbuild-tests.yaml")
DATABASE_FILE: Final = Path("/etc/lava-server/settings.d/00-database.yaml")
SECRET_KEY_FILE: Final = Path("/etc/lava-server/settings.d/00-secret-key.yaml")
DEVICES_DIR: Final = Path("/etc/lava-server/dispatcher-config/devices")
POSTINST: Final = Path("/usr/share/lava-server/postinst.py")
LAVA_LOG_DIR: Final = Path("/var/log/lava-server")
SYSTEM_PYTHON: Final = "/usr/bin/python3"  # LAVA's Django lives in Debian's python, not in a venv

USER: Final = "cipbuild"
TOKEN_DESCRIPTION: Final = "cipbuild tests"
WORKER: Final = "cipbuild-worker"
DEVICE_TYPE: Final = "qemu"
DEVICE: Final = "cipbuild-qemu01"
SERVICE_USER: Final = "lavaserver"

_LOG_LIMIT: Final = 20 * 1024 * 1024
# ports other tests on this machine use; never take them
_RESERVED_PORTS: Final = frozenset({8333, 18333, 19333, 18080, 18888})
_REQUIRED: Final = {
    "/usr/bin/lava-server": "lava-server",
    "/usr/bin/lava-worker": "lava-dispatcher",
    "/usr/bin/gunicorn3": "lava-server (gunicorn)",
    "/usr/bin/pg_ctlcluster": "postgresql",
    str(POSTINST): "lava-server",
}

_DEVICE_DICT: Final = """{% extends 'qemu.jinja2' %}
{# written by cipbuild's tests/lavafixtures.py: software emulation only (no KVM on these machines) #}
{% set no_kvm = True %}
{% set memory = 512 %}
{% set netdevice = 'user' %}
{# as CIP's lab: an update plan stops qemu before it boots the updated disk again #}
{% set user_commands = {'manual_kill': {'do': "pkill -f -- 'qemu-system-x86_64 .*/var/lib/lava/dispatcher/tmp/'"}} %}
"""

# Runs inside LAVA's Django as the service user: migrate if needed, then make (or repair) the objects.
_BOOTSTRAP: Final = textwrap.dedent(
    """
    import json, sys
    import django
    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.db import connection, transaction
    from django.db.migrations.executor import MigrationExecutor
    from linaro_django_xmlrpc.models import AuthToken
    from lava_scheduler_app.models import Device, DeviceType, TestJob, Worker

    cfg = json.loads(sys.argv[1])
    executor = MigrationExecutor(connection)
    migrated = bool(executor.migration_plan(executor.loader.graph.leaf_nodes()))
    if migrated:  # what Debian's postinst.py does after creating the database
        call_command("migrate", "--noinput", "--fake-initial", verbosity=0)
        call_command("drop_materialized_views")
        call_command("refresh_queries", "--all")
    canceled = []
    with transaction.atomic():
        user, _ = User.objects.get_or_create(username=cfg["user"])
        user.is_active = user.is_staff = user.is_superuser = True
        user.save()
        token = AuthToken.objects.filter(user=user, description=cfg["token_description"]).order_by("id").first()
        if token is None:
            token = AuthToken.objects.create(user=user, description=cfg["token_description"])
        worker, _ = Worker.objects.get_or_create(hostname=cfg["worker"])
        if worker.health != Worker.HEALTH_ACTIVE:
            worker.health = Worker.HEALTH_ACTIVE
            worker.save()
        dt, _ = DeviceType.objects.get_or_create(name=cfg["device_type"])
        dt.disable_health_check = True
        dt.display = True
        dt.save()
        # an earlier session that died leaves jobs behind: they would hold the device or run first
        for job in TestJob.objects.select_for_update().exclude(state=TestJob.STATE_FINISHED):
            job.go_state_finished(TestJob.HEALTH_CANCELED)
            job.save()
            canceled.append(job.id)
        device, _ = Device.objects.get_or_create(
            hostname=cfg["device"],
            defaults={"device_type": dt, "worker_host": worker, "health": Device.HEALTH_GOOD},
        )
        Device.objects.filter(pk=device.pk).update(
            device_type=dt, worker_host=worker, health=Device.HEALTH_GOOD, state=Device.STATE_IDLE
        )
    print("CIPBUILD-BOOTSTRAP " + json.dumps(
        {"token": token.secret, "worker_token": worker.token, "migrated": migrated, "canceled": canceled}
    ))
    """
)


class LavaError(RuntimeError):
    """Setting up or driving the LAVA instance failed."""


@dataclass(frozen=True)
class ApiResponse:
    status: int
    body: bytes
    headers: Mapping[str, str]

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)


def _clean_env() -> dict[str, str]:
    """An environment for LAVA's programs: none of this interpreter's (pyenv, venv, PYTHONPATH…)."""
    return {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": "/root",
        "DJANGO_SETTINGS_MODULE": "lava_server.settings.prod",
    }


def _run(argv: list[str], *, what: str, user: str | None = None, stdin: str | None = None, timeout: float = 600) -> str:
    done = subprocess.run(
        argv, input=stdin, capture_output=True, text=True, env=_clean_env(), cwd="/", user=user,
        group=user, timeout=timeout, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        command = " ".join(argv[:4])
        raise LavaError(f"{what} failed ({done.returncode}): {command}…\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


# --- processes -------------------------------------------------------------------------------------------


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks (field 22 of /proc/PID/stat): tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    return children


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (lava-worker puts each lava-run in a process group of its own)."""
    children, found, todo = _children_map(), [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def _pids_writing_under(directory: Path) -> list[int]:
    """Processes whose standard output is a file under ``directory``."""
    found, prefix = [], f"{directory}/"
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if os.readlink(entry / "fd" / "1").startswith(prefix):
                    found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _terminate(groups: list[tuple[list[int], float]]) -> None:
    """SIGTERM every process of every group at once; SIGKILL what is left of a group after its grace."""
    start = time.monotonic()
    for pids, _ in groups:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
    pending = [(pids, grace) for pids, grace in groups]
    while pending:
        time.sleep(0.1)
        left = []
        for pids, grace in pending:
            alive = [p for p in pids if _alive(p)]
            if not alive:
                continue
            if time.monotonic() - start > grace:
                for pid in alive:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
                if time.monotonic() - start > grace + 10:
                    continue  # unkillable (uninterruptible sleep): give up waiting
            left.append((alive, grace))
        pending = left


def _stop_daemons(daemons: list[_Daemon]) -> None:
    """Stop several daemons at once (lava-publisher alone spends 5 s draining on SIGTERM)."""
    _terminate([(_tree(d.process.pid), d.grace) for d in daemons if d.process is not None and d.process.poll() is None])
    for daemon in daemons:
        if daemon.process is not None:
            daemon.process.wait()
            daemon.process = None
        daemon.pid_path.unlink(missing_ok=True)


@dataclass
class _Daemon:
    """One background program with a pid file (``pid start-time``) under the state directory."""

    name: str
    argv: list[str]
    log_path: Path
    pid_path: Path
    grace: float = 10.0  # seconds between SIGTERM and SIGKILL
    process: subprocess.Popen[bytes] | None = None

    def leftover(self) -> list[int]:
        """The process tree an earlier run of this fixture recorded in the pid file, if it still runs."""
        try:
            pid_text, started = self.pid_path.read_text().split()
            pid = int(pid_text)
        except (OSError, ValueError):
            return []
        return _tree(pid) if _start_time(pid) == started else []

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if self.log_path.stat().st_size > _LOG_LIMIT:  # keep one older log, not every session's
                self.log_path.replace(self.log_path.with_suffix(".log.1"))
        with self.log_path.open("ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} $ {' '.join(self.argv)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=_clean_env(),
                cwd=str(STATE_DIR), start_new_session=True,
            )  # fmt: skip
        self.pid_path.write_text(f"{self.process.pid} {_start_time(self.process.pid)}\n")

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        _stop_daemons([self])

    def log_tail(self, chars: int = 4000) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(f.tell() - chars, 0))
                return f.read().decode(errors="replace")
        except OSError:
            return ""


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pick_port(preferred: int, taken: set[int]) -> int:
    """``preferred`` if free, else a free one in 6000-9999 (below the S3 fixture's range, 10000+)."""
    if preferred not in taken and _port_free(preferred):
        taken.add(preferred)
        return preferred
    rng = random.Random()
    for _ in range(500):
        port = rng.randrange(6000, 10000)
        if port not in taken and port not in _RESERVED_PORTS and _port_free(port):
            taken.add(port)
            return port
    raise LavaError("no free port in 6000-9999")


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


# --- PostgreSQL and the database ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Cluster:
    version: str
    name: str
    port: int
    online: bool
    log: str


def _clusters() -> list[_Cluster]:
    out = _run(["pg_lsclusters", "--no-header"], what="pg_lsclusters")
    found = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 6:
            found.append(_Cluster(parts[0], parts[1], int(parts[2]), parts[3].startswith("online"), parts[-1]))
    return found


def _ensure_postgres() -> _Cluster | None:
    """Make sure a cluster answers on 5432; returns the cluster this call started (to stop it later)."""
    clusters = _clusters()
    if not clusters:
        versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parts[-3]))
        if not versions:
            raise LavaError("PostgreSQL server binaries missing: apt-get install postgresql")
        _run(["pg_createcluster", versions[-1].parts[-3], "main"], what="pg_createcluster")
        clusters = _clusters()
    cluster = next((c for c in clusters if c.port == 5432), None)
    if cluster is None:
        raise LavaError(f"no PostgreSQL cluster on port 5432 (LAVA's database settings use it): {clusters}")
    started = None
    if not cluster.online:
        try:
            _run(["pg_ctlcluster", cluster.version, cluster.name, "start"], what="pg_ctlcluster start", timeout=120)
        except LavaError as exc:
            log = Path(cluster.log).read_text(errors="replace")[-3000:] if Path(cluster.log).is_file() else ""
            raise LavaError(f"{exc}\n{cluster.log}:\n{log}") from exc
        started = cluster
    deadline = time.monotonic() + 60
    while subprocess.run(["pg_isready", "-q", "-p", "5432"], check=False, env=_clean_env()).returncode != 0:
        if time.monotonic() > deadline:
            raise LavaError("PostgreSQL does not accept connections after 60 s")
        time.sleep(0.3)
    return started


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _sql_ident(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def _ensure_database() -> bool:
    """Create LAVA's role and database, or repair them after the cluster or the settings changed.
    True when it ran Debian's postinst.py (a fresh machine: that also migrated)."""
    if DATABASE_FILE.is_file():
        # the role and database the settings name, with the settings' password (a dropped or new cluster,
        # or a half-done earlier set-up, leaves them missing or different)
        loaded = yaml.safe_load(DATABASE_FILE.read_text())
        db = loaded["DATABASES"]["default"]
        user, name, password = str(db["USER"]), str(db["NAME"]), str(db["PASSWORD"])
        role, database = _sql_ident(user), _sql_ident(name)
        script = f"""
SELECT 'CREATE ROLE {role} LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {_sql_literal(user)})\\gexec
ALTER ROLE {role} NOSUPERUSER NOCREATEDB NOCREATEROLE INHERIT LOGIN PASSWORD {_sql_literal(password)};
SELECT 'CREATE DATABASE {database} LC_COLLATE ''C.UTF-8'' LC_CTYPE ''C.UTF-8'' ENCODING ''UTF-8''
        OWNER {role} TEMPLATE template0'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = {_sql_literal(name)})\\gexec
"""
        psql = ["psql", "-q", "-v", "ON_ERROR_STOP=1", "-p", "5432"]
        _run(psql, what="psql (LAVA role and database)", user="postgres", stdin=script)
    if DATABASE_FILE.is_file() and SECRET_KEY_FILE.is_file():
        return False
    # a fresh machine: dpkg ran postinst.py while PostgreSQL was down, so it wrote no database settings;
    # now it writes them, creates the role and the database and migrates (15 s or so)
    _run([SYSTEM_PYTHON, str(POSTINST)], what="lava-server postinst.py", timeout=900)
    return True


def _fix_permissions() -> None:
    """What postinst.py's fixup does for the files the services write, in case a root run left some."""
    LAVA_LOG_DIR.mkdir(mode=0o2775, parents=True, exist_ok=True)
    shutil.chown(LAVA_LOG_DIR, SERVICE_USER, SERVICE_USER)
    # Django opens it at start-up: when root's lava-publisher makes it, gunicorn's workers can't write it
    (LAVA_LOG_DIR / "django.log").touch()
    for path in [*LAVA_LOG_DIR.iterdir(), DEVICES_DIR]:
        shutil.chown(path, SERVICE_USER, "adm" if path.parent == LAVA_LOG_DIR else SERVICE_USER)
        if path.parent == LAVA_LOG_DIR:
            path.chmod(0o664)


# --- the instance ----------------------------------------------------------------------------------------


@dataclass
class LavaInstance:
    """A running LAVA: REST v0.2 at ``url + 'api/v0.2/'``, one ``qemu`` device, a worker and a user's token."""

    url: str
    token: str
    user: str
    device_type: str
    device: str
    worker: str
    ports: Mapping[str, int]
    state_dir: Path
    timings: dict[str, float] = field(default_factory=dict)
    _daemons: dict[str, _Daemon] = field(default_factory=dict, repr=False)
    _log_offsets: dict[str, int] = field(default_factory=dict, repr=False)

    # REST ------------------------------------------------------------------------------------------------

    def api(
        self,
        method: str,
        path: str,
        json: Any = None,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        retries: int = 2,
    ) -> ApiResponse:
        """Call the REST API: ``path`` relative to ``/api/v0.2/`` (``jobs/1/``) or absolute (``/api/…``).

        Sends ``Authorization: Token`` (this instance's token, or ``token``; ``token=""`` sends none) and
        ``Connection: close`` (gunicorn's eventlet workers reset reused keep-alive connections). Returns
        every HTTP status as it is. A refused connection (any method) or a failed GET is retried ``retries``
        times, then raised; a POST that may have reached the server is not repeated.
        """
        url = self.url.rstrip("/") + (path if path.startswith("/") else "/api/v0.2/" + path)
        headers = {"Connection": "close", "Accept": "application/json"}
        secret = self.token if token is None else token
        if secret:
            headers["Authorization"] = f"Token {secret}"
        data = None
        if json is not None:
            data = _json_dumps(json)
            headers["Content-Type"] = "application/json"
        for attempt in range(retries + 1):
            request = urllib.request.Request(url, data=data, headers=headers, method=method.upper())
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    return ApiResponse(response.status, response.read(), dict(response.headers.items()))
            except urllib.error.HTTPError as exc:
                return ApiResponse(exc.code, exc.read(), dict(exc.headers.items()))
            except (ConnectionError, urllib.error.URLError) as exc:
                reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
                # a refused connection never reached the server: safe to repeat even a POST
                repeatable = method.upper() in ("GET", "HEAD") or isinstance(reason, ConnectionRefusedError)
                if attempt == retries or not repeatable:
                    raise
                time.sleep(0.5 * (attempt + 1))
        raise AssertionError("unreachable")

    def submit(self, definition: str) -> int:
        """POST a job definition (YAML text); returns its id."""
        response = self.api("POST", "jobs/", {"definition": definition})
        if response.status != 201:
            raise LavaError(f"submission refused: {response.status} {response.text}")
        ids: list[int] = response.json()["job_ids"]
        return ids[0]

    def wait_job(self, job_id: int, timeout: float = 300.0, poll: float = 1.0) -> dict[str, Any]:
        """Wait until the job is Finished; returns its REST representation (check ``health`` yourself)."""
        deadline = time.monotonic() + timeout
        while True:
            job: dict[str, Any] = self.api("GET", f"jobs/{job_id}/").json()
            if job["state"] == "Finished":
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['state']} after {timeout:.0f} s\n{self.logs()}")
            time.sleep(poll)

    def failure_reason(self, job_id: int) -> str:
        """Why a job went Incomplete: the metadata of test ``job`` in suite ``lava``."""
        results = self.api("GET", f"jobs/{job_id}/tests/?suite__name=lava&name=job").json()
        return "; ".join(str(item.get("metadata")) for item in results.get("results", [])) or "(no lava/job result)"

    # processes -------------------------------------------------------------------------------------------

    def stop_server(self) -> None:
        """Stop the web server (gunicorn) only: the REST API goes away, the worker and scheduler stay."""
        self._daemons["gunicorn"].stop()
        deadline = time.monotonic() + 10
        while _listening(self.ports["http"]) and time.monotonic() < deadline:
            time.sleep(0.1)

    def start_server(self, timeout: float = 60.0) -> None:
        """Start gunicorn again on the same port and wait until the API answers."""
        daemon = self._daemons["gunicorn"]
        if not daemon.running():
            daemon.start()
        self._wait_http(timeout)

    def _wait_http(self, timeout: float) -> None:
        deadline, last = time.monotonic() + timeout, ""
        while time.monotonic() < deadline:
            if not self._daemons["gunicorn"].running():
                raise LavaError(f"gunicorn exited\n{self._daemons['gunicorn'].log_tail()}")
            try:
                response = self.api("GET", "system/version/", token="", timeout=5, retries=0)
                if response.status == 200:
                    return
                last = f"{response.status} {response.text[:300]}"
            except (OSError, urllib.error.URLError) as exc:
                last = str(exc)
            time.sleep(0.3)
        raise LavaError(f"LAVA's API does not answer after {timeout:.0f} s ({last})\n{self.logs()}")

    def logs(self, chars: int = 6000) -> str:
        """The end of each service's log since this session started it, and of Django's log."""
        parts = []
        for name, daemon in self._daemons.items():
            text = _tail(daemon.log_path, chars, self._log_offsets.get(name, 0))
            parts.append(f"--- {name} ({daemon.log_path}) ---\n{text}")
        parts.append(f"--- django ({LAVA_LOG_DIR / 'django.log'}) ---\n{_tail(LAVA_LOG_DIR / 'django.log', chars)}")
        return "\n".join(parts)

    def _stop_all(self) -> None:
        _stop_daemons(list(self._daemons.values()))


def _json_dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


def _tail(path: Path, chars: int, start: int = 0) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            end = f.tell()
            f.seek(max(end - chars, start, 0) if end >= start else max(end - chars, 0))
            return f.read().decode(errors="replace")
    except OSError as exc:
        return f"({exc})"


def _daemons(ports: Mapping[str, int], url: str, token_file: Path) -> dict[str, _Daemon]:
    logs, run = STATE_DIR / "logs", STATE_DIR / "run"
    level = ["--level", "DEBUG"]

    def make(name: str, argv: list[str]) -> _Daemon:
        # the publisher only drains queued events on SIGTERM (5 s): nothing to lose at the end of a session
        grace = 1.0 if name == "publisher" else 10.0
        return _Daemon(name, argv, logs / f"{name}.log", run / f"{name}.pid", grace=grace)

    return {
        "gunicorn": make("gunicorn", [
            "/usr/bin/gunicorn3", "lava_server.wsgi", "--log-level", "INFO", "-u", SERVICE_USER, "-g", SERVICE_USER,
            "--worker-class", "eventlet", "--workers", "2", "--bind", f"127.0.0.1:{ports['http']}", "--timeout", "60",
        ]),
        "publisher": make("publisher", [
            "/usr/bin/lava-server", "manage", "lava-publisher", *level, "--log-file", "-",
            "--host", "127.0.0.1", "--port", str(ports["publisher"]),
        ]),
        "scheduler": make("scheduler", [
            "/usr/bin/lava-server", "manage", "lava-scheduler", *level, "--log-file", "-",
            "--event-url", f"tcp://127.0.0.1:{ports['events']}",
        ]),
        # pings every 2 s (default 20 s) so that a finished job is reported promptly; the publisher's
        # websocket tells it about new jobs at once
        "worker": make("worker", [
            "/usr/bin/lava-worker", *level, "--log-file", "-", "--name", WORKER, "--url", url,
            "--ws-url", f"http://127.0.0.1:{ports['publisher']}/ws/", "--token-file", str(token_file),
            "--worker-dir", str(STATE_DIR / "worker"), "--ping-interval", "2", "--job-log-interval", "2",
            "--http-timeout", "120",
        ]),
    }  # fmt: skip


@contextlib.contextmanager
def _session_lock(timeout: float = 900.0) -> Iterator[None]:
    """One pytest session at a time drives this machine's LAVA (the second one waits)."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with (STATE_DIR / "lock").open("w") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LavaError(f"another session holds {STATE_DIR / 'lock'} for {timeout:.0f} s") from None
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _missing_install() -> str | None:
    missing = sorted({pkg for path, pkg in _REQUIRED.items() if not os.access(path, os.R_OK)})
    if shutil.which("qemu-system-x86_64") is None:
        missing.append("qemu-system-x86")
    if missing:
        return "LAVA is not installed (missing: " + ", ".join(missing) + "); .ci/run installs it"
    if os.geteuid() != 0:
        return "setting LAVA up needs root"
    return None


def _write_if_changed(path: Path, text: str, mode: int = 0o644) -> None:
    if not path.is_file() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        tmp.chmod(mode)
        tmp.replace(path)


def start_lava() -> tuple[LavaInstance, _Cluster | None]:
    """Set LAVA up (idempotently) and start its services. The caller stops them (``_stop_all``) and
    the returned PostgreSQL cluster (``_stop_cluster``: None unless this call started it)."""
    begin = time.monotonic()
    timings: dict[str, float] = {}
    for sub in ("logs", "run", "worker"):
        (STATE_DIR / sub).mkdir(parents=True, exist_ok=True)
    # an earlier session killed before its teardown leaves its services running: stop them (found by pid file)
    leftovers = _daemons({"http": 0, "publisher": 0, "events": 0}, "", Path()).values()
    _terminate([(tree, daemon.grace) for daemon in leftovers if (tree := daemon.leftover())])
    for daemon in leftovers:
        daemon.pid_path.unlink(missing_ok=True)
    # and a lava-run (with its qemu) whose worker died before it: its stdout is a file in the worker's
    # directory (its command line is no help: lava-run retitles itself "lava-run [job: N]")
    _terminate([(_tree(pid), 10.0) for pid in _pids_writing_under(STATE_DIR / "worker")])
    timings["leftovers"] = time.monotonic() - begin

    mark = time.monotonic()
    started_pg = _ensure_postgres()
    timings["postgres"] = time.monotonic() - mark
    try:
        return _set_up(timings, begin), started_pg
    except BaseException:
        _stop_cluster(started_pg)
        raise


def _stop_cluster(cluster: _Cluster | None) -> None:
    if cluster is not None:
        subprocess.run(
            ["pg_ctlcluster", cluster.version, cluster.name, "stop", "-m", "fast"],
            env=_clean_env(), capture_output=True, check=False, timeout=120,
        )  # fmt: skip


def _set_up(timings: dict[str, float], begin: float) -> LavaInstance:
    taken: set[int] = set()
    ports = {"http": _pick_port(8000, taken), "publisher": _pick_port(8001, taken), "events": _pick_port(5500, taken)}
    url = f"http://127.0.0.1:{ports['http']}/"
    events_dir = STATE_DIR / "events"
    events_dir.mkdir(exist_ok=True)
    shutil.chown(events_dir, SERVICE_USER, SERVICE_USER)
    _write_if_changed(
        SETTINGS_FILE,
        "# written by cipbuild's tests/lavafixtures.py for its test instance on loopback\n"
        + yaml.safe_dump({
            "EVENT_NOTIFICATION": True,
            "EVENT_SOCKET": f"tcp://127.0.0.1:{ports['events']}",
            "INTERNAL_EVENT_SOCKET": f"ipc://{events_dir / 'lava.events'}",
            "ALLOWED_HOSTS": ["127.0.0.1", "localhost", "[::1]"],
        }),
    )  # fmt: skip
    _write_if_changed(DEVICES_DIR / f"{DEVICE}.jinja2", _DEVICE_DICT)
    _fix_permissions()

    mark = time.monotonic()
    fresh = _ensure_database()
    timings["database"] = time.monotonic() - mark
    mark = time.monotonic()
    config = {
        "user": USER, "token_description": TOKEN_DESCRIPTION, "worker": WORKER, "device_type": DEVICE_TYPE,
        "device": DEVICE,
    }  # fmt: skip
    out = _run([SYSTEM_PYTHON, "-c", _BOOTSTRAP, json.dumps(config)], what="LAVA bootstrap", user=SERVICE_USER)
    line = next((ln for ln in out.splitlines() if ln.startswith("CIPBUILD-BOOTSTRAP ")), None)
    if line is None:
        raise LavaError(f"LAVA bootstrap printed no result:\n{out[-3000:]}")
    result = json.loads(line.split(" ", 1)[1])
    timings["bootstrap"] = time.monotonic() - mark

    token_file = STATE_DIR / "worker-token"
    _write_if_changed(token_file, str(result["worker_token"]), 0o600)
    lava = LavaInstance(
        url=url, token=str(result["token"]), user=USER, device_type=DEVICE_TYPE, device=DEVICE, worker=WORKER,
        ports=ports, state_dir=STATE_DIR, timings=timings, _daemons=_daemons(ports, url, token_file),
    )  # fmt: skip
    for name, daemon in lava._daemons.items():
        lava._log_offsets[name] = daemon.log_path.stat().st_size if daemon.log_path.exists() else 0
    mark = time.monotonic()
    try:
        # all at once: the worker retries its ping (every 2 s) and websocket (every 1 s) until they answer
        for daemon in lava._daemons.values():
            daemon.start()
        lava._wait_http(90)
        deadline = time.monotonic() + 30
        while not _listening(ports["publisher"]):
            if time.monotonic() > deadline or not lava._daemons["publisher"].running():
                raise LavaError(f"lava-publisher does not listen on {ports['publisher']}\n{lava.logs()}")
            time.sleep(0.2)
        deadline = time.monotonic() + 60
        while lava.api("GET", f"workers/{WORKER}/").json().get("state") != "Online":
            if time.monotonic() > deadline or not lava._daemons["worker"].running():
                raise LavaError(f"worker {WORKER} not Online after 60 s\n{lava.logs()}")
            time.sleep(0.3)
    except BaseException:
        lava._stop_all()
        raise
    timings["services"] = time.monotonic() - mark
    timings["total"] = time.monotonic() - begin
    timings["migrated"] = float(fresh or bool(result["migrated"]))
    return lava


def unavailable(reason: str) -> NoReturn:
    """In CI a missing LAVA is a failure (.ci/run installs it); elsewhere a skip."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


_SETUPS: list[dict[str, float]] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for timings in _SETUPS:
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in timings.items() if k != "migrated")
        kind = "with migrations" if timings.get("migrated") else "no migrations"
        terminalreporter.write_line(f"LAVA set-up ({kind}): {parts}")


@pytest.fixture(scope="session")
def lava() -> Iterator[LavaInstance]:
    """A running LAVA on 127.0.0.1 with a ``qemu`` device; stopped again at the end of the session."""
    reason = _missing_install()
    if reason:
        unavailable(reason)
    with _session_lock():
        instance, started_pg = start_lava()
        _SETUPS.append(instance.timings)
        try:
            yield instance
        finally:
            instance._stop_all()
            _stop_cluster(started_pg)
