"""Run the real `cloudlet` CLI in a subprocess against a test state directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cloudlet.host import processes


def env_for(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        CLOUDLET_HOME=str(home),
        CLOUDLET_FORCE_RESTRICT_NETWORK="1",  # guests in tests never reach outside
        CLOUDLET_STOP_TIMEOUT="60",
        COLUMNS="200",
    )
    return env


def in_process_env(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's environment for an engine opened in the test's own process."""
    for key, value in env_for(home).items():
        if key.startswith("CLOUDLET_"):
            monkeypatch.setenv(key, value)  # restricted network, as every test guest


def default_sigint() -> None:
    """For a child that must react to Ctrl-C: a runner started in the background (CI)
    hands its children SIGINT ignored, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "cloudlet", *args]


def run(
    home: Path, *args: str, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        argv(*args),
        env=env_for(home),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"cloudlet {' '.join(args)} exited {proc.returncode}\n"
            f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
        )
    return proc


def run_json(home: Path, *args: str) -> Any:
    return json.loads(run(home, *args, "-o", "json").stdout)


def spawn(home: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        argv(*args),
        env=env_for(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def our_processes(marker: str, programs: tuple[str, ...] = ("qemu-system",)) -> list[int]:
    """Live processes of ``programs`` whose argv names ``marker`` (a VM id or a state
    directory): the ones a test started, found by pid scan, never by name alone."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        argv = processes.cmdline(pid)
        ours = argv and any(p in argv[0] for p in programs) and any(marker in a for a in argv)
        if ours and processes.is_alive(pid):
            found.append(pid)
    return found
