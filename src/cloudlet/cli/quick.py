"""Plain `list` and `show` calls, answered from the engine's read path.

``cloudlet list`` and ``show`` are what users repeat most. Their plain spellings are
recognised here (nothing the full CLI would read otherwise: no help, no unknown or
repeated option, no value it would refuse) and answered from engine/read_model.py with
the full CLI's renderers (their Rich-free twins in cli/plain.py where Rich would add
nothing), so the output is the same; a read the read path leaves to the engine is not
answered here.
"""

from __future__ import annotations

from dataclasses import dataclass

from cloudlet.cli import plain
from cloudlet.cli.formats import LIST_NAMES, SHOW_NAMES, Output


@dataclass(frozen=True)
class ReadCall:
    """A read command in a spelling the quick path knows: what to show and how."""

    command: str  # "list" or "show"
    output: Output = Output.table
    all: bool = False
    name: str | None = None


def parse(argv: list[str]) -> ReadCall | None:
    """``argv`` as a list or show call, or None for anything else (the full CLI parses it)."""
    if not argv or argv[0] not in (*LIST_NAMES, *SHOW_NAMES):
        return None
    command = "list" if argv[0] in LIST_NAMES else "show"
    output: Output | None = None
    all_ = False
    names: list[str] = []
    words = iter(argv[1:])
    for word in words:
        value: str | None = None
        if word in ("-o", "--output"):
            value = next(words, None)
            if value is None:
                return None
        elif word.startswith("--output="):
            value = word.removeprefix("--output=")
        elif word.startswith("-o") and not word.startswith("--"):
            value = word[2:]
        elif word in ("-a", "--all") and command == "list" and not all_:
            all_ = True
            continue
        elif not word.startswith("-") and command == "show" and not names:
            names.append(word)
            continue
        else:
            return None
        if output is not None or value not in Output.__members__:
            return None
        output = Output(value)
    if command == "show" and not names:
        return None
    return ReadCall(command, output or Output.table, all_, names[0] if names else None)


def answer(call: ReadCall) -> bool:
    """Print what ``call`` asks for from the read path; False when the engine must answer."""
    from cloudlet.engine import read_model

    if call.command == "list":
        items = read_model.instances(include_process=call.all)
        if items is None:
            return False
        if call.output == Output.json:
            plain.print_json([vm.to_dict() for vm in items])
        elif not (plain.write_table(items, wide=call.output == Output.wide) if items
                  else plain.write_no_vms()):  # fmt: skip
            from cloudlet.cli import render  # a terminal, or text Rich reads: Rich prints

            render.instances_table(items, wide=call.output == Output.wide)
        return True
    assert call.name is not None
    vm = read_model.show(call.name)
    if vm is None:
        return False
    if call.output == Output.json:
        plain.print_json(vm.to_dict())
    elif not plain.write_detail(vm):
        from cloudlet.cli import render

        render.instance_detail(vm)
    return True
