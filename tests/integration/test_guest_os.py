"""Real guest operating systems through the CLI: Debian with cloud-init, ssh, cp,
foreign architectures, the legacy profile, installs from ISO and image safety."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import time
from pathlib import Path

import pycdlib
import pytest

from tests.integration import cli

pytestmark = pytest.mark.integration


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.fixture
def ssh_key(tmp_path: Path) -> Path:
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


def test_debian_with_cloud_init_ssh_exec_and_cp(
    cloudlet_home: Path, ssh_key: Path, tmp_path: Path
) -> None:
    home = cloudlet_home
    user_data = tmp_path / "cloud-config.yaml"
    user_data.write_text(
        "#cloud-config\nruncmd:\n  - [sh, -c, 'echo from-runcmd > /var/tmp/runcmd-ran']\n"
    )
    created = cli.run(
        home, "create", "db1", "--image", "debian-12", "--type", "gp.small",
        "--ssh-key", f"{ssh_key}.pub", "--user-data", str(user_data), "--wait",
        "-o", "json", timeout=900,
    )  # fmt: skip
    vm = json.loads(created.stdout)
    assert vm["state"] == "running"
    # the real OpenSSH client, with the guest's host key pinned by cloudlet
    ident = cli.run(home, "ssh", "db1", "--", "id").stdout
    assert "uid=" in ident and "(debian)" in ident
    assert cli.run(home, "ssh", "db1", "--", "hostname").stdout.strip() == "db1"
    assert cli.run(home, "ssh", "db1", "--", "cat", "/var/tmp/runcmd-ran").stdout == "from-runcmd\n"
    assert cli.run(home, "ssh", "db1", "--", "sudo", "-n", "true").returncode == 0
    sshd = cli.run(home, "exec", "db1", "--", "sshd", "-T").stdout
    assert "passwordauthentication no" in sshd
    osr = cli.run(home, "exec", "db1", "--", "cat", "/etc/os-release").stdout
    assert "bookworm" in osr
    # ssh-config works with plain ssh
    config = tmp_path / "ssh_config"
    config.write_text(cli.run(home, "ssh-config", "db1").stdout)
    plain = subprocess.run(
        ["ssh", "-F", str(config), "db1", "--", "echo", "plain-ssh"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert plain.stdout.strip() == "plain-ssh", plain.stderr
    # cp both ways through the agent: 50 MiB of random bytes keep their SHA-256
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom(50 * 1024 * 1024))
    cli.run(home, "cp", str(payload), "db1:/var/tmp/", timeout=600)
    inside = cli.run(home, "exec", "db1", "--", "sha256sum", "/var/tmp/payload.bin").stdout
    assert inside.split()[0] == sha256(payload)
    back = tmp_path / "back.bin"
    cli.run(home, "cp", "db1:/var/tmp/payload.bin", str(back), timeout=600)
    assert sha256(back) == sha256(payload)
    # a tree into the login user's home with GNU tar, owned by that user, and back
    tree = tmp_path / "tree"
    (tree / "a dir" / "deeper").mkdir(parents=True)
    (tree / "a dir" / "deeper" / "file with spaces.txt").write_text("spaces\n")
    (tree / "top.bin").write_bytes(os.urandom(100_000))
    cli.run(home, "cp", "-r", str(tree), "db1:~/", timeout=600)
    owners = cli.run(home, "exec", "db1", "--", "find", "/home/debian/tree", "-printf", "%u:%g\n")
    assert set(owners.stdout.split()) == {"debian:debian"}, owners.stdout
    cli.run(home, "cp", "-r", "db1:tree", str(tmp_path / "tree-back"), timeout=600)
    for path in ("a dir/deeper/file with spaces.txt", "top.bin"):
        assert sha256(tmp_path / "tree-back" / path) == sha256(tree / path)
    # the image is in use: delete refused
    refused = cli.run(home, "image", "delete", "debian-12", check=False)
    assert refused.returncode == 4 and "used by db1" in refused.stderr


def test_bad_cloud_config_creates_nothing(cloudlet_home: Path, tmp_path: Path) -> None:
    home = cloudlet_home
    bad = tmp_path / "bad.yaml"
    bad.write_text("#cloud-config\nruncmd: [unclosed\n")
    proc = cli.run(
        home, "create", "db2", "--image", "debian-12", "--user-data", str(bad), check=False
    )
    assert proc.returncode == 2 and "line" in proc.stderr
    assert cli.run_json(home, "list") == []
    unreadable = cli.run(
        home, "create", "db2", "--image", "debian-12", "--ssh-key", str(tmp_path / "nope.pub"),
        check=False,
    )  # fmt: skip
    assert unreadable.returncode == 2
    assert cli.run_json(home, "list") == []


def test_aarch64_guest_on_x86(cloudlet_home: Path) -> None:
    home = cloudlet_home
    cli.run(home, "create", "arm1", "--image", "tiny", "--arch", "aarch64", timeout=600)
    assert cli.run(home, "exec", "arm1", "--", "uname", "-m").stdout.strip() == "aarch64"
    shown = cli.run_json(home, "show", "arm1")
    assert (shown["arch"], shown["accel"]) == ("aarch64", "tcg")
    host = cli.run_json(home, "host")
    assert host["arches"]["aarch64"] == "tcg (emulated)"
    stop = cli.run(home, "stop", "arm1", "--timeout", "60")
    assert "stopped" in stop.stderr and "forced" not in stop.stderr


def test_legacy_profile_sees_an_ide_disk(cloudlet_home: Path) -> None:
    home = cloudlet_home
    vm = cli.run_json(home, "create", "old1", "--image", "tiny", "--profile", "legacy")
    argv = json.loads((home / "run" / vm["id"] / "runtime.json").read_text())["argv"]
    assert "pc,accel=" in " ".join(argv) and any(a.startswith("e1000") for a in argv)
    blocks = cli.run(home, "exec", "old1", "--", "ls", "/sys/block").stdout.split()
    assert "sda" in blocks and "vda" not in blocks
    path = cli.run(home, "exec", "old1", "--", "readlink", "-f", "/sys/block/sda").stdout
    assert "/ata" in path


def _boot_sector_iso(path: Path, message: bytes) -> None:
    """An El Torito ISO whose boot sector prints ``message`` on COM1 and halts."""
    code = bytes.fromhex("fa31c08ed8baf803be167cac84c07403eeebf8f4ebfd") + message + b"\r\n\0"
    sector = code.ljust(2048, b"\0")
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3)
    iso.add_fp(io.BytesIO(sector), len(sector), "/BOOT.BIN;1", joliet_path="/boot.bin")
    iso.add_eltorito(
        "/BOOT.BIN;1", bootcatfile="/BOOT.CAT;1", media_name="noemul", boot_load_size=4
    )
    iso.write(str(path))
    iso.close()


def test_install_from_iso_boots_the_cd_onto_an_empty_disk(
    cloudlet_home: Path, tmp_path: Path
) -> None:
    home = cloudlet_home
    iso = tmp_path / "installer.iso"
    _boot_sector_iso(iso, b"cloudlet-installer-booted")
    vm = cli.run_json(home, "create", "inst1", "--iso", str(iso), "--disk-size", "1G")
    assert vm["disk_size"] == 1024**3
    deadline = time.monotonic() + 60
    while "cloudlet-installer-booted" not in cli.run(home, "logs", "inst1").stdout:
        assert time.monotonic() < deadline, cli.run(home, "logs", "inst1").stdout
        time.sleep(0.5)
    missing = cli.run(home, "create", "inst2", "--iso", str(iso), check=False)
    assert missing.returncode == 2 and "give a disk size, such as 20G" in missing.stderr


def test_malicious_image_is_refused(cloudlet_home: Path, tmp_path: Path) -> None:
    home = cloudlet_home
    evil = tmp_path / "evil.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", "/etc/passwd", "-F", "raw", str(evil)],
        check=True,
    )
    proc = cli.run(home, "image", "import", str(evil), "--name", "evil", check=False)
    assert proc.returncode == 2 and "backing" in proc.stderr
    assert "evil" not in [i["name"] for i in cli.run_json(home, "image", "list")]


def test_licence_seats_are_enforced(cloudlet_home: Path) -> None:
    home = cloudlet_home
    tiny = Path(cli.run_json(home, "image", "show", "tiny")["path"]) / "disk.qcow2"
    cli.run(home, "image", "import", str(tiny), "--name", "acme", "--licence", "acme-os")
    refused = cli.run(home, "create", "a1", "--image", "acme", check=False)
    assert refused.returncode == 4 and "license add acme-os" in refused.stderr
    cli.run(home, "license", "add", "acme-os", "--seats", "1")
    cli.run(home, "create", "a1", "--image", "acme", "--type", "gp.micro")
    second = cli.run(home, "create", "a2", "--image", "acme", "--type", "gp.micro", check=False)
    assert second.returncode == 4 and "has 1 seats and 1 are in use" in second.stderr
    assert [v["name"] for v in cli.run_json(home, "list")] == ["a1"]
    assert cli.run_json(home, "license", "list") == [{"name": "acme-os", "seats": 1, "in_use": 1}]
    cli.run(home, "stop", "a1", "--force")
    cli.run(home, "create", "a2", "--image", "acme", "--type", "gp.micro")
