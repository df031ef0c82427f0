"""docs/catalogue.md is executed: its worked example is extracted file by file, loaded with the real
loader, planned and rendered through the CLI, and is exactly what `cipbuild catalog new` writes."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from conftest import Result

from orchestrator.catalog import load_catalog
from orchestrator.kasfile import _kas_schema
from orchestrator.starter import FILES, ISAR_COMMIT, JOB_ID

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "catalogue.md"
# A file of the worked example: a "#### `path`" heading, then one fenced YAML block.
EXAMPLE_FILE = re.compile(r"^#### `(?P<path>[^`]+)`\n\n```yaml\n(?P<text>.*?)^```$", re.MULTILINE | re.DOTALL)

Cli = Callable[..., Result]


def guide_files() -> dict[str, str]:
    found: dict[str, str] = {}
    for match in EXAMPLE_FILE.finditer(GUIDE.read_text(encoding="utf-8")):
        assert match["path"] not in found, f"{match['path']} appears twice in the guide"
        found[match["path"]] = match["text"]
    return found


def write_example(root: Path) -> Path:
    for name, text in guide_files().items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def test_the_guides_example_is_what_catalog_new_writes() -> None:
    files = guide_files()
    assert set(files) >= {"distros/isar.yml", "boards/qemu-amd64.yml", "kas/repos.yml"}
    assert files == FILES


def test_the_guides_example_loads_plans_and_renders(tmp_path: Path, cli: Cli) -> None:
    root = write_example(tmp_path / "mycat")
    catalog = load_catalog(root, cache=False)
    distro = catalog.distros["isar"]
    assert distro.kernels == {}  # Debian's kernel: no kernels, no default_kernel
    assert all(release.default_kernel is None for release in distro.releases.values())
    assert list(catalog.boards) == ["qemu-amd64"]

    planned = cli("--catalog", str(root), "plan", "--json")
    assert planned.code == 0, planned.err
    (job,) = json.loads(planned.out)["jobs"]
    assert job["id"] == JOB_ID
    assert (job["distro"], job["release"], job["board"], job["options"]) == ("isar", "bookworm", "qemu-amd64", [])
    assert (job["machine"], job["bitbake_distro"], job["target"]) == ("qemuamd64", "debian-bookworm", "isar-image-base")
    assert job["image"] == "isar-image-base-debian-bookworm-qemuamd64"
    assert job["kernel"] is None  # Debian's kernel: the job names none

    recipe = cli("--catalog", str(root), "plan", "-r", "qemu", "--json")
    assert recipe.code == 0, recipe.err
    assert [j["id"] for j in json.loads(recipe.out)["jobs"]] == [JOB_ID]

    rendered = cli("--catalog", str(root), "kas", JOB_ID)
    assert rendered.code == 0, rendered.err
    assert f"# Regenerate with: cipbuild --catalog {root} kas {JOB_ID}\n" in rendered.out
    kas: dict[str, Any] = yaml.safe_load(rendered.out)
    assert (kas["machine"], kas["distro"], kas["target"], kas["build_system"]) == (
        "qemuamd64",
        "debian-bookworm",
        "isar-image-base",
        "isar",
    )
    assert kas["header"] == {"version": 14}  # nothing to include: plain Isar has no kas files of its own
    assert kas["repos"] == {
        "isar": {
            "url": "https://github.com/ilbers/isar.git",
            "commit": ISAR_COMMIT,
            "layers": {"meta": None, "meta-isar": None},
        }
    }
    assert set(kas["local_conf_header"]) == {"standard", "root-login", "no-sbom"}
    assert 'USER_root[password] = "root"' in kas["local_conf_header"]["root-login"]
    assert set(kas["env"]) == {"DL_DIR", "SSTATE_DIR", "SOURCE_DATE_EPOCH"}


def test_catalog_new_writes_the_starter_and_schemas_its_files_name(tmp_path: Path, cli: Cli) -> None:
    root = tmp_path / "new" / "mycat"  # missing parents are made
    made = cli("catalog", "new", str(root), "--json")
    assert made.code == 0, made.err
    report = json.loads(made.out)
    assert report["job"] == JOB_ID
    assert {str(Path(p).relative_to(root)) for p in report["files"]} >= set(FILES)
    for name, text in FILES.items():
        assert (root / name).read_text(encoding="utf-8") == text
    schema_comments = 0
    for name in FILES:
        path = root / name
        found = re.search(r"^# yaml-language-server: \$schema=(\S+)$", path.read_text(), re.MULTILINE)
        if found is None:
            assert name.startswith("kas/") and name != "kas/repos.yml", f"{name} names no schema"
            continue
        schema_comments += 1
        schema_path = (path.parent / found[1]).resolve()
        assert schema_path.is_file(), f"{name}: {found[1]} does not resolve"
        schema = json.loads(schema_path.read_text())
        jsonschema.validators.validator_for(schema)(schema).validate(yaml.safe_load(path.read_text()))
    assert schema_comments == len(FILES) - 1
    assert load_catalog(root, cache=False).boards.keys() == {"qemu-amd64"}


def test_catalog_new_refuses_a_folder_that_is_not_empty(tmp_path: Path, cli: Cli) -> None:
    root = tmp_path / "mycat"
    root.mkdir()
    (root / "notes.txt").write_text("mine\n")
    refused = cli("catalog", "new", str(root))
    assert refused.code == 2
    assert refused.err == f"cipbuild: error: {root}: is not empty (name a new or empty folder, or add --force to " \
        "write the starter files over it)\n"  # fmt: skip
    assert sorted(p.name for p in root.iterdir()) == ["notes.txt"]

    (root / "distros").mkdir()
    (root / "distros" / "isar.yml").write_text("description: old\n")
    forced = cli("catalog", "new", str(root), "--force")
    assert forced.code == 0, forced.err
    assert (root / "notes.txt").read_text() == "mine\n"  # left alone
    assert (root / "distros" / "isar.yml").read_text() == FILES["distros/isar.yml"]
    assert f"next: cipbuild --catalog {root} plan" in forced.out


def test_catalog_new_refuses_a_file(tmp_path: Path, cli: Cli) -> None:
    target = tmp_path / "file"
    target.write_text("")
    refused = cli("catalog", "new", str(target))
    assert refused.code == 2
    assert refused.err.count("\n") == 1 and "is a file, not a folder" in refused.err


@pytest.mark.parametrize("name", sorted(FILES))
def test_each_example_file_is_needed_or_optional_as_the_guide_says(tmp_path: Path, cli: Cli, name: str) -> None:
    """Leaving out one file: the folders the guide calls optional may go, the others are refused
    with one line."""
    root = write_example(tmp_path / "mycat")
    (root / name).unlink()
    result = cli("--catalog", str(root), "plan", "--json")
    required = {"distros/isar.yml", "kas/repos.yml", "kas/isar/base.yml", "boards/qemu-amd64.yml"}  # no board: no job
    if name in required:
        assert result.code == 2 and result.err.count("\n") == 1, result.err
    else:
        assert result.code == 0, result.err


def console_output(command: str) -> str:
    """What the guide shows after ``$ command`` (up to the next prompt or the end of the block)."""
    text = GUIDE.read_text(encoding="utf-8")
    start = text.index(f"$ {command}\n") + len(f"$ {command}\n")
    end = min(i for i in (text.find("\n$ ", start - 1), text.find("\n```", start - 1)) if i >= 0)
    return text[start : end + 1]


def test_the_output_the_guide_shows_is_what_cipbuild_prints(
    tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write_example(tmp_path / "mycat")
    planned = cli("--catalog", "mycat", "plan")
    assert planned.code == 0, planned.err
    assert planned.out == console_output("cipbuild --catalog mycat plan")

    fragment = tmp_path / "mycat" / "kas" / "isar" / "base.yml"
    fragment.write_text(fragment.read_text().replace("local_conf_header:", "local_conf_heder:"))
    refused = cli("--catalog", "mycat", "plan")
    assert refused.code == 2
    shown = re.search(r"^cipbuild: error: mycat/kas/isar/base\.yml.*\n", GUIDE.read_text(), re.MULTILINE)
    assert shown is not None
    # the guide was written with one kas; the message names the kas installed
    assert refused.err == re.sub(r" kas \S+ knows ", f" kas {_kas_schema()[0]} knows ", shown[0])
