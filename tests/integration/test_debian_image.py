"""Build the debian-12 image, boot it under bare QEMU (TCG) with a NoCloud seed.

Checks what users of the image rely on: ssh with the key from the seed (host key
pinned from the serial console, never trusted blindly), the hostname, the user's
own runcmd, passwordless sudo, no password login, cloud-init done, the guest agent.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cloudlet.cloudinit import build_user_data, ensure_keypair, make_seed_iso, parse_host_keys
from cloudlet.host.run import run, spawn
from cloudlet.images.debian import recipe_digest

pytestmark = pytest.mark.integration

HOSTNAME = "deb-ci"
USER = "debian"
MARKER = "/var/tmp/cloudlet-runcmd-ok"
EXTRA = f"""#cloud-config
runcmd:
  - [sh, -c, "echo from-runcmd > {MARKER}"]
"""
BOOT_TIMEOUT = 420.0


@pytest.fixture(scope="module")
def image(shared_state: Path) -> Path:
    """The image as the engine builds it, shared with every test (built once per recipe)."""
    from cloudlet.config import Paths
    from cloudlet.images.store import ImageStore

    paths = Paths(shared_state)
    started = time.monotonic()
    built = ImageStore(paths.images, paths.cache / "debs").get("debian-12", progress=print)
    print(f"debian-12 ready in {time.monotonic() - started:.1f} s")
    assert built.recipe == recipe_digest()
    return built.path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Guest:
    """A booted guest and how to reach it."""

    dir: Path
    port: int
    key: Path
    known_hosts: Path
    serial: Path
    qga: Path
    ssh_ready_s: float

    def ssh_argv(self, *extra: str) -> list[str]:
        return [
            "ssh", "-i", str(self.key), "-p", str(self.port),
            "-F", "/dev/null",
            "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
            "-o", "ConnectTimeout=20", "-o", "LogLevel=ERROR",
            *extra,
        ]  # fmt: skip

    def ssh(self, command: str, *, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
        argv = [*self.ssh_argv(), f"{USER}@127.0.0.1", "--", command]
        return run(argv, check=False, timeout=timeout)


@pytest.fixture(scope="module")
def guest(image: Path) -> Iterator[Guest]:
    """One VM for the module; QEMU (our pid only) is killed at the end."""
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="cl-deb-", dir="/tmp"))
    meta = json.loads((image / "image.json").read_text())
    key, pub = ensure_keypair(work / "keys")
    user_data = build_user_data(HOSTNAME, USER, [pub.read_text().strip()], EXTRA)
    make_seed_iso(
        work / "seed.iso",
        user_data=user_data,
        meta_data={"instance-id": "i-debian-ci", "local-hostname": HOSTNAME},
    )
    overlay = work / "disk.qcow2"
    run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2",
         "-b", image / meta["disk"], overlay, "4G"]
    )  # fmt: skip
    port = _free_port()
    serial = work / "serial.log"
    qga = work / "qga.sock"
    argv = [
        "qemu-system-x86_64", "-accel", "tcg", "-machine", "q35", "-cpu", "max",
        "-smp", "2", "-m", "1024", "-nodefaults", "-display", "none", "-no-reboot",
        "-kernel", image / meta["kernel"], "-initrd", image / meta["initrd"],
        "-append", meta["cmdline"],
        "-serial", f"file:{serial}",
        "-drive", f"file={overlay},format=qcow2,if=virtio",
        "-drive", f"file={work / 'seed.iso'},format=raw,if=virtio,readonly=on",
        "-netdev", f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device", "virtio-net-pci,netdev=n0",
        "-device", "virtio-rng-pci",
        "-chardev", f"socket,path={qga},server=on,wait=off,id=qga0",
        "-device", "virtio-serial-pci",
        "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
    ]  # fmt: skip
    stderr = (work / "qemu.stderr").open("wb")
    started = time.monotonic()
    proc = spawn(argv, stderr=stderr.fileno())
    try:
        g = Guest(work, port, key, work / "known_hosts", serial, qga, 0.0)
        deadline = started + BOOT_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"QEMU exited with {proc.returncode}: {_tail(work / 'qemu.stderr')}")
            if time.monotonic() > deadline:
                pytest.fail(f"no ssh within {BOOT_TIMEOUT:.0f} s; serial:\n{_tail(serial)}")
            keys = parse_host_keys(serial.read_text(errors="replace")) if serial.exists() else []
            if keys:
                g.known_hosts.write_text("".join(f"[127.0.0.1]:{port} {k}\n" for k in keys))
                if g.ssh("true", timeout=60).returncode == 0:
                    break
            time.sleep(1)
        g.ssh_ready_s = time.monotonic() - started
        print(f"debian-12: QEMU start -> ssh ready in {g.ssh_ready_s:.1f} s")
        yield g
    finally:
        proc.kill()
        proc.wait(timeout=30)
        stderr.close()
        if os.environ.get("CLOUDLET_KEEP_TEST_DIRS") != "1":
            import shutil

            shutil.rmtree(work, ignore_errors=True)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(none)"


def test_image_manifest(image: Path) -> None:
    meta = json.loads((image / "image.json").read_text())
    assert meta["name"] == "debian-12"
    assert meta["os"] == "Debian GNU/Linux 12 (bookworm)"
    assert meta["recipe"] == recipe_digest()
    assert {"cloud-init", "openssh-server"} <= set(meta["packages"])
    assert any(p.startswith("linux-image-") for p in meta["packages"])
    for name in ("disk", "kernel", "initrd"):
        assert (image / meta[name]).is_file()


def test_ssh_as_the_seed_user(guest: Guest) -> None:
    proc = guest.ssh("id")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.decode()
    assert f"uid=1000({USER})" in out
    assert "(sudo)" in out


def test_hostname_is_set(guest: Guest) -> None:
    assert guest.ssh("hostname").stdout.decode().strip() == HOSTNAME


def test_users_runcmd_ran(guest: Guest) -> None:
    proc = guest.ssh("cloud-init status --wait >/dev/null; cat " + MARKER)
    assert proc.stdout.decode().strip() == "from-runcmd", proc.stderr


def test_passwordless_sudo(guest: Guest) -> None:
    proc = guest.ssh("sudo -n true && sudo -n id -u")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().strip() == "0"


def test_password_login_is_off(guest: Guest) -> None:
    argv = guest.ssh_argv(
        "-o", "PubkeyAuthentication=no",
        "-o", "PreferredAuthentications=password,keyboard-interactive",
        "-o", "NumberOfPasswordPrompts=0",
    )  # fmt: skip
    proc = run([*argv, f"{USER}@127.0.0.1", "--", "true"], check=False, timeout=60)
    assert proc.returncode != 0
    err = proc.stderr.decode()
    assert "Permission denied (publickey)" in err, err
    conf = guest.ssh("sudo -n sshd -T").stdout.decode()
    assert "passwordauthentication no" in conf
    assert "permitrootlogin no" in conf or "permitrootlogin without-password" in conf


def test_cloud_init_done(guest: Guest) -> None:
    started = time.monotonic()
    proc = guest.ssh("cloud-init status --wait --long", timeout=300)
    out = proc.stdout.decode()
    assert "status: done" in out, out + proc.stderr.decode()
    print(f"cloud-init done {time.monotonic() - started:.1f} s after ssh was ready")


def test_system_is_running(guest: Guest) -> None:
    proc = guest.ssh(
        "systemctl is-system-running --wait; systemctl --failed --no-legend", timeout=300
    )
    out = proc.stdout.decode()
    timing = guest.ssh("systemd-analyze; systemd-analyze blame | head -n 12").stdout.decode()
    print(f"\n{timing}")
    assert out.splitlines()[0] == "running", out


def test_guest_agent_answers(guest: Guest) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(str(guest.qga))
        s.sendall(b'{"execute": "guest-sync", "arguments": {"id": 4242}}\n')
        buf = b""
        while b"4242" not in buf:
            data = s.recv(4096)
            assert data, "agent closed the socket"
            buf += data
        s.sendall(b'{"execute": "guest-get-host-name"}\n')
        buf = b""
        while HOSTNAME.encode() not in buf:
            data = s.recv(4096)
            assert data, "agent closed the socket"
            buf += data
