"""Build the tiny image from Debian packages and boot it under bare QEMU (TCG).

Checks what the engine relies on: the guest agent answers and runs commands, and the
ACPI power button (QMP system_powerdown) powers the guest off cleanly.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudlet.host.run import run, spawn
from cloudlet.images.tiny import build_tiny, recipe_digest

pytestmark = pytest.mark.integration

SMP = 2
DEB_CACHE = Path(os.environ.get("CLOUDLET_TEST_CACHE", "/var/cache/cloudlet-test") + "/debs")


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image, built once for this module (packages come from the shared cache)."""
    dest = tmp_path_factory.mktemp("tiny-image") / "tiny"
    return build_tiny(dest, deb_cache=DEB_CACHE)


class Agent:
    """A few lines of QEMU guest agent protocol over the host end of the socket."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(str(path))
        self.buf = b""
        self.sync_id = 0

    def close(self) -> None:
        self.sock.close()

    def _recv(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("guest agent socket closed")
        self.buf += data

    def _line(self) -> dict[str, Any]:
        while b"\n" not in self.buf:
            self._recv()
        line, _, self.buf = self.buf.partition(b"\n")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def sync(self, timeout: float) -> None:
        """guest-sync-delimited: skip anything stale up to the 0xFF the agent sends."""
        self.sync_id += 1
        self.sock.settimeout(timeout)
        msg = {"execute": "guest-sync-delimited", "arguments": {"id": self.sync_id}}
        self.sock.sendall(b"\xff" + json.dumps(msg).encode() + b"\n")
        while True:
            while b"\xff" not in self.buf:
                self._recv()
            self.buf = self.buf[self.buf.index(b"\xff") + 1 :]
            if self._line().get("return") == self.sync_id:
                return

    def call(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        self.sock.settimeout(30)
        msg: dict[str, Any] = {"execute": command}
        if arguments is not None:
            msg["arguments"] = arguments
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        reply = self._line()
        assert "error" not in reply, reply
        return reply["return"]

    def exec(self, path: str, *args: str) -> tuple[int, str, str]:
        pid = self.call("guest-exec", {"path": path, "arg": list(args), "capture-output": True})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            st = self.call("guest-exec-status", {"pid": pid["pid"]})
            if st["exited"]:
                out = base64.b64decode(st.get("out-data", "")).decode()
                err = base64.b64decode(st.get("err-data", "")).decode()
                return int(st["exitcode"]), out, err
            time.sleep(0.05)
        raise TimeoutError(f"{path} did not finish")


class Vm:
    """One bare QEMU process on an overlay of the image."""

    def __init__(self, image: Path, run_dir: Path, hostname: str) -> None:
        self.run_dir = run_dir
        meta = json.loads((image / "image.json").read_text())
        self.overlay = run_dir / "overlay.qcow2"
        run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-b", image / meta["disk"],
             "-F", "qcow2", self.overlay]
        )  # fmt: skip
        self.qmp_path = run_dir / "qmp.sock"
        self.qga_path = run_dir / "qga.sock"
        self.serial = run_dir / "serial.log"
        argv = [
            "qemu-system-x86_64", "-accel", "tcg", "-machine", "q35", "-cpu", "max",
            "-smp", str(SMP), "-m", "1024", "-nodefaults", "-no-user-config",
            "-display", "none", "-no-reboot",
            "-kernel", image / meta["kernel"], "-initrd", image / meta["initrd"],
            "-append", f"{meta['cmdline']} cloudlet.hostname={hostname}",
            "-drive", f"file={self.overlay},format=qcow2,if=virtio",
            "-serial", f"file:{self.serial}",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
            "-chardev", f"socket,path={self.qga_path},server=on,wait=off,id=qga0",
            "-device", "virtio-serial-pci",
            "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
            "-netdev", "user,id=n0,restrict=on",
            "-device", "virtio-net-pci,netdev=n0",
        ]  # fmt: skip
        self.stderr = run_dir / "qemu.stderr"
        with self.stderr.open("wb") as err:
            self.proc = spawn(argv, stderr=err.fileno())

    def _wait_path(self, path: Path, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not path.exists():
            assert self.proc.poll() is None, self.console()
            assert time.monotonic() < deadline, f"{path.name} never appeared"
            time.sleep(0.02)

    def agent(self, timeout: float = 120) -> Agent:
        """Connect and sync with the guest agent, waiting for the guest to boot."""
        self._wait_path(self.qga_path, 10)
        agent = Agent(self.qga_path)
        deadline = time.monotonic() + timeout
        while True:
            try:
                agent.sync(0.5)
                return agent
            except TimeoutError:
                assert self.proc.poll() is None, self.console()
                assert time.monotonic() < deadline, "guest agent never answered\n" + self.console()

    def qmp(self, command: str) -> dict[str, Any]:
        self._wait_path(self.qmp_path, 10)
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.qmp_path))
            s.settimeout(10)
            f = s.makefile("rwb")
            json.loads(f.readline())  # greeting
            for cmd in ("qmp_capabilities", command):
                f.write(json.dumps({"execute": cmd}).encode() + b"\n")
                f.flush()
                while True:
                    reply: dict[str, Any] = json.loads(f.readline())
                    if "event" not in reply:
                        break
            return reply

    def console(self) -> str:
        """The serial console and QEMU's stderr, for failure messages."""
        text = ""
        for path in (self.serial, self.stderr):
            if path.exists():
                text += f"--- {path.name}\n" + path.read_text(errors="replace")
        return text

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def vm(image: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vm]:
    machine = Vm(image, tmp_path_factory.mktemp("vm"), "tiny-test")
    try:
        yield machine
    finally:
        machine.kill()


def _fs_state(overlay: Path, scratch: Path) -> str:
    raw = scratch / "check.raw"
    run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", overlay, raw])
    out = run(["dumpe2fs", "-h", raw]).stdout.decode()
    raw.unlink()
    return next(
        ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Filesystem state")
    )


def test_image_layout(image: Path) -> None:
    meta = json.loads((image / "image.json").read_text())
    assert meta["recipe"] == recipe_digest()
    assert meta["name"] == "tiny" and meta["guest_agent"] is True
    for key in ("disk", "kernel", "initrd"):
        assert (image / meta[key]).is_file()
    info = json.loads(
        run(["qemu-img", "info", "--output=json", "-f", "qcow2", image / "disk.qcow2"]).stdout
    )
    assert info["virtual-size"] == meta["min_disk_bytes"]
    assert "backing-filename" not in info
    assert any(p.startswith("linux-image-") for p in meta["packages"])
    assert {"busybox-static", "qemu-guest-agent", "libc6"} <= set(meta["packages"])
    assert sorted(p.name for p in image.iterdir()) == [
        "disk.qcow2",
        "image.json",
        "initrd.img",
        "vmlinuz",
    ]


def test_agent_exec_and_powerdown(vm: Vm, tmp_path: Path) -> None:
    agent = vm.agent()
    try:
        assert vm.proc.poll() is None
        assert agent.call("guest-ping") == {}
        assert agent.call("guest-get-osinfo")["id"] == "cloudlet-tiny"
        assert agent.call("guest-get-host-name")["host-name"] == "tiny-test"
        assert agent.exec("nproc") == (0, f"{SMP}\n", "")
        code, out, _ = agent.exec("cat", "/proc/meminfo")
        assert code == 0 and out.startswith("MemTotal:")
        assert agent.exec("sh", "-c", "echo out; echo err >&2; exit 3") == (3, "out\n", "err\n")
        code, out, _ = agent.exec("ip", "-4", "addr", "show", "eth0")
        assert "10.0.2.15/" in out
    finally:
        agent.close()
    assert "cloudlet tiny: ready" in vm.console()

    assert "error" not in vm.qmp("system_powerdown")
    try:
        rc = vm.proc.wait(60)
    except subprocess.TimeoutExpired:
        pytest.fail("guest did not power off within 60 s\n" + vm.console())
    assert rc == 0
    assert _fs_state(vm.overlay, tmp_path) == "clean"


def test_guest_shutdown_powers_off(vm: Vm, tmp_path: Path) -> None:
    agent = vm.agent()
    try:
        agent.sock.sendall(b'{"execute": "guest-shutdown"}\n')  # no reply on success
    finally:
        agent.close()
    assert vm.proc.wait(60) == 0
    assert _fs_state(vm.overlay, tmp_path) == "clean"
