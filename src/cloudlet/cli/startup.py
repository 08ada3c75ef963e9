"""The root command group, built for start-up speed.

Typer turns every declared command into a Click command (signatures, type hints, options)
before it parses anything: for cloudlet's seventy commands that is most of a second's
fraction on every call. The root group here is built from the app's own callback and
options only; a sub-command is converted when it is invoked, and ``--help`` lists the
commands from their declarations without converting them.
"""

from __future__ import annotations

import copy
import difflib
import inspect
from typing import TYPE_CHECKING

import typer
from typer import _click as click
from typer.core import TyperCommand, TyperGroup
from typer.main import (
    get_command_from_info,
    get_command_name,
    get_group,
    get_group_from_info,
    solve_typer_info_defaults,
)
from typer.models import CommandInfo, TyperInfo

if TYPE_CHECKING:
    from typer import _click


class LazyGroup(TyperGroup):
    """A group whose sub-commands are converted from ``source`` when first asked for."""

    source: typer.Typer | None = None

    def _declared(self) -> dict[str, CommandInfo | TyperInfo]:
        found: dict[str, CommandInfo | TyperInfo] = {}
        if self.source is None:
            return found
        for command in self.source.registered_commands:
            if command.callback is not None:
                found[command.name or get_command_name(command.callback.__name__)] = command
        for group in self.source.registered_groups:
            if group.name:
                found[group.name] = group
        return found

    def list_commands(self, ctx: _click.Context) -> list[str]:
        return [*self.commands, *(n for n in self._declared() if n not in self.commands)]

    def get_command(self, ctx: _click.Context, cmd_name: str) -> _click.Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        info = self._declared().get(cmd_name)
        if info is None or self.source is None:
            return None
        command: _click.Command
        if isinstance(info, CommandInfo):
            command = get_command_from_info(
                info,
                pretty_exceptions_short=self.source.pretty_exceptions_short,
                rich_markup_mode=self.rich_markup_mode,
            )
        else:
            command = get_group_from_info(
                info,
                pretty_exceptions_short=self.source.pretty_exceptions_short,
                rich_markup_mode=self.rich_markup_mode,
                suggest_commands=self.suggest_commands,
            )
        self.commands[cmd_name] = command
        return command

    def resolve_command(
        self, ctx: _click.Context, args: list[str]
    ) -> tuple[str | None, _click.Command | None, list[str]]:
        """Click's lookup, with "did you mean" over every declared name (none is built)."""
        try:
            return self._click_resolve_command(ctx, args)
        except click.exceptions.UsageError as error:
            matches = difflib.get_close_matches(args[0], self.list_commands(ctx)) if args else []
            if matches:
                suggestions = " or ".join(f"'{m}'" for m in matches)
                error.message = f"{error.message.rstrip('.')}. Did you mean {suggestions}?"
            raise

    def format_commands(self, ctx: _click.Context, formatter: _click.HelpFormatter) -> None:
        """The command list from the declarations: names and first lines, nothing built."""
        stubs = [s for s in (self._stub(n) for n in self.list_commands(ctx)) if not s.hidden]
        if not stubs:
            return
        limit = formatter.width - 6 - max(len(s.name or "") for s in stubs)
        with formatter.section("Commands"):
            formatter.write_dl([(s.name or "", s.get_short_help_str(limit)) for s in stubs])

    def _stub(self, name: str) -> _click.Command:
        """A help-only stand-in for one command (its name and help, no parameters)."""
        if name in self.commands:
            return self.commands[name]
        info = self._declared()[name]
        if isinstance(info, CommandInfo):
            doc = info.help if info.help is not None else inspect.getdoc(info.callback)
            short, hidden = info.short_help, info.hidden
        else:
            solved = solve_typer_info_defaults(info)
            doc, short, hidden = solved.help, solved.short_help, bool(solved.hidden)
        # the whole first paragraph, wrapped by the formatter rather than cut at "..."
        summary = short or (doc or "").strip().split("\n\n")[0].replace("\n", " ")
        return TyperCommand(name=name, help=doc, short_help=summary, hidden=hidden)


def lazy_root(app: typer.Typer) -> TyperGroup:
    """The root Click group of ``app``: its callback and options now, commands on demand."""
    shell = copy.copy(app)
    shell.registered_commands = []
    shell.registered_groups = []
    shell.info = copy.copy(app.info)
    shell.info.cls = LazyGroup
    group = get_group(shell)
    assert isinstance(group, LazyGroup)
    group.source = app
    return group
