"""InstanceSpec: everything a user asks for when creating a VM."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cloudlet.errors import InvalidInput
from cloudlet.spec.names import validate_name

Arch = Literal["x86_64", "aarch64"]
Profile = Literal["modern", "legacy"]


class NetworkSpec(BaseModel):
    """User-mode NAT for now; ``restrict`` cuts the guest off from everything outside."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["nat", "none"] = "nat"
    restrict: bool = False
    ssh_forward: bool = True


class AccessSpec(BaseModel):
    """Who logs in and with which keys (written into the cloud-init seed)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user: str | None = None
    ssh_public_keys: tuple[str, ...] = ()
    ssh_private_key: str | None = Field(default=None, description="path used by cloudlet ssh")


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
    location: str = "local"
    network: NetworkSpec = NetworkSpec()
    profile: Profile = "modern"
    access: AccessSpec = AccessSpec()
    user_data: str | None = Field(default=None, description="the user's own #cloud-config")
    install_iso: str | None = Field(default=None, description="installer ISO image name")

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        try:
            return validate_name(value)
        except InvalidInput as exc:
            raise ValueError(exc.one_line()) from None
