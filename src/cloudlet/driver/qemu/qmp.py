"""Short QMP conversations over the VM's unix socket, with timeouts.

Built on the ``qemu.qmp`` library. Each call connects, negotiates, runs one command
and disconnects, so any process (CLI, server) can talk to any VM without holding
the monitor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from qemu.qmp import (
    ConnectError,
    EventListener,
    ExecuteError,
    QMPClient,
    QMPError,
    Runstate,
)

from cloudlet import redact
from cloudlet.errors import MonitorError, Timeout
from cloudlet.progress import CancelToken

T = TypeVar("T")
_log = logging.getLogger(__name__)


def _note(
    path: Path, command: str, args: dict[str, Any] | None, outcome: str, started: float
) -> None:
    """One log line per command: the VM (its runtime directory's name), the command and
    its arguments, and the reply, both in short and without secrets."""
    if _log.isEnabledFor(logging.DEBUG):
        took = time.monotonic() - started
        shown = redact.summary(args) if args else ""
        _log.debug(
            "VM %s: %s %s-> %s (%.3f s)",
            path.parent.name,
            command,
            shown and f"{shown} ",
            outcome,
            took,
        )


async def _call(
    client: QMPClient, path: Path, command: str, args: dict[str, Any] | None, timeout: float | None
) -> Any:
    """``client.execute`` under ``timeout`` (None: none), logged."""
    started = time.monotonic()
    try:
        result = await asyncio.wait_for(client.execute(command, args), timeout)
    except ExecuteError as exc:
        _note(path, command, args, f"error: {exc.error.error.desc}", started)
        raise
    except BaseException as exc:
        _note(path, command, args, f"no answer ({type(exc).__name__})", started)
        raise
    _note(path, command, args, redact.summary(result), started)
    return result


async def _execute(path: Path, command: str, args: dict[str, Any] | None, timeout: float) -> Any:
    client = QMPClient("cloudlet")
    try:
        await asyncio.wait_for(client.connect(str(path)), timeout)
        return await _call(client, path, command, args, timeout)
    finally:
        await client.disconnect()


def execute(
    path: Path, command: str, args: dict[str, Any] | None = None, *, timeout: float = 10.0
) -> Any:
    """Run one QMP command and return its result."""
    late = f"QEMU's monitor did not answer {command} within {timeout:.0f} s"
    return _run(_execute(path, command, args, timeout), path, command, late)


def _run(coro: Coroutine[Any, Any, T], path: Path, command: str, late: str) -> T:
    """Run a conversation; QMP failures become MonitorError, ``late`` the Timeout's text."""
    try:
        return asyncio.run(coro)
    except ExecuteError as exc:
        raise MonitorError(f"QEMU refused {command}: {exc.error.error.desc}") from None
    except (ConnectError, OSError, EOFError, QMPError) as exc:
        raise MonitorError(
            f"cannot reach QEMU's monitor at {path}: {exc}", hint="is the VM running?"
        ) from None
    except TimeoutError:
        raise Timeout(late) from None


def status(path: Path, *, timeout: float = 5.0) -> str:
    """QEMU's run state: "running", "paused", "shutdown", "prelaunch", ..."""
    result = execute(path, "query-status", timeout=timeout)
    return str(result["status"])


def _is_open(chardevs: Any, label: str) -> bool:
    return any(c.get("label") == label and c.get("frontend-open") for c in chardevs)


async def _wait_chardev_open(
    path: Path, label: str, port_name: str, timeout: float, alive: Callable[[], bool]
) -> bool:
    client = QMPClient("cloudlet-wait")
    listener = EventListener(names=("VSERPORT_CHANGE",))
    try:
        await asyncio.wait_for(client.connect(str(path)), 5.0)
        client.register_listener(listener)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if _is_open(await _call(client, path, "query-chardev", None, None), label):
            return True
        while loop.time() < deadline and alive():
            try:
                event = await asyncio.wait_for(listener.get(), 1.0)
            except TimeoutError:
                continue
            data: dict[str, Any] = dict(event.get("data") or {})  # type: ignore[call-overload]
            if data.get("open") and data.get("id") == port_name:
                return True
            if _is_open(await _call(client, path, "query-chardev", None, None), label):
                return True
        return False
    finally:
        client.remove_listener(listener)
        await client.disconnect()


def wait_chardev_open(
    path: Path, label: str, port_name: str, *, timeout: float, alive: Callable[[], bool]
) -> bool:
    """Wait, on one QMP connection, until the guest opens the port behind chardev ``label``.

    Event-driven (VSERPORT_CHANGE) rather than polled, so the wait costs no CPU
    that a TCG guest needs to boot.
    """
    try:
        return asyncio.run(_wait_chardev_open(path, label, port_name, timeout, alive))
    except (ConnectError, OSError, EOFError, QMPError, TimeoutError):
        return False


async def _execute_and_wait(
    path: Path,
    command: str,
    args: dict[str, Any],
    events: tuple[str, ...],
    done: Callable[[str, dict[str, Any]], bool],
    timeout: float,
    accepted: Callable[[], None] | None = None,
    cancel: CancelToken | None = None,
    on_cancel: Sequence[tuple[str, dict[str, Any]]] = (),
) -> dict[str, Any]:
    client = QMPClient("cloudlet-wait")
    asked = False  # on_cancel sent
    listener = EventListener(names=events)
    try:
        await asyncio.wait_for(client.connect(str(path)), 5.0)
        client.register_listener(listener)
        await _call(client, path, command, args, 10.0)
        if accepted is not None:
            accepted()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        poll = 1.0 if cancel is None else 0.2
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError
            if cancel is not None and cancel.cancelled and not asked:
                asked = True
                for cancel_command, cancel_args in on_cancel:
                    with contextlib.suppress(ExecuteError):  # already over: nothing to stop
                        await _call(client, path, cancel_command, cancel_args, 10.0)
            try:
                event = await asyncio.wait_for(listener.get(), min(left, poll))
            except TimeoutError:
                # QEMU gone (killed, crashed): no event will ever come.
                if client.runstate != Runstate.RUNNING:
                    raise EOFError("QEMU closed its monitor") from None
                continue
            data: dict[str, Any] = dict(event.get("data") or {})  # type: ignore[call-overload]
            _log.debug("VM %s: event %s %s", path.parent.name, event["event"], redact.summary(data))
            if done(str(event["event"]), data):
                return data
    finally:
        client.remove_listener(listener)
        await client.disconnect()


def execute_and_wait(
    path: Path,
    command: str,
    args: dict[str, Any],
    *,
    events: tuple[str, ...],
    done: Callable[[str, dict[str, Any]], bool],
    timeout: float,
    accepted: Callable[[], None] | None = None,
    cancel: CancelToken | None = None,
    on_cancel: Sequence[tuple[str, dict[str, Any]]] = (),
) -> dict[str, Any]:
    """Run one command, then wait on the same connection for the event that ends it.

    Listening before the command is sent means a fast event cannot be missed.
    ``accepted`` is called as soon as QEMU accepted the command (the job runs on).
    Once ``cancel`` is cancelled, the ``on_cancel`` commands are sent (once) on the same
    connection, and the wait goes on for the event their stop brings (``done`` decides).
    """
    late = f"{command} did not finish within {timeout:.0f} s"
    conversation = _execute_and_wait(
        path, command, args, events, done, timeout, accepted, cancel, on_cancel
    )
    return _run(conversation, path, command, late)


def unplug(path: Path, device_id: str, timeout: float) -> None:
    """device_del, then wait until the guest has released the device."""
    execute_and_wait(
        path,
        "device_del",
        {"id": device_id},
        events=("DEVICE_DELETED",),
        done=lambda _name, data: data.get("device") == device_id,
        timeout=timeout,
    )


async def _migrate_fd(
    path: Path, fd: int, command: str, setup: list[tuple[str, dict[str, Any]]], timeout: float
) -> dict[str, Any]:
    client = QMPClient("cloudlet-migrate")
    try:
        await asyncio.wait_for(client.connect(str(path)), 5.0)
        for name, args in setup:
            await _call(client, path, name, args, 10.0)
        # The fd belongs to this monitor connection: hand it over, name it, use it.
        client.send_fd_scm(fd)
        await _call(client, path, "getfd", {"fdname": "cloudlet-state"}, 10.0)
        await _call(client, path, command, {"uri": "fd:cloudlet-state"}, 10.0)
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            info: dict[str, Any] = dict(
                await asyncio.wait_for(client.execute("query-migrate"), 10.0)  # type: ignore[call-overload]
            )
            if info.get("status") in ("completed", "failed", "cancelled"):
                _note(path, "query-migrate", None, redact.summary(info), started)  # the last poll
                return info
            if loop.time() > deadline:
                raise TimeoutError
            await asyncio.sleep(0.05)
    finally:
        await client.disconnect()


def migrate_fd(
    path: Path,
    fd: int,
    command: str,
    *,
    setup: list[tuple[str, dict[str, Any]]] | None = None,
    timeout: float,
) -> dict[str, Any]:
    """Pass ``fd`` to QEMU (SCM_RIGHTS + getfd), run ``command`` (``migrate`` or
    ``migrate-incoming``) on ``fd:`` and wait, on one connection, until it ends.

    Returns query-migrate's last answer (``status`` completed, failed or cancelled).
    """
    late = f"{command} did not finish within {timeout:.0f} s"
    return _run(_migrate_fd(path, fd, command, setup or [], timeout), path, command, late)


async def _with_fd(
    path: Path,
    fd: int,
    hand_over: tuple[str, dict[str, Any]],
    then: Callable[[Any], tuple[str, dict[str, Any]]],
    timeout: float,
) -> Any:
    client = QMPClient("cloudlet-fd")
    try:
        await asyncio.wait_for(client.connect(str(path)), timeout)
        client.send_fd_scm(fd)
        handed = await _call(client, path, *hand_over, timeout)
        command, args = then(handed)
        return await _call(client, path, command, args, timeout)
    finally:
        await client.disconnect()


def execute_with_fd(
    path: Path,
    fd: int,
    hand_over: tuple[str, dict[str, Any]],
    then: Callable[[Any], tuple[str, dict[str, Any]]],
    *,
    timeout: float = 10.0,
) -> Any:
    """Pass ``fd`` (SCM_RIGHTS) with ``hand_over`` (getfd or add-fd), then run the
    command ``then`` builds from its answer, on one connection: an fd set QEMU has not
    used yet is dropped when the connection that added it closes."""
    command = then({"fdset-id": 0, "fd": fd})[0]
    late = f"QEMU's monitor did not answer {command} within {timeout:.0f} s"
    return _run(_with_fd(path, fd, hand_over, then, timeout), path, command, late)
