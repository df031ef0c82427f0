"""Combination rules in one place: conditions, the ids of the rules options make, and a distro's
options as bit masks with their implied closures and compiled rules.

``matrix.py`` (recipes, single jobs) and ``optiontree.py`` (the whole catalogue) judge with these.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from .catalog import Catalog
from .models import Condition, Selector


def version_key(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


def selects(sel: Selector | None, value: str, *, version: bool = False) -> bool:
    if sel is None:
        return True
    if sel.any_of is not None and value not in sel.any_of:
        return False
    if sel.none_of is not None and value in sel.none_of:
        return False
    if version and (sel.below is not None or sel.at_least is not None):
        v = version_key(value)
        if sel.below is not None and not v < version_key(sel.below):
            return False
        if sel.at_least is not None and not v >= version_key(sel.at_least):
            return False
    return True


def matches_base(cond: Condition, board: str, arch: str, release: str, kernel: str) -> bool:
    """Whether a rule's or an exclude's condition holds for a job's board, arch, release and
    kernel (its options are matched apart: as bit masks in the hot paths)."""
    return (
        selects(cond.board, board)
        and selects(cond.arch, arch)
        and selects(cond.release, release)
        and selects(cond.kernel, kernel, version=True)
    )


def matches_options(cond: Condition, have: Collection[str]) -> bool:
    """Whether a condition's ``options`` (all) and ``options_any`` (one) hold for a job's options
    with what they imply."""
    if cond.options and not set(cond.options) <= set(have):
        return False
    return not (cond.options_any and not set(cond.options_any) & set(have))


def requires_rule(option: str, required: str) -> str:
    """The id of the rule an option's ``requires`` entry makes."""
    return f"{option}-requires-{required}"


def conflicts_rule(option: str, other: str) -> str:
    """The id of the rule an option's ``conflicts`` entry makes."""
    return f"{option}-conflicts-{other}"


@dataclass(frozen=True)
class CompiledRule:
    id: str
    when: Condition
    all_mask: int
    any_mask: int

    def matches_base(self, board: str, arch: str, release: str, kernel: str) -> bool:
        return matches_base(self.when, board, arch, release, kernel)

    def matches_options(self, closure: int) -> bool:
        return closure & self.all_mask == self.all_mask and (not self.any_mask or bool(closure & self.any_mask))


class DistroIndex:
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
            CompiledRule(r.id, r.when, self.mask(r.when.options or []), self.mask(r.when.options_any or []))
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
                reasons.extend(requires_rule(o, r) for r in self.names(missing))
        for o in self.names(closure):
            clash = self.conflicts[o] & closure
            if clash:
                reasons.extend(conflicts_rule(o, c) for c in self.names(clash))
        reasons.extend(self.rules[i].id for i in active if self.rules[i].matches_options(closure))
        found = self._verdicts[key] = tuple(reasons)
        return found
