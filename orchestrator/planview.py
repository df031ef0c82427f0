"""How `cipbuild plan` shows a plan: a table of the first jobs, or JSON streamed record by record.

The whole catalogue can hold far more jobs and excluded combinations than fit in memory as
records, so both views read a plan's jobs and exclusions one at a time and never build the
document whole.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

from .catalog import Catalog
from .matrix import Plan, rule_summaries, summary_of
from .output import JsonArray, print_json_fields, print_line, print_table

SHOWN_JOBS = 200
LISTED_EXCLUSIONS = 60


def print_plan_json(cat: Catalog, plan: Plan, explain: bool) -> None:
    """The plan as `plan --json` prints it: source, candidates, every job record, and with
    ``explain`` every excluded combination with the rules it is counted under."""
    print_json_fields(_plan_fields(cat, plan, explain))


def _plan_fields(cat: Catalog, plan: Plan, explain: bool) -> Iterator[tuple[str, Any]]:
    from .kasfile import job_record

    yield "source", plan.source
    yield "candidates", plan.candidates
    yield "jobs", JsonArray(job_record(cat, job) for job in plan.iter_jobs())
    if explain:
        summaries = rule_summaries(cat)
        yield "excluded", JsonArray({"id": e.job.id, "rules": list(e.rules)} for e in plan.iter_excluded())
        yield "rules", {r: summaries.get(r) or summary_of(cat, r) for r in plan.rule_counts()}


def print_plan(cat: Catalog, plan: Plan, explain: bool) -> None:
    """The first jobs as a table; with ``explain`` the waivers applied and what was left out."""
    print_jobs(cat, plan)
    if explain:
        print_exclusions(cat, plan)


def print_jobs(cat: Catalog, plan: Plan) -> None:
    from .kasfile import job_facts

    rows = []
    for job in itertools.islice(plan.iter_jobs(), SHOWN_JOBS):
        note = "waives " + ", ".join(r for r, _ in job.waived) if job.waived else ""
        if job.follow_up:  # built after the job its id begins with
            note = f"second build: {job.follow_up}"
        rows.append([job.id, job.kernel, job_facts(cat, job).target, note])
    total = plan.job_count()
    caption = (
        f"{_count(total, 'job')} from {plan.source}; {plan.excluded_count()} of {plan.candidates} candidates excluded"
    )
    if len(rows) < total:
        caption += f" (first {SHOWN_JOBS} shown; --json lists all)"
    print_table(None, ["job", "kernel", "target", "note"], rows, caption)


def print_exclusions(cat: Catalog, plan: Plan) -> None:
    """Each waiver applied; then every excluded combination if there are few, else a count per
    rule with one example each."""
    for job in plan.waived_jobs():
        for rule, reason in job.waived:
            print_line(f"{job.id} builds although rule {rule} excludes it: {reason}", bold=job.id)
    counts = plan.rule_counts()
    if not counts:
        print_line("Nothing was excluded.")
        return
    if plan.excluded_count() <= LISTED_EXCLUSIONS:
        print_table(
            "Excluded",
            ["combination", "rule", "why"],
            [[e.job.id, ", ".join(e.rules), summary_of(cat, e.rules[0])] for e in plan.iter_excluded()],
        )
        return
    examples = plan.examples()
    print_table(
        "Excluded, by rule (--json lists every combination)",
        ["rule", "excluded", "example", "why"],
        [
            [r, str(n), examples.get(r, ""), summary_of(cat, r)]
            for r, n in sorted(counts.items(), key=lambda kv: -kv[1])
        ],
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
