from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.catalog import Catalog, default_catalog_dir, load_catalog
from orchestrator.errors import UserError
from orchestrator.models import FILE_KINDS
from orchestrator.schemas import schema_text


def test_shipped_catalogue_has_the_cip_boards(catalog: Catalog) -> None:
    isar = {b for b, f in catalog.boards.items() if "isar" in f.distros}
    deby = {b for b, f in catalog.boards.items() if "deby" in f.distros}
    assert isar == {"qemu-amd64", "qemu-arm64", "qemu-arm", "qemu-riscv64", "x86-uefi", "bbb", "iwg20m", "hihope-rzg2m"}
    assert deby == {"qemu-amd64", "bbb", "iwg20m", "hihope-rzg2m", "simatic-ipc227e"}
    assert catalog.boards["bbb"].distros["deby"].machine == "beaglebone"
    assert catalog.boards["qemu-amd64"].test.device_type == "qemu"
    assert set(catalog.options_of("isar")) >= {
        "security",
        "test",
        "targz",
        "rt",
        "swupdate",
        "secure-boot",
        "kernelci",
        "encrypt",
    }
    assert set(catalog.options_of("deby")) == {"security", "ltp", "targz", "dhcp"}
    assert {r: d.default_kernel for r, d in catalog.distros["isar"].releases.items()} == {
        "buster": "4.19",
        "bullseye": "5.10",
        "bookworm": "6.1",
        "trixie": "6.12",
    }


def test_shipped_schemas_match_the_models() -> None:
    for kind in FILE_KINDS:
        shipped = default_catalog_dir() / "schemas" / f"{kind}.schema.json"
        assert shipped.read_text() == schema_text(kind), f"run `cipbuild schema` to refresh {shipped.name}"
        assert json.loads(shipped.read_text())["type"] == "object"


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def error_of(root: Path, recipe: str | None = None) -> str:
    with pytest.raises(UserError) as info:
        cat = load_catalog(root)
        if recipe:
            cat.recipe(recipe)
    return str(info.value)


def line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def test_malformed_yaml_names_file_and_line(catalog_copy: Path) -> None:
    board = catalog_copy / "boards" / "bbb.yml"
    edit(board, "arch: armhf", "arch: [armhf")
    msg = error_of(catalog_copy)
    assert msg.startswith(f"{board}:") and "invalid YAML" in msg


def test_unknown_key_suggests_the_right_one(catalog_copy: Path) -> None:
    board = catalog_copy / "boards" / "qemu-arm.yml"
    edit(board, "    machine: qemu-arm\n", "    machnie: qemu-arm\n")
    msg = error_of(catalog_copy)
    assert msg == f"{board}:{line_of(board, 'machnie')}: unknown key 'machnie' (did you mean 'machine'?)"


def test_wrong_value_names_the_allowed_ones(catalog_copy: Path) -> None:
    board = catalog_copy / "boards" / "bbb.yml"
    edit(board, "arch: armhf", "arch: arm")
    msg = error_of(catalog_copy)
    assert msg.startswith(f"{board}:{line_of(board, 'arch: arm')}: arch:") and "'armhf'" in msg


def test_duplicate_key_is_refused(catalog_copy: Path) -> None:
    option = catalog_copy / "options" / "rt.yml"
    option.write_text(option.read_text() + "summary: again\n")
    assert (
        error_of(catalog_copy) == f"{option}:{line_of(option, 'summary: again')}: duplicate key 'summary' "
        "(each key may appear once)"
    )


def test_missing_kas_fragment_is_named(catalog_copy: Path) -> None:
    option = catalog_copy / "options" / "targz.yml"
    edit(option, "kas/deby/opt/targz.yml", "kas/deby/opt/tar-gz.yml")
    msg = error_of(catalog_copy)
    assert msg.startswith(
        f"{option}:{line_of(option, 'tar-gz.yml')}: kas fragment 'kas/deby/opt/tar-gz.yml' does not exist"
    )
    assert "did you mean 'kas/deby/opt/targz.yml'?" in msg


def test_unknown_board_in_recipe_suggests_nearest(catalog_copy: Path) -> None:
    recipe = catalog_copy / "recipes" / "hands-on.yml"
    edit(recipe, "board: [qemu-amd64, qemu-arm64]", "board: [qemu-amd64, qemu-amr64]")
    msg = error_of(catalog_copy, "hands-on")
    assert msg == f"{recipe}:{line_of(recipe, 'qemu-amr64')}: unknown board 'qemu-amr64' (did you mean 'qemu-arm64'?)"


def test_unknown_option_in_rule_is_refused(catalog_copy: Path) -> None:
    distro = catalog_copy / "distros" / "isar.yml"
    edit(distro, "when: {options: [targz, swupdate]}", "when: {options: [tar-gz, swupdate]}")
    msg = error_of(catalog_copy)
    assert msg.startswith(f"{distro}:{line_of(distro, 'tar-gz, swupdate')}: unknown option 'tar-gz'")


def test_an_update_plan_must_name_a_second_build_and_where_the_device_fetches_it(catalog_copy: Path) -> None:
    plan = catalog_copy / "testplans" / "swupdate.yml"
    edit(plan, "follow_up: swu-v2", "follow_up: swu-v3")
    msg = error_of(catalog_copy)
    assert msg == f"{plan}:{line_of(plan, 'swu-v3')}: no distro has a second build 'swu-v3' (did you mean 'swu-v2'?)"
    edit(plan, "follow_up: swu-v3", "follow_up: swu-v2")
    board = catalog_copy / "boards" / "bbb.yml"
    edit(board, "plans: [boot, ltp]", "plans: [boot, ltp, swupdate]")
    msg = error_of(catalog_copy)
    assert msg.startswith(f"{board}:{line_of(board, 'swupdate]')}: plan swupdate boots the updated disk again")
    edit(board, "plans: [boot, ltp, swupdate]", "plans: [boot, ltp]")
    edit(plan, '"-u {url}"', "/tmp/update.swu")
    msg = error_of(catalog_copy)
    assert msg.startswith(f"{plan}:{line_of(plan, 'install:')}: no step names {{url}}")


def test_unpinned_repository_is_refused(catalog_copy: Path) -> None:
    board = catalog_copy / "boards" / "iwg20m.yml"
    edit(board, "repos: [meta-iwg20m]", "repos: [meta-iwg20d]")
    assert "repository 'meta-iwg20d' is not pinned in kas/repos.yml (did you mean 'meta-iwg20m'?)" in error_of(
        catalog_copy
    )


def test_commit_must_be_a_full_sha(catalog_copy: Path) -> None:
    repos = catalog_copy / "kas" / "repos.yml"
    edit(repos, "f15ea486a3235275a10423e541612c5e3ecf0791", "f15ea486")
    assert error_of(catalog_copy).startswith(f"{repos}:{line_of(repos, 'f15ea486')}: repos.cip-core.commit:")


def test_ambiguous_option_name_is_refused(catalog_copy: Path) -> None:
    shutil.copy(catalog_copy / "options" / "rt.yml", catalog_copy / "options" / "rt-test.yml")
    edit(catalog_copy / "distros" / "isar.yml", "swupdate-2022.12]", "swupdate-2022.12, rt-test]")
    msg = error_of(catalog_copy)
    assert "job id 'isar-buster-bbb-rt-test' would name two different jobs" in msg
    assert "option rt, option test" in msg and "option rt-test" in msg
    assert "options/rt-test.yml" in msg and "options/rt.yml" in msg and "options/test.yml" in msg


# --- random edits never crash the loader -----------------------------------------------------

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.text(max_size=12),
    st.sampled_from(["isar", "bbb", "6.1", "5.10", "security", "kas/opt/x.yml", "{repo: x}"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8,
)
FILES = [
    "boards/qemu-amd64.yml",
    "boards/iwg20m.yml",
    "options/security.yml",
    "distros/isar.yml",
    "distros/deby.yml",
    "recipes/cip-core-ci.yml",
    "kas/repos.yml",
]


def mutate(data: Any, path: list[int], value: Any, mode: int) -> Any:
    """Replace, delete or add something at a pseudo-random place in ``data``."""
    if isinstance(data, dict) and data:
        keys = sorted(data)
        key = keys[path[0] % len(keys)] if path else keys[0]
        if not path or mode == 0:
            out = dict(data)
            if mode == 1:
                del out[key]
            elif mode == 2:
                out[f"x{path[0] if path else 0}"] = value
            else:
                out[key] = value
            return out
        return {**data, key: mutate(data[key], path[1:], value, mode)}
    if isinstance(data, list) and data:
        i = path[0] % len(data) if path else 0
        out_list = list(data)
        out_list[i] = mutate(data[i], path[1:], value, mode) if path else value
        return out_list
    return value


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    file=st.sampled_from(FILES),
    path=st.lists(st.integers(0, 50), max_size=5),
    value=VALUES,
    mode=st.integers(0, 3),
    raw=st.booleans(),
    junk=st.text(max_size=40),
)
def test_random_catalogue_edits_never_crash(
    tmp_path_factory: pytest.TempPathFactory, file: str, path: list[int], value: Any, mode: int, raw: bool, junk: str
) -> None:
    root = tmp_path_factory.mktemp("fuzz")
    for part in ("boards", "options", "distros", "recipes", "kas"):
        shutil.copytree(default_catalog_dir() / part, root / part)
    target = root / file
    if raw:
        target.write_text(target.read_text()[: len(junk) * 7] + junk)
    else:
        data = yaml.safe_load(target.read_text())
        target.write_text(yaml.safe_dump(mutate(data, path, value, mode)))
    try:
        cat = load_catalog(root)
        from orchestrator.matrix import Expander

        expander = Expander(cat)
        for name in cat.recipe_files:
            expander.expand_recipe(name)
    except UserError as exc:
        text = str(exc)
        assert text and "\n" not in text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("matrix: &a [*a]\n", "YAML alias refers to itself"),
        (
            "".join(
                f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10) if i else 'x, x, x, x, x, x, x, x, x, x'}]\n"
                for i in range(9)
            ),
            "through its aliases (check the aliases (*name) in this file)",
        ),
        ("description: x\x01\n", "control characters are not allowed"),
    ],
)
def test_hostile_yaml_is_one_clean_error(catalog_copy: Path, text: str, message: str) -> None:
    recipe = catalog_copy / "recipes" / "bad.yml"
    recipe.write_text(text)
    msg = error_of(catalog_copy, "bad")
    assert msg.startswith(f"{recipe}:") and message in msg and "\n" not in msg


def test_duplicate_order_entry_is_refused(catalog_copy: Path) -> None:
    distro = catalog_copy / "distros" / "isar.yml"
    edit(distro, "order: [board, kernel, rt,", "order: [board, kernel, rt, rt,")
    assert "'rt' appears twice in order" in error_of(catalog_copy)


def test_include_without_board_names_its_line(catalog_copy: Path) -> None:
    recipe = catalog_copy / "recipes" / "nob.yml"
    recipe.write_text("description: x\ninclude:\n  - {release: bookworm}\n")
    assert error_of(catalog_copy, "nob") == f"{recipe}:3: an include entry needs a board (add board: <name>)"


def test_typo_in_single_matrix_form_is_named(catalog_copy: Path) -> None:
    recipe = catalog_copy / "recipes" / "typo.yml"
    recipe.write_text("description: x\nmatrix: {boards: [bbb]}\n")
    assert error_of(catalog_copy, "typo") == f"{recipe}:2: unknown key 'boards' (did you mean 'board'?)"


def test_cache_never_serves_an_edited_catalogue(catalog_copy: Path) -> None:
    import os

    board = catalog_copy / "boards" / "bbb.yml"
    assert load_catalog(catalog_copy).boards["bbb"].description.startswith("BeagleBone Black")
    stat = board.stat()
    edit(board, "BeagleBone Black", "BeagleBone Green")  # same size ...
    os.utime(board, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ... and same mtime
    assert load_catalog(catalog_copy).boards["bbb"].description.startswith("BeagleBone Green")


def test_two_default_distros_are_refused(catalog_copy: Path) -> None:
    distro = catalog_copy / "distros" / "deby.yml"
    edit(distro, "build_system: openembedded", "default: true\nbuild_system: openembedded")
    assert "both isar and deby say default: true" in error_of(
        catalog_copy
    ) or "both deby and isar say default: true" in error_of(catalog_copy)


def git(*args: str) -> None:
    import subprocess

    subprocess.run(["git", *args], check=True, capture_output=True)


@pytest.mark.parametrize("kind", ["bare", "work tree"])
def test_a_file_url_repository_on_this_machine_is_used_and_listed(
    catalog_copy: Path, tmp_path: Path, kind: str
) -> None:
    from orchestrator.catalog import local_repo_paths

    repo = tmp_path / "clones" / "isar-cip-core.git"
    git("init", "-q", *(["--bare"] if kind == "bare" else []), str(repo))
    edit(
        catalog_copy / "kas" / "repos.yml",
        "https://gitlab.com/cip-project/cip-core/isar-cip-core.git",
        f"file://{repo}",
    )
    assert local_repo_paths(load_catalog(catalog_copy)) == (repo,)


@pytest.mark.parametrize(
    ("make", "url", "problem"),
    [
        (None, "file://{tmp}/missing", "{tmp}/missing does not exist"),
        ("folder", "file://{tmp}/plain", "{tmp}/plain is not a git repository (no .git folder, and not a bare"),
        ("file", "file://{tmp}/plain", "{tmp}/plain is not a folder"),
        ("gitfile", "file://{tmp}/plain", "{tmp}/plain is a git worktree or submodule whose repository lies"),
        (None, "file://server/srv/isar.git", "names the host 'server'; a file:// URL names a folder on this"),
    ],
)
def test_a_file_url_that_is_no_git_repository_is_refused_at_its_line(
    catalog_copy: Path, tmp_path: Path, make: str | None, url: str, problem: str
) -> None:
    plain = tmp_path / "plain"
    if make == "folder":
        plain.mkdir()
    elif make == "file":
        plain.write_text("")
    elif make == "gitfile":
        plain.mkdir()
        (plain / ".git").write_text("gitdir: /elsewhere/.git/worktrees/plain\n")
    repos = catalog_copy / "kas" / "repos.yml"
    edit(repos, "https://gitlab.com/cip-project/cip-core/isar-cip-core.git", url.format(tmp=tmp_path))
    message = error_of(catalog_copy)
    assert message.startswith(f"{repos}:{line_of(repos, 'url: file://')}: repository 'cip-core': ")
    assert problem.format(tmp=tmp_path) in message
    assert "--mirror" in message and "\n" not in message


def test_a_file_url_repository_that_goes_away_is_refused_although_the_catalogue_is_cached(
    catalog_copy: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "isar-cip-core"
    git("init", "-q", str(repo))
    edit(
        catalog_copy / "kas" / "repos.yml",
        "https://gitlab.com/cip-project/cip-core/isar-cip-core.git",
        f"file://{repo}",
    )
    load_catalog(catalog_copy)
    shutil.rmtree(repo)
    assert f"{repo} does not exist" in error_of(catalog_copy)


def test_an_unused_file_url_repository_is_not_checked(catalog_copy: Path) -> None:
    from orchestrator.catalog import local_repo_paths

    repos = catalog_copy / "kas" / "repos.yml"
    repos.write_text(
        repos.read_text() + "  unused:\n    url: file:///nowhere/unused.git\n    commit: " + "a" * 40 + "\n"
    )
    assert local_repo_paths(load_catalog(catalog_copy)) == ()
