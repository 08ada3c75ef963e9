"""Shell completion the way bash drives it: the real `cloudlet` in a subprocess with
_CLOUDLET_COMPLETE, COMP_WORDS and COMP_CWORD, against a real state directory."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from cloudlet.spec.document import VMBody
from tests.fakes import make_fake_engine
from tests.integration import cli
from tests.integration.test_cli_startup import heavy

pytestmark = pytest.mark.integration

LIGHT = {
    "cloudlet.engine",
    "cloudlet.engine.name_index",
    "cloudlet.store",
    "cloudlet.store.readonly",
}


def complete(home: Path, line: str, *python: str) -> subprocess.CompletedProcess[str]:
    """bash's request for Tab at the end of ``line``, as its completion script makes it."""
    words = line.split()
    env = cli.env_for(home)
    env.update(
        _CLOUDLET_COMPLETE="bash_complete",
        COMP_WORDS=line,
        COMP_CWORD=str(len(words) if line.endswith(" ") else len(words) - 1),
    )
    return subprocess.run(
        [sys.executable, *python, "-m", "cloudlet"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_completion_reads_the_state_without_engine_database_layer_or_pydantic(
    short_tmp: Path,
) -> None:
    home = short_tmp / "home"
    engine = make_fake_engine(home)
    engine.create("vm1", VMBody(state="stopped"))
    engine.create("vm2", VMBody(state="stopped"))
    engine.create("db1", VMBody(state="stopped"))
    engine.storage.snapshot_create("vm2", "nightly")
    proc = complete(home, "cloudlet start v", "-X", "importtime")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["vm1", "vm2"]
    modules = {
        line.rsplit("|", 1)[1].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "cloudlet.cli.complete" in modules  # the check below means something
    # The engine's name queries and the read-only sqlite3 opener are all it may load
    # of the engine and the store: plain sqlite3, no ORM.
    assert {"cloudlet.engine.name_index", "cloudlet.store.readonly"} <= modules
    assert heavy(modules - LIGHT) == []
    proc = complete(home, "cloudlet snapshot revert vm2 ")
    assert proc.returncode == 0 and proc.stdout.split() == ["nightly"]


def test_a_locked_database_completes_nothing_at_once(short_tmp: Path) -> None:
    """A writer holding the database exclusively: the Tab gives nothing, and no error
    lands in the user's command line."""
    home = short_tmp / "home"
    engine = make_fake_engine(home)
    engine.create("vm1", VMBody(state="stopped"))
    engine.db.engine.dispose()  # its pooled connection would keep the lock from us
    assert complete(home, "cloudlet start ").stdout.split() == ["vm1"]
    holder = sqlite3.connect(home / "cloudlet.db", timeout=10)
    try:
        holder.execute("PRAGMA locking_mode=EXCLUSIVE")
        holder.execute("BEGIN EXCLUSIVE")
        holder.execute("UPDATE instances SET name = name")
        proc = complete(home, "cloudlet start ")
    finally:
        holder.rollback()
        holder.close()
    assert proc.returncode == 0 and proc.stdout.strip() == "" and proc.stderr == ""


def test_completion_names_a_vm_launched_on_real_qemu(cloudlet_home: Path) -> None:
    cli.run(cloudlet_home, "launch", "tab-web1", "--image", "tiny", "--no-wait")
    try:
        proc = complete(cloudlet_home, "cloudlet stop tab-w")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == ["tab-web1"]
        proc = complete(cloudlet_home, "cloudlet info ")
        assert proc.stdout.split() == ["tab-web1"]
    finally:
        cli.run(cloudlet_home, "rm", "--force", "tab-web1")
    assert complete(cloudlet_home, "cloudlet stop tab-w").stdout.strip() == ""


def test_bash_with_the_printed_script_completes_names(short_tmp: Path) -> None:
    """The script `cloudlet completion bash` prints, sourced by a real bash."""
    home = short_tmp / "home"
    engine = make_fake_engine(home)
    engine.create("vm1", VMBody(state="stopped"))
    engine.storage.snapshot_create("vm1", "before-upgrade")
    bin_dir = short_tmp / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "cloudlet"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -m cloudlet "$@"\n')
    wrapper.chmod(0o755)
    env = cli.env_for(home)
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    script = """
        source <(cloudlet completion bash)
        COMP_WORDS=(cloudlet snapshot revert vm1 ""); COMP_CWORD=4
        _cloudlet_completion cloudlet; echo "${COMPREPLY[*]}"
        COMP_WORDS=(cloudlet sta); COMP_CWORD=1
        _cloudlet_completion cloudlet; echo "${COMPREPLY[*]}"
    """
    proc = subprocess.run(
        ["bash", "--norc", "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["before-upgrade", "start"]
