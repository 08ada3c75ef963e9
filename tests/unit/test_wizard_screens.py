"""The create wizard adds up (issue 14): Enter always ends in a VM, types that do not fit
are marked and refused, containers narrow the images, and every screen fits the terminal.

The wizard runs in-process on the fake engine, printing to a console that soft-wraps like
the CLI's own (so a line Rich does not wrap itself would be broken by the terminal).
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from cloudlet.cli import wizard
from cloudlet.cli.options import Output
from cloudlet.cli.wizard import Wizard
from cloudlet.engine.engine import Engine
from cloudlet.spec.document import VMDocument
from cloudlet.spec.units import GIB, MIB
from tests.fakes import make_fake_engine

ENTERS = 40  # more Enters than the wizard has questions; then EOF (never an endless loop)


@pytest.fixture
def engine(short_tmp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Engine:
    """A fake host of 2 cores and 24 GiB (this machine's size); cwd and HOME are empty."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    return make_fake_engine(short_tmp / "h", cpus=2, memory=24 * GIB)


class Typed(io.StringIO):
    """Answers read as typed on a terminal: each one echoed to the screen with its Enter."""

    def __init__(self, text: str, screen: io.StringIO) -> None:
        super().__init__(text)
        self.screen = screen

    def readline(self, size: int = -1, /) -> str:  # type: ignore[override]
        line = super().readline(size)
        self.screen.write(line)
        return line


def run(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, answers: list[str], width: int = 80
) -> tuple[tuple[Path, VMDocument] | None, str]:
    screen = io.StringIO()
    monkeypatch.setattr("sys.stdin", Typed("\n".join(answers) + "\n" * ENTERS, screen))
    console = Console(file=screen, width=width, soft_wrap=True, highlight=False)
    return Wizard(engine, console).run(), screen.getvalue()


def lines_fit(text: str, width: int) -> None:
    """No line is longer than the terminal, so the terminal breaks nothing (but the
    command to copy, which stays one line)."""
    too_long = [
        line
        for line in text.splitlines()
        if len(line.rstrip()) > width and not line.startswith("same as: cloudlet create ")
    ]
    assert too_long == [], f"lines wider than {width}: {too_long}"


# ---------------------------------------------------------------- Enter always ends in a VM
def test_a_taken_spec_file_name_defaults_to_a_free_one(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "vm1.yaml").write_text("mine\n")
    (tmp_path / "vm1-2.yaml").write_text("mine too\n")
    result, text = run(engine, monkeypatch, [])
    assert result is not None, text
    assert result[0] == Path("vm1-3.yaml")
    assert "Save the spec file to (vm1-3.yaml)" in text and "Overwrite" not in text
    assert (tmp_path / "vm1.yaml").read_text() == "mine\n"


def test_typing_a_taken_name_and_refusing_to_overwrite_offers_a_free_one(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "vm1.yaml").write_text("mine\n")
    answers = [""] * 12 + ["vm1.yaml", ""]  # 12 questions, then the path; Enter: do not overwrite
    result, text = run(engine, monkeypatch, answers)
    assert result is not None and result[0] == Path("vm1-2.yaml"), text
    assert "vm1.yaml exists. Overwrite it?" in text


def test_enter_on_every_question_creates_the_vm(
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from cloudlet.cli import spec_commands

    (tmp_path / "vm1.yaml").write_text("mine\n")
    monkeypatch.setattr(wizard, "open_engine", lambda: engine)
    monkeypatch.setattr(spec_commands, "open_engine", lambda: engine)
    monkeypatch.setattr("sys.stdin", io.StringIO("\n" * ENTERS))
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    wizard.start(Output.table)
    vm = engine.show("vm1")
    assert (vm.state, vm.image, vm.type) == ("running", "tiny", "gp.small")
    assert (tmp_path / "vm1.yaml").read_text() == "mine\n"
    assert "name: vm1" in (tmp_path / "vm1-2.yaml").read_text()
    # tiny has no SSH: no port 22 by default, so nothing the defaults ask is only recorded
    assert engine.spec("vm1").firewall.inbound_ports == ()
    assert "recorded in" not in capsys.readouterr().err


# ---------------------------------------------------------------- machine types
@pytest.mark.parametrize("width", [80, 120])
def test_types_show_cpu_and_memory_shares_and_mark_what_does_not_fit(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, width: int
) -> None:
    answers = ["", "", "", "mem.xlarge", "gp.medium"]
    result, text = run(engine, monkeypatch, answers, width)
    assert result is not None and result[1].spec.type == "gp.medium", text
    lines_fit(text, width)
    assert "CPU SHARE" in text and "MEM SHARE" in text
    table = text.split("\nTYPE ", 1)[1].split("\nMachine type (", 1)[0]
    rows = {line.split()[0]: line.split() for line in table.splitlines()[1:]}
    # 8 vCPUs of 2 cores, 64 GiB of 24 GiB: both shares shown, and it does not fit
    assert rows["mem.xlarge"][-4:] == ["400%", "267%", "too", "big"]
    assert rows["gp.medium"][-3:] == ["100%", "17%", "yes"]  # 2 of 2 cores, 4 of 24 GiB
    assert rows["custom"][:2] == ["custom", "your"]
    refusal = [line for line in text.splitlines() if "error:" in line]
    assert refusal[0].startswith("error: mem.xlarge does not fit this host")
    assert "64 GiB of memory and this host allows at most 23 GiB" in " ".join(text.split())


def test_custom_cpu_and_memory_can_be_chosen_and_must_fit(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = ["", "", "", "custom", "two", "3", "40G", "3", "1536", "1536M"]
    result, text = run(engine, monkeypatch, answers)
    assert result is not None, text
    spec = result[1].spec
    assert (spec.type, spec.cpus, spec.memory) == ("custom", 3, 1536 * MIB)
    assert "error: invalid vCPU count 'two'" in text
    assert "that shape does not fit this host: it needs 40 GiB" in " ".join(text.split())
    assert "memory size 1536 has no unit" in text  # a bare number is a slip, asked again
    assert "custom: 3 vCPUs, 1.5 GiB" in text  # the summary


# ---------------------------------------------------------------- images
def _image_rows(text: str) -> list[str]:
    table = text.split("\nIMAGE ", 1)[1].split("\nImage (", 1)[0]
    return [line.split()[0] for line in table.splitlines()[1:] if line and not line[0].isspace()]


def test_containers_narrow_the_images_to_those_that_can_run_them(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = ["", "", "", "", "", "", "y"]  # yes to containers; Enter after that
    result, text = run(engine, monkeypatch, answers)
    assert result is not None, text
    offered = _image_rows(text)
    assert "cloudy" in offered and "debian-12" in offered
    assert not {"tiny", "acme", "mac"} & set(offered)  # no cloud-init: no podman
    assert text.index("run containers") < text.index("OS image")  # the seed's order
    spec = result[1].spec
    assert (spec.containers, spec.image) == (True, "cloudy")  # Enter: a local image that can
    assert spec.access.user == "debian" and spec.firewall.inbound_ports == (22,)  # has SSH


def test_without_containers_every_image_is_offered_and_tiny_is_the_default(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    result, text = run(engine, monkeypatch, [])
    assert result is not None and result[1].spec.image == "tiny"
    assert {"tiny", "acme", "cloudy", "ubuntu-24.04"} <= set(_image_rows(text))


@pytest.mark.parametrize("width", [80, 100, 120])
def test_image_names_are_never_cut(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, width: int
) -> None:
    result, text = run(engine, monkeypatch, [], width)
    assert result is not None
    lines_fit(text, width)
    names = [c.name for c in engine.image_menu()]
    assert "debian-12-genericcloud" in names
    assert _image_rows(text) == names  # each name whole, at the start of its row


def test_a_terminal_too_narrow_for_the_tables_lists_names_one_a_line(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    result, text = run(engine, monkeypatch, [], 50)
    assert result is not None
    lines_fit(text, 50)
    lines = text.splitlines()
    for name in [c.name for c in engine.image_menu()] + [t.name for t in engine.machine_types()]:
        assert name in lines  # a line of its own, whole
    assert "custom" in lines
    assert "\nIMAGE " not in text and "\nTYPE " not in text
    words = " ".join(text.split())
    assert "mem.xlarge memory-optimized: 8 vCPUs, 64 GiB; 400% of the cores, 267% of the" in words


# ---------------------------------------------------------------- help, access, summary
def test_help_lines_wrap_at_word_boundaries(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    result, text = run(engine, monkeypatch, [], 80)
    assert result is not None
    lines_fit(text, 80)
    joined = text.replace("\n", " ")
    for phrase in ("compute-optimized (more vCPUs)", "docker-compatible socket enabled"):
        assert phrase in " ".join(joined.split())
    words = set(" ".join(joined.split()).split())
    assert "compute-optimized" in words or "compute-optimized," in words


def test_ssh_key_prompt_offers_numbers_only_when_keys_are_listed(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    answers = ["", "", "", "", "", "", "", "cloudy"]
    result, text = run(engine, monkeypatch, answers)
    assert result is not None, text
    assert "a number above" not in text and "path of a .pub file" in " ".join(text.split())
    (tmp_path / ".ssh").mkdir()
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl me"
    (tmp_path / ".ssh" / "id_me.pub").write_text(key + "\n")
    result, text = run(engine, monkeypatch, answers)
    assert result is not None, text
    assert "1) " in text and "a number above" in " ".join(text.split())


def test_summary_gives_sizes_in_numbers(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    result, text = run(engine, monkeypatch, [])
    assert result is not None
    summary = text.split("11. Summary", 1)[1]
    assert "Disk           256 MiB (the image's size)" in summary
    assert "gp.small: 1 vCPU, 1 GiB" in summary
    result, text = run(engine, monkeypatch, ["", "", "", "", "4G", "1G,512M"])
    assert result is not None
    summary = text.split("11. Summary", 1)[1]
    assert "Disk           4 GiB" in summary and "1 GiB, 512 MiB" in summary


def test_port_22_is_the_default_only_on_images_with_ssh(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    result, text = run(engine, monkeypatch, [])
    assert result is not None and result[1].spec.firewall.inbound_ports == ()
    assert "Inbound ports to open (comma separated) (none)" in text
    result, text = run(engine, monkeypatch, ["", "", "", "", "", "", "", "cloudy"])
    assert result is not None and result[1].spec.firewall.inbound_ports == (22,)
