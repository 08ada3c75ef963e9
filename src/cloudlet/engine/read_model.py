"""The read path: `list` and `show` answered from the state database with sqlite3 alone.

Opening the engine costs SQLAlchemy, pydantic and every service; reading what VMs exist
needs none of them. This builds the same InstanceView the engine builds, from a read-only
connection and the runtime records, and checks the state the same way the engine does.
Whenever the engine would do more than read (finish an interrupted operation, reap a
process VM, sweep staging, tighten modes, migrate the schema, record a state the QEMU
process no longer matches) or the record holds what this path does not know, it answers
None and the caller asks the engine: a read never writes, and never differs from it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from cloudlet.config import Settings
from cloudlet.engine import locks, state_modes
from cloudlet.engine.views import InstanceView
from cloudlet.errors import CloudletError
from cloudlet.spec.states import LIVE_STATES, VMState
from cloudlet.storage import staging
from cloudlet.store import readonly
from cloudlet.store.revision import HEAD_REVISION

# The guest's address on QEMU's user-mode network (slirp, and passt keeps slirp's).
USER_MODE_ADDRESS = "10.0.2.15"
# What the spec models dump for a VM's network: a record with other keys (older or newer
# than this cloudlet) goes to the engine, which fills in defaults through the models.
# A unit test keeps these equal to the models' fields.
NETWORK_FIELDS = ("mode", "restrict", "ssh_forward", "nics", "ports")
NIC_FIELDS = ("network",)
PORT_FIELDS = ("host_port", "guest_port", "proto", "network")
ACCESS_FIELDS = ("user", "ssh_public_keys", "ssh_private_key")
_COLUMNS = (
    "id, name, state, spec_json, image, image_path, type_name, cpus, memory, disk_size, "
    "arch, location, ssh_port, accel, last_error, kind, created_at"
)


_T = TypeVar("_T")


class _Unanswered(Exception):
    """The engine would do more than read here, or would read it differently."""


def instances(*, include_process: bool = False) -> list[InstanceView] | None:
    """The engine's ``instances()``, or None when only the engine can answer."""
    return _answer(lambda reader: reader.instances(include_process))


def show(name: str) -> InstanceView | None:
    """The engine's ``show(name)``, or None (no such VM, a bad name: the engine says so)."""
    return _answer(lambda reader: reader.show(name))


def _answer(ask: Callable[[_Reader], _T]) -> _T | None:
    try:
        settings = Settings.load()
        settings.paths.check_socket_room()
        if not settings.paths.database.is_file() or state_modes.loose(settings):
            return None
        db = readonly.connect(settings.paths.database, timeout=1.0)
        db.row_factory = sqlite3.Row
    except (CloudletError, OSError, sqlite3.Error):
        return None
    try:
        reader = _Reader(settings, db)
        reader.check_nothing_to_recover()
        return ask(reader)
    except (_Unanswered, CloudletError, OSError, sqlite3.Error, ValueError, TypeError):
        return None
    finally:
        db.close()


class _Reader:
    """One read-only pass over the database and the runtime records."""

    def __init__(self, settings: Settings, db: sqlite3.Connection) -> None:
        self.settings = settings
        self.paths = settings.paths
        self.db = db

    def _rows(self, sql: str, *args: object) -> list[sqlite3.Row]:
        return list(self.db.execute(sql, args))

    def check_nothing_to_recover(self) -> None:
        """What opening the engine would change first: none of it may be due."""
        revision = self._rows("SELECT version_num FROM alembic_version")
        if [tuple(r) for r in revision] != [(HEAD_REVISION,)]:
            raise _Unanswered("the schema is to be migrated")
        if self._rows("SELECT 1 FROM operations WHERE status = 'running' LIMIT 1"):
            raise _Unanswered("an operation may be interrupted")
        if self._rows("SELECT 1 FROM instances WHERE kind = 'process' LIMIT 1"):
            raise _Unanswered("a process VM may be reaped")
        pools = [Path(r["path"]) for r in self._rows("SELECT path FROM pools WHERE kind = 'dir'")]
        if staging.pending(self.paths.images, staging.LEGACY_IMAGE_STAGING) or any(
            staging.pending(p, staging.LEGACY_VOLUME_STAGING) for p in pools
        ):
            raise _Unanswered("staging is to be swept")

    def instances(self, include_process: bool) -> list[InstanceView]:
        where = "" if include_process else " WHERE kind = 'system'"
        rows = self._rows(f"SELECT {_COLUMNS} FROM instances{where} ORDER BY name")
        return [self._view(self._reconciled(row)) for row in rows]

    def show(self, name: str) -> InstanceView:
        rows = self._rows(f"SELECT {_COLUMNS} FROM instances WHERE name = ?", name)
        if not rows:
            raise _Unanswered("the engine names the VM that is closest")
        return self._view(self._reconciled(rows[0]))

    def _reconciled(self, row: sqlite3.Row) -> sqlite3.Row:
        """The row as the engine's reconcile leaves it, when it leaves it unchanged."""
        vm_id, name = row["id"], row["name"]
        if row["state"] not in LIVE_STATES:
            return row
        with locks.try_hold(self.paths.locks, name) as held:
            if not held:
                return row  # another command is working on it: shown as recorded
            fresh = self._rows(f"SELECT {_COLUMNS} FROM instances WHERE id = ?", vm_id)
            if not fresh:
                raise _Unanswered("the VM went while it was read")
            if fresh[0]["state"] not in LIVE_STATES:
                return fresh[0]
            if not _matches(fresh[0]["state"], self._power(vm_id)):
                raise _Unanswered("the recorded state is to be corrected")
            return fresh[0]

    def _runtime(self, vm_id: str) -> Any:
        from cloudlet.driver.qemu.runtime import read_record

        return read_record(self.paths.runtime_dir(vm_id))

    def _power(self, vm_id: str) -> str:
        from cloudlet.driver.qemu.power import power_state

        return str(power_state(self._runtime(vm_id)))

    def _view(self, row: sqlite3.Row) -> InstanceView:
        vm_id, state, ssh_port = row["id"], row["state"], row["ssh_port"]
        spec = json.loads(row["spec_json"])
        network = _dumped(spec["network"], NETWORK_FIELDS)
        access = _dumped(spec["access"], ACCESS_FIELDS)
        network["nics"] = tuple(_dumped(nic, NIC_FIELDS) for nic in network["nics"])
        network["ports"] = tuple(_dumped(port, PORT_FIELDS) for port in network["ports"])
        runtime = self._runtime(vm_id) if state in LIVE_STATES else None
        disk = self._rows("SELECT active_path FROM instance_disks WHERE instance_id = ?", vm_id)
        instance_dir = self.paths.instance_dir(vm_id)
        return InstanceView(
            id=vm_id,
            name=row["name"],
            state=state,
            type=row["type_name"],
            cpus=row["cpus"],
            memory=row["memory"],
            disk_size=row["disk_size"],
            image=row["image"],
            arch=row["arch"],
            location=row["location"],
            accel=row["accel"],
            ssh_port=ssh_port,
            ssh_access=access["user"] is not None and ssh_port is not None,
            pid=runtime.pid if runtime else None,
            created_at=_timestamp(row["created_at"]),
            last_error=row["last_error"],
            kind=row["kind"],
            addresses=self._addresses(vm_id, user_mode=network["mode"] == "nat"),
            network={
                **network,
                "restrict": network["restrict"] or self.settings.force_restrict_network,
            },
            paths={
                "disk": str(Path(disk[0]["active_path"]) if disk else instance_dir / "disk.qcow2"),
                "serial_log": str(instance_dir / "serial.log"),
                "image": row["image_path"],
                "runtime": str(self.paths.runtime_dir(vm_id)),
            },
        )

    def _addresses(self, vm_id: str, *, user_mode: bool) -> dict[str, str]:
        found = {"nat": USER_MODE_ADDRESS} if user_mode else {}
        sql = 'SELECT network, ip FROM nics WHERE instance_id = ? ORDER BY "index"'
        found.update((str(r["network"]), str(r["ip"])) for r in self._rows(sql, vm_id))
        return found


def _matches(state: str, power: str) -> bool:
    """The engine's reconcile would leave ``state`` as it is, given ``power``."""
    if power == "running":
        return state == VMState.RUNNING
    if power == "paused":
        return state == VMState.PAUSED
    # no-space, shutdown, gone, absent, failed: the engine records something
    return False


def _dumped(data: object, fields: tuple[str, ...]) -> dict[str, Any]:
    """``data`` as its model dumps it (fields in their order), if it has exactly them."""
    if not isinstance(data, dict) or set(data) != set(fields):
        raise _Unanswered("a record this path does not know")
    return {name: data[name] for name in fields}


def _timestamp(value: object) -> datetime:
    """A DateTime column as SQLAlchemy reads it from SQLite: naive, to the microsecond."""
    if not isinstance(value, str):
        raise _Unanswered("a timestamp this path does not know")
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is not None:
        raise _Unanswered("a timestamp this path does not know")
    return parsed
