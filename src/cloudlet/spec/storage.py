"""What users ask of storage: pools and volumes (pure data, validated)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cloudlet.errors import InvalidInput
from cloudlet.spec.names import validate_name
from cloudlet.spec.slots import HOTPLUG_SLOTS as HOTPLUG_SLOTS

PoolKind = Literal["dir", "lvm"]


def _name(value: str, what: str) -> str:
    try:
        return validate_name(value, what=what)
    except InvalidInput as exc:
        raise ValueError(exc.one_line()) from None


class PoolSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kind: PoolKind = "dir"
    path: str = Field(description="absolute directory (dir), /dev/<volume group> (lvm)")

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return _name(value, "pool name")


class VolumeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    size: int = Field(gt=0, description="bytes (virtual; thin)")
    pool: str = "default"
    format: Literal["qcow2", "raw"] = "qcow2"

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return _name(value, "volume name")
