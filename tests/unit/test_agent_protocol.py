"""The guest-agent client against a scripted agent on a real unix socket."""

from __future__ import annotations

import base64
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudlet.driver.qemu import agent
from cloudlet.errors import GuestError, Timeout
from tests.cancelling import cancelled_soon


class ScriptedAgent:
    """Answers like qemu-ga: sync-delimited with 0xFF, guest-exec, guest-exec-status."""

    def __init__(
        self,
        path: Path,
        *,
        stale: bytes = b"",
        polls_before_exit: int = 2,
        canned: list[bytes] | None = None,
    ) -> None:
        self.canned = canned  # if given, every command but sync gets the next line
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(4)
        self.stale = stale
        self.polls_before_exit = polls_before_exit
        self.seen: list[dict[str, object]] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                self._talk(conn)

    def _talk(self, conn: socket.socket) -> None:
        buffer = b""
        polls = 0
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                return
            buffer += chunk.replace(b"\xff", b"")
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                msg = json.loads(line)
                self.seen.append(msg)
                cmd, args = msg["execute"], msg.get("arguments", {})
                if cmd == "guest-sync-delimited":
                    conn.sendall(
                        self.stale + b"\xff" + json.dumps({"return": args["id"]}).encode() + b"\n"
                    )
                elif self.canned is not None:
                    conn.sendall(self.canned.pop(0) + b"\n")
                elif cmd == "guest-ping":
                    conn.sendall(b'{"return": {}}\n')
                elif cmd == "guest-exec":
                    self.input = base64.b64decode(args.get("input-data", ""))
                    conn.sendall(b'{"return": {"pid": 77}}\n')
                elif cmd == "guest-exec-status":
                    polls += 1
                    if polls < self.polls_before_exit:
                        conn.sendall(b'{"return": {"exited": false}}\n')
                    else:
                        reply = {
                            "exited": True,
                            "exitcode": 5,
                            "out-data": base64.b64encode(b"out:" + self.input).decode(),
                            "err-data": base64.b64encode(b"err").decode(),
                        }
                        conn.sendall(json.dumps({"return": reply}).encode() + b"\n")
                else:
                    conn.sendall(b'{"error": {"class": "CommandNotFound", "desc": "nope"}}\n')

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def agent_socket(short_tmp: Path) -> Iterator[tuple[Path, ScriptedAgent]]:
    path = short_tmp / "qga.sock"
    scripted = ScriptedAgent(path, stale=b'{"return": 999}\n garbage')
    yield path, scripted
    scripted.close()


def test_exec_polls_until_exit_and_decodes(agent_socket: tuple[Path, ScriptedAgent]) -> None:
    path, scripted = agent_socket
    result = agent.run_command(path, ["tool", "-x"], stdin=b"in", timeout=10)
    assert (result.exit_code, result.stdout, result.stderr) == (5, b"out:in", b"err")
    exec_call = next(m for m in scripted.seen if m["execute"] == "guest-exec")
    assert exec_call["arguments"] == {
        "path": "tool",
        "arg": ["-x"],
        "capture-output": True,
        "input-data": base64.b64encode(b"in").decode(),
    }


def test_stale_data_before_the_marker_is_skipped(agent_socket: tuple[Path, ScriptedAgent]) -> None:
    path, _ = agent_socket
    agent.wait_ready(path, timeout=5)


def test_refusal_is_a_guest_error(agent_socket: tuple[Path, ScriptedAgent]) -> None:
    path, _ = agent_socket
    with agent.connect(path) as conn, pytest.raises(GuestError, match="nope"):
        conn.call("guest-fly")


@pytest.fixture
def silent_socket(short_tmp: Path) -> Iterator[Path]:
    """A socket that accepts connections and never says a word."""
    path = short_tmp / "silent.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(8)
    yield path
    server.close()


def test_silent_socket_times_out(silent_socket: Path) -> None:
    with pytest.raises(Timeout, match="did not answer"):
        agent.wait_ready(silent_socket, timeout=1.5)


def test_exec_poll_is_cancelled_and_its_connection_closed(short_tmp: Path) -> None:
    path = short_tmp / "slow.sock"
    scripted = ScriptedAgent(path, polls_before_exit=10**9)
    try:
        with cancelled_soon() as token:
            agent.run_command(path, ["sleep", "600"], stdin=None, timeout=600, cancel=token)
        # The agent serves one connection at a time: a leaked one would block this.
        scripted.polls_before_exit = 1
        assert agent.run_command(path, ["tool"], stdin=None, timeout=10).exit_code == 5
    finally:
        scripted.close()


def test_ready_wait_is_cancelled(silent_socket: Path) -> None:
    with cancelled_soon() as token:
        agent.wait_ready(silent_socket, timeout=600, cancel=token)


def test_missing_socket_is_a_guest_error(short_tmp: Path) -> None:
    with pytest.raises(GuestError, match="cannot reach the guest agent"):
        agent.connect(short_tmp / "nothing.sock")


class FloodingAgent:
    """A hostile guest on the agent port: sends ``prefix`` then ``unit`` until hung up on."""

    def __init__(self, path: Path, prefix: bytes, unit: bytes) -> None:
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(1)
        self.prefix, self.unit = prefix, unit * max(1, 65536 // len(unit))
        self.sent = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            request = b""
            while b"\n" not in request:
                request += conn.recv(65536)
            sync_id = json.loads(request.lstrip(b"\xff").split(b"\n")[0])["arguments"]["id"]
            prefix = self.prefix.replace(b"ID", str(sync_id).encode())
            try:
                conn.sendall(prefix)
                while True:
                    conn.sendall(self.unit)
                    self.sent += len(self.unit)
            except OSError:
                return

    def close(self) -> None:
        self.server.close()
        self.thread.join()


@pytest.mark.parametrize(
    ("prefix", "unit"),
    [
        (b"", b"stale bytes before any marker "),  # never the 0xFF marker
        (b"\xff", b"x"),  # a marker, then a line without end
        (b"\xff", b'{"return": 1}\n'),  # a marker, then endless answers to other syncs
        (b'\xff{"return": ID}\n', b"A"),  # a good sync, then a reply without end
    ],
    ids=["before-marker", "endless-line", "wrong-ids", "endless-reply"],
)
def test_an_endless_answer_stops_at_the_cap_with_flat_memory(
    short_tmp: Path, prefix: bytes, unit: bytes
) -> None:
    import tracemalloc

    path = short_tmp / "flood.sock"
    flood = FloodingAgent(path, prefix, unit)
    cap = 256 * 1024
    tracemalloc.start()
    try:
        with (
            pytest.raises(GuestError, match=f"more than {cap} bytes"),
            agent.connect(path, timeout=10, max_reply=cap) as conn,
        ):
            conn.call("guest-info")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        flood.close()
    assert flood.sent > cap  # the guest really sent more than the cap
    assert peak < 8 * cap + 2 * (1 << 20)  # a few buffers of the cap, whatever was sent


def test_exec_replies_may_be_larger_than_file_replies() -> None:
    # qemu-ga 7.2 returns up to 16 MiB per stream from guest-exec-status, as base64.
    assert agent.MAX_EXEC_REPLY >= 2 * (16 << 20) * 4 // 3 + 4096 > agent.MAX_REPLY


PID = b'{"return": {"pid": 7}}'
HOSTILE_REPLIES = {
    "not-json": [b"{{{"],
    "not-an-object": [b"[1, 2]"],
    "error-as-text": [b'{"error": "\\u001b[2Jgone"}'],
    "exec-returns-a-list": [b'{"return": []}'],
    "pid-is-text": [b'{"return": {"pid": "7; rm -rf /"}}'],
    "pid-is-bool": [b'{"return": {"pid": true}}'],
    "status-is-text": [PID, b'{"return": "exited"}'],
    "exit-code-is-text": [PID, b'{"return": {"exited": true, "exitcode": "0"}}'],
    "out-data-not-base64": [PID, b'{"return": {"exited": true, "out-data": "!!**"}}'],
    "out-data-a-number": [PID, b'{"return": {"exited": true, "out-data": 12}}'],
    "signal-is-text": [PID, b'{"return": {"exited": true, "signal": "KILL"}}'],
}


@pytest.mark.parametrize("case", sorted(HOSTILE_REPLIES))
def test_a_reply_of_the_wrong_shape_is_a_guest_error(short_tmp: Path, case: str) -> None:
    path = short_tmp / "canned.sock"
    canned = ScriptedAgent(path, canned=list(HOSTILE_REPLIES[case]))
    try:
        with pytest.raises(GuestError) as caught:
            agent.run_command(path, ["true"], stdin=None, timeout=10)
    finally:
        canned.close()
    assert "\x1b" not in caught.value.message and "\n" not in caught.value.message


def test_clean_text_keeps_guest_text_printable_and_short() -> None:
    assert agent.clean_text("Debian\x1b[2J\x07 12\n") == "Debian[2J 12"
    assert len(agent.clean_text("x" * 10_000)) == 256
    assert agent.clean_text(None) == "" and agent.clean_text(5) == "5"
