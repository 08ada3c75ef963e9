"""Answers the shell's Tab from the app's declarations, without building a command.

Typer converts a command into a Click command through pydantic adapters, which costs
a tenth of a second: more than a completion may take. The line is walked here over
what the commands declare (names, option names, argument order, the completion
callbacks of cli/options.py) and the result is printed in Typer's format for the shell.
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, get_args, get_origin

import typer
from typer import _click as click
from typer.main import get_command_name
from typer.models import ArgumentInfo, CommandInfo, OptionInfo, ParamMeta
from typer.utils import get_params_from_function

from cloudlet.cli import complete

Candidates = list[tuple[str, str | None]]  # value and its help


@dataclass
class _Option:
    names: tuple[str, ...]
    takes_value: bool
    hidden: bool
    help: str | None
    complete: Callable[..., Any] | None
    key: str


@dataclass
class _Command:
    options: list[_Option]
    arguments: list[tuple[str, bool, Callable[..., Any] | None]]  # key, variadic, completer
    interspersed: bool = True


@dataclass
class LineContext:
    """What a completion callback sees: the values given earlier on the line."""

    params: dict[str, Any] = field(default_factory=dict)


def _is_bool(annotation: Any) -> bool:
    return annotation is bool or (
        get_origin(annotation) is not None and bool in get_args(annotation)
    )


def _is_list(annotation: Any) -> bool:
    if get_origin(annotation) is list:
        return True
    return any(get_origin(arg) is list for arg in get_args(annotation))


def _option(meta: ParamMeta, info: OptionInfo) -> _Option:
    flag = bool(getattr(info, "count", False) or _is_bool(meta.annotation))
    decls = [d for d in info.param_decls or () if isinstance(d, str)]
    names: list[str] = []
    for decl in decls:
        names.extend(part.strip() for part in decl.split("/") if part.strip().startswith("-"))
    if not names:
        dashed = meta.name.replace("_", "-")
        names = [f"--{dashed}", f"--no-{dashed}"] if flag else [f"--{dashed}"]
    return _Option(
        tuple(names), not flag, bool(info.hidden), info.help, info.autocompletion, meta.name
    )


def _command(callback: Callable[..., Any], info: CommandInfo | None) -> _Command:
    options = [_Option(("--help",), False, False, "Show this message and exit.", None, "help")]
    arguments: list[tuple[str, bool, Callable[..., Any] | None]] = []
    for meta in get_params_from_function(callback).values():
        if isinstance(meta.default, OptionInfo):
            options.append(_option(meta, meta.default))
        elif isinstance(meta.default, ArgumentInfo):
            arguments.append((meta.name, _is_list(meta.annotation), meta.default.autocompletion))
        elif _is_bool(meta.annotation):  # a plain default: Typer makes it an option
            options.append(_option(meta, OptionInfo()))
    settings = (info.context_settings or {}) if info else {}
    return _Command(options, arguments, settings.get("allow_interspersed_args", True))


def _children(app: typer.Typer) -> dict[str, tuple[str | None, CommandInfo | typer.Typer, bool]]:
    """Sub-commands by name: their help, what they are, and whether they are hidden."""
    found: dict[str, tuple[str | None, CommandInfo | typer.Typer, bool]] = {}
    for command in app.registered_commands:
        if command.callback is None:
            continue
        name = command.name or get_command_name(command.callback.__name__)
        doc = command.help or inspect.getdoc(command.callback) or ""
        found[name] = (doc.split("\n\n")[0].replace("\n", " "), command, command.hidden)
    for group in app.registered_groups:
        sub = group.typer_instance
        if group.name and sub is not None:
            text = group.help if isinstance(group.help, str) else sub.info.help
            help_text = text if isinstance(text, str) else None
            found[group.name] = (help_text, sub, bool(group.hidden))
    return found


def _call(callback: Callable[..., Any], ctx: LineContext, incomplete: str) -> Candidates:
    wanted = inspect.signature(callback).parameters
    kwargs: dict[str, Any] = {}
    if "ctx" in wanted:
        kwargs["ctx"] = ctx
    if "incomplete" in wanted:
        kwargs["incomplete"] = incomplete
    return [(str(value), None) for value in callback(**kwargs)]


def candidates(app: typer.Typer, args: list[str], incomplete: str) -> Candidates:
    """What may follow ``args`` (the words after ``cloudlet``) and starts with ``incomplete``."""
    node: typer.Typer | None = app
    callback = app.registered_callback.callback if app.registered_callback else None
    command = _command(callback, None) if callback else _command(lambda: None, None)
    ctx = LineContext()
    position = 0
    pending: _Option | None = None
    only_positional = False
    for word in args:
        if pending is not None:
            ctx.params[pending.key] = word
            pending = None
            continue
        if word == "--":
            only_positional = True
            continue
        if word.startswith("-") and not only_positional:
            name = word.split("=", 1)[0]
            match = next((o for o in command.options if name in o.names), None)
            if match is not None and match.takes_value and "=" not in word:
                pending = match
            continue
        if node is not None:
            child = _children(node).get(word)
            if child is None:
                return []
            target = child[1]
            if isinstance(target, typer.Typer):
                node = target
                sub_callback = target.registered_callback
                command = _command(
                    sub_callback.callback
                    if sub_callback and sub_callback.callback
                    else lambda: None,
                    None,
                )
            else:
                assert target.callback is not None
                node, command, position = None, _command(target.callback, target), 0
            continue
        if position < len(command.arguments):
            key, variadic, _ = command.arguments[position]
            ctx.params[key] = word
            if not variadic:
                position += 1
        if not command.interspersed:
            only_positional = True
    if pending is not None:
        return _call(pending.complete, ctx, incomplete) if pending.complete else []
    if incomplete.startswith("-") and not only_positional:
        if "=" in incomplete:
            name, _, value = incomplete.partition("=")
            match = next((o for o in command.options if name in o.names), None)
            if match is None or match.complete is None:
                return []
            return [(f"{name}={v}", h) for v, h in _call(match.complete, ctx, value)]
        return [
            (n, o.help)
            for o in command.options
            if not o.hidden
            for n in o.names
            if n.startswith(incomplete)
        ]
    if node is not None:
        return [
            (name, help_text)
            for name, (help_text, _, hidden) in _children(node).items()
            if not hidden and name.startswith(incomplete)
        ]
    if position < len(command.arguments):
        completer = command.arguments[position][2]
        return _call(completer, ctx, incomplete) if completer else []
    return []


def answer(app: typer.Typer, root: click.Command) -> int:
    """Print the completions the shell asked for in ``$_CLOUDLET_COMPLETE``; the exit code."""
    instruction, _, shell = os.environ.get(complete.COMPLETE_VAR, "").partition("_")
    from typer._click.shell_completion import CompletionItem, get_completion_class

    base = get_completion_class(shell)
    if base is None or instruction not in ("complete", "source"):
        sys.stderr.write(f"cloudlet: no completion for {shell or 'this shell'}\n")
        return 1

    class Fast(base):  # type: ignore[valid-type,misc]
        def get_completions(self, args: list[str], incomplete: str) -> list[CompletionItem]:
            try:
                found = candidates(app, args, incomplete)
            except Exception:  # a completion never prints an error into the command line
                found = []
            return [CompletionItem(value, help=text) for value, text in found]

    shell_complete = Fast(root, {}, "cloudlet", complete.COMPLETE_VAR)
    text = shell_complete.source() if instruction == "source" else shell_complete.complete()
    sys.stdout.write(text + "\n")
    return 0
