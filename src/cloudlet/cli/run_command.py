"""`cloudlet run`: a throw-away VM that runs one program with the CLI's own stdio."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import termios
import tty
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cloudlet.cli.signals import SIGNALS, Terminated, raise_terminated
from cloudlet.errors import InvalidInput
from cloudlet.spec import process as p
from cloudlet.spec.units import parse_size_with_unit

if TYPE_CHECKING:
    from cloudlet.cli.render import err
    from cloudlet.engine.process_vms import RunningProcessVM
    from cloudlet.process.relay import Outcome
else:
    from cloudlet.cli.lazy import lazy

    err = lazy("cloudlet.cli.render", "err")

EXIT_TIMEOUT = 124
EXIT_RUN_FAILED = 125
DEFAULT_IMAGE = "tiny"


def split_image_and_command(args: list[str], raw_argv: list[str]) -> tuple[str, list[str]]:
    """IMAGE is optional: ``run -- CMD`` uses the default image, ``run IMG -- CMD`` IMG.

    Click keeps ``--`` among the words when a word came before it, and drops it when
    it came first; then the raw argv tells how many words follow it.
    """
    if "--" in args:
        at = args.index("--")
        before, command = args[:at], args[at + 1 :]
        if len(before) > 1:
            raise InvalidInput(
                f"one image before --, not {len(before)}: {' '.join(before)}",
                hint="cloudlet run IMAGE -- PROGRAM ARGS...",
            )
        return (before[0] if before else DEFAULT_IMAGE), command
    if "--" in raw_argv:
        command = raw_argv[raw_argv.index("--") + 1 :]
        before = args[: len(args) - len(command)] if command else list(args)
        if len(before) > 1:
            raise InvalidInput(
                f"one image before --, not {len(before)}: {' '.join(before)}",
                hint="cloudlet run IMAGE -- PROGRAM ARGS...",
            )
        return (before[0] if before else DEFAULT_IMAGE), command
    if not args:
        raise InvalidInput("no program to run", hint="cloudlet run tiny -- uname -a")
    return args[0], args[1:]


@contextlib.contextmanager
def _raw_terminal(fd: int) -> Iterator[None]:
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def run(
    args: Annotated[list[str], typer.Argument(help="[IMAGE] -- PROGRAM [ARGS...]")],
    name: Annotated[str | None, typer.Option(help="name the VM (default run-XXXXXX)")] = None,
    cpus: Annotated[int, typer.Option(min=1, max=64, help="vCPUs")] = 1,
    memory: Annotated[str, typer.Option(help="memory, e.g. 512M or 2G")] = "512M",
    arch: Annotated[
        str | None, typer.Option(help="guest architecture (emulated if foreign)")
    ] = None,
    share: Annotated[
        list[str] | None,
        typer.Option("--share", help="HOST[:GUEST][:ro] live share (virtiofs); repeatable"),
    ] = None,
    copy_in: Annotated[
        list[str] | None, typer.Option("--copy-in", help="HOST:GUEST copied in before; repeatable")
    ] = None,
    copy_out: Annotated[
        list[str] | None,
        typer.Option("--copy-out", help="GUEST:HOST copied out after; repeatable"),
    ] = None,
    net: Annotated[str, typer.Option("--net", help="none (default) or nat")] = "none",
    sandbox: Annotated[
        bool,
        typer.Option(help="no network, no guest agent, read-only shares only"),
    ] = False,
    keep: Annotated[bool, typer.Option(help="keep the VM afterwards (a stopped VM)")] = False,
    boot: Annotated[
        bool, typer.Option(help="boot the image's own init and services first (slower)")
    ] = False,
    interactive: Annotated[
        bool, typer.Option("--interactive", "-i", help="forward stdin even from a terminal")
    ] = False,
    tty_: Annotated[
        bool, typer.Option("--tty", "-t", help="give the program a terminal (use with -i)")
    ] = False,
    env: Annotated[
        list[str] | None, typer.Option("--env", "-e", help="NAME=VALUE; repeatable")
    ] = None,
    workdir: Annotated[
        str | None, typer.Option("--workdir", "-w", help="the program's directory in the guest")
    ] = None,
    timeout: Annotated[
        str | None, typer.Option(help="destroy the VM after this long (90s, 10m, 1h): exit 124")
    ] = None,
) -> None:
    """Run one program in a throw-away VM; its output, its exit code, nothing left behind.

    cloudlet run tiny -- uname -a ; cloudlet run debian-12 --share .:/work -- make -C /work
    """
    # Imported here: every other command's start-up would pay for them.
    from cloudlet.engine.factory import open_engine
    from cloudlet.process.relay import Relay

    image, command = split_image_and_command(list(args), sys.argv)
    cwd = Path.cwd()
    stdin_tty = os.isatty(0)
    if tty_ and not stdin_tty:
        raise InvalidInput("--tty needs a terminal on stdin", hint="drop -t, or run in a terminal")
    shares = tuple(p.parse_share(s, cwd) for s in share or [])
    size = os.get_terminal_size(0) if tty_ else os.terminal_size((80, 24))
    spec = p.ProcessSpec(
        image=image,
        argv=tuple(command),
        cpus=cpus,
        memory=parse_size_with_unit(memory, what="memory", example_unit="M"),
        name=name,
        arch=arch,
        shares=shares,
        copy_in=tuple(p.parse_copy_in(c, cwd) for c in copy_in or []),
        copy_out=tuple(p.parse_copy_out(c, cwd) for c in copy_out or []),
        network=net,
        sandbox=sandbox,
        keep=keep,
        boot=boot,
        tty=tty_,
        env=tuple(p.parse_env(e) for e in env or []),
        workdir=p.guest_path(workdir, "--workdir") if workdir else _default_workdir(shares, cwd),
        timeout=p.parse_duration(timeout) if timeout else None,
        terminal_size=(size.lines, size.columns),
    )
    forward_stdin = tty_ or interactive or not stdin_tty

    def attach(vm: RunningProcessVM) -> Outcome:
        for notice in vm.notices:
            err.print(f"[yellow]warning:[/] {notice}")
        relay = Relay(
            vm.conns,
            stdin_fd=0 if forward_stdin else None,
            stdout_fd=1,
            stderr_fd=2,
            tty=tty_,
            copy_in=spec.copy_in,
            copy_out=spec.copy_out,
            copy_limits=vm.copy_limits,
        )
        if tty_:
            with _raw_terminal(0):
                return relay.run(spec.timeout)
        return relay.run(spec.timeout)

    # SIGTERM and SIGHUP unwind, so the VM is destroyed before the CLI exits.
    for signum in SIGNALS:
        signal.signal(signum, raise_terminated)
    try:
        outcome = open_engine().run(spec, attach)
    except Terminated as stop:
        raise typer.Exit(128 + stop.signum) from None
    raise typer.Exit(_exit_code(outcome, spec, keep))


def _default_workdir(shares: tuple[p.ShareSpec, ...], cwd: Path) -> str:
    """Where the program starts: the current directory's share, if it is shared."""
    for share in shares:
        if share.host == cwd:
            return share.guest
    return "/"


def _exit_code(outcome: Outcome, spec: p.ProcessSpec, keep: bool) -> int:
    for note in outcome.notes:
        err.print(f"[yellow]warning:[/] {note}")
    if outcome.timed_out:
        err.print(
            f"[red]error:[/] the program ran longer than --timeout ({spec.timeout:g} s); "
            f"its VM was {'stopped and kept' if keep else 'destroyed'}"
        )
        return EXIT_TIMEOUT
    if outcome.exit_code is None:
        err.print(
            f"[red]error:[/] {outcome.failure or 'the run failed'}: "
            "run again with --keep and see 'cloudlet logs NAME'"
        )
        return EXIT_RUN_FAILED
    code = outcome.exit_code
    for index, copy in enumerate(spec.copy_out):
        state = outcome.copy_out.get(index, "missing")
        if state != "ok":
            reason = "does not exist in the guest" if state == "missing" else "could not be copied"
            err.print(f"[red]error:[/] --copy-out {copy.guest} {reason}")
            code = code or 1
    return code
