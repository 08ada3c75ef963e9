"""exec --user, shell and exec -t on the fake driver: the user's environment, the
terminal session, and one-line errors for unknown users and impossible terminals."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cloudlet.cli import main, terminal_commands
from cloudlet.driver.fake.driver import FakeDriver
from cloudlet.engine.engine import Engine
from cloudlet.errors import CloudletError, GuestError, InvalidInput, NotFound
from cloudlet.guest import run_as
from cloudlet.spec.document import AccessDoc, VMBody
from tests.fakes import make_fake_engine
from tests.terminal_talk import talk

ALICE = "alice:x:1000:1000:Alice:/home/alice:/bin/bash"


@pytest.fixture
def engine(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Engine:
    e = make_fake_engine(short_tmp / "home")
    monkeypatch.setattr(main, "open_engine", lambda: e)
    monkeypatch.setattr(terminal_commands, "open_engine", lambda: e)
    e.create("web1", VMBody())
    fake(e).add_user(e.show("web1").id, ALICE)
    return e


def fake(engine: Engine) -> FakeDriver:
    assert isinstance(engine.driver, FakeDriver)
    return engine.driver


def test_exec_runs_as_root_with_roots_environment_by_default(engine: Engine) -> None:
    assert engine.exec("web1", ["id", "-un"]).stdout == b"root\n"
    assert engine.exec("web1", ["printenv", "HOME"]).stdout == b"/root\n"


def test_exec_as_another_user_gets_that_users_home(engine: Engine) -> None:
    assert engine.exec("web1", ["id", "-un"], user="alice").stdout == b"alice\n"
    assert engine.exec("web1", ["id", "-u"], user="alice").stdout == b"1000\n"
    assert engine.exec("web1", ["printenv", "HOME"], user="alice").stdout == b"/home/alice\n"
    assert engine.exec("web1", ["sh", "-c", "exit 3"], user="alice").exit_code == 3


def test_unknown_and_invalid_users_are_one_line_errors(engine: Engine) -> None:
    with pytest.raises(NotFound, match="no user 'bob'"):
        engine.exec("web1", ["true"], user="bob")
    with pytest.raises(InvalidInput):
        engine.exec("web1", ["true"], user="-oProxyCommand=x")
    with pytest.raises(NotFound):
        engine.open_terminal("web1", [], user="bob", rows=24, cols=80)


def test_terminal_login_shell_answers_and_exits_with_its_code(engine: Engine) -> None:
    with engine.open_terminal("web1", [], user="alice", rows=24, cols=80, term="xterm") as term:
        out, code = talk(term, b"tty; echo $HOME; id -un; exit 5\r")
    text = out.decode()
    assert "/dev/pts/0" in text and "/home/alice" in text and "alice" in text
    assert code == 5
    assert not fake(engine).vms[engine.show("web1").id].terminals  # closed, nothing left


def test_terminal_default_user_is_the_login_user_and_commands_run_as_root(engine: Engine) -> None:
    assert engine.shell_access("web1").user == "root"  # tiny: no login user but root
    assert engine.shell_access("web1").ssh_argv is None  # no SSH on tiny
    with engine.open_terminal("web1", ["sh", "-c", "id -un; exit 3"], rows=24, cols=80) as term:
        out, code = talk(term, b"")
    assert b"root" in out and code == 3


def test_impossible_terminal_sizes_are_refused(engine: Engine) -> None:
    for rows, cols in ((0, 80), (24, 0), (24, 10**6)):
        with pytest.raises(InvalidInput, match="cannot be given to the guest"):
            engine.open_terminal("web1", [], rows=rows, cols=cols)


def test_closing_a_running_session_ends_it(engine: Engine) -> None:
    term = engine.open_terminal("web1", [], rows=24, cols=80)
    assert term.exit_code() is None
    term.close()
    term.close()  # idempotent
    assert not fake(engine).vms[engine.show("web1").id].terminals


def test_passwd_answers_from_the_guest_are_checked() -> None:
    ok = run_as.parse_account("bob", 0, b"bob:x:1001:1002::/home/bob:/bin/zsh\nmore")
    assert ok == run_as.GuestAccount("bob", 1001, 1002, "/home/bob", "/bin/zsh")
    odd = run_as.parse_account("bob", 0, b"bob:x:1:1::relative\x1b[2J:\x07\n")
    assert (odd.home, odd.shell) == ("/", "/bin/sh")
    for bad in (b"eve:x:1:1::/:/bin/sh", b"bob:x:one:1::/:/bin/sh", b"bob:x:1", b"bob:x:-1:1::/:/"):
        with pytest.raises(GuestError):
            run_as.parse_account("bob", 0, bad)
    with pytest.raises(NotFound):
        run_as.parse_account("bob", 2, b"")
    assert run_as.clean_term("xterm-256color") == "xterm-256color"
    assert run_as.clean_term("x\nterm") == "xterm" and run_as.clean_term(None) == "xterm"


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main.app, list(args))
    error = result.exception
    if isinstance(error, CloudletError):
        return error.exit_code, result.stdout + error.one_line()
    return result.exit_code, result.stdout


def test_cli_exec_user_and_unknown_user(engine: Engine) -> None:
    assert cli("exec", "--user", "alice", "web1", "--", "printenv", "HOME") == (0, "/home/alice\n")
    code, text = cli("exec", "--user", "bob", "web1", "--", "true")
    assert code == 3 and "no user 'bob'" in text and "Traceback" not in text


def test_cli_terminal_needs_a_terminal(engine: Engine) -> None:
    code, text = cli("exec", "-t", "web1", "--", "sh")
    assert code == 2 and "needs a terminal" in text
    code, text = cli("shell", "web1")
    assert code == 2 and "needs a terminal" in text


def test_shell_goes_over_ssh_as_the_login_user_when_the_vm_has_ssh(engine: Engine) -> None:
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    view = engine.create("db1", VMBody(image="cloudy", access=AccessDoc(ssh_keys=[key])))
    (engine.paths.instance_dir(view.id) / "known_hosts").write_text("")
    access = engine.shell_access("db1")
    assert access.user == "debian" and access.ssh_argv is not None
    assert access.ssh_argv[:2] == ["ssh", "-t"]
    assert access.ssh_argv[access.ssh_argv.index("--") :] == ["--", "127.0.0.1"]
    # another user than the one SSH logs in as: through the agent instead
    other = engine.shell_access("db1", "root")
    assert (other.user, other.ssh_argv) == ("root", None)
