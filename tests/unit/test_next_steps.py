"""Messages below the CLI name no CLI command: hints are words, actions are NextSteps.

The REST API and the web console read the same errors and results as the CLI; a hint
that says "run 'cloudlet stop web1'" would tell an API client to type a command. The
CLI alone turns a ``NextStep`` into its command line (``cli/wording.py``).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from cloudlet import errors
from cloudlet.cli import wording
from cloudlet.cli.main import app
from cloudlet.cli.startup import lazy_root
from cloudlet.errors import Conflict
from cloudlet.next_steps import Step, step

SRC = Path(__file__).resolve().parents[2] / "src" / "cloudlet"


def _commands() -> list[str]:
    return sorted(lazy_root(app).list_commands(None))  # type: ignore[arg-type]


def _quoted_command() -> re.Pattern[str]:
    """``cloudlet CMD`` for any CLI command, except after "# " or an article ("a ")."""
    return re.compile(r"(?<![#a] )cloudlet (?:" + "|".join(map(re.escape, _commands())) + r")\b")


def _docstring_nodes(tree: ast.Module) -> set[int]:
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _offenders() -> dict[str, int]:
    """Per file below the CLI, the string constants that quote a CLI command.

    Docstrings and shell-script comments are text for developers, not messages."""
    quoted = _quoted_command()
    found: dict[str, int] = {}
    for path in sorted(SRC.rglob("*.py")):
        relative = path.relative_to(SRC).as_posix()
        if relative.startswith("cli/"):
            continue
        tree = ast.parse(path.read_text())
        docstrings = _docstring_nodes(tree)
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
                continue
            if id(node) in docstrings:
                continue
            text = "\n".join(
                line for line in node.value.splitlines() if not line.lstrip().startswith("#")
            )
            if quoted.search(text):
                found[relative] = found.get(relative, 0) + 1
    return found


def test_no_message_below_the_cli_names_a_cli_command() -> None:
    assert _offenders() == {}


def _error_classes() -> set[str]:
    return {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, errors.CloudletError)
    }


def _flag_offenders() -> list[str]:
    """Strings in the errors raised below the CLI that name a command-line flag."""
    flag = re.compile(r"(?<![\w-])--[a-z][a-z-]+")
    classes = _error_classes()
    found: list[str] = []
    for path in sorted(SRC.rglob("*.py")):
        relative = path.relative_to(SRC).as_posix()
        if relative.startswith("cli/"):
            continue
        for call in ast.walk(ast.parse(path.read_text())):
            if not isinstance(call, ast.Call):
                continue
            func = call.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            if name not in classes:
                continue
            found.extend(
                f"{relative}:{node.lineno}: {node.value!r}"
                for node in ast.walk(call)
                if isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and flag.search(node.value)
            )
    return found


def test_no_error_below_the_cli_names_a_cli_flag() -> None:
    """An API client has fields, not flags: errors name what to give in words."""
    assert _flag_offenders() == []


def test_the_scan_finds_a_quoted_command() -> None:
    """The scan is not blind: the forms hints used to take are caught."""
    quoted = _quoted_command()
    for text in ("see 'cloudlet logs'", "run cloudlet list", "(cloudlet delete web1)"):
        assert quoted.search(text), text
    assert not quoted.search("web1 is not a cloudlet export")


def test_every_step_has_a_cli_command() -> None:
    assert set(wording.COMMANDS) == set(Step)
    for kind, template in wording.COMMANDS.items():
        assert template.split()[1] in _commands(), kind


def test_a_step_becomes_a_quoted_command_with_placeholders_for_what_it_lacks() -> None:
    assert wording.command(step(Step.VM_START, vm="web1")) == "cloudlet start web1"
    assert wording.command(step(Step.VM_START, vm="a b")) == "cloudlet start 'a b'"
    assert wording.command(step(Step.VM_START)) == "cloudlet start VM"
    assert (
        wording.command(step(Step.VM_EXEC, vm="w", command="cat /etc/os-release"))
        == "cloudlet exec w -- cat /etc/os-release"
    )


@pytest.mark.parametrize(
    ("steps", "line"),
    [
        ((), "cannot pause web1: it is stopped: start it first"),
        (
            (step(Step.VM_START, vm="web1"),),
            "cannot pause web1: it is stopped: start it first (cloudlet start web1)",
        ),
        (
            (step(Step.VM_LOGS, vm="web1"), step(Step.VM_START, vm="web1")),
            "cannot pause web1: it is stopped: start it first "
            "(cloudlet logs web1 or cloudlet start web1)",
        ),
    ],
)
def test_the_cli_adds_its_commands_after_the_hint(steps: tuple, line: str) -> None:  # type: ignore[type-arg]
    error = Conflict("cannot pause web1: it is stopped", hint="start it first", next_steps=steps)
    assert wording.error_line(error) == line
