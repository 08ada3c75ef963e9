"""`cloudlet shell` and the terminal of `cloudlet exec -t`: parse, call, relay bytes."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Annotated

import typer

from cloudlet.cli.options import VmArg
from cloudlet.cli.signals import Terminated, unwind_on_signals
from cloudlet.errors import InvalidInput

if TYPE_CHECKING:
    from cloudlet.cli import console
    from cloudlet.cli.render import err
    from cloudlet.engine.engine import Engine
    from cloudlet.engine.factory import open_engine
    from cloudlet.host.run import exec_replace
else:
    from cloudlet.cli.lazy import lazy

    console = lazy("cloudlet.cli.console")  # sockets and selectors: only for a session
    exec_replace = lazy("cloudlet.host.run", "exec_replace")
    err = lazy("cloudlet.cli.render", "err")
    open_engine = lazy("cloudlet.engine.factory", "open_engine")

# The exit code when the user detaches (Ctrl-]): the program in the guest was ended.
EXIT_DETACHED = 255

UserOpt = Annotated[
    str | None,
    typer.Option("--user", "-u", help="run as this guest user, with its HOME and environment"),
]


def run_on_terminal(
    engine: Engine, name: str, argv: list[str], *, user: str | None, greet: bool
) -> int:
    """Run ``argv`` (empty: a login shell) on a terminal in the guest, relay this
    terminal to it, and return its exit code (EXIT_DETACHED after Ctrl-])."""
    if not os.isatty(0):
        raise InvalidInput(
            "a terminal session needs a terminal on stdin",
            hint="run it in a terminal, or use exec without -t (with -i for stdin)",
        )
    size = os.get_terminal_size(0)
    try:
        with unwind_on_signals():
            session = engine.open_terminal(
                name,
                argv,
                user=user,
                rows=size.lines,
                cols=size.columns,
                term=os.environ.get("TERM"),
            )
            with session:
                if greet:
                    err.print(f"[dim]connected to {name}; detach with {console.DETACH_KEY}[/]")
                detached = console.relay(session, ended=lambda: session.exit_code() is not None)
                code = None if detached else session.exit_code()
    except Terminated as stop:
        return 128 + stop.signum
    if code is None:
        err.print(f"[yellow]detached from {name}: the program in the guest was ended[/]")
        return EXIT_DETACHED
    return code


def shell(name: VmArg, user: UserOpt = None) -> None:
    """A login shell in the VM as its login user: over SSH when the VM has SSH, else
    through the guest agent on a terminal (detach with Ctrl-])."""
    engine = open_engine()
    access = engine.shell_access(name, user)
    if access.ssh_argv is not None:
        exec_replace(access.ssh_argv)
    raise typer.Exit(run_on_terminal(engine, name, [], user=access.user, greet=True))


def register(app: typer.Typer) -> None:
    app.command(context_settings={"allow_interspersed_args": False})(shell)
