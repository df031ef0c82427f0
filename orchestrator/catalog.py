"""Load and validate a catalogue folder (boards/, options/, distros/, recipes/, kas/) into typed models.

Every problem becomes one ConfigError naming ``file:line``, what is wrong and what would be right.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import os
import pickle
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import ValidationError

from . import __version__
from .compress import DISK_TYPES
from .errors import ConfigError, UserError
from .models import (
    BoardFile,
    Condition,
    DistroFile,
    KasRef,
    Model,
    OptionFile,
    RecipeFile,
    ReposFile,
    TestPlanFile,
    UpdateStage,
    is_name,
)

if TYPE_CHECKING:
    from .yamlfile import YamlDoc

M = TypeVar("M", bound=Model)

ENV_CATALOG = "CIPBUILD_CATALOG"


def default_catalog_dir() -> Path:
    """The catalogue shipped in the wheel, or the source tree's when running from a checkout."""
    here = Path(__file__).resolve().parent
    packaged = here / "_catalog"
    return packaged if packaged.is_dir() else here.parent


def catalog_dir(explicit: str | None) -> Path:
    """The folder --catalog or CIPBUILD_CATALOG names, else the built-in catalogue. An empty
    value is refused: it would silently mean the current folder or the built-in catalogue."""
    for where, value in (("--catalog", explicit), (ENV_CATALOG, os.environ.get(ENV_CATALOG))):
        if value is None:
            continue
        if not value.strip():
            unset = f", or unset {ENV_CATALOG} for the built-in one" if where == ENV_CATALOG else ""
            hint = "name a catalogue folder" + unset
            raise UserError("is empty", where=where, hint=hint)
        return Path(value)
    return default_catalog_dir()


def suggest(word: str, choices: Iterable[str]) -> str | None:
    """'did you mean X' text for the nearest choice, or a list of choices when none is near."""
    choices = sorted(choices)
    near = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if near:
        return f"did you mean '{near[0]}'?"
    if choices:
        shown = ", ".join(choices[:12]) + (", ..." if len(choices) > 12 else "")
        return f"known: {shown}"
    return None


def unknown(kind: str, name: str, choices: Iterable[str], *, where: str | None = None) -> UserError:
    return UserError(f"unknown {kind} '{name}'", where=where, hint=suggest(name, choices))


def validate(doc: YamlDoc, model: type[M]) -> M:
    """``doc.data`` as ``model``; the first problem is raised with its file and line."""
    if not isinstance(doc.data, dict):
        raise doc.error((), f"expected a mapping at the top of the file, found {type(doc.data).__name__}")
    try:
        return model.model_validate(doc.data)
    except ValidationError as exc:
        raise _config_error(doc, model, exc) from None


def _config_error(doc: YamlDoc, model: type[Model], exc: ValidationError) -> ConfigError:
    errors = exc.errors(include_url=False)
    # An unknown key usually explains the missing one next to it (a typo), so report it first.
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = _data_path(doc.data, err["loc"])
    shown = ".".join(str(p) for p in loc) or "(top)"
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(model, loc[:-1])
        hint = suggest(str(loc[-1]), allowed) if allowed else None
        return doc.error(loc, f"unknown key '{loc[-1]}'", hint)
    if kind == "missing":
        return doc.error(loc[:-1] if loc else loc, f"missing key '{shown}'")
    return doc.error(loc, f"{shown}: {err['msg']}")


def _data_path(data: Any, loc: Iterable[int | str]) -> tuple[str | int, ...]:
    """Keep the parts of a pydantic error location that are real keys (drop union tags)."""
    path: list[str | int] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and isinstance(part, int):
            continue  # an index a validator added (a single mapping taken as a one-item list)
        inside_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if inside_list or (isinstance(node, dict) and part in node):
            node = node[part]
            path.append(part)
            continue
        if isinstance(node, dict) and isinstance(part, str) and is_name(part.replace("_", "-")):
            path.append(part)  # a missing or extra key: name it
        if not isinstance(node, list):
            break
    return tuple(path)


def _allowed_keys(model: type[Model], loc: tuple[str | int, ...]) -> list[str]:
    """Field names of the model found at ``loc`` (best effort, for suggestions)."""
    current: Any = model
    for part in loc:
        fields = current.model_fields if isinstance(current, type) and issubclass(current, Model) else {}
        if isinstance(part, str) and part in fields:
            current = _inner_model(fields[part].annotation)
        # otherwise ``part`` is a list index or a mapping key inside the current field: stay
    if isinstance(current, type) and issubclass(current, Model):
        return list(current.model_fields)
    return []


def _inner_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, Model):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


@dataclass
class Catalog:
    """Everything cipbuild knows about what CIP Core can build."""

    root: Path
    boards: dict[str, BoardFile]
    options: dict[str, OptionFile]
    distros: dict[str, DistroFile]
    repos: ReposFile
    recipe_files: dict[str, Path]
    docs: dict[Path, YamlDoc] = field(default_factory=dict, repr=False)
    files: dict[tuple[str, str], Path] = field(default_factory=dict, repr=False)  # (folder, name) -> file
    testplans: dict[str, TestPlanFile] = field(default_factory=dict)
    _recipes: dict[str, RecipeFile] = field(default_factory=dict, repr=False)
    # not from the files: `--snapshot`, the Debian snapshot isar jobs take their packages from
    snapshot: str | None = None

    @property
    def default_distro(self) -> str:
        return next(iter(self.distros))

    def board(self, name: str, *, where: str = "--board") -> BoardFile:
        if name not in self.boards:
            raise unknown("board", name, self.boards, where=where)
        return self.boards[name]

    def distro(self, name: str, *, where: str = "--distro") -> DistroFile:
        if name not in self.distros:
            raise unknown("distro", name, self.distros, where=where)
        return self.distros[name]

    def options_of(self, distro: str) -> list[str]:
        """The options ``distro`` implements, in its canonical order."""
        order = self.distros[distro].order
        return [name for name in order if name in self.options and distro in self.options[name].distros]

    def with_implied(self, distro: str, options: Iterable[str]) -> frozenset[str]:
        """``options`` and every option they imply in ``distro`` (security brings swupdate); names
        the catalogue does not know are kept as they are."""
        seen: set[str] = set()
        todo = list(options)
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            option = self.options.get(name)
            spec = option.distros.get(distro) if option else None
            todo.extend(spec.implies if spec else ())
        return frozenset(seen)

    def recipe(self, name: str) -> RecipeFile:
        if name not in self.recipe_files:
            raise unknown("recipe", name, self.recipe_files, where="--recipe")
        if name not in self._recipes:
            from .yamlfile import load_yaml

            path = self.recipe_files[name]
            doc = load_yaml(path, display=self._shown(path))
            recipe = validate(doc, RecipeFile)
            check_recipe(self, doc, recipe)
            self._recipes[name] = recipe
        return self._recipes[name]

    def _shown(self, path: Path) -> str:
        try:
            return str(path.relative_to(Path.cwd()))
        except ValueError:
            return str(path)


CATALOG_PARTS = ("boards", "options", "distros", "recipes", "kas", "testplans")


def load_catalog(root: Path, *, cache: bool = True) -> Catalog:
    """Read and cross-check a whole catalogue folder.

    A validated catalogue is kept in the user's cache, keyed by every file's path, size and
    mtime, so the commands people type often do not re-validate unchanged YAML.
    """
    if not root.is_dir():
        raise UserError(
            f"catalogue folder {root} " + ("is not a folder" if root.exists() else "does not exist"),
            where="--catalog",
            hint="point --catalog or CIPBUILD_CATALOG at a folder with boards/ options/ distros/",
        )
    cache_file = _cache_file(root) if cache else None
    catalog = _cached(cache_file, root)
    if catalog is None:
        catalog = _load_catalog(root)
        if cache_file is not None:
            _store(cache_file, catalog)
    # outside the catalogue, so not covered by the cache: checked on every load
    check_local_repos(catalog)
    return catalog


def _cached(cache_file: Path | None, root: Path) -> Catalog | None:
    if cache_file is None or not cache_file.is_file():
        return None
    try:
        with cache_file.open("rb") as fh:
            cached = pickle.load(fh)
        if isinstance(cached, Catalog) and cached.root == root:
            return cached
    except Exception:  # a stale or truncated cache is rebuilt, never fatal
        pass
    return None


def _store(cache_file: Path, catalog: Catalog) -> None:
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
        with tmp.open("wb") as fh:
            pickle.dump(dataclasses.replace(catalog, docs={}, _recipes=_valid_recipes(catalog)), fh)
        tmp.replace(cache_file)
        _prune_cache(cache_file)
    except OSError:
        pass


def _valid_recipes(catalog: Catalog) -> dict[str, RecipeFile]:
    """Recipes that load cleanly; a broken one is left out so that it reports itself when used."""
    out = {}
    for name in catalog.recipe_files:
        try:
            out[name] = catalog.recipe(name)
        except UserError:
            continue
    return out


def cache_dir() -> Path:
    """cipbuild's folder in the user's cache (XDG_CACHE_HOME, else ~/.cache)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")) / "cipbuild"


def _cache_file(root: Path) -> Path | None:
    """The cache entry for ``root``: keyed by the contents of every catalogue file and of
    cipbuild's own code, so no edit, however small, is served stale."""
    digest = hashlib.sha256(f"{__version__}\0{sys.version}\0{root.resolve()}".encode())
    code = sorted(Path(__file__).parent.glob("*.py"))
    try:
        for part in CATALOG_PARTS:
            folder = root / part
            if folder.is_dir():
                for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                    digest.update(f"{path.relative_to(root)}\0".encode())
                    _hash_into(digest, path)
        for path in code:
            _hash_into(digest, path)
    except OSError:
        return None
    return cache_dir() / f"catalog-{digest.hexdigest()[:32]}.pickle"


def _hash_into(digest: Any, path: Path) -> None:
    """Add a file's bytes in chunks. A file too large to be a catalogue file (the loader refuses
    those) is keyed by its size, mtime and inode instead of being read."""
    from .yamlfile import MAX_BYTES

    st = path.stat()
    if st.st_size > MAX_BYTES:
        digest.update(f"large\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\0".encode())
        return
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 16):
            digest.update(chunk)


def _prune_cache(keep: Path, entries: int = 8) -> None:
    """Leave the newest few cache files (several catalogues may be in use)."""
    others = sorted(keep.parent.glob("catalog-*.pickle"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in others[entries:]:
        with contextlib.suppress(OSError):
            old.unlink()


def _load_catalog(root: Path) -> Catalog:
    from .yamlfile import load_yaml

    if not root.is_dir():
        raise UserError(
            f"catalogue folder {root} does not exist",
            where="--catalog",
            hint="point --catalog or CIPBUILD_CATALOG at a folder with boards/ options/ distros/",
        )
    docs: dict[Path, YamlDoc] = {}

    def shown(path: Path) -> str:
        try:
            return str(path.relative_to(Path.cwd()))
        except ValueError:
            return str(path)

    files: dict[tuple[str, str], Path] = {}

    def load_kind(folder: str, model: type[M]) -> dict[str, M]:
        out: dict[str, M] = {}
        for name, path in catalogue_files(root, folder, shown).items():
            doc = load_yaml(path, display=shown(path))
            docs[path] = doc
            files[(folder, name)] = path
            out[name] = validate(doc, model)
        return out

    distros = load_kind("distros", DistroFile)
    if not distros:
        raise ConfigError(
            shown(root / "distros"), None, "the catalogue defines no distro", hint="add distros/<name>.yml"
        )
    # the default distro is listed first
    defaults = [name for name, d in distros.items() if d.default]
    if len(defaults) > 1:
        second = docs[files[("distros", defaults[1])]]
        raise second.error(
            ("default",), f"both {defaults[0]} and {defaults[1]} say default: true", "one distro at most is the default"
        )
    # the default distro first; without one, the first by name
    distros = dict(sorted(distros.items(), key=lambda kv: (not kv[1].default, kv[0])))
    boards = load_kind("boards", BoardFile)
    options = load_kind("options", OptionFile)
    repos_path = root / "kas" / "repos.yml"
    _refuse_outside(root, repos_path, shown(repos_path))
    repos_doc = load_yaml(repos_path, display=shown(repos_path))
    docs[repos_path] = repos_doc
    repos = validate(repos_doc, ReposFile)
    recipe_files = catalogue_files(root, "recipes", shown)
    catalog = Catalog(root, boards, options, distros, repos, recipe_files, docs, files)
    catalog.testplans = load_kind("testplans", TestPlanFile)
    check_catalog(catalog)
    return catalog


YAML_SUFFIXES = (".yml", ".yaml")


def catalogue_files(root: Path, folder: str, shown: Callable[[Path], str]) -> dict[str, Path]:
    """name -> file of one catalogue folder. ``x.yml`` and ``x.yaml`` are one name: both present
    is refused, as is a name that is not a valid name or a file that leads outside the catalogue."""
    found: dict[str, Path] = {}
    where = root / folder
    if not where.is_dir():
        return found
    for path in sorted(p for p in where.iterdir() if p.suffix in YAML_SUFFIXES):
        if not path.is_file():
            continue
        _refuse_outside(root, path, shown(path))
        if not is_name(path.stem):
            raise ConfigError(
                shown(path),
                None,
                f"file name '{path.stem}' is not a valid name",
                hint="use lower-case letters and digits joined by single '.', '+' or '-'",
            )
        if path.stem in found:
            raise ConfigError(
                shown(path),
                None,
                f"'{path.stem}' is defined here and in {shown(found[path.stem])}",
                hint="keep one of the two files",
            )
        found[path.stem] = path
    return found


def _refuse_outside(root: Path, path: Path, shown: str) -> None:
    """A catalogue file (or a symlink on its way) must not lead out of the catalogue folder."""
    real, top = Path(os.path.realpath(path)), Path(os.path.realpath(root))
    if not real.is_relative_to(top):
        raise ConfigError(shown, None, f"leads outside the catalogue folder (to {real})", hint="copy the file in")


def _doc(catalog: Catalog, folder: str, name: str) -> YamlDoc:
    return catalog.docs[catalog.files[(folder, name)]]


def check_catalog(catalog: Catalog) -> None:
    """Cross-file checks: every name a file uses must exist, every local kas fragment too, no
    implies cycle, and no two jobs with one id."""
    for name in catalog.options:
        if name in ORDER_KEYWORDS:
            raise _doc(catalog, "options", name).error(
                (), f"'{name}' cannot name an option: it is a keyword of a distro's order", "choose another name"
            )

    for name, board in catalog.boards.items():  # a catalogue without testplans/ tests nothing
        for number, plan in enumerate(board.test.plans if catalog.testplans else ()):
            if plan not in catalog.testplans:
                raise _doc(catalog, "boards", name).error(
                    ("test", "plans", number), f"unknown test plan '{plan}'", suggest(plan, catalog.testplans)
                )
            if catalog.testplans[plan].update is not None and board.test.boot_method == "u-boot":
                raise _doc(catalog, "boards", name).error(
                    ("test", "plans", number),
                    f"plan {plan} boots the updated disk again, and a u-boot board boots its kernel over TFTP",
                    "update plans are for boards that boot their disk (qemu, minimal)",
                )
    for name, testplan in catalog.testplans.items():
        for key in ("when", "unless"):
            for number, option in enumerate(getattr(testplan, key)):
                if option not in catalog.options:
                    raise _doc(catalog, "testplans", name).error(
                        (key, number), f"unknown option '{option}'", suggest(option, catalog.options)
                    )
        if testplan.update is not None:
            _check_update(catalog, name, testplan.update)

    for name, distro in catalog.distros.items():
        doc = _doc(catalog, "distros", name)
        _check_repos(catalog, doc, ("repos",), distro.repos)
        if distro.default_release not in distro.releases:
            raise doc.error(
                ("default_release",),
                f"default_release '{distro.default_release}' is not a release",
                suggest(distro.default_release, distro.releases),
            )
        for rel_name, release in distro.releases.items():
            if release.default_kernel is not None and release.default_kernel not in distro.kernels:
                raise doc.error(
                    ("releases", rel_name, "default_kernel"),
                    f"kernel '{release.default_kernel}' is not in 'kernels'",
                    suggest(release.default_kernel, distro.kernels),
                )
        _check_fragments(catalog, doc, ("base",), distro.base, distro.repos)
        for rel_name, release in distro.releases.items():
            _check_fragments(catalog, doc, ("releases", rel_name, "kas"), release.kas, distro.repos)
        for ver, kernel in distro.kernels.items():
            _check_fragments(catalog, doc, ("kernels", ver, "kas"), kernel.kas, distro.repos)
        own_options = [o for o, f in catalog.options.items() if name in f.distros]
        for fname, follow_up in distro.follow_ups.items():
            _check_fragments(catalog, doc, ("follow_ups", fname, "kas"), follow_up.kas, distro.repos)
            for i, kind in enumerate(follow_up.previous):
                if kind in DISK_TYPES:  # `build --sign --compress` replaces them before the second build
                    raise doc.error(
                        ("follow_ups", fname, "previous", i),
                        f"a second build cannot read a {kind}: --compress replaces it with its compressed file",
                        "read the root file system's own artifact (squashfs, verity) or another file",
                    )
            for i, option in enumerate(follow_up.requires):
                if option not in own_options:
                    raise doc.error(
                        ("follow_ups", fname, "requires", i),
                        f"'{option}' is not an option of {name}",
                        suggest(option, own_options),
                    )
        known_order = {"board", "release", "kernel"} | {o for o, f in catalog.options.items() if name in f.distros}
        # a distro that builds its distribution's own kernel has no kernel fragments to place
        needed = known_order if distro.kernels else known_order - {"kernel"}
        for i, entry in enumerate(distro.order):
            if entry not in known_order:
                raise doc.error(
                    ("order", i),
                    f"'{entry}' in order is neither board/release/kernel nor an option of {name}",
                    suggest(entry, known_order),
                )
        for i, entry in enumerate(distro.order):
            if entry in distro.order[:i]:
                raise doc.error(
                    ("order", i), f"'{entry}' appears twice in order", "list every option of the distro once"
                )
        missing = sorted(needed - set(distro.order))
        if missing:
            raise doc.error(
                ("order",), f"order does not place {', '.join(missing)}", "list every option of the distro once"
            )
        seen: set[str] = set()
        for i, rule in enumerate(distro.rules):
            if rule.id in seen:
                raise doc.error(("rules", i, "id"), f"duplicate rule id '{rule.id}'", "rule ids are unique")
            seen.add(rule.id)
            _check_condition(catalog, doc, ("rules", i, "when"), rule.when, name)

    for name, board in catalog.boards.items():
        doc = _doc(catalog, "boards", name)
        for dname, bdistro in board.distros.items():
            _check_port(catalog, doc, dname, bdistro.repos, bdistro.kas)

    for name, option in catalog.options.items():
        doc = _doc(catalog, "options", name)
        for dname, odistro in option.distros.items():
            _check_port(catalog, doc, dname, odistro.repos, odistro.kas)
            own = [o for o, f in catalog.options.items() if dname in f.distros]
            for key in ("implies", "requires", "conflicts"):
                for i, other in enumerate(getattr(odistro, key)):
                    if other not in own:
                        raise doc.error(
                            ("distros", dname, key, i), f"'{other}' is not an option of {dname}", suggest(other, own)
                        )
    _check_implies_cycles(catalog)
    _check_job_ids(catalog)
    _check_kas_fragments(catalog)


def local_fragments(catalog: Catalog) -> list[str]:
    """Every fragment of the catalogue's own kas/ folder that some job includes, once each."""
    refs: list[KasRef | str] = []
    for distro in catalog.distros.values():
        refs += distro.base
        refs += [frag for release in distro.releases.values() for frag in release.kas]
        refs += [frag for kernel in distro.kernels.values() for frag in kernel.kas]
        refs += [frag for follow_up in distro.follow_ups.values() for frag in follow_up.kas]
    for board in catalog.boards.values():
        refs += [frag for port in board.distros.values() for frag in port.kas]
    for option in catalog.options.values():
        refs += [frag for port in option.distros.values() for frag in port.kas]
    return list(dict.fromkeys(frag for frag in refs if isinstance(frag, str)))


def _check_kas_fragments(catalog: Catalog) -> None:
    """Each local fragment against kas's own schema, so a typo (``local_conf_heder``) is found
    here with its file and line rather than by kas inside the build container."""
    from .kasfile import kas_problem
    from .yamlfile import load_yaml

    for frag in local_fragments(catalog):
        path = catalog.root / frag
        doc = load_yaml(path, display=catalog._shown(path))
        if not isinstance(doc.data, dict):
            raise doc.error((), "a kas fragment must be a mapping")
        header = doc.data.get("header")
        if isinstance(header, dict) and header.get("includes"):
            raise doc.error(
                ("header", "includes"),
                "cipbuild's own fragments cannot include other files",
                "list the included files in the catalogue instead",
            )
        problem = kas_problem(doc.data, fragment=True)
        if problem is not None:
            raise doc.error(problem.loc, problem.message, problem.hint)


def used_repos(catalog: Catalog) -> list[str]:
    """The pinned repositories some job of the catalogue checks out."""
    names = [name for distro in catalog.distros.values() for name in distro.repos]
    names += [name for board in catalog.boards.values() for port in board.distros.values() for name in port.repos]
    names += [name for opt in catalog.options.values() for port in opt.distros.values() for name in port.repos]
    return [name for name in catalog.repos.repos if name in set(names)]


def file_url_path(url: str) -> Path | None:
    """The folder a ``file://`` URL names (absolute, as written: symlinks are kept), else None."""
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(url)
    if parts.scheme != "file":
        return None
    return Path(os.path.normpath(unquote(parts.path) or "/"))


def local_repo_paths(catalog: Catalog) -> tuple[Path, ...]:
    """The folders of the ``file://`` repositories the catalogue's jobs use, in pin order: a build
    container needs each of them, read-only, at this same path."""
    paths = (file_url_path(catalog.repos.repos[name].url) for name in used_repos(catalog))
    return tuple(dict.fromkeys(p for p in paths if p is not None))


MIRROR_HINT = "or pin the upstream URL and give a folder of local clones to `cipbuild build --mirror DIR`"


def check_local_repos(catalog: Catalog) -> None:
    """A ``file://`` repository must be a git repository on this machine (bare or not): kas clones
    it inside the build container, which fails far later and less clearly."""
    from urllib.parse import urlsplit

    for name in used_repos(catalog):
        url = catalog.repos.repos[name].url
        path = file_url_path(url)
        if path is None:
            continue
        host = urlsplit(url).netloc
        try:
            problem, hint = _local_repo_problem(path, host)
        except (OSError, ValueError) as exc:  # a NUL byte, a path too long, no permission
            problem = f"{str(path)!r} cannot be read: {getattr(exc, 'strerror', None) or exc}"
            hint = f"name a readable folder, {MIRROR_HINT}"
        if problem:
            raise _repos_doc(catalog).error(("repos", name, "url"), f"repository '{name}': {problem}", hint)


def _local_repo_problem(path: Path, host: str) -> tuple[str, str] | tuple[None, None]:
    """What is wrong with a file:// repository at ``path`` and what would be right; (None, None)
    when it is a git repository."""
    if host not in ("", "localhost"):
        return (
            f"names the host '{host}'; a file:// URL names a folder on this machine",
            f"write file:///absolute/path, {MIRROR_HINT}",
        )
    if not path.exists():
        return f"{path} does not exist", f"clone the repository there, {MIRROR_HINT}"
    if not path.is_dir():
        return f"{path} is not a folder", f"point it at a git repository, {MIRROR_HINT}"
    if (path / ".git").is_file():
        return (
            f"{path} is a git worktree or submodule whose repository lies elsewhere (.git is a file)",
            f"point the URL at the repository itself, {MIRROR_HINT}",
        )
    if not (path / ".git").is_dir() and not _bare_repository(path):
        return (
            f"{path} is not a git repository (no .git folder, and not a bare repository)",
            f"clone the repository there, {MIRROR_HINT}",
        )
    return None, None


def _bare_repository(path: Path) -> bool:
    return (path / "HEAD").is_file() and (path / "objects").is_dir() and (path / "refs").is_dir()


def _repos_doc(catalog: Catalog) -> YamlDoc:
    """kas/repos.yml as parsed (read again when the catalogue came from the cache)."""
    from .yamlfile import load_yaml

    path = catalog.root / "kas" / "repos.yml"
    return catalog.docs.get(path) or load_yaml(path, display=catalog._shown(path))


def _check_port(catalog: Catalog, doc: YamlDoc, distro: str, repos: list[str], kas: list[KasRef | str]) -> None:
    """A board's or an option's entry for one distro: a known distro, pinned repos, real kas files."""
    if distro not in catalog.distros:
        raise doc.error(("distros", distro), f"unknown distro '{distro}'", suggest(distro, catalog.distros))
    _check_repos(catalog, doc, ("distros", distro, "repos"), repos)
    _check_fragments(catalog, doc, ("distros", distro, "kas"), kas, catalog.distros[distro].repos + repos)


ORDER_KEYWORDS = ("board", "release", "kernel")


def _check_implies_cycles(catalog: Catalog) -> None:
    """An option that implies itself through others would make 'implies' order-dependent."""
    for dname in catalog.distros:
        graph = {o: catalog.options[o].distros[dname].implies for o in catalog.options_of(dname)}
        cycle = _find_cycle(graph)
        if cycle:
            doc = _doc(catalog, "options", cycle[0])
            index = graph[cycle[0]].index(cycle[1])
            raise doc.error(
                ("distros", dname, "implies", index),
                f"implies cycle in {dname}: {' -> '.join([*cycle, cycle[0]])}",
                "an option cannot imply itself through others; drop one of these implies",
            )


def _find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """One cycle of a directed graph (iterative depth-first search, linear in its size)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root, first in graph.items():
        if root in state:
            continue
        path: list[str] = [root]
        state[root] = 1
        stack = [iter(first)]
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt) :]
            elif nxt not in state and nxt in graph:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(graph[nxt]))
    return None


def _check_job_ids(catalog: Catalog) -> None:
    """Refuse a catalogue in which two different jobs would get one id (and one out folder)."""
    from .jobids import describe, find_collision, grammars_of

    found = find_collision(grammars_of(catalog))
    if found is None:
        return

    def files_of(tokens: tuple[tuple[str, str], ...], other: tuple[tuple[str, str], ...]) -> list[str]:
        distro = tokens[0][1]  # an id starts with its distro
        out = []
        for what, name in tokens:
            if (what, name) not in other:
                folder = {"board": "boards", "option": "options"}.get(what, "distros")
                out.append(catalog._shown(catalog.files[(folder, distro if folder == "distros" else name)]))
        return out

    files = list(dict.fromkeys(files_of(found.first, found.second) + files_of(found.second, found.first)))
    raise ConfigError(
        files[-1],
        None,
        f"job id '{found.job_id}' would name two different jobs: {describe(found.first)}; and "
        f"{describe(found.second)} (see {' and '.join(files)})",
        hint="rename one of them so that no id can be read two ways",
    )


def _check_update(catalog: Catalog, plan: str, update: UpdateStage) -> None:
    """An update plan installs a second build some distro defines, fetched from {url}."""
    follow_ups = {f for d in catalog.distros.values() for f in d.follow_ups}
    if update.follow_up not in follow_ups:
        raise _doc(catalog, "testplans", plan).error(
            ("update", "follow_up"),
            f"no distro has a second build '{update.follow_up}'",
            suggest(update.follow_up, follow_ups) if follow_ups else "a distro file's follow_ups defines them",
        )
    if not any("{url}" in step for step in update.install):
        raise _doc(catalog, "testplans", plan).error(
            ("update", "install"),
            "no step names {url}: the device would not know where the update is",
            'e.g. swupdate -d "-u {url}"',
        )


def _check_repos(catalog: Catalog, doc: YamlDoc, loc: tuple[str | int, ...], repos: list[str]) -> None:
    for i, repo in enumerate(repos):
        if repo not in catalog.repos.repos:
            raise doc.error(
                (*loc, i), f"repository '{repo}' is not pinned in kas/repos.yml", suggest(repo, catalog.repos.repos)
            )


def _check_fragments(
    catalog: Catalog, doc: YamlDoc, loc: tuple[str | int, ...], fragments: Iterable[KasRef | str], repos: list[str]
) -> None:
    for i, frag in enumerate(fragments):
        if isinstance(frag, KasRef):
            if frag.repo not in repos:
                raise doc.error(
                    (*loc, i, "repo"),
                    f"repository '{frag.repo}' is not one this distro uses",
                    f"one of: {', '.join(repos)}",
                )
        elif not frag.startswith("kas/") or ".." in Path(frag).parts:
            raise doc.error((*loc, i), f"local kas fragment '{frag}' must be a path under kas/")
        elif not (catalog.root / frag).is_file():
            raise doc.error(
                (*loc, i),
                f"kas fragment '{frag}' does not exist in {catalog.root}",
                suggest(frag, [str(p.relative_to(catalog.root)) for p in (catalog.root / "kas").rglob("*.yml")]),
            )
        elif not Path(os.path.realpath(catalog.root / frag)).is_relative_to(os.path.realpath(catalog.root)):
            raise doc.error(
                (*loc, i),
                f"kas fragment '{frag}' leads outside the catalogue folder",
                "copy the file into kas/ instead of linking to it",
            )


def _check_condition(
    catalog: Catalog, doc: YamlDoc, loc: tuple[str | int, ...], cond: Condition, distro: str | None
) -> None:
    """Names in a rule or an exclude must exist, so a typo cannot silently match nothing."""
    distros = [distro] if distro else list(catalog.distros)
    known: dict[str, set[str]] = {
        "board": set(catalog.boards),
        "arch": {b.arch for b in catalog.boards.values()},
        "release": {r for d in distros for r in catalog.distros[d].releases},
        "kernel": {k for d in distros for k in catalog.distros[d].kernels},
    }
    for key, names in known.items():
        sel = getattr(cond, key)
        if sel is None:
            continue
        for sub in ("any_of", "none_of"):
            for value in getattr(sel, sub) or []:
                if value not in names:
                    raise doc.error((*loc, key), f"unknown {key} '{value}'", suggest(value, names))
    options = {o for d in distros for o in catalog.options_of(d)}
    for key in ("options", "options_any"):
        for value in getattr(cond, key) or []:
            if value not in options:
                raise doc.error((*loc, key), f"unknown option '{value}'", suggest(value, options))


def check_recipe(catalog: Catalog, doc: YamlDoc, recipe: RecipeFile) -> None:
    """Every name a recipe uses must exist in the catalogue."""

    def check(loc: tuple[str | int, ...], kind: str, names: Iterable[str], known: Iterable[str]) -> None:
        known = list(known)
        for i, value in enumerate(names):
            if value != "default" and value not in known:
                raise doc.error((*loc, i), f"unknown {kind} '{value}'", suggest(value, known))

    all_releases = {r for d in catalog.distros.values() for r in d.releases}
    all_kernels = {k for d in catalog.distros.values() for k in d.kernels}
    defaults = recipe.defaults
    if defaults.distro is not None and defaults.distro not in catalog.distros:
        raise doc.error(
            ("defaults", "distro"), f"unknown distro '{defaults.distro}'", suggest(defaults.distro, catalog.distros)
        )
    used = {defaults.distro or catalog.default_distro}
    used.update(d for m in recipe.matrix for d in m.distro or [])
    used.update(spec.distro for spec in recipe.include if spec.distro)
    used_releases = {r for d in used if d in catalog.distros for r in catalog.distros[d].releases}
    if defaults.release is not None and defaults.release not in used_releases:
        raise doc.error(
            ("defaults", "release"),
            f"unknown release '{defaults.release}' (the recipe's distros {', '.join(sorted(used))} have "
            f"{', '.join(sorted(used_releases))})",
            suggest(defaults.release, used_releases),
        )
    if defaults.kernel != "default" and defaults.kernel not in all_kernels:
        raise doc.error(
            ("defaults", "kernel"), f"unknown kernel '{defaults.kernel}'", suggest(defaults.kernel, all_kernels)
        )
    single = isinstance(doc.data, dict) and isinstance(doc.data.get("matrix"), dict)
    for n, m in enumerate(recipe.matrix):
        at: tuple[str | int, ...] = ("matrix",) if single else ("matrix", n)
        check((*at, "distro"), "distro", m.distro or [], catalog.distros)
        check((*at, "board"), "board", m.board or [], catalog.boards)
        check((*at, "release"), "release", m.release or [], all_releases)
        check((*at, "kernel"), "kernel", m.kernel or [], all_kernels)
        for i, opts in enumerate(m.options or []):
            check((*at, "options", i), "option", opts, catalog.options)
    for i, spec in enumerate(recipe.include):
        if spec.board is None:
            raise doc.error(("include", i), "an include entry needs a board", "add board: <name>")
        for key, known in (
            ("distro", catalog.distros),
            ("board", catalog.boards),
            ("release", all_releases),
            ("kernel", all_kernels),
        ):
            value = getattr(spec, key)
            if value is not None:
                check(("include", i), key, [value], known)
        check(("include", i, "options"), "option", spec.options, catalog.options)
    for i, exc in enumerate(recipe.exclude):
        check(("exclude", i, "distro"), "distro", exc.distro or [], catalog.distros)
        _check_condition(catalog, doc, ("exclude", i), exc, None)
    rule_ids = {r.id for d in catalog.distros.values() for r in d.rules} | derived_rule_ids(catalog)
    for i, waiver in enumerate(recipe.waive):
        if waiver.rule not in rule_ids:
            raise doc.error(("waive", i, "rule"), f"unknown rule '{waiver.rule}'", suggest(waiver.rule, rule_ids))
    follow_ups = {f for d in catalog.distros.values() for f in d.follow_ups}
    for i, choice in enumerate(recipe.follow_ups):
        if choice.name not in follow_ups:
            raise doc.error(
                ("follow_ups", i, "name"),
                f"unknown follow-up '{choice.name}'",
                suggest(choice.name, follow_ups) if follow_ups else "a distro file's follow_ups defines them",
            )


def derived_rule_ids(catalog: Catalog) -> set[str]:
    """Rule ids that come from option requires/conflicts rather than a distro's rules list."""
    from .rules import conflicts_rule, requires_rule

    ids: set[str] = set()
    for name, option in catalog.options.items():
        for odistro in option.distros.values():
            ids.update(requires_rule(name, o) for o in odistro.requires)
            ids.update(conflicts_rule(name, o) for o in odistro.conflicts)
    return ids
