"""cloudlet's log: one escaped line per thing done, secrets redacted, a private rotating
file that never fails the work, and operations logged with their outcome."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudlet import logs, redact
from cloudlet.driver.qemu import agent
from cloudlet.engine.backup_records import MANIFEST_KEY
from cloudlet.errors import Conflict
from cloudlet.spec.document import VMBody
from tests.fakes import make_fake_engine
from tests.unit.test_agent_protocol import ScriptedAgent

SECRET = "hunter2-Sekrit"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl own"
log = logging.getLogger("cloudlet.test")


@pytest.fixture
def home(short_tmp: Path) -> Iterator[Path]:
    home = short_tmp / "home"
    home.mkdir()
    assert logs.to_file(home) == home / "logs" / "cloudlet.log"
    yield home
    logs.stop()


def lines(home: Path) -> list[str]:
    return logs.log_file(home).read_text().splitlines()


def everything(home: Path) -> str:
    """Every byte of the log and its rotated files."""
    return "".join(p.read_text() for p in (home / "logs").iterdir())


# ---------------------------------------------------------------- one line, escaped
@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain text", "plain text"),
        ("a\nb", "a\\nb"),
        ("a\rb", "a\\rb"),
        ("tab\there", "tab\\there"),
        ("esc\x1b[31mred", "esc\\x1b[31mred"),
        ("nul\x00", "nul\\x00"),
        ("line\u2028sep", "line\\u2028sep"),
        ("bidi\u202eevil", "bidi\\u202eevil"),
        ("back\\slash", "back\\\\slash"),
        ("back\\nslash", "back\\\\nslash"),  # a literal backslash-n stays distinguishable
    ],
)
def test_escape_leaves_no_control_character(text: str, shown: str) -> None:
    assert logs.escape(text) == shown
    assert logs.escape(text).isprintable()


def test_a_forged_line_stays_inside_its_own_line(home: Path) -> None:
    name = "web1\n2026-01-01T00:00:00.000Z INFO pid=1 operation: operation 9: delete done"
    log.info("VM %s did something", name)
    log.info("second")
    got = lines(home)
    assert len(got) == 2
    assert got[0].endswith("test: VM web1\\n2026-01-01T00:00:00.000Z INFO pid=1 operation: "
                           "operation 9: delete done did something")  # fmt: skip
    assert " INFO pid=" in got[0] and got[1].endswith("test: second")


def test_a_huge_message_is_cut(home: Path) -> None:
    log.info("%s", "x" * (logs.MAX_LINE * 2))
    (line,) = lines(home)
    assert len(line) < logs.MAX_LINE + 200 and line.endswith("more characters)")


def test_a_bad_format_loses_nothing() -> None:
    record = logging.LogRecord("cloudlet.x", logging.INFO, __file__, 1, "%d items", ("ten",), None)
    line = logs.LineFormatter().format(record)
    assert "%d items" in line and "ten" in line and "\n" not in line


# ---------------------------------------------------------------- redaction
@pytest.mark.parametrize(
    ("argv", "shown"),
    [
        (["tool", "--password", SECRET, "x"], ["tool", "--password", "<redacted>", "x"]),
        (["tool", f"--passphrase={SECRET}"], ["tool", "--passphrase=<redacted>"]),
        (["tool", "--api-key", SECRET], ["tool", "--api-key", "<redacted>"]),
        (["tool", "--token", SECRET], ["tool", "--token", "<redacted>"]),
        (["env", f"PASSWORD={SECRET}", "cmd"], ["env", "PASSWORD=<redacted>", "cmd"]),
        (["ssh-keygen", "-N", SECRET, "-f", "k"], ["ssh-keygen", "-N", "<redacted>", "-f", "k"]),
        (
            ["qemu-img", "--object", f"secret,id=s0,data={SECRET},,more,format=raw"],
            ["qemu-img", "--object", "secret,id=s0,data=<redacted>,format=raw"],
        ),
        (
            ["curl", f"https://user:{SECRET}@example.org/x"],
            ["curl", "https://<redacted>@example.org/x"],
        ),
        # what is not secret is kept as it is (ssh's -p is a port, passt is a program)
        (["ssh", "-p", "2222", "passt"], ["ssh", "-p", "2222", "passt"]),
        (
            ["qemu", "-drive", "file=/a,,b.qcow2,format=qcow2"],
            ["qemu", "-drive", "file=/a,,b.qcow2,format=qcow2"],
        ),
    ],
)
def test_argv_redaction(argv: list[str], shown: list[str]) -> None:
    assert redact.redact_argv(argv) == shown


def test_a_secret_value_with_spaces_is_hidden_whole() -> None:
    text = redact.redact_text(f"x=1 password={SECRET} and more,b=2")
    assert SECRET not in text and "more" not in text and text.startswith("x=1 ")
    assert text.endswith(",b=2")
    assert redact.redact_text(f"set_password vnc {SECRET}") == "set_password <redacted>"


def test_qmp_and_agent_messages_keep_no_secret_and_no_payload() -> None:
    messages = [
        {"qom-type": "secret", "id": "s0", "data": SECRET, "format": "raw"},
        {"protocol": "vnc", "password": SECRET},
        {"path": "/bin/sh", "arg": ["-c", "x", "--password", SECRET], "input-data": SECRET},
        {"handle": 3, "buf-b64": SECRET * 10},
        {"exited": True, "out-data": SECRET, "err-data": SECRET},
        {"command-line": f"object_add secret,id=s1,data={SECRET}"},
        {"nested": [{"token": SECRET}]},
    ]
    for message in messages:
        shown = redact.summary(message)
        assert SECRET not in shown, shown
    payload = redact.summary({"buf-b64": "A" * 400})
    assert payload == '{"buf-b64":"<300 bytes>"}'


def test_summaries_stay_short_whatever_a_guest_sends() -> None:
    reply = {"list": list(range(1000)), "text": "y" * 10_000, "deep": [[[[[[[[["x"]]]]]]]]]}
    assert len(redact.summary(reply)) < redact.MAX_SUMMARY + 20


# ---------------------------------------------------------------- the file
def test_the_log_is_private_and_rotates_by_size(short_tmp: Path) -> None:
    home = short_tmp / "home"
    home.mkdir()
    path = logs.to_file(home, max_bytes=2000, backups=2)
    assert path is not None
    try:
        for i in range(200):
            log.info("line %d %s", i, "z" * 40)
    finally:
        logs.stop()
    names = sorted(p.name for p in (home / "logs").iterdir())
    assert names == ["cloudlet.log", "cloudlet.log.1", "cloudlet.log.2"]
    assert stat.S_IMODE((home / "logs").stat().st_mode) == 0o700
    for p in (home / "logs").iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
        assert p.stat().st_size <= 2000
    assert lines(home)[-1].endswith(f"line 199 {'z' * 40}")


def test_the_file_is_private_whatever_the_umask(short_tmp: Path) -> None:
    home = short_tmp / "home"
    home.mkdir()
    old = os.umask(0)
    try:
        assert logs.to_file(home, max_bytes=500, backups=1) is not None
        for i in range(30):
            log.info("line %d", i)
    finally:
        os.umask(old)
        logs.stop()
    for p in (home / "logs").iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p


def test_a_link_planted_at_the_log_is_not_followed(short_tmp: Path) -> None:
    home = short_tmp / "home"
    (home / "logs").mkdir(parents=True)
    target = short_tmp / "elsewhere"
    target.write_text("keep\n")
    (home / "logs" / "cloudlet.log").symlink_to(target)
    assert logs.to_file(home) is None  # no log rather than a write through the link
    log.info("anything")
    assert target.read_text() == "keep\n"


def test_to_file_is_idempotent_and_follows_the_home(short_tmp: Path) -> None:
    first, second = short_tmp / "a", short_tmp / "b"
    first.mkdir()
    second.mkdir()
    try:
        logs.to_file(first)
        logs.to_file(first)
        log.info("to a")
        logs.to_file(second)
        log.info("to b")
    finally:
        logs.stop()
    assert [line.split(": ", 1)[1] for line in lines(first)] == ["to a"]
    assert [line.split(": ", 1)[1] for line in lines(second)] == ["to b"]


def test_a_log_that_cannot_be_written_never_fails_the_work(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    handler = next(h for h in logging.getLogger("cloudlet").handlers if h.get_name())
    assert isinstance(handler, logs.PrivateRotatingFile)
    assert handler.stream is not None
    handler.stream.close()  # as if the disk went away under it
    log.info("lost, quietly")
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_nothing_is_written_until_a_frontend_asks(
    short_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.stop()
    logging.getLogger("cloudlet.test").warning("a warning nobody asked to see")
    assert capsys.readouterr().err == ""


def test_to_stderr_shows_the_lines(capsys: pytest.CaptureFixture[str]) -> None:
    logs.to_stderr()
    logs.to_stderr()
    try:
        log.info("shown once\nnot forged")
    finally:
        logs.stop()
    err = capsys.readouterr().err
    assert err.count("shown once") == 1 and err.endswith("test: shown once\\nnot forged\n")


# ---------------------------------------------------------------- operations
def test_operations_are_logged_with_their_outcome(home: Path) -> None:
    engine = make_fake_engine(home)
    keys = home / "keys"  # cloudlet's own key pair, made already (no ssh-keygen here)
    keys.mkdir()
    (keys / "id_ed25519").write_text(f"private {SECRET}-key\n")
    (keys / "id_ed25519.pub").write_text(KEY + "\n")
    user_data = f"#cloud-config\nbootcmd:\n  - echo {SECRET}\n"
    engine.create("web1", VMBody(image="cloudy", user_data=user_data))
    engine.stop("web1")
    with pytest.raises(Conflict), logs.operation(41, "start", "web1"):
        raise Conflict("web1 is busy", hint="wait")
    with pytest.raises(KeyboardInterrupt), logs.operation(42, "stop", "web1"):
        raise KeyboardInterrupt
    text = "\n".join(lines(home))
    assert "operation 1: create of VM web1 started" in text
    assert "operation 1: create of VM web1 done (" in text
    assert "operation 2: stop of VM web1 started" in text
    assert "operation 2: stop of VM web1 done (" in text
    assert "operation 41: start of VM web1 failed: web1 is busy: wait (" in text
    assert "operation 42: stop of VM web1 interrupted (" in text
    # neither the user's #cloud-config nor cloudlet's private key is ever logged
    assert SECRET not in everything(home)


def test_a_failed_operation_is_logged_as_failed(home: Path) -> None:
    from cloudlet.driver.fake.driver import FakeDriver
    from cloudlet.errors import CloudletError

    engine = make_fake_engine(home)
    engine.create("web1", VMBody(state="stopped"))
    assert isinstance(engine.driver, FakeDriver)
    engine.driver.fail_next_start = "QEMU refused to start\nforged line"
    with pytest.raises(CloudletError):
        engine.start("web1")
    failed = [line for line in lines(home) if "start of VM web1 failed" in line]
    assert len(failed) == 1 and "QEMU refused to start\\nforged line" in failed[0]


def test_the_backup_manifest_key_never_reaches_the_log(home: Path) -> None:
    engine = make_fake_engine(home)
    engine.create("web1", VMBody())
    ops = engine.backups
    backup = ops.create("web1")
    ops.verify("web1", backup.id)
    key = (home / MANIFEST_KEY).read_bytes()
    text = everything(home)
    assert "backup of VM web1" in text or "operation" in text
    assert key.hex() not in text and key.hex().upper() not in text
    assert key.decode("latin-1") not in text


# ---------------------------------------------------------------- the guest agent
def test_agent_commands_are_logged_in_short_without_stdin_arguments_or_output(
    home: Path,
) -> None:
    sock_dir = home / "vm-1234"
    sock_dir.mkdir()
    path = sock_dir / "qga.sock"
    scripted = ScriptedAgent(path, polls_before_exit=3)
    try:
        result = agent.run_command(
            path, ["/bin/login-helper", "--password", SECRET], stdin=SECRET.encode(), timeout=10
        )
    finally:
        scripted.close()
    assert result.stdout == b"out:" + SECRET.encode()  # the secret did go through
    got = lines(home)
    execs = [line for line in got if "agent guest-exec " in line]
    assert len(execs) == 1
    assert "VM vm-1234: agent guest-exec" in execs[0]
    assert '"--password","<redacted>"' in execs[0]
    assert f'"input-data":"<{len(SECRET)} bytes>"' in execs[0]
    statuses = [line for line in got if "agent guest-exec-status" in line]
    assert len(statuses) == 1 and '"exitcode":5' in statuses[0]  # only the poll that ends it
    assert '"out-data":"<' in statuses[0]
    assert SECRET not in everything(home)
