"""The whole catalogue's option sets of one distro, walked as a tree of decisions the rules prune."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from .rules import DistroIndex, conflicts_rule, requires_rule


@dataclass(frozen=True)
class Table:
    """What one walk of an option tree found: the accepted option sets in job order, how many
    option sets it counted under each rule, and a small one of those per rule (an example)."""

    tree: OptionTree
    accepted: tuple[int, ...]
    candidates: int
    counts: dict[str, int]
    examples: dict[str, int]

    @property
    def excluded_count(self) -> int:
        return self.candidates - len(self.accepted)


class OptionTree:
    """The option sets of one distro under one set of active rules, walked as a tree of decisions.

    Options are decided one at a time in the distro's ``order``, each left out before it is put
    in. A node is not entered when what is decided so far rules out every completion: conflicts
    and rules only grow with the implied closure, and a required option that no undecided option
    can bring in stays missing. The candidates of such a subtree are counted, not listed, and
    each is counted under the rules that fire at that node: a combination is counted under the
    rules that exclude it as soon as the options decided so far, in the distro's order, rule it
    out; a complete option set gets its full verdict. Sets where one option implies another are
    not candidates (``DistroIndex.canonical``) and are never entered. ``wanted`` are options
    every job must have (--option): a subtree that can no longer bring one of them in is neither
    entered nor counted. Accepted option sets are sorted into job order (ascending masks);
    excluded ones stream in walk order.
    """

    def __init__(self, ix: DistroIndex, active: tuple[int, ...], wanted: int):
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

    def table(self) -> Table:
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
        return Table(self, tuple(sorted(accepted)), len(accepted) + excluded, counts, examples)

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
                    reasons.extend(requires_rule(o, r) for r in self._names(required & missing))
        if grew:
            if clashes & closure:
                for o, bit, conflicting in self._conflicters:
                    if closure & bit and conflicting & closure:
                        reasons.extend(conflicts_rule(o, c) for c in self._names(conflicting & closure))
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
