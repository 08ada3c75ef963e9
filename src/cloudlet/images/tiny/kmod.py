"""Pick kernel modules and their dependencies out of an unpacked kernel package.

Debian's kernel package ships no modules.dep (its postinst runs depmod), so the
dependencies are read from each module's .modinfo; only the few modules the image
needs are copied, in an order where each module follows the modules it needs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from cloudlet.errors import NotFound
from cloudlet.images.tiny.elf import ElfFile

_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")


def module_name(path: str | Path) -> str:
    """Canonical module name of a .ko path (dashes and underscores are the same)."""
    name = Path(path).name
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.replace("-", "_")


class ModuleTree:
    """The modules directory of one kernel release (lib/modules/<kver>)."""

    def __init__(self, moddir: Path) -> None:
        self.moddir = moddir
        self.kver = moddir.name
        self.paths: dict[str, str] = {}
        for path in sorted(moddir.rglob("*.ko*")):
            if path.name.endswith(_SUFFIXES):
                self.paths[module_name(path)] = path.relative_to(moddir).as_posix()
        builtin = moddir / "modules.builtin"
        self.builtin: set[str] = set()
        if builtin.exists():
            self.builtin = {
                module_name(line.strip())
                for line in builtin.read_text().splitlines()
                if line.strip()
            }

    def depends(self, name: str) -> list[str]:
        """Direct dependencies of a module (from its .modinfo ``depends=``)."""
        path = self.moddir / self.paths[name]
        if not path.name.endswith(".ko"):
            raise NotFound(
                f"module {path.name} is compressed",
                hint="this builder reads only uncompressed .ko files",
            )
        info = ElfFile.from_path(path).modinfo()
        deps: list[str] = []
        for value in info.get("depends", []):
            deps.extend(module_name(d) for d in value.split(",") if d)
        return deps

    def resolve(self, wanted: Iterable[str], *, skip: Iterable[str] = ()) -> list[str]:
        """Modules to load for ``wanted``, dependencies first; built-ins are dropped.

        A name that is neither a module nor built in raises NotFound. Modules in
        ``skip`` (already loaded earlier, e.g. by the initramfs) are left out.
        """
        done: set[str] = {module_name(s) for s in skip}
        order: list[str] = []

        def visit(name: str, chain: tuple[str, ...]) -> None:
            if name in done or name in chain:
                return
            if name not in self.paths:
                if name in self.builtin:
                    done.add(name)
                    return
                raise NotFound(
                    f"kernel {self.kver} has no module or built-in driver {name}",
                    hint="pick a kernel package that provides it",
                )
            for dep in self.depends(name):
                visit(dep, (*chain, name))
            done.add(name)
            order.append(name)

        for name in wanted:
            visit(module_name(name), ())
        return order

    def modules_dep(self, names: Sequence[str], *, flat: bool = False) -> str:
        """A modules.dep for just these modules, in depmod's order.

        Each line lists all transitive dependencies so that loading them from the
        last to the first (as modprobe does) loads every module after its own deps.
        ``flat`` names files NAME.ko at the top of the directory (the initramfs).
        """

        def where(n: str) -> str:
            return f"{n}.ko" if flat else self.paths[n]

        lines: list[str] = []
        for name in names:
            deps = self.resolve([name])[:-1]
            line = where(name) + ":"
            if deps:
                line += " " + " ".join(where(d) for d in reversed(deps))
            lines.append(line)
        return "\n".join(lines) + "\n"
