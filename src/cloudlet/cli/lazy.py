"""Names a CLI module uses, imported on their first use.

``cloudlet --help`` and ``cloudlet --version`` load every command module but run none of
them; a module that imported Rich, the engine or the database at its top would make every
command pay for them. A module declares such a name twice: the real import under
``TYPE_CHECKING`` (for mypy) and ``lazy(...)`` for the run, which imports on first use.
"""

from __future__ import annotations

import importlib
from typing import Any


class Lazy:
    """Stands for ``module`` (or ``module.name``) and imports it on first use.

    Nothing is cached: the lookup goes through the module each time, so a test that
    replaces the attribute on the module is seen by every lazy holder of it.
    """

    __slots__ = ("_module", "_name")

    def __init__(self, module: str, name: str | None = None) -> None:
        self._module = module
        self._name = name

    def resolve(self) -> Any:
        """The real module or attribute (imported now if it was not yet)."""
        target = importlib.import_module(self._module)
        return target if self._name is None else getattr(target, self._name)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.resolve(), attr)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)

    def __repr__(self) -> str:
        where = self._module + (f".{self._name}" if self._name else "")
        return f"<lazy {where}>"


def lazy(module: str, name: str | None = None) -> Any:
    """``module`` or ``module.name``, imported when it is first used."""
    return Lazy(module, name)
