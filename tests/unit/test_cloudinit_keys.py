"""SSH public key loading and host keys from the serial console."""

from __future__ import annotations

import base64
import struct
from pathlib import Path

import pytest

from cloudlet.cloudinit import load_public_key, parse_host_keys, parse_public_key
from cloudlet.errors import InvalidInput


def _blob(kind: str, body: bytes = b"\x01" * 32) -> str:
    raw = struct.pack(">I", len(kind)) + kind.encode() + struct.pack(">I", len(body)) + body
    return base64.b64encode(raw).decode()


ED = f"ssh-ed25519 {_blob('ssh-ed25519')}"
ECDSA = f"ecdsa-sha2-nistp256 {_blob('ecdsa-sha2-nistp256', b'x' * 65)}"


def test_load_public_key(tmp_path: Path) -> None:
    path = tmp_path / "id.pub"
    path.write_text(f"{ED}  me@laptop\n")
    assert load_public_key(path) == f"{ED} me@laptop"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="cannot read") as info:
        load_public_key(tmp_path / "nope.pub")
    assert info.value.hint


def test_private_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "id"
    path.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n")
    with pytest.raises(InvalidInput, match="private key"):
        load_public_key(path)


def test_binary_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "id.pub"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(InvalidInput):
        load_public_key(path)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello world",
        "ssh-ed25519",
        "ssh-ed25519 !!!notbase64",
        f"ssh-rsa {_blob('ssh-ed25519')}",
        f"{ED}\n{ED}",
    ],
)
def test_not_a_public_key(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_public_key(text)


SERIAL = (
    "[  12.3] systemd[1]: Started ssh.service\r\n"
    "<14>Jan  1 00:00:00 cloud-init: #############################################\r\n"
    "-----BEGIN SSH HOST KEY FINGERPRINTS-----\r\n"
    "256 SHA256:abc root@web-1 (ED25519)\r\n"
    "-----END SSH HOST KEY FINGERPRINTS-----\r\n"
    "-----BEGIN SSH HOST KEY KEYS-----\r\n"
    f"{ECDSA} root@web-1\r\n"
    "[  13.0] random: crng init done\r\n"
    f"cloud-init[512]: {ED} root@web-1\r\n"
    "-----END SSH HOST KEY KEYS-----\r\n"
    "web-1 login: "
)


def test_parse_host_keys() -> None:
    assert parse_host_keys(SERIAL) == [ECDSA, ED]


def test_parse_host_keys_takes_the_last_block() -> None:
    other = f"-----BEGIN SSH HOST KEY KEYS-----\nssh-ed25519 {_blob('ssh-ed25519', b'2' * 32)}\n"
    older = other + "-----END SSH HOST KEY KEYS-----\n"
    assert parse_host_keys(older + SERIAL) == [ECDSA, ED]


def test_parse_host_keys_incomplete_block() -> None:
    assert parse_host_keys("nothing here") == []
    assert parse_host_keys(SERIAL.split("-----END SSH HOST KEY KEYS")[0]) == []
