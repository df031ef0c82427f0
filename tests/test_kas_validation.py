"""The catalogue's own kas fragments, and every kas file cipbuild generates, are checked against the
JSON schema of the kas cipbuild runs with: a typo is one line naming file, line and key, exit 2,
before anything is built."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Result

from orchestrator import kasfile
from orchestrator.catalog import Catalog, load_catalog, local_fragments
from orchestrator.errors import UserError
from orchestrator.matrix import Expander, resolve_job
from orchestrator.starter import JOB_ID, write_starter

Cli = Callable[..., Result]
KAS_VERSION = kasfile._kas_schema()[0]


def starter(tmp_path: Path) -> Path:
    root = tmp_path / "mycat"
    write_starter(root)
    return root


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


@pytest.mark.parametrize("verb", [["plan"], ["plan", "-r", "qemu", "--json"], ["kas", JOB_ID], ["boards"]])
def test_a_typo_in_a_fragment_is_one_line_with_file_line_and_the_right_key(
    tmp_path: Path, cli: Cli, verb: list[str]
) -> None:
    root = starter(tmp_path)
    fragment = root / "kas" / "isar" / "base.yml"
    edit(fragment, "local_conf_header:", "local_conf_heder:")
    result = cli("--catalog", str(root), *verb)
    assert result.code == 2
    assert result.out == ""
    assert result.err == (
        f"cipbuild: error: {fragment}:{line_of(fragment, 'local_conf_heder')}: kas {KAS_VERSION} knows no key "
        "'local_conf_heder' (did you mean 'local_conf_header'?)\n"
    )


@pytest.mark.parametrize(
    ("extra", "needle", "message"),
    [
        (
            "repos:\n  isar:\n    urll: https://example.invalid/isar.git\n",
            "urll",
            "knows no key 'repos.isar.urll' (did you mean 'url'?)",
        ),
        ("local_conf_header:\n  more: 5\n", "more: 5", "local_conf_header.more: 5 is not of type 'string'"),
        ("machine: [qemuamd64]\n", "machine:", "machine: ['qemuamd64'] is not of type 'string'"),
    ],
)
def test_a_wrong_value_deeper_in_a_fragment_is_named_by_its_key_path(
    tmp_path: Path, extra: str, needle: str, message: str
) -> None:
    root = starter(tmp_path)
    fragment = root / "kas" / "isar" / "base.yml"
    text = fragment.read_text()
    # a second local_conf_header would be a duplicate key: merge into the file's own
    if extra.startswith("local_conf_header:"):
        text = text.replace("local_conf_header:\n", extra)
    else:
        text += extra
    fragment.write_text(text)
    with pytest.raises(UserError) as info:
        load_catalog(root, cache=False)
    assert str(info.value).startswith(f"{fragment}:{line_of(fragment, needle)}: ")
    assert message in str(info.value)


def test_a_kas_header_version_kas_does_not_know_is_refused(tmp_path: Path) -> None:
    root = starter(tmp_path)
    fragment = root / "kas" / "isar" / "base.yml"
    edit(fragment, "  version: 14", "  version: 999")
    with pytest.raises(UserError, match=r"base\.yml:3: header\.version: 999 "):
        load_catalog(root, cache=False)


def test_a_fragment_may_leave_the_header_out(tmp_path: Path) -> None:
    root = starter(tmp_path)
    fragment = root / "kas" / "isar" / "base.yml"
    edit(fragment, "header:\n  version: 14\n", "")
    catalog = load_catalog(root, cache=False)
    assert "header:\n  version: 14\n" in kasfile.render(catalog, resolve_job(catalog, JOB_ID))


def test_each_fragment_is_checked_once_when_the_catalogue_loads(
    catalog_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[dict[str, Any]] = []
    real = kasfile.kas_problem

    def counting(data: dict[str, Any], *, fragment: bool = False) -> kasfile.KasProblem | None:
        assert fragment
        seen.append(data)
        return real(data, fragment=fragment)

    monkeypatch.setattr(kasfile, "kas_problem", counting)
    catalog = load_catalog(catalog_copy, cache=False)
    fragments = local_fragments(catalog)
    assert fragments and len(seen) == len(fragments) == len(set(fragments))
    load_catalog(catalog_copy)  # the validated catalogue is cached
    seen.clear()
    load_catalog(catalog_copy)
    assert seen == []


def test_a_file_found_valid_is_not_checked_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    data = {"header": {"version": 14}, "local_conf_header": {"mine": f'X = "{tmp_path}"'}}
    assert kasfile.kas_problem(data) is None

    def no_validator() -> Any:
        raise AssertionError("validated again")

    monkeypatch.setattr(kasfile, "_kas_validator", no_validator)
    assert kasfile.kas_problem(data) is None  # remembered: jsonschema is not even imported for it
    with pytest.raises(AssertionError, match="validated again"):
        kasfile.kas_problem({**data, "machine": "other"})


def test_a_generated_file_kas_would_refuse_is_not_written(
    tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = starter(tmp_path)
    real = kasfile.kas_config

    def broken(catalog: Catalog, job: Any) -> dict[str, Any]:
        return {**real(catalog, job), "bblayers_conf_heder": {}}

    monkeypatch.setattr(kasfile, "kas_config", broken)
    out = tmp_path / "job.yml"
    result = cli("--catalog", str(root), "kas", JOB_ID, "-O", str(out))
    assert result.code == 2
    assert result.err == (
        f"cipbuild: error: job {JOB_ID}: the kas file cipbuild generates for {JOB_ID} is not valid: kas "
        f"{KAS_VERSION} knows no key 'bblayers_conf_heder' (did you mean 'bblayers_conf_header'?)\n"
    )
    assert not out.exists()


def test_every_shipped_recipe_job_renders_a_file_kas_accepts(catalog: Catalog) -> None:
    expander = Expander(catalog)
    jobs = {job.id: job for name in catalog.recipe_files for job in expander.expand_recipe(name).jobs}
    assert len(jobs) > 20
    for job in jobs.values():
        assert kasfile.kas_problem(kasfile.kas_config(catalog, job)) is None, job.id


def test_a_fragment_that_includes_files_is_refused_when_the_catalogue_loads(tmp_path: Path) -> None:
    root = starter(tmp_path)
    fragment = root / "kas" / "isar" / "base.yml"
    edit(fragment, "  version: 14\n", "  version: 14\n  includes: [kas/other.yml]\n")
    with pytest.raises(UserError) as info:
        load_catalog(root, cache=False)
    assert str(info.value) == (
        f"{fragment}:4: cipbuild's own fragments cannot include other files (list the included files in the "
        "catalogue instead)"
    )
