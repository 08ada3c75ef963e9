"""The CLI's own words for the engine's next steps: each ``Step`` as a command line.

The engine says what to do in words and adds ``NextStep`` data (see
``cloudlet/next_steps.py``); only here does it become ``cloudlet start web1``. A name a
step does not carry shows as its placeholder in capitals (``cloudlet start VM``).
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable

from cloudlet.errors import CloudletError
from cloudlet.next_steps import NextStep, Step

COMMANDS: dict[Step, str] = {
    Step.VM_LIST: "cloudlet list",
    Step.VM_SHOW: "cloudlet show {vm}",
    Step.VM_CREATE: "cloudlet create {vm}",
    Step.VM_START: "cloudlet start {vm}",
    Step.VM_STOP: "cloudlet stop {vm}",
    Step.VM_DELETE: "cloudlet delete {vm}",
    Step.VM_FORCE_DELETE: "cloudlet delete --force {vm}",
    Step.VM_RESUME: "cloudlet resume {vm}",
    Step.VM_LOGS: "cloudlet logs {vm}",
    Step.VM_EXEC: "cloudlet exec {vm} -- {command}",
    Step.VM_CONSOLE: "cloudlet console {vm}",
    Step.SPEC_PLAN: "cloudlet plan {file}",
    Step.IMAGE_LIST: "cloudlet image list",
    Step.IMAGE_CATALOG: "cloudlet image catalog",
    Step.IMAGE_PULL: "cloudlet image pull {image}",
    Step.LICENCE_ADD: "cloudlet license add {licence} --seats {seats}",
    Step.POOL_LIST: "cloudlet pool list",
    Step.POOL_CREATE: "cloudlet pool create {pool} --path {path}",
    Step.VOLUME_LIST: "cloudlet volume list",
    Step.VOLUME_DETACH: "cloudlet volume detach {volume}",
    Step.SNAPSHOT_LIST: "cloudlet snapshot list {vm}",
    Step.SNAPSHOT_CREATE: "cloudlet snapshot create {vm} {snapshot}",
    Step.SNAPSHOT_DELETE: "cloudlet snapshot delete {vm} {snapshot}",
    Step.CLONE: "cloudlet clone {vm} {new} --snapshot {snapshot}",
    Step.NETWORK_LIST: "cloudlet network list",
    Step.NIC_LIST: "cloudlet nic list {vm}",
    Step.NIC_REMOVE: "cloudlet nic remove {vm} {network}",
    Step.PORT_LIST: "cloudlet port list {vm}",
    Step.FIREWALL_LIST: "cloudlet firewall list {vm}",
    Step.FIREWALL_GROUP_LIST: "cloudlet firewall group list",
    Step.FIREWALL_GROUP_CREATE: "cloudlet firewall group create {group}",
    Step.FIREWALL_UNAPPLY: "cloudlet firewall unapply {vm} {group}",
    Step.BACKUP_CREATE: "cloudlet backup create {vm}",
    Step.BACKUP_LIST: "cloudlet backup list {vm}",
    Step.BACKUP_RUN_DUE: "cloudlet backup run-due",
    Step.RESTORE_AS: "cloudlet restore {vm} --as {new}",
    Step.EXPORT: "cloudlet export {vm} {file}",
}


class _Placeholders(dict[str, str]):
    """Quotes the names a step carries; one it lacks shows as its placeholder."""

    def __missing__(self, key: str) -> str:
        return key.upper()


def command(next_step: NextStep) -> str:
    """The command line that carries out ``next_step`` (``cloudlet start web1``)."""
    quoted = _Placeholders(
        # "command" is a command line already, to run as it stands in the guest
        {k: v if k == "command" else shlex.quote(v) for k, v in next_step.args.items()}
    )
    return COMMANDS[next_step.step].format_map(quoted)


def with_commands(text: str, steps: Iterable[NextStep]) -> str:
    """``text`` followed by the commands of ``steps`` in brackets, if there are any."""
    commands = [command(s) for s in steps]
    return f"{text} ({' or '.join(commands)})" if commands else text


def error_line(error: CloudletError) -> str:
    """The error in one line for a terminal: message, hint in words, then the commands."""
    return with_commands(error.one_line(), error.next_steps)
