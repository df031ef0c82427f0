"""Test plans without a lab (as TuxRun does for LAVA's): boot the built job in QEMU as `boot
--check` does, log in the way the plan says, and run each inline test definition the way LAVA's
test shell would (its parameters as shell variables, ``set -e``, the steps) with a
``lava-test-case`` of our own that prints LAVA's own result signals. One boot per plan, as in a
lab; the results become JUnit in the job folder.

Scripts reach the guest base64-encoded, so an interactive shell's history expansion, tab
completion or line editing cannot change a step on the way."""

from __future__ import annotations

import base64
import re
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from ..catalog import Catalog, suggest
from ..errors import UserError
from ..models import TestPlanFile
from .boot import BootJob, BootPlan, CheckFailedError, CheckResult, Console, Login, Session, check, run_marked

GUEST_DIR = "/tmp/cipbuild-test"
CHUNK = 768  # base64 characters per typed line: far below a tty's 4095-character line limit
SIGNAL = re.compile(
    r"<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=(?P<name>[^\s>]+) RESULT=(?P<result>[a-z]+)"
    r"(?: UNITS=(?P<units>[^\s>]+))?(?: MEASUREMENT=(?P<measurement>[^\s>]+))?>"
)
# the signal is assembled at run time: the typed script must not contain a line the parser would take
LAVA_TEST_CASE = """#!/bin/sh
# lava-test-case NAME --shell CMD... | NAME --result pass|fail|skip|unknown [--units U] [--measurement M]
name=$1
[ -n "$name" ] || { echo "usage: lava-test-case NAME --shell CMD | --result RESULT" >&2; exit 1; }
shift
data=""
if [ "$1" = "--shell" ]; then
    shift
    if eval "$*"; then data=" RESULT=pass"; else data=" RESULT=fail"; fi
else
    result="" units="" measurement=""
    while [ $# -gt 0 ]; do
        case $1 in
            --result) result=$2; shift 2 ;;
            --units) units=$2; shift 2 ;;
            --measurement) measurement=$2; shift 2 ;;
            *) echo "lava-test-case: unknown argument $1" >&2; exit 1 ;;
        esac
    done
    [ -n "$result" ] || { echo "lava-test-case: --result must be given" >&2; exit 1; }
    data=" RESULT=$result"
    [ -z "$units" ] || data="$data UNITS=$units"
    [ -z "$measurement" ] || data="$data MEASUREMENT=$measurement"
fi
printf '<%s TEST_CASE_ID=%s%s>\\n' LAVA_SIGNAL_TESTCASE "$name" "$data"
exit 0
"""
LAVA_TEST_SET = "#!/bin/sh\nexit 0\n"  # test sets only group cases in LAVA's results
SHIMS = {"lava-test-case": LAVA_TEST_CASE, "lava-test-set": LAVA_TEST_SET}


@dataclass
class Case:
    suite: str
    name: str
    result: str  # pass, fail, skip, unknown
    measurement: str | None = None
    units: str | None = None

    def to_json(self) -> dict[str, str]:
        extra = {"measurement": self.measurement, "units": self.units}
        return {"suite": self.suite, "name": self.name, "result": self.result} | {
            k: v for k, v in extra.items() if v is not None
        }


@dataclass
class PlanResult:
    plan: str
    check: CheckResult
    cases: list[Case] = field(default_factory=list)
    junit: Path | None = None

    @property
    def failed(self) -> list[str]:
        return [f"{c.suite}/{c.name}" for c in self.cases if c.result == "fail"]

    @property
    def ok(self) -> bool:
        return self.check.ok and not self.failed

    @property
    def error(self) -> str:
        if not self.check.ok:
            return self.check.error
        return f"{self.check.job} {self.plan}: failed: {', '.join(self.failed)}" if self.failed else ""

    def to_json(self) -> dict[str, Any]:
        return {
            "plan": self.plan,
            "result": "ok" if self.ok else "failed",
            "cases": [c.to_json() for c in self.cases],
            "junit": str(self.junit) if self.junit else None,
            "boot": self.check.to_json(),
        }


def local_plans(catalog: Catalog, job: BootJob, names: list[str]) -> list[tuple[str, TestPlanFile]]:
    """The named plans, checked to apply to ``job`` and to run without a lab; UserError otherwise."""
    board = catalog.boards.get(job.board)
    offered = board.test.plans if board is not None else []
    applies = [n for n in offered if catalog.testplans[n].applies(job.options)]
    chosen = []
    for name in names:
        plan = catalog.testplans.get(name)
        if plan is None:
            raise UserError(f"unknown test plan '{name}'", where="--plan", hint=suggest(name, catalog.testplans))
        if name not in applies:
            raise UserError(
                f"plan {name} does not apply to {job.id} (board {job.board} runs {', '.join(applies) or 'none'} on it)",
                where="--plan",
            )
        if plan.update is not None:
            raise UserError(
                f"plan {name} installs {plan.update.follow_up}'s {plan.update.artifact} and boots the disk "
                "again: it runs in a lab only",
                where="--plan",
                hint="cipbuild test run RELEASE --plan " + name,
            )
        fetched = next((d for d in plan.definitions if d.repository), None)
        if fetched is not None:
            raise UserError(
                f"plan {name} takes its tests ({fetched.name}) from {fetched.repository}: it runs in a lab only",
                where="--plan",
                hint="cipbuild test run RELEASE --plan " + name,
            )
        missing = [kind for kind in plan.needs if job.first(kind) is None]
        if missing:
            raise UserError(f"plan {name} needs a {missing[0]} artifact, and {job.id} has none", where="--plan")
        chosen.append((name, plan))
    return chosen


def plan_login(plan: TestPlanFile, password: str | None) -> Login:
    """The plan's login for `boot --check`; LAVA's prompts are regular expressions searched anywhere."""
    spec = plan.login
    if not spec.login_prompt:
        return Login(user="", shell_prompt=spec.prompt)
    return Login(
        user=spec.username,
        password=spec.password if password is None else password,
        login_prompt=spec.login_prompt,
        password_prompt=spec.password_prompt,
        shell_prompt=spec.prompt,
    )


def run_script(name: str, plan: TestPlanFile, index: int) -> str:
    """The run.sh LAVA's test shell writes for one inline definition: parameters, set -e, steps."""
    definition = plan.definitions[index]
    lines = ["#!/bin/sh", f"# {name}: {definition.name}"]
    lines += [f"{key}={shlex.quote(value)}" for key, value in definition.parameters.items()]
    lines += ["set -e", f"export TESTRUN_ID={index}_{definition.name}"]
    for step in definition.steps:
        shell = "--cmd" in step or "--shell" in step  # as LAVA does: there $1 belongs to the test case's shell
        lines.append(re.sub(r"\$(\d+)\b", r"\\$\1", step) if shell else step)
    return "\n".join(lines) + "\n"


def _install(console: Console, path: str, text: str, deadline: float) -> None:
    """Write ``text`` to ``path`` on the guest, executable."""
    encoded = base64.b64encode(text.encode()).decode()
    chunks = [encoded[i : i + CHUNK] for i in range(0, len(encoded), CHUNK)] or [""]
    line = f"rm -f {path}.b64"
    for chunk in chunks:
        done = run_marked(console, f"{line}; printf %s {chunk} >> {path}.b64", deadline)
        if done is None or done[0] != 0:
            raise CheckFailedError(f"cannot write {path} on the guest", _why(done))
        line = "true"
    done = run_marked(console, f"base64 -d {path}.b64 > {path} && chmod +x {path} && rm {path}.b64", deadline)
    if done is None or done[0] != 0:
        raise CheckFailedError(f"cannot decode {path} on the guest (does it have base64?)", _why(done))


def _why(done: tuple[int, str] | None) -> str:
    if done is None:
        return "the guest stopped answering"
    return f"exit {done[0]}: {done[1].splitlines()[-1] if done[1] else 'no output'}"


def plan_session(name: str, plan: TestPlanFile, result: PlanResult) -> Session:
    """What `boot --check` runs once logged in for ``plan``: every definition, cases into ``result``."""

    def session(console: Console, deadline: float, event: Callable[[str], None]) -> None:
        done = run_marked(console, f"mkdir -p {GUEST_DIR}/bin", deadline)
        if done is None or done[0] != 0:
            raise CheckFailedError(f"cannot make {GUEST_DIR} on the guest", _why(done))
        for shim, text in SHIMS.items():
            _install(console, f"{GUEST_DIR}/bin/{shim}", text, deadline)
        test_deadline = min(deadline, time.monotonic() + plan.timeouts.get("test", 15) * 60)
        for index, definition in enumerate(plan.definitions):
            suite = f"{index}_{definition.name}"
            script = f"{GUEST_DIR}/{suite}.sh"
            _install(console, script, run_script(name, plan, index), deadline)
            event(f"running {suite}")
            done = run_marked(console, f"(cd {GUEST_DIR} && PATH={GUEST_DIR}/bin:$PATH sh {script})", test_deadline)
            if done is None:
                raise CheckFailedError(f"{suite} did not finish within the plan's test timeout")
            status, output = done
            found = [Case(suite, m["name"], m["result"], m["measurement"], m["units"]) for m in SIGNAL.finditer(output)]
            if status != 0:  # set -e stopped the definition: LAVA's lava-test-runner reports it the same way
                found.append(Case(suite, "run", "fail"))
            result.cases += found
            passed = sum(c.result == "pass" for c in found)
            event(f"{suite}: {passed} of {len(found)} case(s) passed" + (f", exit {status}" if status else ""))

    return session


def run_plan(
    boot_plan: BootPlan,
    name: str,
    plan: TestPlanFile,
    *,
    password: str | None,
    poweroff: str,
    timeout: float,
    on_event: Callable[[float, str], None],
    echo: Any = None,
) -> PlanResult:
    """Boot, run one plan, power off; the JUnit under <job>/results/<plan>.xml."""
    result = PlanResult(name, CheckResult(boot_plan.job.id, False, boot_plan.accel, "", Path()))
    result.check = check(
        boot_plan,
        plan_login(plan, password),
        session=plan_session(name, plan, result),
        log_name=f"boot-{name}.log",
        poweroff=poweroff,
        timeout=timeout,
        on_event=on_event,
        echo=echo,
    )
    if result.cases or result.check.ok:
        result.junit = write_junit(boot_plan.job.folder / "results" / f"{name}.xml", boot_plan.job.id, name, result)
    return result


def write_junit(path: Path, job_id: str, plan: str, result: PlanResult) -> Path:
    from ..buildjob import write_file

    root = ElementTree.Element("testsuites", name=f"{job_id} {plan}")
    suites: dict[str, ElementTree.Element] = {}
    for case in result.cases:
        if case.suite not in suites:
            suites[case.suite] = ElementTree.SubElement(root, "testsuite", name=case.suite)
        node = ElementTree.SubElement(suites[case.suite], "testcase", classname=case.suite, name=case.name)
        if case.result == "fail":
            ElementTree.SubElement(node, "failure", message="fail")
        elif case.result in ("skip", "unknown"):
            ElementTree.SubElement(node, "skipped", message=case.result)
    for suite in suites.values():
        cases = list(suite)
        suite.set("tests", str(len(cases)))
        suite.set("failures", str(sum(c.find("failure") is not None for c in cases)))
        suite.set("skipped", str(sum(c.find("skipped") is not None for c in cases)))
    path.parent.mkdir(parents=True, exist_ok=True)
    ElementTree.indent(root)
    write_file(path, ElementTree.tostring(root, encoding="unicode", xml_declaration=True) + "\n")
    return path
