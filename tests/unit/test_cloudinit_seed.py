"""The NoCloud seed ISO, read back with pycdlib."""

from __future__ import annotations

import io
from pathlib import Path

import pycdlib
import pytest
import yaml

from cloudlet.cloudinit import make_seed_iso
from cloudlet.errors import InvalidInput

USER_DATA = "#cloud-config\nruncmd:\n  - [touch, /tmp/x]\n"


def _read(iso: pycdlib.PyCdlib, rr_path: str) -> bytes:
    buf = io.BytesIO()
    iso.get_file_from_iso_fp(buf, rr_path=rr_path)
    return buf.getvalue()


def test_seed_has_label_and_files(tmp_path: Path) -> None:
    dest = tmp_path / "seed.iso"
    make_seed_iso(
        dest,
        user_data=USER_DATA,
        meta_data={"instance-id": "vm-123", "local-hostname": "web-1"},
        network_config="version: 2\nethernets: {}\n",
    )
    iso = pycdlib.PyCdlib()
    iso.open(str(dest))
    try:
        assert iso.pvd.volume_identifier.decode().strip() == "cidata"
        assert iso.has_rock_ridge()
        assert iso.has_joliet()
        assert _read(iso, "/user-data").decode() == USER_DATA
        meta = yaml.safe_load(_read(iso, "/meta-data"))
        assert meta == {"instance-id": "vm-123", "local-hostname": "web-1"}
        assert b"version: 2" in _read(iso, "/network-config")
        buf = io.BytesIO()
        iso.get_file_from_iso_fp(buf, joliet_path="/user-data")
        assert buf.getvalue().decode() == USER_DATA
    finally:
        iso.close()
    assert not [p for p in tmp_path.iterdir() if p.name != "seed.iso"]


def test_seed_without_network_config(tmp_path: Path) -> None:
    dest = tmp_path / "seed.iso"
    make_seed_iso(dest, user_data=USER_DATA, meta_data={"instance-id": "i"})
    iso = pycdlib.PyCdlib()
    iso.open(str(dest))
    try:
        names = [
            c.rock_ridge.name().decode()
            for c in iso.list_children(rr_path="/")
            if c.rock_ridge is not None and c.is_file()
        ]
        assert "network-config" not in names
        assert {"user-data", "meta-data"} <= set(names)
    finally:
        iso.close()


def test_seed_needs_an_instance_id(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="instance-id"):
        make_seed_iso(tmp_path / "s.iso", user_data=USER_DATA, meta_data={})
    assert not (tmp_path / "s.iso").exists()


def test_seed_refuses_bad_user_data(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput):
        make_seed_iso(tmp_path / "s.iso", user_data="#!/bin/sh\n", meta_data={"instance-id": "i"})


def test_seed_refuses_bad_network_config(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="network-config"):
        make_seed_iso(
            tmp_path / "s.iso",
            user_data=USER_DATA,
            meta_data={"instance-id": "i"},
            network_config="[unclosed",
        )
