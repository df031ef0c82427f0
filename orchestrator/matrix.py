"""Expand a recipe (or the whole catalogue) into Jobs, and say why every other combination is out.

Pure functions over the catalogue. Option sets are bit masks. The whole catalogue (every board
x distro x release x kernel x option subset) is walked as a tree of option decisions that the
rules prune (``OptionTree``): its cost follows the jobs, not the 2^options candidates, which
are counted rather than listed.
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
from .jobids import grammars_of, parse
from .models import Condition, DistroFile, RecipeFile
from .optiontree import OptionTree, Table
from .rules import DistroIndex, conflicts_rule, matches_base, matches_options, requires_rule

# Exclusions that come from the catalogue's shape rather than from a rule file.
NO_BOARD = "board-not-in-distro"
NO_RELEASE = "release-not-in-distro"
NO_KERNEL = "kernel-not-in-distro"
NO_OPTION = "option-not-in-distro"
SHAPE = {NO_BOARD, NO_RELEASE, NO_KERNEL, NO_OPTION}
RECIPE_EXCLUDE = "recipe-exclude"
# The kernel of a job of a distro that lists no kernels: it builds its distribution's own kernel,
# and its jobs name none (not in ids, plans or --kernel).
DISTRIBUTION_KERNEL = ""
# Between a job's id and the name of its follow-up: a name never holds two dashes in a row, so the
# id of a second build reads unambiguously, and sorts next to its first.
FOLLOW_UP_MARK = "--"


def kernels_of(distro: DistroFile) -> list[str]:
    """The kernels a distro's jobs may have, in its order."""
    return list(distro.kernels) or [DISTRIBUTION_KERNEL]


def default_kernel(distro: DistroFile, release: str) -> str:
    """The kernel of a job of ``release`` that names none."""
    return distro.releases[release].default_kernel or DISTRIBUTION_KERNEL


@dataclass(frozen=True, slots=True)
class Job:
    """One build: its id is stable and is its folder name everywhere."""

    distro: str
    release: str
    board: str
    kernel: str  # DISTRIBUTION_KERNEL ("") when the distro lists no kernels
    options: tuple[str, ...] = ()
    kernel_is_default: bool = True
    waived: tuple[tuple[str, str], ...] = ()  # (rule id, reason)
    follow_up: str = ""  # the distro's follow-up this job is the second build of, or ""

    @property
    def id(self) -> str:
        parts = [self.distro, self.release, self.board]
        if self.kernel and not self.kernel_is_default:
            parts.append(f"k{self.kernel}")
        parts.extend(self.options)
        first = "-".join(parts)
        return f"{first}{FOLLOW_UP_MARK}{self.follow_up}" if self.follow_up else first

    @property
    def first(self) -> Job:
        """The job a follow-up builds after; a job that is none is its own first."""
        return dataclasses.replace(self, follow_up="") if self.follow_up else self


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
    """One (distro, release, board, kernel) of the whole catalogue and the walk of its option sets."""

    distro: str
    release: str
    board: str
    kernel: str
    table: Table


@dataclass
class Plan:
    """The jobs to build, in order, and the combinations left out.

    A recipe's plan lists its jobs and exclusions; the whole catalogue's keeps one walk per
    (distro, release, board, kernel) and makes Job and Excluded records only as they are read.
    """

    source: str
    _jobs: list[Job] = field(default_factory=list)
    candidates: int = 0
    _excluded: list[Excluded] = field(default_factory=list)
    _blocks: list[_Block] = field(default_factory=list)
    _expander: Expander | None = None

    @cached_property
    def jobs(self) -> list[Job]:
        return list(self.iter_jobs())

    @cached_property
    def excluded(self) -> list[Excluded]:
        return list(self.iter_excluded())

    def job_count(self) -> int:
        return len(self._jobs) + sum(len(b.table.accepted) for b in self._blocks)

    def excluded_count(self) -> int:
        return len(self._excluded) + sum(b.table.excluded_count for b in self._blocks)

    def iter_jobs(self) -> Iterator[Job]:
        """The jobs in order, made one at a time."""
        yield from self._jobs
        if self._expander:
            make = self._expander.job_of
            for b in self._blocks:
                for mask in b.table.accepted:
                    yield make(b.distro, b.release, b.board, b.kernel, mask)

    def waived_jobs(self) -> Iterator[Job]:
        """The jobs a recipe's waiver lets through (the whole catalogue has no waivers)."""
        return (job for job in self._jobs if job.waived)

    def iter_excluded(self) -> Iterator[Excluded]:
        """Like ``excluded`` but builds records one at a time (the whole catalogue has billions
        with 30 options)."""
        yield from self._excluded
        if self._expander:
            make = self._expander.excluded_job_of
            for b in self._blocks:
                for mask, rules in b.table.tree.excluded():
                    yield Excluded(make(b.distro, b.release, b.board, b.kernel, mask), rules)

    def examples(self) -> dict[str, str]:
        """One excluded job id per rule, among those counted under it."""
        found: dict[str, str] = {}
        for exc in self._excluded:
            for rule in exc.rules:
                found.setdefault(rule, exc.job.id)
        if self._expander:
            make = self._expander.excluded_job_of
            for b in self._blocks:
                for rule, mask in b.table.examples.items():
                    if rule not in found:
                        found[rule] = make(b.distro, b.release, b.board, b.kernel, mask).id
        return found

    def rule_counts(self) -> dict[str, int]:
        """Rule id -> how many excluded combinations are counted under it (see ``OptionTree``)."""
        counts: dict[str, int] = {}
        for exc in self._excluded:
            for rule in exc.rules:
                counts[rule] = counts.get(rule, 0) + 1
        for b in self._blocks:
            for rule, n in b.table.counts.items():
                counts[rule] = counts.get(rule, 0) + n
        return counts


class Expander:
    """Turns candidates into Jobs and Exclusions for one catalogue."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self.index = {name: DistroIndex(catalog, name) for name in catalog.distros}
        self._tables: dict[tuple[str, tuple[int, ...], int], Table] = {}

    def job_of(
        self, distro: str, release: str, board: str, kernel: str, mask: int, waived: tuple[tuple[str, str], ...] = ()
    ) -> Job:
        ix = self.index[distro]
        default = default_kernel(ix.distro, release) if release in ix.distro.releases else kernel
        return Job(distro, release, board, kernel, ix.names(mask), kernel == default, waived)

    def excluded_job_of(self, distro: str, release: str, board: str, kernel: str, mask: int) -> Job:
        """Like ``job_of`` without remembering the option names of ``mask``: there can be
        billions of excluded option sets."""
        ix = self.index[distro]
        names = tuple(o for o in ix.options if mask & ix.bit[o])
        return Job(distro, release, board, kernel, names, kernel == default_kernel(ix.distro, release))

    def closure_names(self, job: Job) -> tuple[str, ...]:
        """The job's options with everything they imply."""
        ix = self.index[job.distro]
        return ix.names(ix.closure(ix.mask(job.options)))

    def expand_all(self, sel: Selection | None = None) -> Plan:
        """Every board x distro x release x kernel x canonical option set of the catalogue that
        ``sel`` selects (names in it are assumed valid: see ``validate_selection``)."""
        sel = sel or Selection()
        if sel.job_ids:
            return self._expand_job_ids(sel)
        blocks: list[_Block] = []
        for dname, ix in self.index.items():
            if (sel.distros and dname not in sel.distros) or not set(sel.options) <= set(ix.bit):
                continue
            wanted = ix.mask(sel.options)
            for release, kernel, board, arch in self._bases(ix, sel):
                table = self._table(ix, ix.active_rules(board, arch, release, kernel), wanted)
                if table.candidates:
                    blocks.append(_Block(dname, release, board, kernel, table))
        candidates = sum(b.table.candidates for b in blocks)
        return Plan("the whole catalogue", candidates=candidates, _blocks=blocks, _expander=self)

    def _bases(self, ix: DistroIndex, sel: Selection) -> Iterator[tuple[str, str, str, str]]:
        """(release, kernel, board, arch) of a distro that ``sel`` selects, in job order."""
        boards = [
            (b, f.arch)
            for b, f in sorted(self.catalog.boards.items())
            if ix.name in f.distros and (not sel.boards or b in sel.boards)
        ]
        for release in ix.distro.releases:
            if sel.releases and release not in sel.releases:
                continue
            for kernel in kernels_of(ix.distro):
                if sel.kernels and kernel not in sel.kernels:
                    continue
                for board, arch in boards:
                    yield release, kernel, board, arch

    def _table(self, ix: DistroIndex, active: tuple[int, ...], wanted: int) -> Table:
        """The walk of a distro's option sets under the rules active for a base, done once."""
        key = (ix.name, active, wanted)
        table = self._tables.get(key)
        if table is None:
            table = self._tables[key] = OptionTree(ix, active, wanted).table()
        return table

    def _expand_job_ids(self, sel: Selection) -> Plan:
        """The whole catalogue narrowed to named jobs: each id is one candidate at most."""
        found: dict[str, tuple[tuple[int, ...], Job, tuple[str, ...]]] = {}
        for job_id in dict.fromkeys(sel.job_ids):
            hit = self._candidate(job_id, sel)
            if hit is not None:
                found[job_id] = hit
        ordered = sorted(found.values(), key=lambda hit: hit[0])
        jobs = [job for _, job, reasons in ordered if not reasons]
        excluded = [Excluded(job, reasons) for _, job, reasons in ordered if reasons]
        for job_id in sel.job_ids:
            hit = found.get(job_id)
            if hit is None:
                every = (j.id for j in self.expand_all().iter_jobs())
                raise UserError(
                    f"no job '{job_id}' in the whole catalogue", where="JOB_ID", hint=suggest(job_id, every)
                )
            if hit[2]:
                raise _excluded_job(self.catalog, job_id, hit[2])
        return Plan("the whole catalogue", jobs, len(jobs) + len(excluded), excluded, _expander=self)

    def _candidate(self, job_id: str, sel: Selection) -> tuple[tuple[int, ...], Job, tuple[str, ...]] | None:
        """(job-order key, job, rules it is counted under) of the candidate an id names, if the
        id is canonical and the rest of ``sel`` selects it."""
        try:
            distro, release, board, kernel, options = parse_job_id(self.catalog, job_id)
        except UserError:
            return None
        ix = self.index[distro]
        if kernel == "default":
            kernel = default_kernel(ix.distro, release)
        bfile = self.catalog.boards[board]
        mask = ix.mask(options)
        job = self.job_of(distro, release, board, kernel, mask)
        wanted = ix.mask(o for o in sel.options if o in ix.bit)
        if (
            distro not in bfile.distros
            or ix.canonical(mask) != mask
            or job.id != job_id
            or not set(sel.options) <= set(ix.bit)
            or ix.closure(mask) & wanted != wanted
            or (release, kernel, board, bfile.arch) not in set(self._bases(ix, sel))
            or (sel.distros and distro not in sel.distros)
        ):
            return None
        reasons = OptionTree(ix, ix.active_rules(board, bfile.arch, release, kernel), wanted).verdict_of(mask)
        boards = sorted(self.catalog.boards)
        key = (
            list(self.index).index(distro),
            list(ix.distro.releases).index(release),
            kernels_of(ix.distro).index(kernel),
            boards.index(board),
            mask,
        )
        return key, job, reasons

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
        if recipe.follow_ups:
            plan = self._with_follow_ups(plan, recipe, where)
        return plan

    def _with_follow_ups(self, plan: Plan, recipe: RecipeFile, where: str) -> Plan:
        """The recipe's jobs, each follow-up right after its first build."""
        by_id = {job.id: job for job in plan.jobs}
        left_out = {e.job.id for e in plan.excluded}
        after: dict[str, list[Job]] = {}
        for i, choice in enumerate(recipe.follow_ups):
            for n, job_id in enumerate(choice.jobs):
                first = by_id.get(job_id)
                if first is None and job_id in left_out:
                    continue  # the recipe's own exclude took the first build, and so the second
                if first is None:
                    raise UserError(
                        f"follow_ups[{i}].jobs[{n}]: '{job_id}' is not a job of this recipe",
                        where=where,
                        hint=suggest(job_id, by_id),
                    )
                problem = follow_up_problem(self, first, choice.name)
                if problem:
                    raise UserError(f"follow_ups[{i}]: {problem}", where=where)
                second = dataclasses.replace(first, follow_up=choice.name)
                if second in after.get(job_id, []):
                    raise UserError(
                        f"follow_ups[{i}].jobs[{n}]: '{job_id}' gets follow-up '{choice.name}' twice",
                        where=where,
                        hint="name each job once per follow-up",
                    )
                after.setdefault(job_id, []).append(second)
        jobs = [j for job in plan.jobs for j in (job, *after.get(job.id, []))]
        added = len(jobs) - len(plan.jobs)  # a second build is a candidate of its own, never excluded
        return Plan(plan.source, jobs, plan.candidates + added, plan.excluded, _expander=self)

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
            kernel = default_kernel(dfile, release) if rel else "default"
        unknown_opts = [o for o in options if o not in ix.bit]
        mask = ix.canonical(ix.mask(o for o in options if o in ix.bit))
        names = ix.names(mask) + tuple(unknown_opts)
        job = Job(
            distro,
            release,
            board,
            kernel,
            names,
            kernel == "default" or (rel is not None and kernel == default_kernel(dfile, release)),
        )
        shape: list[str] = []
        if distro not in bfile.distros:
            shape.append(NO_BOARD)
        if rel is None:
            shape.append(NO_RELEASE)
        if kernel != "default" and kernel not in kernels_of(dfile):
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
        if cond.kernel is not None and job.kernel == DISTRIBUTION_KERNEL:
            return False  # a job without a kernel of its own meets no kernel condition
        arch = self.catalog.boards[job.board].arch
        return matches_base(cond, job.board, arch, job.release, job.kernel) and matches_options(
            cond, self.closure_names(job)
        )


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
                out[requires_rule(o, r)] = f"option {o} needs option {r}"
            for c in spec.conflicts:
                out[conflicts_rule(o, c)] = f"options {o} and {c} cannot be combined"
    return out


def summary_of(catalog: Catalog, rule: str) -> str:
    if rule.startswith(RECIPE_EXCLUDE):
        return "excluded by the recipe's exclude list"
    return rule_summaries(catalog).get(rule, rule)


def follow_up_problem(expander: Expander, first: Job, name: str) -> str | None:
    """Why ``first`` cannot have the follow-up ``name``, or None."""
    dfile = expander.catalog.distros[first.distro]
    follow_up = dfile.follow_ups.get(name)
    if follow_up is None:
        known = ", ".join(sorted(dfile.follow_ups)) or "none"
        return f"{first.distro} has no follow-up '{name}' (its distro file's follow_ups: {known})"
    lacking = sorted(set(follow_up.requires) - set(expander.closure_names(first)))
    if lacking:
        return f"follow-up '{name}' needs a first build with {', '.join(lacking)}; {first.id} has none"
    return None


def with_firsts(jobs: Iterable[Job]) -> list[Job]:
    """``jobs`` with the first build of each follow-up before it (added where missing)."""
    out: list[Job] = []
    seen: set[str] = set()
    for job in jobs:
        for j in (job.first, job) if job.follow_up else (job,):
            if j.id not in seen:
                seen.add(j.id)
                out.append(j)
    return out


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

    jobs = with_firsts(j for j in plan.jobs if keep(j))
    excluded = [e for e in plan.iter_excluded() if keep(e.job)]
    for job_id in sel.job_ids:
        if not any(j.id == job_id for j in jobs):
            hint = suggest(job_id, [j.id for j in plan.jobs])
            why = next((e for e in excluded if e.job.id == job_id), None)
            if why:
                raise _excluded_job(catalog, job_id, why.rules)
            raise UserError(f"no job '{job_id}' in {plan.source}", where="JOB_ID", hint=hint)
    return Plan(plan.source, jobs, len(jobs) + len(excluded), excluded, _expander=plan._expander)


def _excluded_job(catalog: Catalog, job_id: str, rules: tuple[str, ...]) -> UserError:
    return UserError(
        f"job '{job_id}' is excluded by {', '.join(rules)}: {summary_of(catalog, rules[0])}", where="JOB_ID"
    )


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
                hint = suggest(value, known)
                if flag == "--kernel" and not known:
                    hint = "no distro of this catalogue lists kernels: each builds its distribution's own"
                raise UserError(f"unknown {kind} '{value}'", where=flag, hint=hint)


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
        validate_selection(sel, catalog)
        return expander.expand_all(sel)
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
        named = with_firsts(resolve_job(catalog, i) for i in sel.job_ids)
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
    """Split ``isar-bookworm-qemu-amd64-k5.10-security`` into distro, release, board, kernel
    ('default' when the id names none) and options, by the grammar that keeps ids unambiguous.
    Options in another order are read too, so that ``resolve_job`` can name the canonical id."""
    grammars = grammars_of(catalog)
    tokens = parse(grammars, job_id) or parse(grammars, job_id, ordered=False)
    if tokens is None:
        asked = re.search(r"-k(\d+(?:\.\d+)*)(?:-|$)", job_id)
        distro = next((d for d in catalog.distros if job_id.startswith(f"{d}-")), None)
        if asked and distro and asked[1] not in catalog.distros[distro].kernels:
            kernels = catalog.distros[distro].kernels
            hint = suggest(asked[1], kernels) if kernels else f"{distro} builds its distribution's own kernel"
            raise UserError(f"'{job_id}': unknown kernel {asked[1]} for {distro}", where="JOB_ID", hint=hint)
        raise UserError(f"'{job_id}' is not a job id", where="JOB_ID", hint=nearest_ids(catalog, job_id))
    parts = dict(tokens)  # one distro, release, board and kernel at most; options listed apart
    options = tuple(name for what, name in tokens if what == "option")
    if len(set(options)) < len(options):
        raise UserError(f"'{job_id}' names an option twice", where="JOB_ID", hint="name each option once")
    return parts["distro"], parts["release"], parts["board"], parts.get("kernel", "default"), options


def nearest_ids(catalog: Catalog, job_id: str) -> str:
    """'did you mean' the nearest ids of this catalogue, or what one of its ids looks like."""
    import difflib

    every = [job.id for job in Expander(catalog).expand_all().iter_jobs()]
    near = difflib.get_close_matches(job_id, every, n=3, cutoff=0.6)
    if near:
        return f"did you mean {' or '.join(repr(n) for n in near)}? `cipbuild plan` lists them"
    example = f"ids look like {every[0]}; " if every else ""
    return f"{example}`cipbuild plan` lists them"


def resolve_job(catalog: Catalog, job_id: str) -> Job:
    """The Job an id names, if the catalogue's rules allow it or a recipe waives them for it."""
    first_id, mark, name = job_id.partition(FOLLOW_UP_MARK)
    if mark:
        first = resolve_job(catalog, first_id)
        problem = follow_up_problem(Expander(catalog), first, name)
        if problem:
            raise UserError(f"'{job_id}': {problem}", where="JOB_ID")
        return dataclasses.replace(first, follow_up=name)
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
