"""Tables: instances and the operations that change them."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import BigInteger, Boolean, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class InstanceRow(Base):
    """One VM: the spec the user asked for and what cloudlet decided for it."""

    __tablename__ = "instances"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True, index=True)
    state: Mapped[str] = mapped_column(String(16))
    spec_json: Mapped[str] = mapped_column(Text)
    image: Mapped[str] = mapped_column(String(128))
    image_path: Mapped[str] = mapped_column(Text)
    type_name: Mapped[str] = mapped_column(String(32))
    cpus: Mapped[int] = mapped_column(Integer)
    memory: Mapped[int] = mapped_column(Integer)
    disk_size: Mapped[int] = mapped_column(Integer)
    arch: Mapped[str] = mapped_column(String(16))
    location: Mapped[str] = mapped_column(String(64))
    ssh_port: Mapped[int | None] = mapped_column(Integer, nullable=True)
    accel: Mapped[str | None] = mapped_column(String(8), nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # "system" VMs stay; "process" VMs (cloudlet run) belong to the process that
    # started them (pid and start time) and go when it goes.
    kind: Mapped[str] = mapped_column(String(16), default="system", server_default="system")
    owner_pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    owner_start: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class OperationRow(Base):
    """A state change, written before it is acted on so a crash can be finished or undone."""

    __tablename__ = "operations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    instance_id: Mapped[str] = mapped_column(String(36), index=True)
    instance_name: Mapped[str] = mapped_column(String(63))
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))  # running, done, failed, rolled_back
    pid: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)


class EventRow(Base):
    """What happened, for `cloudlet events` and later the API's event stream."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    instance_name: Mapped[str] = mapped_column(String(63), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    operation_id: Mapped[int | None] = mapped_column(ForeignKey("operations.id"), nullable=True)
    # "lifecycle" (what happened to a VM) or "operation" (an API operation's status)
    category: Mapped[str] = mapped_column(
        String(16), default="lifecycle", server_default="lifecycle"
    )
    # who caused it: an API token's name, "local" for the CLI (None: before it was kept)
    requester: Mapped[str | None] = mapped_column(String(63), nullable=True)
    # the API operation it belongs to, when one did it
    api_operation: Mapped[str | None] = mapped_column(String(36), nullable=True)


class LicenceRow(Base):
    """Seats registered for a proprietary image licence."""

    __tablename__ = "licences"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    seats: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class PoolRow(Base):
    """A place volumes live: a directory today (kind "dir"), LVM later."""

    __tablename__ = "pools"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class VolumeRow(Base):
    """A data disk in a pool, attached to at most one VM (on a hot-plug slot)."""

    __tablename__ = "volumes"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True, index=True)
    pool: Mapped[str] = mapped_column(ForeignKey("pools.name"))
    path: Mapped[str] = mapped_column(Text)
    format: Mapped[str] = mapped_column(String(16))
    size: Mapped[int] = mapped_column(BigInteger)
    instance_id: Mapped[str | None] = mapped_column(String(36), nullable=True, index=True)
    slot: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SnapshotRow(Base):
    """An external snapshot of a VM's root disk: ``file`` is the frozen layer."""

    __tablename__ = "snapshots"
    __table_args__ = (UniqueConstraint("instance_id", "name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    instance_id: Mapped[str] = mapped_column(String(36), index=True)
    name: Mapped[str] = mapped_column(String(63))
    file: Mapped[str] = mapped_column(Text)
    live: Mapped[bool] = mapped_column(Boolean)
    frozen: Mapped[bool] = mapped_column(Boolean)  # file systems frozen by the guest agent
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class InstanceDiskRow(Base):
    """Where a VM's root disk chain ends (its active layer), once snapshots moved it;
    and, for a linked clone, the snapshot its disk grows from."""

    __tablename__ = "instance_disks"

    instance_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    active_path: Mapped[str] = mapped_column(Text)
    origin_snapshot_id: Mapped[str | None] = mapped_column(String(36), nullable=True, index=True)


class NetworkRow(Base):
    """A virtual network: its definition, its bridge and the dnsmasq serving it."""

    __tablename__ = "networks"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    spec_json: Mapped[str] = mapped_column(Text)
    bridge: Mapped[str] = mapped_column(String(15), unique=True)
    dnsmasq_pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    dnsmasq_start: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class NicRow(Base):
    """A VM's NIC on a virtual network: its fixed MAC, address and TAP device."""

    __tablename__ = "nics"
    __table_args__ = (
        UniqueConstraint("network", "ip"),
        UniqueConstraint("instance_id", "network"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    instance_id: Mapped[str] = mapped_column(String(36), index=True)
    network: Mapped[str] = mapped_column(ForeignKey("networks.name"), index=True)
    index: Mapped[int] = mapped_column(Integer)  # MAC and TAP are derived from it
    mac: Mapped[str] = mapped_column(String(17))
    ip: Mapped[str] = mapped_column(String(15))
    tap: Mapped[str] = mapped_column(String(15), unique=True)
    # The hot-plug port a NIC added to a running VM sits on (shared with volumes).
    slot: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class FirewallGroupRow(Base):
    """A named set of firewall rules VMs can apply."""

    __tablename__ = "firewall_groups"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    rules_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class BackupRow(Base):
    """A backup in the backup store, recorded once its chunks and manifest are durable.

    Outlives its VM (restore --as brings it back); the manifest in the store is the
    truth, this row its index.
    """

    __tablename__ = "backups"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    instance_id: Mapped[str] = mapped_column(String(36), index=True)
    instance_name: Mapped[str] = mapped_column(String(63), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # full, incremental
    note: Mapped[str] = mapped_column(Text, default="")
    consistency: Mapped[str] = mapped_column(String(24))  # frozen, crash-consistent, offline
    virtual_size: Mapped[int] = mapped_column(BigInteger)
    read_bytes: Mapped[int] = mapped_column(BigInteger)
    new_bytes: Mapped[int] = mapped_column(BigInteger)
    chunks: Mapped[int] = mapped_column(Integer)
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    verified_at: Mapped[datetime | None] = mapped_column(nullable=True)
    verify_ok: Mapped[bool | None] = mapped_column(Boolean, nullable=True)


class ApiTokenRow(Base):
    """A bearer token of the REST API: only the SHA-256 of its secret is kept."""

    __tablename__ = "api_tokens"
    __table_args__ = (UniqueConstraint("project", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(63))
    project: Mapped[str] = mapped_column(String(63), default="default", server_default="default")
    secret_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)


class ApiOperationRow(Base):
    """Long work a client asked the API for: readable while it runs and afterwards,
    also after a server restart (one whose server died reads "interrupted")."""

    __tablename__ = "api_operations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project: Mapped[str] = mapped_column(String(63), default="default", server_default="default")
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), index=True)
    resources_json: Mapped[str] = mapped_column(Text)
    progress_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    may_cancel: Mapped[bool] = mapped_column(Boolean)
    error_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    result_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    # the server process running it: gone means the operation was interrupted
    owner_pid: Mapped[int] = mapped_column(Integer)
    owner_start: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    requester: Mapped[str | None] = mapped_column(String(63), nullable=True)


class ApiIdempotencyRow(Base):
    """The first answer to a request sent with an Idempotency-Key, for its retries.

    ``status`` None: the first request is still being answered by ``owner_pid``."""

    __tablename__ = "api_idempotency"
    __table_args__ = (UniqueConstraint("project", "token", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project: Mapped[str] = mapped_column(String(63), default="default", server_default="default")
    token: Mapped[str] = mapped_column(String(63))
    key: Mapped[str] = mapped_column(String(255))
    fingerprint: Mapped[str] = mapped_column(String(64))
    status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    body_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    location: Mapped[str | None] = mapped_column(String(255), nullable=True)
    owner_pid: Mapped[int] = mapped_column(Integer)
    owner_start: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
