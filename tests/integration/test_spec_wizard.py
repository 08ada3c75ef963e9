"""The create wizard in a real terminal, spec files, plan and apply, on real QEMU (tiny)."""

from __future__ import annotations

import io
import re
import shlex
from pathlib import Path

import pexpect
import pytest

from tests.integration import cli

pytestmark = pytest.mark.integration

# The wizard's prompts, in order, for the tiny image (no cloud-init: no user/key questions).
PROMPTS = {
    "Name": r"Name \(", "Kind": r"Kind \[", "Location": r"Location \[",
    "Machine type": r"Machine type \(", "Disk size": r"Disk size \(",
    "Extra volumes": r"Extra volumes .*\(", "containers": r"run containers in this VM\?",
    "Image": r"Image \(", "API access": r"API access \(a token.*\? ",
    "Inbound ports": r"Inbound ports to open .*\(", "Network": r"Network \[",
    "Backups": r"Backups \[none",
}  # fmt: skip


ANSI = r"(?:\x1b\[[0-9;?]*[A-Za-z])*"  # styles a real terminal gets


def wizard(home: Path, cwd: Path, columns: int | None = None) -> pexpect.spawn:
    """The wizard in a pseudo-terminal. Without ``columns``: 200 wide and no styles; with
    them: a terminal of that width as people have (TERM=xterm), and the wizard must find
    the width itself (no COLUMNS to tell it)."""
    argv = cli.argv("create")
    if columns is None:  # no styles in what we read; Rich takes COLUMNS with LINES
        env = {**cli.env_for(home), "TERM": "dumb", "LINES": "50"}
    else:
        env = {**cli.env_for(home), "TERM": "xterm-256color", "NO_COLOR": "1"}
        del env["COLUMNS"]
    return pexpect.spawn(
        argv[0], argv[1:], env=env, cwd=str(cwd), encoding="utf-8", timeout=120,
        preexec_fn=cli.default_sigint, dimensions=(50, columns or 200),
    )  # fmt: skip


def answer(child: pexpect.spawn, answers: dict[str, str | list[str]]) -> None:
    """Answer each prompt (Enter unless told); a list answers a prompt asked again."""
    for prompt, pattern in PROMPTS.items():
        given = answers.get(prompt, "")
        styled = pattern.replace(r" \(", " " + ANSI + r"\(").replace(r" \[", " " + ANSI + r"\[")
        for line in [given] if isinstance(given, str) else given:
            child.expect(styled)
            child.sendline(line)


def spec_without_name(home: Path, name: str) -> str:
    return cli.run(home, "spec", name).stdout.replace(f"name: {name}\n", "name: X\n")


def test_wizard_defaults_with_enter_give_a_working_vm(cloudlet_home: Path, tmp_path: Path) -> None:
    home = cloudlet_home
    (tmp_path / "vm1.yaml").write_text("mine\n")  # a taken spec-file name: Enter still works
    child = wizard(home, tmp_path)
    answer(child, {})
    child.expect(r"Save the spec file to \(vm1-2.yaml\)")
    child.sendline("")
    child.expect(r"Create vm1 now\?")
    child.sendline("")
    child.expect(pexpect.EOF, timeout=300)
    child.close()
    assert child.exitstatus == 0, child.before
    assert "recorded in" not in child.before  # tiny has no SSH: no port 22 to only record
    assert cli.run_json(home, "show", "vm1")["state"] == "running"
    assert cli.run(home, "exec", "vm1", "--", "hostname").stdout.strip() == "vm1"
    assert (tmp_path / "vm1.yaml").read_text() == "mine\n"
    saved = (tmp_path / "vm1-2.yaml").read_text()
    assert "kind: VM" in saved and "type: gp.small" in saved
    assert cli.run(home, "spec", "vm1").stdout == saved  # the file is the VM's spec


@pytest.mark.parametrize("columns", [80, 120])
def test_wizard_screens_fit_the_terminal(cloudlet_home: Path, tmp_path: Path, columns: int) -> None:
    child = wizard(cloudlet_home, tmp_path, columns)
    child.logfile_read = io.StringIO()  # every screen, not only what follows the last match
    answer(child, {"Machine type": ["mem.xlarge", ""]})  # refused, then asked again
    child.expect("Save the spec file to")
    child.sendline("")
    child.expect(r"Create vm1 now\?")
    child.sendline("n")
    child.expect(pexpect.EOF)
    child.close()
    screen = re.sub(ANSI, "", child.logfile_read.getvalue())
    assert child.exitstatus == 0, screen
    assert "nothing was created" in screen and cli.run_json(cloudlet_home, "list") == []
    lines = [line.rstrip() for line in screen.replace("\r\n", "\n").split("\n")]
    assert max(len(line) for line in lines) > 100 or columns < 100  # the width was found
    too_long = [line for line in lines if len(line) > columns]
    assert all(line.startswith("same as: cloudlet create ") for line in too_long), too_long
    # the image names to type are whole, each at the start of its row
    table = screen.split("\nIMAGE ", 1)[1].split("Image (", 1)[0].replace("\r", "")
    rows = [line.split()[0] for line in table.split("\n")[1:] if line and line[0] != " "]
    assert {"tiny", "ubuntu-24.04", "debian-12-genericcloud", "alpine-3.21"} <= set(rows)
    # shares of CPU and memory, and the type that does not fit this 2-core 24 GiB host
    assert "CPU SHARE" in screen and "MEM SHARE" in screen
    xlarge = next(line for line in lines if line.startswith("mem.xlarge"))
    assert xlarge.split()[-2:] == ["too", "big"]
    assert "error: mem.xlarge does not fit this host" in screen
    help_words = " ".join(screen.split())
    assert "compute-optimized (more vCPUs)" in help_words  # no word broken across lines
    assert "Disk 256 MiB (the image's size)" in help_words


def test_wizard_answers_make_the_same_vm_as_the_printed_flags(
    cloudlet_home: Path, tmp_path: Path
) -> None:
    home = cloudlet_home
    child = wizard(home, tmp_path)
    answer(
        child,
        {
            "Name": "wiz",
            "Machine type": "gp.micro",
            "Extra volumes": "1G, 2G",
            "API access": "y",
            "Inbound ports": "80,22",
            "Backups": "daily",
        },
    )
    child.expect(r"same as: (cloudlet create [^\r\n]+)")
    command = shlex.split(child.match.group(1))
    child.expect("Save the spec file to")
    child.sendline(str(tmp_path / "out" / "wiz.yaml"))
    child.expect(r"Create wiz now\?")
    child.sendline("y")
    child.expect(pexpect.EOF, timeout=300)
    child.close()
    assert child.exitstatus == 0, child.before
    assert (tmp_path / "out" / "wiz.yaml").exists()
    # the printed command, under another name, asks for the same VM
    assert command[:3] == ["cloudlet", "create", "wiz"]
    cli.run(home, *command[1:2], "flags", *command[3:], "--no-start")  # no second boot
    from_flags = spec_without_name(home, "flags").replace("state: stopped", "state: running")
    assert spec_without_name(home, "wiz") == from_flags
    spec = cli.run(home, "spec", "wiz").stdout
    assert "api_access: true" in spec and "schedule: daily" in spec and "- 2G" in spec


def test_ctrl_c_halfway_creates_nothing(cloudlet_home: Path, tmp_path: Path) -> None:
    home = cloudlet_home
    child = wizard(home, tmp_path)
    for prompt, pattern in list(PROMPTS.items())[: list(PROMPTS).index("Image") + 1]:
        child.expect(pattern)
        child.sendline({"containers": "y", "Image": "tiny"}.get(prompt, ""))
    # containers on tiny (no cloud-init) is refused in one line, and the image asked again
    child.expect(r"error: image tiny has no cloud-init[^\r\n]*\r\n")
    child.expect(PROMPTS["Image"])
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 130
    assert child.before.strip().splitlines()[-1].strip() == "cancelled: nothing was created"
    assert cli.run_json(home, "list") == []
    assert not any((home / "instances").glob("*")) and not list(tmp_path.iterdir())
    assert cli.our_processes(str(home)) == []


def test_a_process_vm_is_handed_to_cloudlet_run(cloudlet_home: Path, tmp_path: Path) -> None:
    child = wizard(cloudlet_home, tmp_path)
    child.expect(PROMPTS["Name"])
    child.sendline("")
    child.expect(PROMPTS["Kind"])
    child.sendline("process")
    child.expect(r"cloudlet run tiny -- CMD \(nothing was created\)")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert cli.run_json(cloudlet_home, "list") == []


def test_create_without_a_name_off_a_terminal_says_what_is_missing(cloudlet_home: Path) -> None:
    proc = cli.run(cloudlet_home, "create", check=False)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "missing VM name" in proc.stderr


LAB = """\
apiVersion: cloudlet/v1
kind: VM
metadata:
  name: lab1
spec:
  image: tiny
  type: {type}
  location: {location}
  state: {state}
"""


def test_apply_reshape_refusal_and_round_trip(cloudlet_home: Path, tmp_path: Path) -> None:
    home = cloudlet_home
    lab = tmp_path / "lab.yaml"
    lab.write_text(LAB.format(type="gp.micro", location="local", state="running"))
    planned = cli.run_json(home, "plan", str(lab))
    assert [d["action"] for d in planned["decisions"]] == ["create"]
    assert cli.run_json(home, "list") == []
    cli.run(home, "apply", "-f", str(lab))
    assert cli.run_json(home, "show", "lab1")["state"] == "running"
    assert "no changes" in cli.run(home, "apply", "-f", str(lab)).stderr

    # a type change with state: stopped stops the VM and applies at once
    lab.write_text(LAB.format(type="cpu.small", location="local", state="stopped"))
    applied = cli.run(home, "apply", "-f", str(lab)).stdout
    assert "stop " in applied and "reshape " in applied and "applies at once" in applied
    shown = cli.run_json(home, "show", "lab1")
    assert (shown["state"], shown["type"], shown["cpus"]) == ("stopped", "cpu.small", 2)

    # a location change is refused, with the way there, and changes nothing
    lab.write_text(LAB.format(type="cpu.small", location="zone-b", state="running"))
    refused = cli.run(home, "apply", "-f", str(lab), check=False)
    assert refused.returncode == 4
    assert f"{lab}:8: lab1: location is local" in refused.stderr
    assert "delete and re-create" in refused.stderr and "nothing was changed" in refused.stderr

    # round trip: spec, delete, create --from gives an equal spec
    exported = tmp_path / "lab1.yaml"
    exported.write_text(cli.run(home, "spec", "lab1").stdout)
    cli.run(home, "delete", "--force", "lab1")
    cli.run(home, "create", "--from", str(exported))  # state: stopped, so no boot
    assert cli.run(home, "spec", "lab1").stdout == exported.read_text()
    # the new shape is what the guest gets
    cli.run(home, "start", "lab1")
    assert cli.run(home, "exec", "lab1", "--", "nproc").stdout.strip() == "2"
