"""`cloudlet shell`, `exec -t` and `exec --user` on a real tiny guest, driven through a
pseudo-terminal around the real `cloudlet` entry point."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pexpect
import pytest

from tests.integration import cli

pytestmark = pytest.mark.integration

ADD_ALICE = (
    "echo alice:x:1000:1000::/home/alice:/bin/sh >> /etc/passwd"
    " && echo alice:x:1000: >> /etc/group"
    " && mkdir -p /home/alice && chown 1000:1000 /home/alice"
)


def spawn(home: Path, *args: str) -> pexpect.spawn:
    argv = cli.argv(*args)
    env = cli.env_for(home)
    env["TERM"] = "xterm"
    return pexpect.spawn(argv[0], argv[1:], env=env, timeout=120, dimensions=(30, 100))


def finish(child: pexpect.spawn) -> int:
    child.expect(pexpect.EOF, timeout=60)
    child.close()
    assert child.exitstatus is not None
    return int(child.exitstatus)


def guest_processes(home: Path, name: str) -> str:
    return cli.run(home, "exec", name, "--", "ps").stdout


def leftovers(home: Path, name: str) -> list[str]:
    run_dir = home / "run" / cli.run_json(home, "show", name)["id"]
    return [p.name for p in run_dir.glob("tm*.sock")] + [
        p.name for p in run_dir.glob("terminals/*")
    ]


@pytest.fixture
def vm(cloudlet_home: Path) -> str:
    cli.run(cloudlet_home, "create", "sh1", "--type", "gp.micro")
    return "sh1"


def test_shell_and_exec_t_give_a_pty_with_the_users_environment(
    cloudlet_home: Path, vm: str
) -> None:
    home = cloudlet_home
    child = spawn(home, "shell", vm)
    child.expect("detach with Ctrl-]")
    child.send("tty; echo home=$HOME; id -un; stty size; exit\r")
    child.expect(r"/dev/pts/\d+")
    child.expect("home=/root")
    child.expect("root")
    child.expect("30 100")
    assert finish(child) == 0
    # exec -t: the command's own pty, its exit code passed through
    child = spawn(home, "exec", "-t", vm, "--", "sh", "-c", "tty; exit 3")
    child.expect(r"/dev/pts/\d+")
    assert finish(child) == 3
    assert leftovers(home, vm) == []
    # a second user: exec --user and shell --user run as that user, with its HOME
    cli.run(home, "exec", vm, "--", "sh", "-c", ADD_ALICE)
    ran = cli.run(home, "exec", "--user", "alice", vm, "--", "sh", "-c", "echo $HOME; id -un")
    assert ran.stdout == "/home/alice\nalice\n"
    assert cli.run(home, "exec", vm, "--", "sh", "-c", "echo $HOME").stdout == "/root\n"
    child = spawn(home, "shell", "--user", "alice", vm)
    child.expect("detach with Ctrl-]")
    child.send("echo at=$PWD; id -un; stat -c owner=%U $(tty); exit 7\r")
    child.expect("at=/home/alice")
    child.expect("alice")
    child.expect("owner=alice")
    assert finish(child) == 7


def test_unknown_user_is_one_line(cloudlet_home: Path, vm: str) -> None:
    failed = cli.run(cloudlet_home, "exec", "--user", "bob", vm, "--", "true", check=False)
    assert failed.returncode == 3, failed.stderr
    assert "no user 'bob'" in failed.stderr and "Traceback" not in failed.stderr
    for args in (["shell", "--user", "bob", vm], ["exec", "-t", "--user", "bob", vm, "--", "sh"]):
        child = spawn(cloudlet_home, *args)
        child.expect("no user 'bob'")
        assert "Traceback" not in str(child.before) + str(child.read())
        assert finish(child) == 3


def test_detach_and_a_killed_cli_leave_nothing_running(cloudlet_home: Path, vm: str) -> None:
    home = cloudlet_home
    # Ctrl-] ends the session and the program in the guest
    child = spawn(home, "exec", "-t", vm, "--", "sleep", "4321")
    deadline = time.monotonic() + 60
    while "sleep 4321" not in guest_processes(home, vm):
        assert time.monotonic() < deadline, "the program never started"
        time.sleep(0.2)
    child.sendcontrol("]")
    assert finish(child) == 255
    assert "sleep 4321" not in guest_processes(home, vm)
    assert leftovers(home, vm) == []
    # a CLI killed with SIGKILL cannot clean up: the next session does
    child = spawn(home, "shell", vm)
    child.expect("detach with Ctrl-]")
    child.send("sleep 5678\r")
    deadline = time.monotonic() + 60
    while "sleep 5678" not in guest_processes(home, vm):
        assert time.monotonic() < deadline, "the program never started"
        time.sleep(0.2)
    os.kill(child.pid, signal.SIGKILL)
    child.close(force=True)
    assert leftovers(home, vm) != []  # what the killed CLI left
    child = spawn(home, "exec", "-t", vm, "--", "true")
    assert finish(child) == 0
    assert "sleep 5678" not in guest_processes(home, vm)
    assert leftovers(home, vm) == []
