"""File copy through the guest agent, against a scripted qemu-ga over a tmp-dir "guest"."""

from __future__ import annotations

import base64
import json
import os
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from cloudlet.driver.base import ExecResult
from cloudlet.driver.qemu import guest_files as files
from cloudlet.errors import CapacityExceeded, GuestError, InvalidInput, NotFound
from cloudlet.guest.landing import CopyLimits

CHUNK = 4096
ALL_BYTES = bytes(range(256))


class FakeGuest:
    """Speaks qemu-ga's file and exec commands over a unix socket, one client at a time
    (as the real chardev does); guest paths live under ``root``."""

    def __init__(self, path: Path, root: Path) -> None:
        self.root = root
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(4)
        self.handles: dict[int, BinaryIO] = {}
        self.next_handle = 1000
        self.seen: list[dict[str, Any]] = []
        self.fail_write_at: int | None = None  # refuse the Nth write (1-based)
        self.drop_at_write: int | None = None  # hang up on the Nth write
        self.fail_read_at: int | None = None
        self.writes = 0
        self.reads = 0
        self.connections = 0
        self.exec_result: dict[str, Any] = {}
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def real(self, guest_path: str) -> Path:
        return self.root / guest_path.lstrip("/")

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                self._talk(conn)

    def _talk(self, conn: socket.socket) -> None:
        buffer = b""
        while True:
            chunk = conn.recv(1 << 20)
            if not chunk:
                return
            buffer += chunk.replace(b"\xff", b"")
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                msg = json.loads(line)
                self.seen.append(msg)
                if msg["execute"] == "guest-sync-delimited":
                    reply: dict[str, Any] = {"return": msg["arguments"]["id"]}
                    conn.sendall(b"\xff" + json.dumps(reply).encode() + b"\n")
                    continue
                try:
                    reply = {"return": self._answer(msg["execute"], msg.get("arguments", {}))}
                except ConnectionAbortedError:
                    return
                except OSError as exc:
                    reply = {"error": {"class": "GenericError", "desc": str(exc)}}
                conn.sendall(json.dumps(reply).encode() + b"\n")

    def _answer(self, cmd: str, args: dict[str, Any]) -> Any:
        if cmd == "guest-file-open":
            path, mode = args["path"], args["mode"]
            try:
                fh = open(self.real(path), mode)  # noqa: SIM115 - lives in self.handles
            except OSError as exc:
                raise OSError(
                    f"failed to open file '{path}' (mode: '{mode}'): {exc.strerror}"
                ) from None
            self.next_handle += 1
            self.handles[self.next_handle] = fh
            return self.next_handle
        if cmd == "guest-file-write":
            self.writes += 1
            if self.writes == self.drop_at_write:
                raise ConnectionAbortedError
            if self.writes == self.fail_write_at:
                raise OSError("failed to write to file: No space left on device")
            data = base64.b64decode(args["buf-b64"])
            self.handles[args["handle"]].write(data)
            return {"count": len(data), "eof": False}
        if cmd == "guest-file-read":
            self.reads += 1
            if self.reads == self.fail_read_at:
                raise OSError("failed to read file: Input/output error")
            count = args.get("count", 4096)
            data = self.handles[args["handle"]].read(count)
            return {
                "count": len(data),
                "buf-b64": base64.b64encode(data).decode(),
                "eof": len(data) < count,
            }
        if cmd == "guest-file-close":
            if args["handle"] not in self.handles:
                raise OSError(f"handle '{args['handle']}' has not been found")
            self.handles.pop(args["handle"]).close()
            return {}
        if cmd == "guest-exec":
            self.exec_result = self._exec([args["path"], *args.get("arg", [])])
            return {"pid": 42}
        if cmd == "guest-exec-status":
            return {"exited": True, **self.exec_result}
        raise OSError(f"The command {cmd} has not been found")

    def _exec(self, argv: list[str]) -> dict[str, Any]:
        """The few commands copy_in/copy_out run, done in Python like busybox would."""
        code, out, err = 0, b"", b""
        match argv:
            case ["test", "-d", path]:
                code = 0 if self.real(path).is_dir() else 1
            case ["stat", "-L", "-c", "%f %s", "--", path]:
                try:
                    st = self.real(path).stat()
                    out = f"{st.st_mode:x} {st.st_size}\n".encode()
                except FileNotFoundError:
                    code, err = (
                        1,
                        f"stat: can't stat '{path}': No such file or directory\n".encode(),
                    )
            case ["chmod", mode, "--", path]:
                self.real(path).chmod(int(mode, 8))
            case ["mv", "-f", "--", src, dest]:
                os.replace(self.real(src), self.real(dest))
            case ["rm", "-f", "--", path]:
                self.real(path).unlink(missing_ok=True)
            case _:
                code, err = 127, b"not found\n"
        return {
            "exitcode": code,
            "out-data": base64.b64encode(out).decode(),
            "err-data": base64.b64encode(err).decode(),
        }

    def calls(self, command: str) -> list[dict[str, Any]]:
        return [m.get("arguments", {}) for m in self.seen if m["execute"] == command]

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def guest(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGuest]:
    monkeypatch.setattr(files, "WRITE_CHUNK", CHUNK)
    monkeypatch.setattr(files, "READ_CHUNK", CHUNK)
    monkeypatch.setattr(files, "AGENT_TIMEOUT", 5.0)  # a second connection would hang
    monkeypatch.setattr(files, "EXEC_TIMEOUT", 5.0)
    root = short_tmp / "guest"
    (root / "root").mkdir(parents=True)
    fake = FakeGuest(short_tmp / "qga.sock", root)
    yield fake
    fake.close()


@pytest.fixture
def sock(short_tmp: Path, guest: FakeGuest) -> Path:
    return short_tmp / "qga.sock"


def _payload(size: int) -> bytes:
    return (ALL_BYTES * (size // 256 + 1))[:size]


def _leftovers(root: Path) -> list[Path]:
    parts = (".cloudlet-part", ".part")
    return [p for p in root.rglob("*") if p.name.endswith(parts) or ".cloudlet-part-" in p.name]


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 7])
def test_round_trip_at_chunk_boundaries(
    guest: FakeGuest, sock: Path, short_tmp: Path, size: int
) -> None:
    src = short_tmp / "src.bin"
    src.write_bytes(_payload(size))
    reports_in: list[tuple[int, int]] = []
    assert (
        files.copy_in(sock, src, "/root/f.bin", progress=lambda d, t: reports_in.append((d, t)))
        == size
    )
    assert guest.real("/root/f.bin").read_bytes() == src.read_bytes()
    writes = guest.calls("guest-file-write")
    assert len(writes) == -(-size // CHUNK)
    assert all(0 < len(base64.b64decode(w["buf-b64"])) <= CHUNK for w in writes)
    assert reports_in[0] == (0, size) and reports_in[-1] == (size, size)
    assert [d for d, _ in reports_in] == sorted(d for d, _ in reports_in)

    reports_out: list[tuple[int, int]] = []
    dest = short_tmp / "back.bin"
    assert (
        files.copy_out(sock, "/root/f.bin", dest, progress=lambda d, t: reports_out.append((d, t)))
        == size
    )
    assert dest.read_bytes() == src.read_bytes()
    assert reports_out[0] == (0, size) and reports_out[-1] == (size, size)
    assert all(r["count"] == CHUNK for r in guest.calls("guest-file-read"))
    assert not guest.handles and not _leftovers(short_tmp)


def test_every_byte_value_survives_with_default_chunks(
    guest: FakeGuest, sock: Path, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files, "WRITE_CHUNK", 256 * 1024)
    monkeypatch.setattr(files, "READ_CHUNK", 1024 * 1024)
    data = _payload(256 * 1024 + 1) + bytes(reversed(ALL_BYTES)) + b"\xff\n\r\0"
    src = short_tmp / "src.bin"
    src.write_bytes(data)
    files.copy_in(sock, src, "/root/all.bin")
    files.copy_out(sock, "/root/all.bin", short_tmp / "out.bin")
    assert (short_tmp / "out.bin").read_bytes() == data


def test_part_file_is_renamed_and_mode_kept(guest: FakeGuest, sock: Path, short_tmp: Path) -> None:
    src = short_tmp / "tool.sh"
    src.write_bytes(b"#!/bin/sh\n")
    src.chmod(0o750)
    files.copy_in(sock, src, "/root/tool.sh")
    opened = guest.calls("guest-file-open")
    assert opened == [{"path": "/root/tool.sh.cloudlet-part", "mode": "wb"}]
    assert stat.S_IMODE(guest.real("/root/tool.sh").stat().st_mode) == 0o750
    files.copy_in(sock, src, "/root/other.sh", mode=0o600)
    assert stat.S_IMODE(guest.real("/root/other.sh").stat().st_mode) == 0o600


@pytest.mark.parametrize("dest", ["/root/", "/root"])
def test_directory_dest_gets_the_source_name(
    guest: FakeGuest, sock: Path, short_tmp: Path, dest: str
) -> None:
    src = short_tmp / "name.txt"
    src.write_bytes(b"x")
    files.copy_in(sock, src, dest)
    assert guest.real("/root/name.txt").read_bytes() == b"x"


def test_copy_out_into_a_local_directory_and_mode(
    guest: FakeGuest, sock: Path, short_tmp: Path
) -> None:
    guest.real("/root/run.sh").write_bytes(b"echo hi\n")
    guest.real("/root/run.sh").chmod(0o4755)
    out_dir = short_tmp / "out"
    out_dir.mkdir()
    assert files.copy_out(sock, "/root/run.sh", out_dir) == 8
    copied = out_dir / "run.sh"
    assert copied.read_bytes() == b"echo hi\n"
    mode = stat.S_IMODE(copied.stat().st_mode)
    assert mode & stat.S_IXUSR and not mode & stat.S_ISUID  # never setuid from a guest


def test_missing_guest_file_is_not_found(guest: FakeGuest, sock: Path, short_tmp: Path) -> None:
    dest = short_tmp / "never.bin"
    with pytest.raises(NotFound, match="/root/nope"):
        files.copy_out(sock, "/root/nope", dest)
    assert not dest.exists() and not _leftovers(short_tmp)
    assert not guest.calls("guest-file-open")


def test_missing_guest_directory_is_not_found(
    guest: FakeGuest, sock: Path, short_tmp: Path
) -> None:
    src = short_tmp / "a"
    src.write_bytes(b"a")
    with pytest.raises(NotFound, match="/nodir does not exist in the guest") as info:
        files.copy_in(sock, src, "/nodir/a")
    assert info.value.hint


def test_refused_write_leaves_no_part_file_and_keeps_the_old_file(
    guest: FakeGuest, sock: Path, short_tmp: Path
) -> None:
    guest.real("/root/keep.bin").write_bytes(b"old")
    guest.fail_write_at = 2
    src = short_tmp / "src.bin"
    src.write_bytes(_payload(3 * CHUNK))
    with pytest.raises(GuestError, match="No space left"):
        files.copy_in(sock, src, "/root/keep.bin")
    assert guest.real("/root/keep.bin").read_bytes() == b"old"
    assert not _leftovers(guest.root) and not guest.handles


def test_dropped_connection_still_closes_the_handle_and_cleans_up(
    guest: FakeGuest, sock: Path, short_tmp: Path
) -> None:
    guest.drop_at_write = 2
    src = short_tmp / "src.bin"
    src.write_bytes(_payload(3 * CHUNK))
    with pytest.raises(GuestError, match="closed the connection"):
        files.copy_in(sock, src, "/root/f.bin")
    assert not guest.handles  # closed over a later connection
    assert not _leftovers(guest.root) and not guest.real("/root/f.bin").exists()


def test_failed_read_leaves_no_local_file(guest: FakeGuest, sock: Path, short_tmp: Path) -> None:
    guest.real("/root/f.bin").write_bytes(_payload(3 * CHUNK))
    guest.fail_read_at = 2
    dest = short_tmp / "f.bin"
    with pytest.raises(GuestError, match="Input/output error"):
        files.copy_out(sock, "/root/f.bin", dest)
    assert not dest.exists() and not _leftovers(short_tmp) and not guest.handles


def test_directories_are_refused_with_a_hint(guest: FakeGuest, sock: Path, short_tmp: Path) -> None:
    with pytest.raises(InvalidInput, match="is a directory") as info:
        files.copy_in(sock, short_tmp, "/root/")
    assert info.value.hint and "recursively" in info.value.hint
    with pytest.raises(InvalidInput, match="is a directory in the guest"):
        files.copy_out(sock, "/root", short_tmp / "x")


def test_relative_guest_paths_are_refused(guest: FakeGuest, sock: Path, short_tmp: Path) -> None:
    src = short_tmp / "a"
    src.write_bytes(b"a")
    with pytest.raises(InvalidInput, match="not absolute"):
        files.copy_in(sock, src, "root/a")
    with pytest.raises(InvalidInput, match="not absolute"):
        files.copy_out(sock, "a", short_tmp / "b")
    assert not guest.seen


def test_missing_local_source_is_not_found(sock: Path, short_tmp: Path) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        files.copy_in(sock, short_tmp / "absent", "/root/")


def test_one_agent_connection_at_a_time(guest: FakeGuest, sock: Path, short_tmp: Path) -> None:
    """The fake serves connections one after another: a nested one would time out."""
    src = short_tmp / "a"
    src.write_bytes(_payload(2 * CHUNK))
    files.copy_in(sock, src, "/root/")
    files.copy_out(sock, "/root/a", short_tmp / "b")
    # copy_in to "/root/": bytes, chmod, mv; copy_out: stat, bytes
    assert guest.connections == 5


def test_default_chunks_fit_qemu_ga_request_limit() -> None:
    """qemu-ga 7.2 refuses JSON requests over 64 MiB and reads over 48 MiB."""
    assert 0 < files.WRITE_CHUNK * 4 // 3 + 200 < 64 * 1024 * 1024
    assert 0 < files.READ_CHUNK <= 48 * 1024 * 1024


def test_copy_out_never_writes_through_a_symlink_at_the_destination(
    guest: FakeGuest, sock: Path, short_tmp: Path
) -> None:
    canary = short_tmp / "canary"
    canary.mkdir(mode=0o700)
    (canary / "secret").write_text("keep")
    guest.real("/root/f").write_bytes(b"guest bytes")
    dest = short_tmp / "out"
    dest.mkdir()
    (dest / "f").symlink_to(canary / "secret")
    for target in (dest, dest / "f"):
        with pytest.raises(InvalidInput, match="symlink"):
            files.copy_out(sock, "/root/f", target)
    assert (canary / "secret").read_text() == "keep"
    assert (dest / "f").is_symlink() and _leftovers(short_tmp) == []


def test_copy_out_masks_setuid_and_world_write(
    guest: FakeGuest, sock: Path, short_tmp: Path
) -> None:
    src = guest.real("/root/tool")
    src.write_bytes(b"#!/bin/sh\n")
    src.chmod(0o4777)
    old = os.umask(0)
    try:
        files.copy_out(sock, "/root/tool", short_tmp / "tool")
    finally:
        os.umask(old)
    assert stat.S_IMODE((short_tmp / "tool").stat().st_mode) == 0o775


def test_copy_out_stops_at_the_byte_limit_even_when_the_guest_lies(
    guest: FakeGuest, sock: Path, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    guest.real("/root/big").write_bytes(_payload(5 * CHUNK))
    limits = CopyLimits(max_bytes=CHUNK)
    with pytest.raises(CapacityExceeded, match="byte limit"):
        files.copy_out(sock, "/root/big", short_tmp / "big", limits=limits)
    assert guest.reads == 0  # refused from the size the guest gave
    monkeypatch.setattr(files, "guest_stat", lambda _sock, _path: (0o100644, 1))
    with pytest.raises(CapacityExceeded, match="byte limit"):
        files.copy_out(sock, "/root/big", short_tmp / "big", limits=limits)
    assert guest.reads == 2  # stopped by the bytes that arrived
    assert not (short_tmp / "big").exists() and _leftovers(short_tmp) == []


@pytest.mark.parametrize("printed", [b"zz 1", b"81a4 -5", b"-1 3", b"\x1b[2J 4"])
def test_a_lying_stat_is_a_guest_error(
    sock: Path, short_tmp: Path, monkeypatch: pytest.MonkeyPatch, printed: bytes
) -> None:
    monkeypatch.setattr(
        files, "run_short", lambda _sock, _argv, _t=0: ExecResult(exit_code=0, stdout=printed)
    )
    with pytest.raises(GuestError, match="stat printed") as caught:
        files.copy_out(sock, "/root/f", short_tmp / "f")
    assert "\x1b" not in caught.value.message
    assert not (short_tmp / "f").exists()
