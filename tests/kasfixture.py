"""Fixture upstream repositories for real kas runs: git repos made from tests/fixtures/repos/,
reached through KAS_PREMIRRORS and pinned to their fixture commits by a kas lock file."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

FIXTURE_REPOS = Path(__file__).parent / "fixtures" / "repos"

# Which fixture stands in for which upstream URL (the part after the last '/', less '.git').
UPSTREAM_NAMES = {
    "isar-cip-core": "isar-cip-core",
    "isar": "isar",
    "deby": "deby",
    "poky": "poky",
    "meta-debian": "meta-debian",
    "meta-ti": "meta-ti",
    "meta-cip-test-support": "meta-cip-test-support",
}

GIT_ENV = {
    "GIT_AUTHOR_NAME": "cipbuild tests",
    "GIT_AUTHOR_EMAIL": "tests@cipbuild.invalid",
    "GIT_COMMITTER_NAME": "cipbuild tests",
    "GIT_COMMITTER_EMAIL": "tests@cipbuild.invalid",
    "GIT_AUTHOR_DATE": "2025-07-29T12:00:00Z",
    "GIT_COMMITTER_DATE": "2025-07-29T12:00:00Z",
}


@dataclass(frozen=True)
class Upstreams:
    """Local git copies of the fixture repos and the environment that sends kas to them."""

    root: Path
    commits: dict[str, str]

    @property
    def premirrors(self) -> str:
        names = "|".join(UPSTREAM_NAMES)
        return f"^https?://.*/({names})(\\.git)?$ file://{self.root}/\\1"

    def env(self, work_dir: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KAS_")}
        env.update(KAS_PREMIRRORS=self.premirrors, KAS_WORK_DIR=str(work_dir))
        return env

    def lock_for(self, repo_names: list[str]) -> dict[str, Any]:
        """A kas lock file pinning every repo name a config uses to its fixture commit."""
        deby_names = [n for n in repo_names if n.startswith("meta-") and n not in UPSTREAM_NAMES]
        commits: dict[str, str] = {}
        for name in repo_names:
            if name == "cip-core":
                commits[name] = self.commits["isar-cip-core"]
            elif name in self.commits:
                commits[name] = self.commits[name]
            elif name in deby_names:
                commits[name] = self.commits["deby"]
        return {"header": {"version": 14}, "overrides": {"repos": {n: {"commit": c} for n, c in commits.items()}}}


# The fixture kas files name the real upstream pins of the repos they pull in; each is replaced
# by the commit of the fixture standing in for that repo, so that `kas build` can check it out.
TRANSITIVE_PINS = {
    "isar": "d63a1cbae6f737aa843d00d8812547fe7b87104a",
    "poky": "4edf4eb9cc86fbd4b51240fae527c1b97a7ace74",
    "meta-debian": "8dc5105b7e36e253093f8103b1f812535bac24a9",
    "meta-ti": "de9ee6d4fcc476e1a36834a7d5383ae03a227958",
    "meta-cip-test-support": "579d22e158333aa90855433ddb94d904c764c49c",
}


def make_upstreams(root: Path) -> Upstreams:
    commits: dict[str, str] = {}
    leaves_first = sorted(UPSTREAM_NAMES, key=lambda n: n in ("isar-cip-core", "deby"))
    for name in leaves_first:
        dest = root / name
        shutil.copytree(FIXTURE_REPOS / name, dest)
        for path in dest.rglob("*.y*ml"):
            text = path.read_text()
            for pinned, sha in ((TRANSITIVE_PINS[n], commits[n]) for n in TRANSITIVE_PINS if n in commits):
                text = text.replace(pinned, sha)
            path.write_text(text)
        env = {**os.environ, **GIT_ENV}
        for cmd in (
            ["git", "init", "-q", "-b", "master"],
            ["git", "add", "-A"],
            ["git", "commit", "-q", "-m", f"fixture {name}"],
        ):
            subprocess.run(cmd, cwd=dest, env=env, check=True)
        commits[name] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=dest, check=True, text=True, capture_output=True
        ).stdout.strip()
    return Upstreams(root, commits)


TEST_CATALOG = Path(__file__).parent / "fixtures" / "catalog"


def make_test_catalog(root: Path, upstreams: Upstreams) -> Path:
    """The test catalogue (tests/fixtures/catalog) with its pins set to the fixture commits."""
    shutil.copytree(TEST_CATALOG, root)
    repos = root / "kas" / "repos.yml"
    text = repos.read_text()
    for name, sha in upstreams.commits.items():
        text = text.replace(f'"@{name}@"', sha)
    repos.write_text(text)
    return root


ALL_REPO_NAMES = [
    "cip-core",
    "isar",
    "meta-cip-core",
    "meta-cip-security",
    "meta-iwg20m",
    "meta-hihope-rzg2m",
    "meta-simatic-ipc227e",
    "poky",
    "meta-debian",
    "meta-ti",
    "meta-cip-test-support",
]


def kas_dump(upstreams: Upstreams, kas_file: Path, work_dir: Path, repo_names: list[str]) -> dict[str, Any]:
    """Run real `kas dump --resolve-refs` on ``kas_file`` against the fixture upstreams: the parsed
    configuration with every repository at the commit kas checked out."""
    lock = kas_file.with_name(kas_file.stem + ".lock.yml")
    lock.write_text(yaml.safe_dump(upstreams.lock_for(repo_names)), encoding="utf-8")
    work_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["kas", "dump", "--resolve-refs", str(kas_file)],
        env=upstreams.env(work_dir),
        text=True,
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        raise AssertionError(f"kas dump {kas_file.name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    data = yaml.safe_load(proc.stdout)
    assert isinstance(data, dict)
    return data
