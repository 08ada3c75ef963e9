"""Process VMs without a guest: parsing, the guest init archive, the relay and copies."""

from __future__ import annotations

import gzip
import io
import os
import socket
import tarfile
import threading
from pathlib import Path

import pytest

from cloudlet.cli.run_command import split_image_and_command
from cloudlet.errors import InvalidInput
from cloudlet.images.tiny.cpio import CpioWriter, read_newc
from cloudlet.process import copies
from cloudlet.process import guest_init as g
from cloudlet.process.relay import MAX_NOTES, MAX_STATUS_LINE, Relay
from cloudlet.spec import process as p

# ---------------------------------------------------------------- parsing


def test_share_defaults_to_the_host_path_and_reads_ro(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    share = p.parse_share("src", tmp_path)
    assert share == p.ShareSpec(host=tmp_path / "src", guest=str(tmp_path / "src"))
    ro = p.parse_share("src:/srv/../data:ro", tmp_path)
    assert (ro.guest, ro.read_only) == ("/data", True)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("missing:/x", "not a directory"),
        ("src:relative", "not an absolute guest path"),
        ("src:/", "guest's root"),
        ("src:/a:/b", "HOST[:GUEST][:ro]"),
    ],
)
def test_bad_shares_are_refused(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "src").mkdir()
    with pytest.raises(InvalidInput, match=message.replace("[", r"\[").replace("]", r"\]")):
        p.parse_share(text, tmp_path)


def test_copies_and_durations(tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("x")
    assert p.parse_copy_in("in.txt:/data/in.txt", tmp_path).guest == "/data/in.txt"
    assert p.parse_copy_out("/results:out", tmp_path).host == tmp_path / "out"
    with pytest.raises(InvalidInput, match="does not exist"):
        p.parse_copy_in("nope:/x", tmp_path)
    with pytest.raises(InvalidInput, match="does not exist"):
        p.parse_copy_out("/r:no/such/dir/out", tmp_path)
    assert [p.parse_duration(t) for t in ("90", "90s", "10m", "1.5h", "500ms")] == [
        90.0, 90.0, 600.0, 5400.0, 0.5,
    ]  # fmt: skip
    with pytest.raises(InvalidInput):
        p.parse_duration("0s")
    assert p.parse_env("A_B=c=d") == ("A_B", "c=d")
    with pytest.raises(InvalidInput):
        p.parse_env("1A=x")


def test_image_is_optional_before_the_separator() -> None:
    assert split_image_and_command(["debian-12", "--", "ls", "-l"], []) == (
        "debian-12",
        ["ls", "-l"],
    )
    assert split_image_and_command(["ls", "-l"], ["cloudlet", "run", "--", "ls", "-l"]) == (
        "tiny",
        ["ls", "-l"],
    )
    with pytest.raises(InvalidInput, match="one image"):
        split_image_and_command(["a", "b", "--", "ls"], [])


# ---------------------------------------------------------------- guest init


def _base_initrd(modules: list[str]) -> bytes:
    buf = io.BytesIO()
    w = CpioWriter(buf)
    for d in ("lib", "lib/modules", "lib/modules/6.1"):
        w.add_dir(d)
    for m in modules:
        w.add_file(f"lib/modules/6.1/{m}.ko", b"\x7fELF")
    w.add_file("init", b"#!/bin/sh\nold init\n", 0o755)
    w.close()
    return gzip.compress(buf.getvalue())


def test_run_initrd_appends_our_init_and_plan() -> None:
    base = _base_initrd(["virtio_pci", "virtio_blk"])  # ext4 built in: not in the archive
    plan = g.GuestPlan(hostname="run-1", argv=("echo", "it's"), copy_out=("/results",))
    data = g.run_initrd(base, plan)
    assert data.startswith(base)
    appended = data[len(base) + (4 - len(base) % 4) % 4 :]
    files = {e.name: e.data.decode() for e in read_newc(appended) if not e.is_dir}
    init = files["init"]
    assert "modprobe -a virtio_pci virtio_blk ||" in init
    assert "switch_root" not in init and "mount --move" not in init
    assert init.endswith("exec /bin/sh /cloudlet/run.sh initramfs\n")
    assert "cloudlet/run.sh" in files
    booted = g.run_initrd(base, plan, boot=True)[len(base) :]
    boot_init = next(e for e in read_newc(booted.lstrip(b"\0")) if e.name == "init").data
    assert b"cp /bin/busybox /cloudlet/plan /cloudlet/run.sh /newroot/.cloudlet/" in boot_init
    assert boot_init.rstrip().endswith(b"exec switch_root /newroot /sbin/init")
    assert "cl_copy_out 0 cloudlet.out0 /results" in files["cloudlet/plan"]
    # Words are shell-quoted: the guest shell does not split or expand them.
    assert "cloudlet-run / echo 'it'\"'\"'s'\n" in files["cloudlet/plan"]


def test_program_runs_chrooted_in_a_clean_environment() -> None:
    plan = g.GuestPlan(hostname="h", argv=("make",), workdir="/work", env=(("CI", "1"),))
    argv = g.program_argv(plan)
    assert argv[:2] == ["env", "-i"]
    assert "CI=1" in argv and "HOSTNAME=h" in argv
    assert "chroot" not in argv  # run.sh chroots in the initramfs, not after --boot
    assert argv[argv.index("/bin/sh") + 1] == "-c"
    assert argv[-2:] == ["/work", "make"]
    assert '( exec $CHROOT "$@" <' in g.RUN_SCRIPT


# ---------------------------------------------------------------- relay


def _pair() -> tuple[socket.socket, socket.socket]:
    host, guest = socket.socketpair()
    return host, guest


def _relay_fixture(
    tmp_path: Path,
) -> tuple[dict[str, socket.socket], dict[str, socket.socket], int, int, Path, Path]:
    host: dict[str, socket.socket] = {}
    guest: dict[str, socket.socket] = {}
    for name in (g.PORT_STATUS, g.PORT_STDIN, g.PORT_STDOUT, g.PORT_STDERR):
        host[name], guest[name] = _pair()
    out_path, err_path = tmp_path / "out", tmp_path / "err"
    out_fd = os.open(out_path, os.O_WRONLY | os.O_CREAT)
    err_fd = os.open(err_path, os.O_WRONLY | os.O_CREAT)
    return host, guest, out_fd, err_fd, out_path, err_path


def test_relay_waits_for_every_counted_byte(tmp_path: Path) -> None:
    """The status line may overtake the data; the relay still delivers all of it."""
    host, guest, out_fd, err_fd, out_path, err_path = _relay_fixture(tmp_path)
    stdin_r, stdin_w = os.pipe()
    os.write(stdin_w, b"input bytes")
    os.close(stdin_w)
    payload = os.urandom(300_000)
    relay = Relay(host, stdin_fd=stdin_r, stdout_fd=out_fd, stderr_fd=err_fd, tty=False)

    def guest_side() -> None:
        guest[g.PORT_STATUS].sendall(f"exit 3 {len(payload)} 4\n".encode())
        guest[g.PORT_STDOUT].sendall(payload[:1000])
        guest[g.PORT_STDERR].sendall(b"oops")
        guest[g.PORT_STDOUT].sendall(payload[1000:])

    threading.Thread(target=guest_side, daemon=True).start()
    outcome = relay.run(timeout=30)
    os.close(out_fd)
    os.close(err_fd)
    assert outcome.exit_code == 3
    assert out_path.read_bytes() == payload
    assert err_path.read_bytes() == b"oops"
    assert guest[g.PORT_STATUS].recv(16) == b"done\n"  # the guest may power off now
    assert guest[g.PORT_STDIN].recv(64) == b"input bytes"
    assert guest[g.PORT_STDIN].recv(64) == b""  # EOF reaches the guest


def test_a_pump_with_every_counted_byte_is_woken_not_left_waiting(tmp_path: Path) -> None:
    """Output that arrived before the status line: the relay ends the pump's wait by
    shutting the socket's reading side, and the guest can send nothing more."""
    host, guest, out_fd, err_fd, out_path, _ = _relay_fixture(tmp_path)
    guest[g.PORT_STDOUT].sendall(b"all of it")
    relay = Relay(host, stdin_fd=None, stdout_fd=out_fd, stderr_fd=err_fd, tty=False)
    for pump in relay.pumps:
        pump.start()
    while relay.pumps[0].received < len(b"all of it"):  # the pump has written it all
        threading.Event().wait(0.01)
    for pump, count in zip(relay.pumps, (len(b"all of it"), 0), strict=True):
        pump.expect_total(count)
    for pump in relay.pumps:
        pump.join()
    os.close(out_fd)
    os.close(err_fd)
    assert out_path.read_bytes() == b"all of it"
    with pytest.raises(BrokenPipeError):
        guest[g.PORT_STDERR].sendall(b"late")


def test_relay_times_out_and_notices_a_dead_vm(tmp_path: Path) -> None:
    host, guest, out_fd, err_fd, _, _ = _relay_fixture(tmp_path)
    outcome = Relay(host, stdin_fd=None, stdout_fd=out_fd, stderr_fd=err_fd, tty=False).run(0.3)
    assert outcome.timed_out and outcome.exit_code is None
    host, guest, out_fd, err_fd, _, _ = _relay_fixture(tmp_path)
    guest[g.PORT_STATUS].close()  # QEMU went away
    outcome = Relay(host, stdin_fd=None, stdout_fd=out_fd, stderr_fd=err_fd, tty=False).run(5)
    assert outcome.exit_code is None and outcome.failure is not None


def test_a_status_line_without_end_or_endless_noise_stays_bounded(tmp_path: Path) -> None:
    host, guest, out_fd, err_fd, _, _ = _relay_fixture(tmp_path)
    flood = threading.Thread(
        target=lambda: guest[g.PORT_STATUS].sendall(b"x" * (4 * MAX_STATUS_LINE)), daemon=True
    )
    flood.start()
    outcome = Relay(host, stdin_fd=None, stdout_fd=out_fd, stderr_fd=err_fd, tty=False).run(10)
    assert outcome.exit_code is None and "status line over" in (outcome.failure or "")
    host, guest, out_fd, err_fd, _, _ = _relay_fixture(tmp_path)
    guest[g.PORT_STATUS].sendall(b"noise\n" * 500 + b"exit 0 0 0\n")
    outcome = Relay(host, stdin_fd=None, stdout_fd=out_fd, stderr_fd=err_fd, tty=False).run(10)
    assert outcome.exit_code == 0 and len(outcome.notes) == MAX_NOTES


# ---------------------------------------------------------------- copies


def test_copy_out_writes_only_plain_files_below_the_destination(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in [
            ("results/ok.txt", b"fine"),
            ("results/../../evil.txt", b"bad"),
            ("/etc/evil", b"bad"),
            ("other/x", b"bad"),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("results/link")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tar.addfile(link)
    host, guest = _pair()
    guest.sendall(buf.getvalue())
    guest.close()
    dest = tmp_path / "deep" / "out"
    dest.parent.mkdir()
    work = copies.receive_tree(host, p.CopySpec(host=dest, guest="/results"))
    with pytest.raises(Exception, match="skipped 4 entries"):
        work()
    assert (dest / "ok.txt").read_bytes() == b"fine"
    assert not (tmp_path / "evil.txt").exists()
    assert not (dest / "link").exists()
    assert sorted(x.name for x in tmp_path.rglob("*")) == ["deep", "ok.txt", "out"]


def test_copy_in_sends_a_directory_or_a_single_file(tmp_path: Path) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "sub" / "f").write_text("x")
    (tmp_path / "one.txt").write_text("y")
    for spec, target, names in [
        (p.CopySpec(tmp_path / "d", "/data"), "/data", {".", "./sub", "./sub/f"}),
        (p.CopySpec(tmp_path / "one.txt", "/etc/app.conf"), "/etc", {"app.conf"}),
    ]:
        assert copies.copy_in_target(spec)[0] == target
        host, guest = _pair()
        copies.send_copy(spec, host)()
        received = b""
        while chunk := guest.recv(65536):
            received += chunk
        with tarfile.open(fileobj=io.BytesIO(received)) as tar:
            members = tar.getmembers()
        assert {m.name for m in members} == names
        assert all(m.uid == 0 and m.uname == "root" for m in members)


def test_watcher_of_a_run_that_cleaned_up_does_not_open_the_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that removed its own VM needs no recovery: opening the engine then would
    recreate a state directory being deleted meanwhile (a test's, or a user's)."""
    from cloudlet.config import Settings
    from cloudlet.engine import factory
    from cloudlet.engine import run_watcher as watcher

    opened: list[object] = []
    monkeypatch.setattr(factory, "open_engine", lambda *a, **k: opened.append(a))
    gone = Path("/proc/sys/kernel/pid_max").read_text().strip()  # no process has this pid
    home = tmp_path / "home"
    paths = Settings.load(home).paths
    paths.database.parent.mkdir(parents=True)
    paths.database.touch()
    assert watcher.main([str(home), gone, "0", "0123-cleaned-up"]) == 0
    assert opened == []
    # killed before it could clean up: its VM's directory is there, recovery runs
    paths.instance_dir("0123-killed").mkdir(parents=True)
    assert watcher.main([str(home), gone, "0", "0123-killed"]) == 0
    assert len(opened) == 1
