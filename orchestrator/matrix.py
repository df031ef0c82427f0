"""Expand a recipe (or the whole catalogue) into Jobs, and say why every other combination is out.

Pure functions over the catalogue. Option sets are bit masks. The whole catalogue (every board
x distro x release x kernel x option subset) is walked as a tree of option decisions that the
rules prune (``_OptionTree``): its cost follows the jobs, not the 2^options candidates, which
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
    """One (distro, release, board, kernel) of the whole catalogue and the walk of its option sets."""

    distro: str
    release: str
    board: str
    kernel: str
    table: _Table


@dataclass(frozen=True)
class _Table:
    """What one walk of an option tree found: the accepted option sets in job order, how many
    option sets it counted under each rule, and a small one of those per rule (an example)."""

    tree: _OptionTree
    accepted: tuple[int, ...]
    candidates: int
    counts: dict[str, int]
    examples: dict[str, int]

    @property
    def excluded_count(self) -> int:
        return self.candidates - len(self.accepted)


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
        """Rule id -> how many excluded combinations are counted under it (see ``_OptionTree``)."""
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


class _OptionTree:
    """The option sets of one distro under one set of active rules, walked as a tree of decisions.

    Options are decided one at a time in the distro's ``order``, each left out before it is put
    in. A node is not entered when what is decided so far rules out every completion: conflicts
    and rules only grow with the implied closure, and a required option that no undecided option
    can bring in stays missing. The candidates of such a subtree are counted, not listed, and
    each is counted under the rules that fire at that node: a combination is counted under the
    rules that exclude it as soon as the options decided so far, in the distro's order, rule it
    out; a complete option set gets its full verdict. Sets where one option implies another are
    not candidates (``_DistroIndex.canonical``) and are never entered. ``wanted`` are options
    every job must have (--option): a subtree that can no longer bring one of them in is neither
    entered nor counted. Accepted option sets are sorted into job order (ascending masks);
    excluded ones stream in walk order.
    """

    def __init__(self, ix: _DistroIndex, active: tuple[int, ...], wanted: int):
        self.ix = ix
        self.wanted = wanted
        self._rules = [(ix.rules[i].id, ix.rules[i].all_mask, ix.rules[i].any_mask) for i in active]
        self._bits = [(o, ix.bit[o]) for o in ix.options]
        self._requirers = [(o, ix.bit[o], ix.requires[o]) for o in ix.options if ix.requires[o]]
        self._conflicters = [(o, ix.bit[o], ix.conflicts[o]) for o in ix.options if ix.conflicts[o]]
        decided = ix.options  # position q decides decided[q]
        self.depth = len(decided)
        self.bit = [ix.bit[o] for o in decided]
        self.closure = [ix.closure_one[o] for o in decided]
        self.implied = [ix.closure_one[o] & ~ix.bit[o] for o in decided]
        self.needs = [self._union(ix.requires, c) for c in self.closure]
        self.clashes = [self._union(ix.conflicts, c) for c in self.closure]
        self.reach = self._suffix_unions(self.closure)
        self.undecided = self._suffix_unions(self.bit)
        self.later_implied = self._suffix_unions(self.implied)
        self._counts: dict[tuple[int, int, int, int], int] = {}

    def _union(self, per_option: dict[str, int], mask: int) -> int:
        out = 0
        for o in self.ix.options:
            if mask & self.ix.bit[o]:
                out |= per_option[o]
        return out

    @staticmethod
    def _suffix_unions(masks: list[int]) -> list[int]:
        """[m[q] | m[q+1] | ... for each q], with a final 0 for 'nothing left to decide'."""
        out = [0] * (len(masks) + 1)
        for q in range(len(masks) - 1, -1, -1):
            out[q] = out[q + 1] | masks[q]
        return out

    def table(self) -> _Table:
        """Walk once: the accepted option sets, and the excluded ones counted per rule."""
        accepted: list[int] = []
        counts: dict[str, int] = {}
        examples: dict[str, int] = {}
        excluded = 0
        for q, chosen, closure, reasons in self._walk():
            if not reasons:
                accepted.append(chosen)
                continue
            n = self.count(q, chosen, closure)
            if not n:
                continue
            excluded += n
            for rule in reasons:
                counts[rule] = counts.get(rule, 0) + n
                best = examples.get(rule)
                if best is None or chosen < best:  # a completion is never below its chosen options
                    first = next(self.completions(q, chosen, closure))
                    examples[rule] = first if best is None else min(first, best)
        return _Table(self, tuple(sorted(accepted)), len(accepted) + excluded, counts, examples)

    def excluded(self) -> Iterator[tuple[int, tuple[str, ...]]]:
        """Every excluded option set with the rules it is counted under, in walk order."""
        for q, chosen, closure, reasons in self._walk():
            if reasons:
                for mask in self.completions(q, chosen, closure):
                    yield mask, reasons

    def verdict_of(self, mask: int) -> tuple[str, ...]:
        """The rules a canonical option set is counted under (() if it is accepted): the walk's
        verdict for it, found by following its own decisions only."""
        chosen = closure = needs = clashes = 0
        grew = True
        q = 0
        while not (reasons := self._ruled_out(q, closure, needs, clashes, grew)) and q < self.depth:
            grew = bool(mask & self.bit[q])
            if grew:
                chosen |= self.bit[q]
                closure |= self.closure[q]
                needs |= self.needs[q]
                clashes |= self.clashes[q]
            q += 1
        return reasons

    def _walk(self) -> Iterator[tuple[int, int, int, tuple[str, ...]]]:
        """(position, chosen, closure, reasons) of each node the walk stops at: accepted option
        sets (no reasons) and ruled-out subtrees."""
        depth, wanted, reach, bit = self.depth, self.wanted, self.reach, self.bit
        closure_of, implied, needs_of, clashes_of = self.closure, self.implied, self.needs, self.clashes
        ruled_out = self._ruled_out
        stack = [(0, 0, 0, 0, 0, True)]
        pop, push = stack.pop, stack.append
        while stack:
            q, chosen, closure, needs, clashes, grew = pop()
            if wanted & ~closure & ~reach[q]:
                continue
            # most nodes leave an option out and have no requirement newly lost: nothing to check
            reasons = ruled_out(q, closure, needs, clashes, grew) if grew or needs & ~closure else ()
            if reasons or q == depth:
                yield q, chosen, closure, reasons
                continue
            b = bit[q]
            if not (closure & b or implied[q] & chosen):
                push((q + 1, chosen | b, closure | closure_of[q], needs | needs_of[q], clashes | clashes_of[q], True))
            push((q + 1, chosen, closure, needs, clashes, False))

    def _ruled_out(self, q: int, closure: int, needs: int, clashes: int, grew: bool) -> tuple[str, ...]:
        """Why no completion of this node can be built; only requires can newly fire when the
        last decision left an option out (the closure did not grow)."""
        missing = needs & ~closure & ~self.reach[q]
        if not missing and not grew:
            return ()
        reasons: list[str] = []
        if missing:
            for o, bit, required in self._requirers:
                if closure & bit and required & missing:
                    reasons.extend(f"{o}-requires-{r}" for r in self._names(required & missing))
        if grew:
            if clashes & closure:
                for o, bit, conflicting in self._conflicters:
                    if closure & bit and conflicting & closure:
                        reasons.extend(f"{o}-conflicts-{c}" for c in self._names(conflicting & closure))
            for rule_id, all_of, any_of in self._rules:
                if closure & all_of == all_of and (not any_of or closure & any_of):
                    reasons.append(rule_id)
        return tuple(reasons)

    def _names(self, mask: int) -> list[str]:
        # not ix.names: that caches every mask it sees, and prune points are many
        return [o for o, bit in self._bits if mask & bit]

    def count(self, q: int, chosen: int, closure: int) -> int:
        """How many canonical completions of a node have every wanted option."""
        return self._count(q, closure & self.undecided[q], chosen & self.later_implied[q], closure & self.wanted)

    def _count(self, q: int, blocked: int, implying: int, have: int) -> int:
        # The key keeps only what the undecided options care about: which of them the closure
        # already holds (they cannot be chosen), which chosen options one of them implies (it
        # cannot be chosen either), and which wanted options the closure holds.
        key = (q, blocked, implying, have)
        found = self._counts.get(key)
        if found is not None:
            return found
        if q == self.depth:
            found = int(have == self.wanted)
        elif self.wanted & ~have & ~self.reach[q]:
            found = 0
        else:
            nxt = q + 1
            undecided, later = self.undecided[nxt], self.later_implied[nxt]
            found = self._count(nxt, blocked & undecided, implying & later, have)
            if not (blocked & self.bit[q] or self.implied[q] & implying):
                c = self.closure[q]
                found += self._count(
                    nxt, (blocked | c) & undecided, (implying | self.bit[q]) & later, have | (c & self.wanted)
                )
        self._counts[key] = found
        return found

    def completions(self, q: int, chosen: int, closure: int) -> Iterator[int]:
        """The canonical completions of a node that have every wanted option."""
        depth = self.depth
        stack = [(q, chosen, closure)]
        while stack:
            q, chosen, closure = stack.pop()
            if self.wanted and not self.count(q, chosen, closure):
                continue
            if q == depth:
                yield chosen
                continue
            b = self.bit[q]
            if not (closure & b or self.implied[q] & chosen):
                stack.append((q + 1, chosen | b, closure | self.closure[q]))
            stack.append((q + 1, chosen, closure))


class Expander:
    """Turns candidates into Jobs and Exclusions for one catalogue."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self.index = {name: _DistroIndex(catalog, name) for name in catalog.distros}
        self._tables: dict[tuple[str, tuple[int, ...], int], _Table] = {}

    def job_of(
        self, distro: str, release: str, board: str, kernel: str, mask: int, waived: tuple[tuple[str, str], ...] = ()
    ) -> Job:
        ix = self.index[distro]
        default = ix.distro.releases[release].default_kernel if release in ix.distro.releases else kernel
        return Job(distro, release, board, kernel, ix.names(mask), kernel == default, waived)

    def excluded_job_of(self, distro: str, release: str, board: str, kernel: str, mask: int) -> Job:
        """Like ``job_of`` without remembering the option names of ``mask``: there can be
        billions of excluded option sets."""
        ix = self.index[distro]
        names = tuple(o for o in ix.options if mask & ix.bit[o])
        return Job(distro, release, board, kernel, names, kernel == ix.distro.releases[release].default_kernel)

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

    def _bases(self, ix: _DistroIndex, sel: Selection) -> Iterator[tuple[str, str, str, str]]:
        """(release, kernel, board, arch) of a distro that ``sel`` selects, in job order."""
        boards = [
            (b, f.arch)
            for b, f in sorted(self.catalog.boards.items())
            if ix.name in f.distros and (not sel.boards or b in sel.boards)
        ]
        for release in ix.distro.releases:
            if sel.releases and release not in sel.releases:
                continue
            for kernel in ix.distro.kernels:
                if sel.kernels and kernel not in sel.kernels:
                    continue
                for board, arch in boards:
                    yield release, kernel, board, arch

    def _table(self, ix: _DistroIndex, active: tuple[int, ...], wanted: int) -> _Table:
        """The walk of a distro's option sets under the rules active for a base, done once."""
        key = (ix.name, active, wanted)
        table = self._tables.get(key)
        if table is None:
            table = self._tables[key] = _OptionTree(ix, active, wanted).table()
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
            kernel = ix.distro.releases[release].default_kernel
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
        reasons = _OptionTree(ix, ix.active_rules(board, bfile.arch, release, kernel), wanted).verdict_of(mask)
        boards = sorted(self.catalog.boards)
        key = (
            list(self.index).index(distro),
            list(ix.distro.releases).index(release),
            list(ix.distro.kernels).index(kernel),
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
