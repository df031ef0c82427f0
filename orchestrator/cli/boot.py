"""The local boot verb: boot (a built job in QEMU on this host; --check logs in and runs a command)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..errors import BuildError, UserError
from ..output import print_json, print_line, print_table
from .app import JsonOpt, app, context

if TYPE_CHECKING:
    from ..models import TestPlanFile
    from ..teststage.boot import BootPlan, CheckResult


@app.command()
def boot(
    ctx: typer.Context,
    job_id: Annotated[
        str, typer.Argument(metavar="JOB", help="The job id: its folder under --out.", show_default=False)
    ],
    out: Annotated[
        Path, typer.Option("--out", envvar="CIPBUILD_OUT", metavar="DIR", help="Where `build` put each job's folder.")
    ] = Path("out"),
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Boot headless, wait for the login prompt, log in, run --command, power off. Exit 0 when the "
            "command succeeded, 3 when the prompt never came or the command failed (console in <job>/boot.log).",
        ),
    ] = False,
    plans: Annotated[
        list[str] | None,
        typer.Option(
            "--plan",
            "-p",
            metavar="PLAN",
            help="Run this test plan (testplans/PLAN.yml) without a lab, as LAVA would: boot, log in as the plan "
            "says, run its steps, JUnit in <job>/results/PLAN.xml. Repeatable, one boot each; implies --check.",
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the qemu command line only.")] = False,
    command: Annotated[
        str, typer.Option("--command", "-c", metavar="CMD", help="Smoke command --check runs once logged in.")
    ] = "uname -a",
    timeout: Annotated[
        float, typer.Option("--timeout", metavar="SECONDS", min=1, help="--check: the whole check's deadline.")
    ] = 300.0,
    user: Annotated[
        str,
        typer.Option(
            "--user", metavar="USER", help="--check: the user to log in as; empty: the console offers a shell."
        ),
    ] = "root",
    password: Annotated[
        str | None,
        typer.Option(
            "--password",
            metavar="PASSWORD",
            envvar="CIPBUILD_BOOT_PASSWORD",
            help="--check: the user's password [default: root; CIPsecurity@123 on security images, as "
            "isar-cip-core sets them].",
            show_default=False,
        ),
    ] = None,
    login_prompt: Annotated[
        str, typer.Option("--login-prompt", metavar="REGEX", help="--check: the login prompt, at a line's end.")
    ] = r"login:\s*$",
    password_prompt: Annotated[
        str, typer.Option("--password-prompt", metavar="REGEX", help="--check: the password prompt.")
    ] = r"[Pp]assword:\s*$",
    shell_prompt: Annotated[
        str, typer.Option("--shell-prompt", metavar="REGEX", help="--check: the shell prompt once logged in.")
    ] = r"[#$]\s*$",
    poweroff: Annotated[
        str,
        typer.Option(
            "--poweroff",
            metavar="CMD",
            help="--check: how the guest powers off after the command; empty: qemu is stopped.",
        ),
    ] = "poweroff",
    show_console: Annotated[
        bool, typer.Option("--show-console", help="--check: copy the guest's console to stderr as it comes.")
    ] = False,
    memory: Annotated[str, typer.Option("--memory", "-m", metavar="SIZE", help="Guest memory (qemu -m).")] = "1G",
    append: Annotated[
        str, typer.Option("--append", metavar="ARGS", help="More kernel arguments (kernel boots only).")
    ] = "",
    accel: Annotated[
        str,
        typer.Option(
            "--accel", metavar="auto|kvm|tcg", help="auto: KVM where it works (x86-64 on x86-64), else emulation."
        ),
    ] = "auto",
    ssh_port: Annotated[
        int,
        typer.Option(
            "--ssh-port",
            metavar="PORT",
            min=0,
            max=65535,
            help="Host port forwarded to the guest's ssh (interactive); 0: none.",
        ),
    ] = 22222,
    qemu_arg: Annotated[
        list[str] | None,
        typer.Option("--qemu-arg", metavar="ARG", help="One more word for qemu's command line (repeatable)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Boot a built job's image in QEMU on this host, as isar-cip-core's start-qemu.sh does: the
    board's machine, cpu and firmware, user networking, the serial console on this terminal (quit
    with Ctrl-A X). KVM where it works, software emulation elsewhere. The job's artifacts are never
    changed: the guest writes to a throw-away overlay.

    With --check it boots headless instead and checks that the image comes up: login prompt, log
    in, --command, power off, all within --timeout. With --plan it runs the catalogue's test plans
    the same way (a workshop laptop's `boot` and `ltp` smoke, no lab needed); plans whose tests
    come from a git repository run in a lab only (`cipbuild test run`).

    Exit codes: 0 ok, 2 unknown job, plan or nothing to boot, 3 the check or a test case failed,
    4 qemu missing or failing.
    """
    from ..teststage import boot as local

    for flag, pattern in (
        ("--login-prompt", login_prompt),
        ("--password-prompt", password_prompt),
        ("--shell-prompt", shell_prompt),
    ):
        _check_regex(flag, pattern)
    catalog = context(ctx).catalog()
    job = local.load_job(out, job_id, catalog)
    if plans:
        from ..teststage.localplan import local_plans

        chosen = local_plans(catalog, job, plans)
        check = True
    settings = local.Settings(check, memory, append, accel, ssh_port, tuple(qemu_arg or ()))
    plan = local.plan_boot(job, settings)
    if dry_run:
        _print_plan(plan, as_json)
        return
    if plans:
        _run_plans(plan, chosen, password, poweroff, timeout, show_console, as_json)
        return
    if not check:
        sys.stderr.write(f"cipbuild: booting {job.id}; quit with Ctrl-A X\n")
        print_line(plan.command_line())
        sys.stdout.flush()
        local.run_interactive(plan)
        return
    secret = local.default_password(job) if password is None else password
    login = local.Login(user, secret, login_prompt, password_prompt, shell_prompt)

    result = local.check(
        plan,
        login,
        command=command,
        poweroff=poweroff,
        timeout=timeout,
        on_event=_progress,
        echo=sys.stderr if show_console else None,
    )
    _print_result(result, as_json)
    if not result.ok:
        raise BuildError(result.error)


def _progress(seconds: float, text: str) -> None:
    sys.stderr.write(f"[{seconds:6.1f}s] {text}\n")
    sys.stderr.flush()


def _run_plans(
    plan: BootPlan,
    chosen: list[tuple[str, TestPlanFile]],
    password: str | None,
    poweroff: str,
    timeout: float,
    show_console: bool,
    as_json: bool,
) -> None:
    from ..teststage.localplan import run_plan

    results = []
    for name, testplan in chosen:
        _progress(0.0, f"plan {name}: {testplan.summary}")
        results.append(
            run_plan(
                plan,
                name,
                testplan,
                password=password,
                poweroff=poweroff,
                timeout=timeout,
                on_event=_progress,
                echo=sys.stderr if show_console else None,
            )
        )
    if as_json:
        print_json({"job": plan.job.id, "plans": [r.to_json() for r in results]})
    else:
        rows = [
            [
                r.plan,
                "ok" if r.ok else "failed",
                f"{sum(c.result == 'pass' for c in r.cases)}/{len(r.cases)}",
                f"{r.check.total:.1f} s",
                str(r.junit or r.check.log),
            ]
            for r in results
        ]
        print_table(None, ["plan", "result", "passed", "time", "results"], rows)
    failed = [r for r in results if not r.ok]
    if failed:
        raise BuildError("; ".join(r.error for r in failed))


def _check_regex(flag: str, pattern: str) -> None:
    import re

    try:
        re.compile(pattern)
    except re.error as exc:
        raise UserError(f"not a regular expression: {exc}", where=flag) from None


def _print_plan(plan: BootPlan, as_json: bool) -> None:
    if as_json:
        print_json(
            {
                "job": plan.job.id,
                "board": plan.job.board,
                "mode": plan.mode,
                "accel": plan.accel,
                "command": plan.command,
                "unpack": [{"from": str(src), "to": str(dest)} for src, dest in plan.unpack],
            }
        )
    else:
        print_line(plan.command_line())


def _print_result(result: CheckResult, as_json: bool) -> None:
    if as_json:
        print_json(result.to_json())
        return
    if not result.ok:
        return  # the error line says it
    login = f"login prompt after {result.to_login:.1f} s, " if result.to_login is not None else ""
    off = "powered off" if result.powered_off else "stopped"
    print_line(f"{result.job}: ok ({login}{result.total:.1f} s in all, {off}); console in {result.log}")
