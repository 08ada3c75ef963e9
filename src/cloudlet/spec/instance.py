"""InstanceSpec: everything a user asks for when creating a VM."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cloudlet.errors import InvalidInput
from cloudlet.spec.names import group_name, image_name, login_user, model_check, vm_name
from cloudlet.spec.network import FirewallRule, NicSpec, PortForward

Arch = Literal["x86_64", "aarch64"]
Profile = Literal["modern", "legacy"]
LOCAL_ZONE = "local"  # the zone of this host; the only location until several hosts


class NetworkSpec(BaseModel):
    """The NICs: user-mode NAT (``mode``, the first NIC), then one per virtual network.

    ``restrict`` cuts the user-mode NIC off from everything outside.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["nat", "none"] = "nat"
    restrict: bool = False
    ssh_forward: bool = True
    nics: tuple[NicSpec, ...] = Field(default=(), description="NICs on virtual networks")
    ports: tuple[PortForward, ...] = Field(default=(), description="host port -> guest port")


class AccessSpec(BaseModel):
    """Who logs in and with which keys (written into the cloud-init seed)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user: str | None = None
    ssh_public_keys: tuple[str, ...] = ()
    ssh_private_key: str | None = Field(default=None, description="key file ssh uses")

    @field_validator("user")
    @classmethod
    def _valid_user(cls, value: str | None) -> str | None:
        """The user becomes an ssh argument and a cloud-init user: never an option."""
        return None if value is None else model_check(login_user, value)


BackupSchedule = Literal["none", "hourly", "daily", "weekly"]


class FirewallSpec(BaseModel):
    """Inbound traffic allowed on virtual networks (everything else but replies is dropped)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    inbound_ports: tuple[int, ...] = Field(default=(), description="TCP ports open from outside")
    rules: tuple[FirewallRule, ...] = Field(default=(), description="allow rules")
    groups: tuple[str, ...] = Field(default=(), description="firewall groups applied")

    @field_validator("groups")
    @classmethod
    def _valid_groups(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(model_check(group_name, g) for g in value)

    def own_rules(self) -> tuple[FirewallRule, ...]:
        """inbound_ports (TCP from anywhere) and the VM's own rules, without groups."""
        return tuple(FirewallRule(port=p) for p in self.inbound_ports) + self.rules

    @field_validator("inbound_ports")
    @classmethod
    def _valid_ports(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        for port in value:
            if not 1 <= port <= 65535:
                raise ValueError(f"port {port} is not between 1 and 65535")
        return tuple(sorted(set(value)))


class BackupPolicy(BaseModel):
    """How often to back up and which backups to keep.

    ``schedule``/``keep`` are what the create wizard and spec files ask; ``every`` (seconds)
    overrides the schedule's interval, and the ``keep_*`` rules, when any is set, replace
    ``keep`` (which alone means "keep the last N").
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    schedule: BackupSchedule = "none"
    keep: int = Field(default=0, ge=0, le=10000, description="backups kept; 0 with 'none'")
    every: int | None = Field(default=None, ge=60, description="seconds between backups")
    keep_last: int = Field(default=0, ge=0, le=10000)
    keep_hourly: int = Field(default=0, ge=0, le=10000)
    keep_daily: int = Field(default=0, ge=0, le=10000)
    keep_weekly: int = Field(default=0, ge=0, le=10000)
    keep_monthly: int = Field(default=0, ge=0, le=10000)

    def interval(self) -> int | None:
        """Seconds between scheduled backups, or None when nothing is scheduled."""
        if self.every is not None:
            return self.every
        return SCHEDULE_SECONDS.get(self.schedule)

    def retention(self) -> Retention:
        rules = Retention(
            last=self.keep_last,
            hourly=self.keep_hourly,
            daily=self.keep_daily,
            weekly=self.keep_weekly,
            monthly=self.keep_monthly,
        )
        return rules if rules.any() else Retention(last=self.keep)


class Retention(BaseModel):
    """Keep rules, as in Proxmox: the newest backup of each of the last N hours/days/...;
    a backup any rule keeps is kept. No rule at all keeps everything."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0

    def any(self) -> bool:
        return any((self.last, self.hourly, self.daily, self.weekly, self.monthly))


SCHEDULE_SECONDS: dict[str, int] = {"hourly": 3600, "daily": 86400, "weekly": 7 * 86400}


BACKUP_PRESETS: dict[str, BackupPolicy] = {
    "none": BackupPolicy(),
    "daily": BackupPolicy(schedule="daily", keep=7),
    "hourly": BackupPolicy(schedule="hourly", keep=24),
}


class InstanceSpec(BaseModel):
    """What the user wants; the engine resolves it against the catalog and the host."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    image: str = "tiny"
    type: str = "gp.small"
    cpus: int = Field(ge=1, le=255)
    memory: int = Field(description="bytes", gt=0)
    disk_size: int | None = Field(default=None, description="bytes; None keeps the image's size")
    arch: Arch = "x86_64"
    location: str = LOCAL_ZONE
    network: NetworkSpec = NetworkSpec()
    profile: Profile = "modern"
    access: AccessSpec = AccessSpec()
    user_data: str | None = Field(default=None, description="the user's own #cloud-config")
    install_iso: str | None = Field(default=None, description="installer ISO image name")
    # Answers of the create wizard; defaults keep rows written before them loadable.
    containers: bool = Field(default=False, description="podman installed and its socket on")
    volumes: tuple[int, ...] = Field(default=(), description="extra volume sizes in bytes")
    firewall: FirewallSpec = FirewallSpec()
    backup: BackupPolicy = BackupPolicy()
    api_access: bool = Field(default=False, description="an API token scoped to this VM")

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return model_check(vm_name, value)

    @field_validator("image")
    @classmethod
    def _valid_image(cls, value: str) -> str:
        """A name, never a path: exports carry it and it is looked up in the image store."""
        return model_check(image_name, value)


def parse_backup(text: str) -> BackupPolicy:
    """``none``, ``daily`` (keep 7), ``hourly`` (keep 24), or ``SCHEDULE:KEEP``."""
    preset = BACKUP_PRESETS.get(text.strip().lower())
    if preset is not None:
        return preset
    schedule, _, keep = text.partition(":")
    hint = "use none, daily, hourly, or SCHEDULE:KEEP such as weekly:4 or daily:14"
    if schedule not in ("hourly", "daily", "weekly") or not keep.isdigit() or int(keep) < 1:
        raise InvalidInput(f"invalid backup policy {text!r}", hint=hint)
    return BackupPolicy(schedule=schedule, keep=int(keep))  # type: ignore[arg-type]
