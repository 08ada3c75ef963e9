"""The NoCloud seed: a small ISO labelled ``cidata`` holding user-data and meta-data.

Written with pycdlib, so no host tool (genisoimage, xorriso) is needed.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pycdlib
import yaml

from cloudlet.cloudinit.userdata import validate_user_data
from cloudlet.errors import InvalidInput

LABEL = "cidata"

# ISO 9660 names (upper case, no dashes) -> the Rock Ridge / Joliet names Linux shows.
_FILES = {
    "user-data": "/USERDATA.;1",
    "meta-data": "/METADATA.;1",
    "network-config": "/NETCONF.;1",
}


def make_seed_iso(
    dest: Path,
    *,
    user_data: str,
    meta_data: Mapping[str, Any],
    network_config: str | None = None,
) -> None:
    """Write the seed ISO to ``dest`` (atomically: a temp file renamed into place).

    ``meta_data`` must carry ``instance-id`` (cloudlet uses the VM id): cloud-init
    runs its once-per-instance steps again whenever it changes.
    """
    validate_user_data(user_data)
    if not str(meta_data.get("instance-id") or "").strip():
        raise InvalidInput("meta-data has no instance-id", hint="pass the VM id as instance-id")
    files = {
        "user-data": user_data.encode(),
        "meta-data": yaml.safe_dump(dict(meta_data), sort_keys=True).encode(),
    }
    if network_config is not None:
        try:
            parsed = yaml.safe_load(network_config)
        except yaml.YAMLError as exc:
            raise InvalidInput(
                f"network-config is not valid YAML: {exc}".splitlines()[0],
                hint="give a cloud-init network config (version 1 or 2)",
            ) from None
        if not isinstance(parsed, dict):
            raise InvalidInput(
                "network-config is not a mapping", hint="give a cloud-init network config"
            )
        files["network-config"] = network_config.encode()

    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=LABEL)
    for name, data in files.items():
        iso.add_fp(io.BytesIO(data), len(data), _FILES[name], rr_name=name, joliet_path=f"/{name}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    os.close(fd)
    try:
        iso.write(tmp)
        iso.close()
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
