"""The CLI's entry point ends the process without the interpreter's teardown, with the
status the command's SystemExit carries; main() itself still raises SystemExit."""

from __future__ import annotations

import pytest

from cloudlet.cli import main, quick_exit


@pytest.fixture
def exits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    ended: list[int] = []
    monkeypatch.setattr(quick_exit.os, "_exit", ended.append)
    monkeypatch.setattr(quick_exit, "_status", [])
    monkeypatch.setattr(quick_exit.logging, "shutdown", lambda: None)  # pytest's handlers
    return ended


@pytest.mark.parametrize(("code", "status"), [(None, 0), (0, 0), (3, 3), (True, 1), ("why", 1)])
def test_the_status_is_the_one_python_would_exit_with(code: object, status: int) -> None:
    assert quick_exit.exit_status(code) == status


def test_nothing_happens_before_the_command_ended(exits: list[int]) -> None:
    quick_exit.exit_now()  # an uncaught error: Python reports it as usual
    assert exits == []


def test_the_entry_point_exits_with_the_commands_status(
    exits: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    armed: list[bool] = []
    monkeypatch.setattr(quick_exit, "arm", lambda: armed.append(True))

    def command() -> None:
        raise SystemExit(4)

    monkeypatch.setattr(main, "main", command)
    with pytest.raises(SystemExit):
        main.entry()
    assert armed == [True]
    quick_exit.exit_now()  # what the exit handler does once Python has run the others
    assert exits == [4]


def test_an_error_that_is_no_exit_leaves_the_ordinary_teardown(
    exits: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(quick_exit, "arm", lambda: None)

    def command() -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(main, "main", command)
    with pytest.raises(RuntimeError):
        main.entry()
    quick_exit.exit_now()
    assert exits == []
