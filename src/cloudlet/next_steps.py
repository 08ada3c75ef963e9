"""What a user can do next, as data: each frontend words it its own way.

The engine serves the CLI, the REST API and the web console alike, so a hint it writes
says what to do in words ("start it first") and never quotes a command of one of them.
Where a concrete action helps, it adds a ``NextStep``: a stable ``Step`` key and the
names it needs. The CLI turns it into its command line (``cli/wording.py``), the API
returns it as data, the console as a button. A new step needs a new ``Step`` member and
a wording in every frontend; a test checks that none is missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Step(StrEnum):
    """The actions a hint may point at, named frontend-neutrally (``noun.verb``)."""

    VM_LIST = "vm.list"
    VM_SHOW = "vm.show"
    VM_CREATE = "vm.create"
    VM_START = "vm.start"
    VM_STOP = "vm.stop"
    VM_FORCE_DELETE = "vm.force_delete"
    VM_DELETE = "vm.delete"
    VM_RESUME = "vm.resume"
    VM_LOGS = "vm.logs"
    VM_EXEC = "vm.exec"
    VM_CONSOLE = "vm.console"
    SPEC_PLAN = "spec.plan"
    IMAGE_LIST = "image.list"
    IMAGE_CATALOG = "image.catalog"
    IMAGE_PULL = "image.pull"
    LICENCE_ADD = "licence.add"
    POOL_LIST = "pool.list"
    POOL_CREATE = "pool.create"
    VOLUME_LIST = "volume.list"
    VOLUME_DETACH = "volume.detach"
    SNAPSHOT_LIST = "snapshot.list"
    SNAPSHOT_CREATE = "snapshot.create"
    SNAPSHOT_DELETE = "snapshot.delete"
    CLONE = "vm.clone"
    NETWORK_LIST = "network.list"
    NIC_LIST = "nic.list"
    NIC_REMOVE = "nic.remove"
    PORT_LIST = "port.list"
    FIREWALL_LIST = "firewall.list"
    FIREWALL_GROUP_LIST = "firewall.group_list"
    FIREWALL_GROUP_CREATE = "firewall.group_create"
    FIREWALL_UNAPPLY = "firewall.unapply"
    BACKUP_CREATE = "backup.create"
    BACKUP_LIST = "backup.list"
    BACKUP_RUN_DUE = "backup.run_due"
    RESTORE_AS = "backup.restore_as"
    EXPORT = "vm.export"


@dataclass(frozen=True)
class NextStep:
    """One action a user can take next; ``args`` names what it acts on
    (``vm``, ``image``, ``volume``, ``snapshot``, ``network``, ``group``, ...)."""

    step: Step
    args: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {"step": self.step.value, "args": dict(self.args)}


def step(kind: Step, **args: str) -> NextStep:
    """A ``NextStep`` written the short way: ``step(Step.VM_START, vm=name)``."""
    return NextStep(kind, dict(args))
