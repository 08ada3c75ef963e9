"""The layers of the design's map (DESIGN.md, "Layers"), checked on the source.

Every import counts: those inside functions and under TYPE_CHECKING too, and importlib
calls with a literal name. Data flows one way: frontends (cli) call the engine; the
engine decides and tells a driver; spec is pure data; the one-concern packages below
serve the engine and the drivers; host is the bottom. A failure names the module, the
line and the import.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

LOWER = (
    "spec",
    "store",
    "host",
    "storage",
    "network",
    "images",
    "cloudinit",
    "guest",
    "process",
    "backup",
    "driver",
)
# Each one concern, used by the engine and the drivers, never using a driver itself.
SERVICES = ("storage", "network", "images", "cloudinit", "guest", "process", "backup")
# What pure or bottom layers may import of cloudlet, besides their own package.
ONLY = {
    # spec's errors may carry next steps: pure data too, importing nothing of cloudlet
    "spec": ("cloudlet.errors", "cloudlet.next_steps"),
    "store": ("cloudlet.errors",),
    "host": ("cloudlet.errors", "cloudlet.redact"),  # host commands are logged redacted
    "errors": ("cloudlet.next_steps",),  # an error may carry the steps that fix it
    "next_steps": (),
}
# Issue 13's engine split removed the last import cycle (the backup modules'): this set
# must stay empty. A new cycle is fixed by moving code, never by listing it here.
KNOWN_ENGINE_CYCLES: set[str] = set()


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, e.g. cloudlet.guest.landing
    line: int
    target: str  # what it imports, resolved to an absolute dotted name

    def __str__(self) -> str:
        return f"{self.module}:{self.line} imports {self.target}"


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(source: str, module: str, is_package: bool) -> Iterator[Import]:
    """Every import in ``source``, wherever it sits; ``from a import b`` yields a and a.b."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join([*base, *([node.module] if node.module else [])])
            else:
                name = node.module or ""
            yield Import(module, node.lineno, name)
            for alias in node.names:
                yield Import(module, node.lineno, f"{name}.{alias.name}")
        elif (
            isinstance(node, ast.Call)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (isinstance(node.func, ast.Name) and node.func.id == "__import__")
            )
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield Import(module, node.lineno, node.args[0].value)


def scan(root: Path) -> list[Import]:
    found: list[Import] = []
    for path in sorted((root / "cloudlet").rglob("*.py")):
        module = module_name(path, root)
        found += imports_of(path.read_text(), module, path.name == "__init__.py")
    return found


@pytest.fixture(scope="module")
def imports() -> list[Import]:
    found = scan(SRC)
    assert len({i.module for i in found}) > 100, "the scan must see the whole package"
    return found


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(found: Iterable[Import], source: str, forbidden: str) -> list[str]:
    return sorted(
        {str(i) for i in found if within(i.module, source) and within(i.target, forbidden)}
    )


@pytest.mark.parametrize("layer", LOWER)
def test_lower_layers_never_import_the_engine_or_a_frontend(
    imports: list[Import], layer: str
) -> None:
    for upper in ("cloudlet.engine", "cloudlet.cli"):
        assert violations(imports, f"cloudlet.{layer}", upper) == []


def test_only_the_qemu_driver_and_the_engine_factory_import_the_qemu_driver(
    imports: list[Import],
) -> None:
    # The factory wires the QEMU driver in; the read path (engine/read_model.py) reads the
    # runtime records and power state that driver keeps, without building it.
    allowed = ("cloudlet.driver.qemu", "cloudlet.engine.factory", "cloudlet.engine.read_model")
    bad = [
        str(i)
        for i in imports
        if within(i.target, "cloudlet.driver.qemu")
        and not any(within(i.module, a) for a in allowed)
    ]
    assert bad == []


@pytest.mark.parametrize("frontend", ["cloudlet.cli", "cloudlet.api"])
def test_the_engine_never_imports_a_frontend(imports: list[Import], frontend: str) -> None:
    assert violations(imports, "cloudlet.engine", frontend) == []


@pytest.mark.parametrize("frontend", ["cloudlet.cli", "cloudlet.api"])
@pytest.mark.parametrize(
    "below", ["cloudlet.driver", "cloudlet.storage", "cloudlet.network", "cloudlet.store"]
)
def test_frontends_go_through_the_engine(imports: list[Import], frontend: str, below: str) -> None:
    assert violations(imports, frontend, below) == []


@pytest.mark.parametrize("service", SERVICES)
def test_one_concern_packages_never_use_a_driver(imports: list[Import], service: str) -> None:
    assert violations(imports, f"cloudlet.{service}", "cloudlet.driver") == []


@pytest.mark.parametrize("layer", sorted(ONLY))
def test_pure_and_bottom_layers_import_almost_nothing(imports: list[Import], layer: str) -> None:
    own = f"cloudlet.{layer}"
    bad = [
        str(i)
        for i in imports
        if within(i.module, own)
        and within(i.target, "cloudlet")
        and i.target != "cloudlet"
        and not within(i.target, own)
        and not any(within(i.target, ok) for ok in ONLY[layer])
    ]
    assert bad == []


def import_graph(found: Iterable[Import], modules: set[str]) -> dict[str, set[str]]:
    """Module -> the modules it imports (a name resolves to the longest module it names).

    ``from pkg import sub`` inside pkg's own modules is the package re-export pattern,
    not a dependency on pkg's __init__: an edge to one's own package is left out.
    """
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for i in found:
        target = i.target
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != i.module and not within(i.module, target):
            graph[i.module].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(component)
    return found


def test_no_import_cycles(imports: list[Import]) -> None:
    modules = {i.module for i in imports} | {
        module_name(p, SRC) for p in (SRC / "cloudlet").rglob("*.py")
    }
    unexpected = [
        sorted(c) for c in cycles(import_graph(imports, modules)) if not c <= KNOWN_ENGINE_CYCLES
    ]
    assert unexpected == []


# ------------------------------------------------------------------ the checker itself


def test_the_scan_sees_imports_inside_functions_relative_and_by_name(tmp_path: Path) -> None:
    """The checks above are only as good as the scan: it must catch every way in."""
    package = tmp_path / "cloudlet" / "guest"
    package.mkdir(parents=True)
    (tmp_path / "cloudlet" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("from ..engine import factory\n")
    (package / "files.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    import cloudlet.cli.main\n"
        "def late():\n"
        "    from cloudlet.driver.qemu.agent import connect\n"
        "    import importlib\n"
        "    importlib.import_module('cloudlet.engine.engine')\n"
        "from . import landing\n"
    )
    found = scan(tmp_path)
    assert violations(found, "cloudlet.guest", "cloudlet.engine") == [
        "cloudlet.guest.files:7 imports cloudlet.engine.engine",
        "cloudlet.guest:1 imports cloudlet.engine",
        "cloudlet.guest:1 imports cloudlet.engine.factory",
    ]
    assert violations(found, "cloudlet.guest", "cloudlet.cli") == [
        "cloudlet.guest.files:3 imports cloudlet.cli.main"
    ]
    assert "cloudlet.guest.files:5 imports cloudlet.driver.qemu.agent.connect" in {
        str(i) for i in found
    }
    assert "cloudlet.guest.files:8 imports cloudlet.guest.landing" in {str(i) for i in found}


def test_the_cycle_finder_finds_cycles_and_only_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}, "f": set()}
    assert cycles(graph) == [{"a", "b", "c"}]
    found = [Import("p.x", 1, "p.y.thing"), Import("p.y", 1, "p.x"), Import("p.y", 2, "p")]
    assert cycles(import_graph(found, {"p", "p.x", "p.y"})) == [{"p.x", "p.y"}]
