"""Expand a recipe (or the whole catalogue) into Jobs, and say why every other combination is out.

Pure functions over the catalogue. Option sets are bit masks so that the full catalogue
(every board x distro x release x kernel x option subset) expands in well under a second.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from .catalog import Catalog, suggest
from .errors import UserError
from .models import Condition, RecipeFile, Selector

# Exclusions that come from the catalogue's shape rather than from a rule file.
NO_BOARD = "board-not-in-distro"
NO_RELEASE = "release-not-in-distro"
NO_KERNEL = "kernel-not-in-distro"
NO_OPTION = "option-not-in-distro"
SHAPE = {NO_BOARD, NO_RELEASE, NO_KERNEL, NO_OPTION}
RECIPE_EXCLUDE = "recipe-exclude"


@dataclass(frozen=True, slots=True)
class Job:
    """One build: its id is stable and is its folder name everywhere."""

    distro: str
    release: str
    board: str
    kernel: str
    options: tuple[str, ...] = ()
    kernel_is_default: bool = True
    waived: tuple[tuple[str, str], ...] = ()  # (rule id, reason)

    @property
    def id(self) -> str:
        parts = [self.distro, self.release, self.board]
        if not self.kernel_is_default:
            parts.append(f"k{self.kernel}")
        parts.extend(self.options)
        return "-".join(parts)


@dataclass(frozen=True, slots=True)
class Excluded:
    """A combination that will not be built, and the ids of the rules that excluded it."""

    job: Job
    rules: tuple[str, ...]


@dataclass(frozen=True)
class Selection:
    """What the command line narrows a plan to; empty tuples select everything."""

    distros: tuple[str, ...] = ()
    boards: tuple[str, ...] = ()
    releases: tuple[str, ...] = ()
    kernels: tuple[str, ...] = ()
    options: tuple[str, ...] = ()
    job_ids: tuple[str, ...] = ()

    def is_empty(self) -> bool:
        return not (self.distros or self.boards or self.releases or self.kernels or self.options or self.job_ids)

    def describe(self) -> str:
        flags = [
            ("--distro", self.distros),
            ("--board", self.boards),
            ("--release", self.releases),
            ("--kernel", self.kernels),
            ("--option", self.options),
            ("job", self.job_ids),
        ]
        return " ".join(f"{flag} {v}" for flag, values in flags for v in values)


@dataclass(frozen=True)
class _Block:
    """The excluded option sets of one (distro, release, board, kernel), shared verdict table."""

    distro: str
    release: str
    board: str
    kernel: str
    table: _Table


@dataclass(frozen=True)
class _Table:
    """Verdicts of every option set under one set of active rules, computed once."""

    accepted: tuple[int, ...]
    excluded: tuple[tuple[int, tuple[str, ...]], ...]
    counts: dict[str, int]


@dataclass
class Plan:
    """The jobs to build, in order, and the combinations left out."""

    source: str
    jobs: list[Job]
    candidates: int
    _excluded: list[Excluded] = field(default_factory=list)
    _blocks: list[_Block] = field(default_factory=list)
    _expander: Expander | None = None

    @cached_property
    def excluded(self) -> list[Excluded]:
        return list(self.iter_excluded())

    def excluded_count(self) -> int:
        return len(self._excluded) + sum(len(b.table.excluded) for b in self._blocks)

    def iter_excluded(self) -> Iterator[Excluded]:
        """Like ``excluded`` but builds records one at a time (the full catalogue has ~10^5)."""
        yield from self._excluded
        if self._expander:
            make = self._expander.job_of
            for b in self._blocks:
                for mask, rules in b.table.excluded:
                    yield Excluded(make(b.distro, b.release, b.board, b.kernel, mask), rules)

    def examples(self) -> dict[str, str]:
        """One excluded job id per rule."""
        want = set(self.rule_counts())
        found: dict[str, str] = {}
        for exc in self.iter_excluded():
            for rule in exc.rules:
                found.setdefault(rule, exc.job.id)
            if len(found) == len(want):
                break
        return found

    def rule_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for exc in self._excluded:
            for rule in exc.rules:
                counts[rule] = counts.get(rule, 0) + 1
        for b in self._blocks:
            for rule, n in b.table.counts.items():
                counts[rule] = counts.get(rule, 0) + n
        return counts


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


def _selects(sel: Selector | None, value: str, *, version: bool = False) -> bool:
    if sel is None:
        return True
    if sel.any_of is not None and value not in sel.any_of:
        return False
    if sel.none_of is not None and value in sel.none_of:
        return False
    if version and (sel.below is not None or sel.at_least is not None):
        v = _version(value)
        if sel.below is not None and not v < _version(sel.below):
            return False
        if sel.at_least is not None and not v >= _version(sel.at_least):
            return False
    return True


@dataclass(frozen=True)
class _Rule:
    id: str
    when: Condition
    all_mask: int
    any_mask: int

    def matches_base(self, board: str, arch: str, release: str, kernel: str) -> bool:
        w = self.when
        return (
            _selects(w.board, board)
            and _selects(w.arch, arch)
            and _selects(w.release, release)
            and _selects(w.kernel, kernel, version=True)
        )

    def matches_options(self, closure: int) -> bool:
        return closure & self.all_mask == self.all_mask and (not self.any_mask or bool(closure & self.any_mask))


class _DistroIndex:
    """A distro's options as bits, with implied closures and compiled rules."""

    def __init__(self, catalog: Catalog, name: str):
        self.name = name
        self.distro = catalog.distros[name]
        self.options = catalog.options_of(name)
        self.bit = {o: 1 << i for i, o in enumerate(self.options)}
        self._names: dict[int, tuple[str, ...]] = {}
        self._closure: dict[int, int] = {}
        spec = {o: catalog.options[o].distros[name] for o in self.options}
        direct = {o: self.mask(spec[o].implies) for o in self.options}
        self.closure_one: dict[str, int] = {}
        for o in self.options:
            seen, todo = self.bit[o], direct[o]
            while todo & ~seen:
                seen |= todo
                todo = 0
                for other in self.names(seen):
                    todo |= direct[other]
            self.closure_one[o] = seen
        self.requires = {o: self.mask(spec[o].requires) for o in self.options}
        self.conflicts = {o: self.mask(spec[o].conflicts) for o in self.options}
        self.rules = [
            _Rule(r.id, r.when, self.mask(r.when.options or []), self.mask(r.when.options_any or []))
            for r in self.distro.rules
        ]
        self._verdicts: dict[tuple[tuple[int, ...], int], tuple[str, ...]] = {}

    def mask(self, names: Iterable[str]) -> int:
        m = 0
        for n in names:
            m |= self.bit[n]
        return m

    def names(self, mask: int) -> tuple[str, ...]:
        found = self._names.get(mask)
        if found is None:
            found = self._names[mask] = tuple(o for o in self.options if mask & self.bit[o])
        return found

    def closure(self, mask: int) -> int:
        found = self._closure.get(mask)
        if found is None:
            found = 0
            for o in self.names(mask):
                found |= self.closure_one[o]
            self._closure[mask] = found
        return found

    def canonical(self, mask: int) -> int:
        """Drop options another selected option already implies (security+swupdate == security)."""
        implied = 0
        for o in self.names(mask):
            implied |= self.closure_one[o] & ~self.bit[o]
        return mask & ~implied

    def active_rules(self, board: str, arch: str, release: str, kernel: str) -> tuple[int, ...]:
        return tuple(i for i, r in enumerate(self.rules) if r.matches_base(board, arch, release, kernel))

    def verdict(self, active: tuple[int, ...], mask: int) -> tuple[str, ...]:
        """Ids of every rule that excludes this option set, given the rules active for its base."""
        key = (active, mask)
        found = self._verdicts.get(key)
        if found is not None:
            return found
        closure = self.closure(mask)
        reasons: list[str] = []
        for o in self.names(closure):
            missing = self.requires[o] & ~closure
            if missing:
                reasons.extend(f"{o}-requires-{r}" for r in self.names(missing))
        for o in self.names(closure):
            clash = self.conflicts[o] & closure
            if clash:
                reasons.extend(f"{o}-conflicts-{c}" for c in self.names(clash))
        reasons.extend(self.rules[i].id for i in active if self.rules[i].matches_options(closure))
        found = self._verdicts[key] = tuple(reasons)
        return found


class Expander:
    """Turns candidates into Jobs and Exclusions for one catalogue."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self.index = {name: _DistroIndex(catalog, name) for name in catalog.distros}

    def job_of(
        self, distro: str, release: str, board: str, kernel: str, mask: int, waived: tuple[tuple[str, str], ...] = ()
    ) -> Job:
        ix = self.index[distro]
        default = ix.distro.releases[release].default_kernel if release in ix.distro.releases else kernel
        return Job(distro, release, board, kernel, ix.names(mask), kernel == default, waived)

    def closure_names(self, job: Job) -> tuple[str, ...]:
        """The job's options with everything they imply."""
        ix = self.index[job.distro]
        return ix.names(ix.closure(ix.mask(job.options)))

    def expand_all(self) -> Plan:
        """Every board x distro x release x kernel x option subset of the catalogue."""
        jobs: list[Job] = []
        blocks: list[_Block] = []
        candidates = 0
        for dname, ix in self.index.items():
            masks = [m for m in range(1 << len(ix.options)) if ix.canonical(m) == m]
            boards = [(b, f.arch) for b, f in sorted(self.catalog.boards.items()) if dname in f.distros]
            tables: dict[tuple[int, ...], _Table] = {}
            for release, rel in ix.distro.releases.items():
                for kernel in ix.distro.kernels:
                    is_default = kernel == rel.default_kernel
                    for board, arch in boards:
                        active = ix.active_rules(board, arch, release, kernel)
                        table = tables.get(active)
                        if table is None:
                            table = tables[active] = self._table(ix, active, masks)
                        candidates += len(masks)
                        names = ix.names
                        jobs.extend(Job(dname, release, board, kernel, names(m), is_default) for m in table.accepted)
                        if table.excluded:
                            blocks.append(_Block(dname, release, board, kernel, table))
        return Plan("the whole catalogue", jobs, candidates, _blocks=blocks, _expander=self)

    @staticmethod
    def _table(ix: _DistroIndex, active: tuple[int, ...], masks: list[int]) -> _Table:
        accepted: list[int] = []
        excluded: list[tuple[int, tuple[str, ...]]] = []
        counts: dict[str, int] = {}
        for mask in masks:
            reasons = ix.verdict(active, mask)
            if reasons:
                excluded.append((mask, reasons))
                for r in reasons:
                    counts[r] = counts.get(r, 0) + 1
            else:
                accepted.append(mask)
        return _Table(tuple(accepted), tuple(excluded), counts)

    def expand_recipe(self, name: str) -> Plan:
        recipe = self.catalog.recipe(name)
        plan = self.expand_specs(f"recipe {name}", self._recipe_candidates(recipe), recipe)
        where = str(self.catalog.recipe_files[name])
        used = {(w, j.id) for j in [*plan.jobs, *(e.job for e in plan.excluded)] for w, _ in j.waived}
        for i, waiver in enumerate(recipe.waive):
            for job_id in waiver.jobs:
                if (waiver.rule, job_id) not in used:
                    raise UserError(
                        f"waive[{i}]: rule '{waiver.rule}' does not exclude a job '{job_id}' of this recipe",
                        where=where,
                        hint="remove the stale waiver or fix the job id",
                    )
        if not plan.jobs:
            raise UserError(f"recipe '{name}' expands to no job", where=where, hint=_why_empty(plan))
        return plan

    def _recipe_candidates(self, recipe: RecipeFile) -> Iterator[tuple[str, str, str, str, tuple[str, ...]]]:
        d = recipe.defaults
        default_distro = d.distro or self.catalog.default_distro
        for m in recipe.matrix:
            distros = m.distro or [default_distro]
            for distro in distros:
                dfile = self.catalog.distros[distro]
                releases = m.release or [d.release or dfile.default_release]
                boards = m.board or sorted(b for b, f in self.catalog.boards.items() if distro in f.distros)
                kernels = m.kernel or [d.kernel]
                for release, board, kernel, opts in itertools.product(releases, boards, kernels, m.options or [[]]):
                    yield distro, release, board, kernel, tuple(opts)
        for spec in recipe.include:
            distro = spec.distro or default_distro
            dfile = self.catalog.distros[distro]
            release = spec.release or d.release or dfile.default_release
            if spec.board is None:
                continue  # check_recipe refuses it with file and line
            yield distro, release, spec.board, spec.kernel or d.kernel, tuple(spec.options)

    def expand_specs(
        self, source: str, specs: Iterable[tuple[str, str, str, str, Sequence[str]]], recipe: RecipeFile | None = None
    ) -> Plan:
        """Candidates given field by field (kernel may be 'default') -> Plan, duplicates collapsed."""
        jobs: dict[str, Job] = {}
        excluded: dict[str, Excluded] = {}
        candidates = 0
        waivers = {(w.rule, j): w.reason for w in (recipe.waive if recipe else []) for j in w.jobs}
        for distro, release, board, kernel, options in specs:
            candidates += 1
            job, reasons = self._judge(distro, release, board, kernel, options)
            if reasons and waivers:
                job, reasons = _apply_waivers(job, reasons, waivers)
            if recipe and not set(reasons) & SHAPE:
                for i, exc in enumerate(recipe.exclude):
                    if self._excludes(exc, job, exc.distro):
                        reasons = (*reasons, f"{RECIPE_EXCLUDE}[{i}]")
                        break
            if reasons:
                excluded.setdefault(job.id, Excluded(job, reasons))
            else:
                jobs.setdefault(job.id, job)
        for job_id in jobs:
            excluded.pop(job_id, None)
        return Plan(source, list(jobs.values()), candidates, list(excluded.values()), _expander=self)

    def _judge(
        self, distro: str, release: str, board: str, kernel: str, options: Sequence[str]
    ) -> tuple[Job, tuple[str, ...]]:
        ix = self.index[distro]
        dfile = ix.distro
        bfile = self.catalog.boards[board]
        rel = dfile.releases.get(release)
        if kernel == "default":
            kernel = rel.default_kernel if rel else "default"
        unknown_opts = [o for o in options if o not in ix.bit]
        mask = ix.canonical(ix.mask(o for o in options if o in ix.bit))
        names = ix.names(mask) + tuple(unknown_opts)
        job = Job(
            distro,
            release,
            board,
            kernel,
            names,
            kernel == "default" or (rel is not None and kernel == rel.default_kernel),
        )
        shape: list[str] = []
        if distro not in bfile.distros:
            shape.append(NO_BOARD)
        if rel is None:
            shape.append(NO_RELEASE)
        if kernel != "default" and kernel not in dfile.kernels:
            shape.append(NO_KERNEL)
        if unknown_opts:
            shape.append(NO_OPTION)
        if shape:
            return job, tuple(shape)
        active = ix.active_rules(board, bfile.arch, release, kernel)
        return job, ix.verdict(active, mask)

    def _excludes(self, cond: Condition, job: Job, distros: list[str] | None) -> bool:
        if distros is not None and job.distro not in distros:
            return False
        arch = self.catalog.boards[job.board].arch
        if not (
            _selects(cond.board, job.board)
            and _selects(cond.arch, arch)
            and _selects(cond.release, job.release)
            and _selects(cond.kernel, job.kernel, version=True)
        ):
            return False
        have = set(self.closure_names(job))
        if cond.options and not set(cond.options) <= have:
            return False
        return not (cond.options_any and not set(cond.options_any) & have)


def _apply_waivers(
    job: Job, reasons: tuple[str, ...], waivers: dict[tuple[str, str], str]
) -> tuple[Job, tuple[str, ...]]:
    """Drop the reasons a waiver names for this job, and record the waivers on it."""
    applied = tuple((r, waivers[(r, job.id)]) for r in reasons if (r, job.id) in waivers)
    if not applied:
        return job, reasons
    kept = tuple(r for r in reasons if (r, job.id) not in waivers)
    return dataclasses.replace(job, waived=applied), kept


def rule_summaries(catalog: Catalog) -> dict[str, str]:
    """Rule id -> one-line reason, for every rule an Excluded may name."""
    out = {
        NO_BOARD: "the board has no port to this distro",
        NO_RELEASE: "the distro does not build this Debian release",
        NO_KERNEL: "the distro does not offer this kernel",
        NO_OPTION: "the distro does not implement this option",
    }
    for dname, distro in catalog.distros.items():
        for rule in distro.rules:
            out[rule.id] = rule.summary
        for o in catalog.options_of(dname):
            spec = catalog.options[o].distros[dname]
            for r in spec.requires:
                out[f"{o}-requires-{r}"] = f"option {o} needs option {r}"
            for c in spec.conflicts:
                out[f"{o}-conflicts-{c}"] = f"options {o} and {c} cannot be combined"
    return out


def summary_of(catalog: Catalog, rule: str) -> str:
    if rule.startswith(RECIPE_EXCLUDE):
        return "excluded by the recipe's exclude list"
    return rule_summaries(catalog).get(rule, rule)


def _why_empty(plan: Plan) -> str:
    counts = plan.rule_counts()
    if not counts:
        return "it has no candidates"
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:3]
    return "excluded by " + ", ".join(f"{r} ({n})" for r, n in top)


def select(plan: Plan, sel: Selection, catalog: Catalog) -> Plan:
    """Narrow a plan to what the command line asks for; an unknown name is a UserError."""
    validate_selection(sel, catalog)
    if sel.is_empty():
        return plan

    def keep(job: Job) -> bool:
        return (
            (not sel.distros or job.distro in sel.distros)
            and (not sel.boards or job.board in sel.boards)
            and (not sel.releases or job.release in sel.releases)
            and (not sel.kernels or job.kernel in sel.kernels)
            and (not sel.options or set(sel.options) <= has_options(job))
            and (not sel.job_ids or job.id in sel.job_ids)
        )

    expander = plan._expander or Expander(catalog)

    def has_options(job: Job) -> set[str]:
        try:
            return set(expander.closure_names(job))
        except KeyError:  # an option the distro lacks: only its own names
            return set(job.options)

    jobs = [j for j in plan.jobs if keep(j)]
    excluded = [e for e in plan.iter_excluded() if keep(e.job)]
    for job_id in sel.job_ids:
        if not any(j.id == job_id for j in jobs):
            hint = suggest(job_id, [j.id for j in plan.jobs])
            why = next((e for e in excluded if e.job.id == job_id), None)
            if why:
                raise UserError(
                    f"job '{job_id}' is excluded by {', '.join(why.rules)}: {summary_of(catalog, why.rules[0])}",
                    where="JOB_ID",
                )
            raise UserError(f"no job '{job_id}' in {plan.source}", where="JOB_ID", hint=hint)
    return Plan(plan.source, jobs, len(jobs) + len(excluded), excluded, _expander=plan._expander)


def validate_selection(sel: Selection, catalog: Catalog) -> None:
    releases = {r for d in catalog.distros.values() for r in d.releases}
    kernels = {k for d in catalog.distros.values() for k in d.kernels}
    for flag, values, known in (
        ("--distro", sel.distros, catalog.distros),
        ("--board", sel.boards, catalog.boards),
        ("--release", sel.releases, releases),
        ("--kernel", sel.kernels, kernels),
        ("--option", sel.options, catalog.options),
    ):
        for value in values:
            if value not in known:
                kind = flag.lstrip("-")
                raise UserError(f"unknown {kind} '{value}'", where=flag, hint=suggest(value, known))


def adhoc_specs(catalog: Catalog, sel: Selection) -> list[tuple[str, str, str, str, Sequence[str]]]:
    """Jobs named by flags alone: defaults fill what is not given (distro, its default release, kernel)."""
    validate_selection(sel, catalog)
    specs: list[tuple[str, str, str, str, Sequence[str]]] = []
    for distro in sel.distros or (catalog.default_distro,):
        dfile = catalog.distros[distro]
        boards = sel.boards or tuple(sorted(b for b, f in catalog.boards.items() if distro in f.distros))
        for release in sel.releases or (dfile.default_release,):
            for board in boards:
                for kernel in sel.kernels or ("default",):
                    specs.append((distro, release, board, kernel, sel.options))
    return specs


def make_plan(catalog: Catalog, *, recipe: str | None, everything: bool, sel: Selection) -> Plan:
    """The plan the CLI shows and builds: a recipe, the whole catalogue, or the jobs flags name."""
    expander = Expander(catalog)
    if everything:
        return select(expander.expand_all(), sel, catalog)
    if recipe:
        plan = select(expander.expand_recipe(recipe), sel, catalog)
        if not plan.jobs:
            raise UserError(
                f"no job of recipe '{recipe}' matches {sel.describe()}",
                where="--recipe",
                hint=f"see `cipbuild plan -r {recipe}`",
            )
        return plan
    if sel.job_ids:
        named = list({job.id: job for job in (resolve_job(catalog, i) for i in sel.job_ids)}.values())
        plan = select(
            Plan("the command line", named, len(named), _expander=expander),
            dataclasses.replace(sel, job_ids=()),
            catalog,
        )
        if not plan.jobs:
            raise UserError(f"none of the named jobs matches {sel.describe()}", where="JOB_ID")
        return plan
    plan = expander.expand_specs("the command line", adhoc_specs(catalog, sel))
    if not plan.jobs:
        first = plan.excluded[0] if plan.excluded else None
        if first:
            reasons = "; ".join(f"{r}: {summary_of(catalog, r)}" for r in first.rules)
            raise UserError(
                f"{first.job.id} cannot be built: {reasons}",
                where=sel.describe() or "plan",
                hint="see `cipbuild plan --all --explain` for what can be built",
            )
        raise UserError("nothing to plan", where=sel.describe() or "plan")
    return plan


def parse_job_id(catalog: Catalog, job_id: str) -> tuple[str, str, str, str, tuple[str, ...]]:
    """Split ``isar-bookworm-qemu-amd64-k5.10-security`` into distro, release, board, kernel, options."""

    def take(rest: str, names: Iterable[str]) -> tuple[str, str] | None:
        for name in sorted(names, key=len, reverse=True):
            if rest == name or rest.startswith(name + "-"):
                return name, rest[len(name) + 1 :]
        return None

    bad = UserError(
        f"'{job_id}' is not a job id",
        where="JOB_ID",
        hint="ids look like isar-bookworm-qemu-amd64-security; `cipbuild plan` lists them",
    )
    found = take(job_id, catalog.distros)
    if not found:
        raise bad
    distro, rest = found
    dfile = catalog.distros[distro]
    found = take(rest, dfile.releases)
    if not found:
        raise bad
    release, rest = found
    found = take(rest, catalog.boards)
    if not found:
        raise bad
    board, rest = found
    kernel = "default"
    asked = re.match(r"k(\d+(?:\.\d+)*)(?:-|$)", rest)
    if asked and asked[1] not in dfile.kernels:
        raise UserError(
            f"'{job_id}': unknown kernel {asked[1]} for {distro}", where="JOB_ID", hint=suggest(asked[1], dfile.kernels)
        )
    found = take(rest, (f"k{k}" for k in dfile.kernels))
    if found:
        kernel, rest = found[0][1:], found[1]
    names = catalog.options_of(distro)
    options = _split_options(rest, names, ordered=True)
    if options is None:
        options = _split_options(rest, names, ordered=False)  # resolve_job then names the canonical id
    if options is None:
        raise UserError(f"'{job_id}': unknown option in '{rest}'", where="JOB_ID", hint=suggest(rest, names))
    return distro, release, board, kernel, tuple(options)


def _split_options(rest: str, names: list[str], *, ordered: bool) -> list[str] | None:
    """Option names joined by '-' back into a list (backtracking: 'swupdate-2022.12' is one option)."""
    if not rest:
        return []
    for i, name in enumerate(names):
        if rest == name or rest.startswith(name + "-"):
            others = names[i + 1 :] if ordered else names[:i] + names[i + 1 :]
            tail = _split_options(rest[len(name) + 1 :], others, ordered=ordered)
            if tail is not None:
                return [name, *tail]
    return None


def resolve_job(catalog: Catalog, job_id: str) -> Job:
    """The Job an id names, if the catalogue's rules allow it or a recipe waives them for it."""
    expander = Expander(catalog)
    job, reasons = expander._judge(*parse_job_id(catalog, job_id))
    if reasons and not set(reasons) & SHAPE:
        job, reasons = _apply_waivers(job, reasons, recipe_waivers(catalog, job.id))
    if reasons:
        why = "; ".join(f"{r}: {summary_of(catalog, r)}" for r in reasons)
        raise UserError(f"job '{job_id}' cannot be built: {why}", where="JOB_ID")
    if job.id != job_id:
        raise UserError(f"'{job_id}' is not in canonical form", where="JOB_ID", hint=f"use '{job.id}'")
    return job


def recipe_waivers(catalog: Catalog, job_id: str) -> dict[tuple[str, str], str]:
    """Every recipe's waivers for one job: (rule, job id) -> 'reason (recipe name)'."""
    found: dict[tuple[str, str], str] = {}
    for name in catalog.recipe_files:
        try:
            recipe = catalog.recipe(name)
        except UserError:
            continue  # a broken recipe reports itself when it is used
        for waiver in recipe.waive:
            if job_id in waiver.jobs:
                found[(waiver.rule, job_id)] = f"{waiver.reason} (recipe {name})"
    return found
