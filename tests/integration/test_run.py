"""cloudlet run against real QEMU: exit codes, streams, shares, copies, cleanup."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pexpect
import pytest

from tests.integration import cli

pytestmark = pytest.mark.integration
QEMU_AND_VIRTIOFSD = ("qemu-system", "virtiofsd")


def run(
    home: Path, *args: str, stdin: bytes = b"", timeout: float = 180
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        cli.argv("run", *args),
        env=cli.env_for(home),
        input=stdin,
        capture_output=True,
        timeout=timeout,
    )


def assert_nothing_left(home: Path) -> None:
    vms = json.loads(cli.run(home, "list", "--all", "-o", "json").stdout)
    assert vms == [], vms
    assert list((home / "instances").iterdir()) == []
    assert [p.name for p in (home / "run").iterdir()] == []
    assert cli.our_processes(str(home), QEMU_AND_VIRTIOFSD) == []
    mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    assert [m for m in mounts if str(home) in m] == []


def _states(home: Path) -> dict[str, str]:
    listed = json.loads(cli.run(home, "list", "--all", "-o", "json").stdout)
    return {vm["name"]: vm["state"] for vm in listed}


def wait_until(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_parallel_runs_return_their_exit_codes_and_leave_nothing(cloudlet_home: Path) -> None:
    """Four runs at once: 0, 1, 42 and death by SIGKILL (128+9), without colliding."""
    programs: Sequence[tuple[str, int]] = [
        ("exit 0", 0),
        ("exit 1", 1),
        ("echo $(hostname); exit 42", 42),
        ("kill -9 $$", 137),
    ]
    procs = [
        subprocess.Popen(
            cli.argv("run", "tiny", "--", "sh", "-c", script),
            env=cli.env_for(cloudlet_home),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for script, _ in programs
    ]
    results = [proc.communicate(timeout=240) for proc in procs]
    for proc, (script, expected), (out, err) in zip(procs, programs, results, strict=True):
        assert proc.returncode == expected, (script, out, err)
    assert results[2][0].decode().startswith("run-")
    assert results[3][1] == b""  # no shell chatter about the killed program in its stderr
    assert_nothing_left(cloudlet_home)


def test_streams_stay_apart_and_are_binary_safe(cloudlet_home: Path) -> None:
    payload = bytes(range(256)) * 4096 + b"\0tail"
    args = ["it's", "two words", "$HOME", "a\nb", "*"]
    proc = run(
        cloudlet_home,
        "tiny", "--", "sh", "-c",
        'cat; printf "[%s]" "$@" >&2', "prog", *args,
        stdin=payload,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == payload
    assert proc.stderr.decode() == "".join(f"[{a}]" for a in args)


def test_large_output_streams_with_flat_memory(cloudlet_home: Path) -> None:
    """200 MiB through a pipe; the CLI's resident memory stays far below that."""
    size = 200 * 1024 * 1024
    proc = subprocess.Popen(
        cli.argv("run", "tiny", "--", "dd", "if=/dev/zero", "bs=64k", f"count={size // 65536}"),
        env=cli.env_for(cloudlet_home),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    peak_rss = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak_rss
        while not stop.is_set():
            try:
                for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        peak_rss = max(peak_rss, int(line.split()[1]) * 1024)
            except OSError:
                return
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    digest = hashlib.sha256()
    received = 0
    assert proc.stdout is not None
    while chunk := proc.stdout.read(1 << 20):
        received += len(chunk)
        digest.update(chunk)
    proc.wait(timeout=300)
    stop.set()
    assert proc.returncode == 0
    assert received == size
    assert digest.hexdigest() == hashlib.sha256(b"\0" * size).hexdigest()
    print(f"\n200 MiB streamed; CLI peak RSS {peak_rss / 2**20:.0f} MiB")
    assert 0 < peak_rss < 120 * 1024 * 1024


def test_timeout_exits_124_and_destroys_the_vm(cloudlet_home: Path) -> None:
    proc = run(cloudlet_home, "--timeout", "2s", "tiny", "--", "sleep", "600")
    assert proc.returncode == 124, proc.stderr
    assert b"--timeout" in proc.stderr
    assert_nothing_left(cloudlet_home)


def test_read_only_share_cannot_be_written(cloudlet_home: Path, short_tmp: Path) -> None:
    ro = short_tmp / "ro"
    rw = short_tmp / "rw"
    ro.mkdir()
    rw.mkdir()
    (ro / "keep.txt").write_text("original\n")
    script = (
        "cat /in/keep.txt; "
        "if echo changed > /in/keep.txt; then echo WROTE; else echo REFUSED; fi; "
        "echo from-guest > /out/made.txt"
    )
    proc = run(
        cloudlet_home,
        "--share", f"{ro}:/in:ro", "--share", f"{rw}:/out",
        "tiny", "--", "sh", "-c", script,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().splitlines() == ["original", "REFUSED"]
    assert (ro / "keep.txt").read_text() == "original\n"
    assert (rw / "made.txt").read_text() == "from-guest\n"
    assert_nothing_left(cloudlet_home)


def test_copy_in_and_copy_out(cloudlet_home: Path, short_tmp: Path) -> None:
    data = short_tmp / "data"
    (data / "sub").mkdir(parents=True)
    (data / "a.txt").write_text("alpha\n")
    (data / "sub" / "b.bin").write_bytes(bytes(range(256)) * 100)
    results = short_tmp / "results"
    proc = run(
        cloudlet_home,
        "--copy-in", f"{data}:/data", "--copy-out", f"/results:{results}",
        "tiny", "--", "sh", "-c",
        "mkdir -p /results/deep && cat /data/a.txt > /results/copy.txt && "
        "md5sum /data/sub/b.bin | cut -d' ' -f1 > /results/deep/sum && ls /data",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().split() == ["a.txt", "sub"]
    assert (results / "copy.txt").read_text() == "alpha\n"
    expected = hashlib.md5(bytes(range(256)) * 100).hexdigest()
    assert (results / "deep" / "sum").read_text().strip() == expected
    missing = run(cloudlet_home, "--copy-out", f"/nothing:{short_tmp / 'x'}", "tiny", "--", "true")
    assert missing.returncode == 1
    assert b"/nothing does not exist in the guest" in missing.stderr
    assert_nothing_left(cloudlet_home)


def test_sandbox_has_no_network_and_no_agent(cloudlet_home: Path, short_tmp: Path) -> None:
    script = "ls /sys/class/net; ls /sys/class/virtio-ports | wc -l"
    proc = run(cloudlet_home, "--sandbox", "tiny", "--", "sh", "-c", script)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.decode().split()
    assert lines[:-1] == ["lo"]
    assert int(lines[-1]) == 4  # status, stdin, stdout, stderr: no guest agent port
    assert b"no isolation guarantee" in proc.stderr  # this host has no working KVM
    refused = run(cloudlet_home, "--sandbox", "--share", f"{short_tmp}:/x", "tiny", "--", "true")
    assert refused.returncode == 2
    assert b"read-only" in refused.stderr


def test_nat_network_and_debian_userland(cloudlet_home: Path) -> None:
    proc = run(
        cloudlet_home,
        "--net", "nat", "debian-12", "--", "sh", "-c",
        "cat /etc/debian_version; ip -4 -o addr show eth0",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.decode().splitlines()
    assert lines[0].startswith("12.")
    assert "10.0.2.15/24" in lines[1]


def test_interrupt_and_kill_leave_nothing(cloudlet_home: Path) -> None:
    for sig in (signal.SIGINT, signal.SIGKILL):
        proc = subprocess.Popen(
            cli.argv("run", "--name", "victim", "tiny", "--", "sleep", "600"),
            env=cli.env_for(cloudlet_home),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=cli.default_sigint,
        )
        # interrupted while its program runs: the guest connected, the VM recorded running
        wait_until(
            lambda: _states(cloudlet_home) == {"victim": "running"}, 120, "the program to run"
        )
        proc.send_signal(sig)
        proc.wait(timeout=60)
        if sig == signal.SIGINT:
            assert proc.returncode == 130
            assert_nothing_left(cloudlet_home)
        else:
            # Nobody ran the CLI's cleanup: its watcher has to.
            wait_until(
                lambda: not cli.our_processes(str(cloudlet_home), QEMU_AND_VIRTIOFSD),
                60,
                "the watcher",
            )
            wait_until(lambda: not list((cloudlet_home / "run").iterdir()), 30, "run files")
            assert_nothing_left(cloudlet_home)


def test_keep_leaves_a_stopped_vm(cloudlet_home: Path) -> None:
    proc = run(
        cloudlet_home, "--keep", "--name", "kept", "tiny", "--", "sh", "-c", "echo x > /root/mark"
    )
    assert proc.returncode == 0, proc.stderr
    vm = cli.run_json(cloudlet_home, "show", "kept")
    assert vm["state"] == "stopped"
    assert vm["kind"] == "system"
    cli.run(cloudlet_home, "start", "kept")
    out = cli.run(cloudlet_home, "exec", "kept", "--", "cat", "/root/mark").stdout
    assert out == "x\n"
    cli.run(cloudlet_home, "delete", "--force", "kept")


def test_tty_gives_the_program_a_terminal(cloudlet_home: Path) -> None:
    child = pexpect.spawn(
        sys.executable,
        ["-m", "cloudlet", "run", "-it", "tiny", "--", "sh"],
        env=cli.env_for(cloudlet_home),
        timeout=120,
        dimensions=(30, 100),
        preexec_fn=cli.default_sigint,
    )
    child.expect(r"[#$] ")
    child.sendline("tty; stty size; exit 7")
    child.expect("/dev/hvc0")
    child.expect("30 100")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 7
    assert_nothing_left(cloudlet_home)


def test_bad_input_creates_nothing(cloudlet_home: Path, short_tmp: Path) -> None:
    cases = [
        (["tiny", "--"], "no program to run"),
        (["--share", f"{short_tmp}/missing:/x", "tiny", "--", "true"], "not a directory"),
        (["--copy-in", "relative", "tiny", "--", "true"], "HOST:GUEST"),
        (["--timeout", "soon", "tiny", "--", "true"], "not a duration"),
        (["no-such-image", "--", "true"], "no-such-image"),
    ]
    for args, message in cases:
        proc = run(cloudlet_home, *args)
        assert proc.returncode != 0, args
        assert message.encode() in proc.stderr, (args, proc.stderr)
        assert len(proc.stderr.decode().strip().splitlines()) == 1, proc.stderr
    assert_nothing_left(cloudlet_home)
    assert os.listdir(cloudlet_home / "instances") == []


def test_boot_runs_the_program_after_the_image_services(cloudlet_home: Path) -> None:
    """--boot: the image's init starts its services (the guest agent) before the program."""
    script = "ps | grep -c qemu-g[a]; cat; exit 3"
    plain = run(cloudlet_home, "tiny", "--", "sh", "-c", script, stdin=b"in\n")
    booted = run(cloudlet_home, "--boot", "tiny", "--", "sh", "-c", script, stdin=b"in\n")
    assert (plain.returncode, booted.returncode) == (3, 3), (plain.stderr, booted.stderr)
    assert plain.stdout == b"0\nin\n"  # nothing of the image started
    assert booted.stdout == b"1\nin\n"
    assert_nothing_left(cloudlet_home)


def test_qemu_is_asked_its_version_once_per_binary(cloudlet_home: Path) -> None:
    """The first run asks QEMU its version (part of the KVM verdict's key) and remembers
    it with the binary; the next one boots without asking. Both end with the
    program's status and output, and leave nothing behind."""
    for code in (3, 0):
        proc = run(cloudlet_home, "tiny", "--", "sh", "-c", f"echo hi; exit {code}")
        assert (proc.returncode, proc.stdout) == (code, b"hi\n"), proc.stderr
    remembered = json.loads((cloudlet_home / "host" / "qemu-version.json").read_text())
    assert list(remembered) == ["x86_64"]
    log = (cloudlet_home / "logs" / "cloudlet.log").read_text()
    assert log.count("qemu-system-x86_64 --version") == 1
    assert_nothing_left(cloudlet_home)
