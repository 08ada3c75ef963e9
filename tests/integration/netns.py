"""Run the whole stack inside a network namespace the test made (and removes).

Bridges, TAPs, dnsmasq, the nftables tables and QEMU all live in the namespace: no
guest traffic can leave it, and nothing a test makes outlives it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cloudlet.host import processes
from tests.integration import cli


@dataclass
class Netns:
    name: str
    home: Path

    def sh(
        self, *argv: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """A host command inside the namespace (ip, nft ...)."""
        proc = subprocess.run(
            ["ip", "netns", "exec", self.name, *argv],
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        if check and proc.returncode != 0:
            raise AssertionError(f"{argv} exited {proc.returncode}: {proc.stderr}")
        return proc

    def run(
        self, *args: str, check: bool = True, timeout: float = 300, **env: str
    ) -> subprocess.CompletedProcess[str]:
        """The real CLI, inside the namespace, on this test's state directory."""
        proc = subprocess.run(
            ["ip", "netns", "exec", self.name, sys.executable, "-m", "cloudlet", *args],
            env={**cli.env_for(self.home), **env}, capture_output=True, text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        if check and proc.returncode != 0:
            raise AssertionError(
                f"cloudlet {' '.join(args)} exited {proc.returncode}\n"
                f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
            )
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "-o", "json").stdout)

    def exec(self, vm: str, script: str, *, check: bool = True, timeout: float = 120) -> str:
        """A shell script inside a guest (through its agent)."""
        proc = self.run("exec", vm, "--", "sh", "-c", script, check=check, timeout=timeout)
        return proc.stdout

    def links(self) -> list[str]:
        out = self.sh("ip", "-j", "link", "show").stdout
        return [str(link["ifname"]) for link in json.loads(out)]


def dnsmasq_pids(home: Path) -> list[int]:
    pids = []
    for pid_file in (home / "networks").glob("*/dnsmasq.pid"):
        try:
            pids.append(int(pid_file.read_text().strip()))
        except (OSError, ValueError):
            continue
    return pids


def wait_for(probe: Any, timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


@pytest.fixture
def netns(cloudlet_home: Path) -> Iterator[Netns]:
    name = f"cltest-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    ns = Netns(name, cloudlet_home)
    try:
        ns.sh("ip", "link", "set", "lo", "up")
        yield ns
    finally:
        # QEMU goes with cloudlet_home's teardown; dnsmasq we started, by recorded pid
        for pid in dnsmasq_pids(cloudlet_home):
            argv = processes.cmdline(pid)
            if argv and Path(argv[0]).name == "dnsmasq" and str(cloudlet_home) in " ".join(argv):
                processes.kill_and_wait(pid)
        subprocess.run(["ip", "netns", "del", name], check=False)
