"""QEMU's version: asked once per binary and remembered in the state directory, asked
again when the binary changes; a damaged or hostile file is never believed."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from cloudlet.host import qemu_binaries


@pytest.fixture
def binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[str]]:
    fake = tmp_path / "qemu-system-x86_64"
    fake.write_text("not run")
    asked: list[str] = []

    def run(argv: list[str]) -> subprocess.CompletedProcess[bytes]:
        asked.append(argv[0])
        return subprocess.CompletedProcess(argv, 0, b"QEMU emulator version 7.2.19 (x)\n", b"")

    monkeypatch.setattr(qemu_binaries, "qemu_binary", lambda arch="x86_64": str(fake))
    monkeypatch.setattr(qemu_binaries, "run", run)
    monkeypatch.setattr(qemu_binaries, "_known", {})
    return fake, asked


def test_the_version_is_asked_once_per_binary(
    binary: tuple[Path, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, asked = binary
    remembered = tmp_path / "host" / "qemu-version.json"
    assert qemu_binaries.qemu_version(remembered=remembered) == "7.2.19"
    monkeypatch.setattr(qemu_binaries, "_known", {})  # another process
    assert qemu_binaries.qemu_version(remembered=remembered) == "7.2.19"
    assert asked == [str(fake)]
    fake.write_text("an upgraded QEMU")  # another size and time: asked again
    os.utime(fake, ns=(1, 1))
    monkeypatch.setattr(qemu_binaries, "_known", {})
    assert qemu_binaries.qemu_version(remembered=remembered) == "7.2.19"
    assert asked == [str(fake), str(fake)]


@pytest.mark.parametrize(
    "content",
    ["not json", "[]", '{"x86_64": "7.2"}', '{"x86_64": {"STAMP": "7.2; rm -rf /"}}'],
)
def test_a_damaged_or_strange_file_is_not_believed(
    binary: tuple[Path, list[str]], tmp_path: Path, content: str
) -> None:
    fake, asked = binary
    remembered = tmp_path / "qemu-version.json"
    stamp = qemu_binaries.binary_stamp(str(fake))
    remembered.write_text(content.replace("STAMP", stamp.replace("\\", "\\\\")))
    assert qemu_binaries.qemu_version(remembered=remembered) == "7.2.19"
    assert asked == [str(fake)]
    assert json.loads(remembered.read_text()) == {"x86_64": {stamp: "7.2.19"}}
