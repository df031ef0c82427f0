"""The job id grammar, and the proof that a catalogue's ids cannot collide.

A job id is ``distro-release-board[-k<kernel>][-option...]``: the kernel only when it is not the
release's default (so never for a distro that builds its distribution's own kernel), the options
in the distro's ``order``. Names may contain '-' themselves, so two different jobs could join to
the same text (board ``qemu-amd64-rt`` and board ``qemu-amd64`` with option ``rt``). Every id is
a word over the '-'-separated segments, accepted by a small automaton with one path per
combination of names; ids collide exactly when that automaton is ambiguous, which a search over
pairs of its states decides in polynomial time (no enumeration of jobs). The automaton ignores
the rules, so a catalogue is refused when any two combinations collide, even one its rules
exclude: conservative, never blind. A collision comes back as the id and both jobs.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .catalog import Catalog

Token = tuple[str, str]  # (what, name): ("distro", "isar"), ("board", "qemu-amd64"), ("kernel", "6.1"), ...


@dataclass(frozen=True)
class IdGrammar:
    """What one distro puts into its job ids."""

    distro: str
    releases: Mapping[str, str]  # release -> its default kernel, which ids leave out ("": none)
    boards: Sequence[str]
    kernels: Sequence[str]  # empty for a distro that uses its distribution's kernel
    options: Sequence[str]  # in the distro's order


@dataclass(frozen=True)
class Collision:
    """Two different jobs whose ids are the same text."""

    job_id: str
    first: tuple[Token, ...]
    second: tuple[Token, ...]


def grammars_of(catalog: Catalog) -> list[IdGrammar]:
    return [
        IdGrammar(
            dname,
            {name: release.default_kernel or "" for name, release in d.releases.items()},
            sorted(b for b, f in catalog.boards.items() if dname in f.distros),
            list(d.kernels),
            catalog.options_of(dname),
        )
        for dname, d in catalog.distros.items()
    ]


def kernel_segment(version: str) -> str:
    return f"k{version}"


@dataclass
class _Automaton:
    """A nondeterministic automaton over id segments: edges[state][segment] -> [(next, token)]."""

    edges: list[dict[str, list[tuple[int, Token | None]]]] = field(default_factory=lambda: [{}])
    accepting: set[int] = field(default_factory=set)

    def state(self) -> int:
        self.edges.append({})
        return len(self.edges) - 1

    def word(self, start: int, end: int, text: str, token: Token) -> None:
        """A path spelling ``text`` from ``start`` to ``end``; its own inner states keep it apart."""
        segments = text.split("-")
        here = start
        for i, segment in enumerate(segments):
            last = i == len(segments) - 1
            there = end if last else self.state()
            self.edges[here].setdefault(segment, []).append((there, token if last else None))
            here = there


def _automaton(grammars: Iterable[IdGrammar], *, ordered: bool = True) -> _Automaton:
    """One path per job. ``ordered=False`` also takes options in any order (to name the canonical id
    of a job someone spelled with its options shuffled)."""
    auto = _Automaton()
    for g in grammars:
        after_distro = auto.state()
        auto.word(0, after_distro, g.distro, ("distro", g.distro))
        # one branch per release: an id names a kernel only when it is not the release's default
        for release, default_kernel in g.releases.items():
            after_release, after_board, after_kernel = (auto.state() for _ in range(3))
            auto.word(after_distro, after_release, release, ("release", release))
            for board in g.boards:
                auto.word(after_release, after_board, board, ("board", board))
            for kernel in g.kernels:
                if kernel != default_kernel:
                    auto.word(after_board, after_kernel, kernel_segment(kernel), ("kernel", kernel))
            after_option = [auto.state() for _ in g.options]
            auto.accepting.update((after_board, after_kernel, *after_option))
            for i, option in enumerate(g.options):
                # an option follows the board, the kernel, or any option placed before it
                before = after_option[:i] if ordered else after_option[:i] + after_option[i + 1 :]
                for here in (after_board, after_kernel, *before):
                    auto.word(here, after_option[i], option, ("option", option))
    return auto


Pair = tuple[int, int, bool]  # both paths' states, and whether the paths have differed yet


def find_collision(grammars: Iterable[IdGrammar]) -> Collision | None:
    """Two different jobs with one id, or None when every id names one job.

    Walks both paths of the automaton in step over the same segments; the ids collide when
    both can end together after having been apart (different states or different tokens).
    """
    auto = _automaton(grammars)
    start: Pair = (0, 0, False)
    parent: dict[Pair, tuple[Pair, str, Token | None, Token | None] | None] = {start: None}
    todo = deque([start])
    while todo:
        pair = todo.popleft()
        p, q, apart = pair
        if apart and p in auto.accepting and q in auto.accepting:
            return _collision(parent, pair)
        for segment, p_next in auto.edges[p].items():
            q_next = auto.edges[q].get(segment)
            if not q_next:
                continue
            for p2, p_token in p_next:
                for q2, q_token in q_next:
                    step: Pair = (p2, q2, apart or p2 != q2 or p_token != q_token)
                    if step not in parent:
                        parent[step] = (pair, segment, p_token, q_token)
                        todo.append(step)
    return None


def _collision(parent: dict[Pair, tuple[Pair, str, Token | None, Token | None] | None], end: Pair) -> Collision:
    segments: list[str] = []
    first: list[Token] = []
    second: list[Token] = []
    pair = end
    while (link := parent[pair]) is not None:
        pair, segment, p_token, q_token = link
        segments.append(segment)
        if p_token:
            first.append(p_token)
        if q_token:
            second.append(q_token)
    return Collision("-".join(reversed(segments)), tuple(reversed(first)), tuple(reversed(second)))


def describe(tokens: Sequence[Token]) -> str:
    """``distro isar, release bookworm, board qemu-amd64, option rt``."""
    return ", ".join(f"{what} {name}" for what, name in tokens)


def parse(grammars: Iterable[IdGrammar], job_id: str, *, ordered: bool = True) -> tuple[Token, ...] | None:
    """The parts of ``job_id`` (distro, release, board, kernel, options), or None when the
    catalogue has no such id. Linear in the id's length: the automaton is run, not backtracked,
    and since ids cannot collide, at most one path accepts."""
    auto = _automaton(grammars, ordered=ordered)
    live: dict[int, tuple[Token, ...]] = {0: ()}
    for segment in job_id.split("-"):
        step: dict[int, tuple[Token, ...]] = {}
        for state, tokens in live.items():
            for there, token in auto.edges[state].get(segment, []):
                step.setdefault(there, (*tokens, token) if token else tokens)
        live = step
    return next((tokens for state, tokens in live.items() if state in auto.accepting), None)
