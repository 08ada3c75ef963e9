"""download(): resume, restart, verify and rename, against a fake HTTP layer.

The real HTTP server cases live in tests/integration/test_image_pull_import.py; these
cover each branch without sockets.
"""

from __future__ import annotations

import hashlib
import time
import urllib.error
import urllib.request
from email.message import Message
from pathlib import Path

import pytest

from cloudlet.errors import Busy, DownloadFailed, DownloadInterrupted, InvalidInput, NotFound
from cloudlet.images import download as dl
from cloudlet.images.download import (
    download,
    fetch_text,
    part_path,
)
from tests.cancelling import cancelled_soon

URL = "https://images.example/disk.img"
DATA = bytes(range(256)) * 40  # 10 KiB
SHA = ("sha256", hashlib.sha256(DATA).hexdigest())


def _headers(**values: object) -> Message:
    msg = Message()
    for key, value in values.items():
        msg[key.replace("_", "-")] = str(value)
    return msg


class FakeResponse:
    def __init__(
        self,
        status: int,
        body: bytes,
        headers: Message,
        *,
        stop_after: int | None = None,
        error: BaseException | None = None,
    ) -> None:
        self.status = status
        self.headers = headers
        self._body = body if stop_after is None else body[:stop_after]
        self._error = error
        self._pos = 0
        self.closed = False

    def read(self, amt: int, /) -> bytes:
        if self._pos >= len(self._body) and self._error is not None:
            raise self._error
        chunk = self._body[self._pos : self._pos + min(amt, 1000)]
        self._pos += len(chunk)
        return chunk

    def close(self) -> None:
        self.closed = True


class FakeServer:
    """Serves DATA; can honour or ignore Range, and cut the first response short."""

    def __init__(
        self,
        data: bytes = DATA,
        *,
        honour_range: bool = True,
        stop_after: int | None = None,
        error: BaseException | None = None,
        status: int = 200,
    ) -> None:
        self.data = data
        self.honour_range = honour_range
        self.stop_after = stop_after
        self.error = error
        self.status = status
        self.ranges: list[str | None] = []

    def __call__(self, request: urllib.request.Request, timeout: float) -> FakeResponse:
        rng = request.get_header("Range")
        self.ranges.append(rng)
        if self.status != 200:
            raise urllib.error.HTTPError(request.full_url, self.status, "nope", Message(), None)
        stop, error = self.stop_after, self.error
        self.stop_after, self.error = None, None
        if rng and self.honour_range:
            start = int(rng.removeprefix("bytes=").rstrip("-"))
            if start >= len(self.data):
                hdrs = _headers(Content_Range=f"bytes */{len(self.data)}")
                raise urllib.error.HTTPError(request.full_url, 416, "range", hdrs, None)
            body = self.data[start:]
            hdrs = _headers(
                Content_Length=len(body),
                Content_Range=f"bytes {start}-{len(self.data) - 1}/{len(self.data)}",
            )
            return FakeResponse(206, body, hdrs, stop_after=stop, error=error)
        hdrs = _headers(Content_Length=len(self.data))
        return FakeResponse(200, self.data, hdrs, stop_after=stop, error=error)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> FakeServer:
    fake = FakeServer()
    monkeypatch.setattr(dl, "_open", fake)
    return fake


def test_fresh_download_verifies_and_renames(server: FakeServer, tmp_path: Path) -> None:
    seen: list[tuple[int, int | None]] = []
    dest = download(
        URL, tmp_path / "disk.img", expected=SHA, progress=lambda d, t: seen.append((d, t))
    )
    assert dest.read_bytes() == DATA
    assert not part_path(dest).exists()
    assert server.ranges == [None]
    assert seen[0] == (0, len(DATA)) and seen[-1] == (len(DATA), len(DATA))


def test_drop_keeps_part_and_rerun_resumes_with_range(server: FakeServer, tmp_path: Path) -> None:
    server.stop_after = 3000
    dest = tmp_path / "disk.img"
    with pytest.raises(DownloadInterrupted) as err:
        download(URL, dest, expected=SHA)
    assert err.value.hint is not None and "run the command again" in err.value.hint
    assert not dest.exists()
    assert part_path(dest).stat().st_size == 3000
    download(URL, dest, expected=SHA)
    assert server.ranges == [None, "bytes=3000-"]
    assert dest.read_bytes() == DATA and not part_path(dest).exists()


def test_timeout_keeps_part(server: FakeServer, tmp_path: Path) -> None:
    server.stop_after, server.error = 2000, TimeoutError("timed out")
    dest = tmp_path / "disk.img"
    with pytest.raises(DownloadInterrupted) as err:
        download(URL, dest, expected=SHA, timeout=0.1)
    assert "timed out" in err.value.message
    assert part_path(dest).stat().st_size == 2000


def test_server_ignoring_range_restarts_from_zero(server: FakeServer, tmp_path: Path) -> None:
    server.honour_range = False
    dest = tmp_path / "disk.img"
    part_path(dest).write_bytes(b"garbage that must not survive")
    download(URL, dest, expected=SHA)
    assert server.ranges == ["bytes=29-"]
    assert dest.read_bytes() == DATA


def test_complete_part_answered_416_is_verified(server: FakeServer, tmp_path: Path) -> None:
    dest = tmp_path / "disk.img"
    part_path(dest).write_bytes(DATA)
    download(URL, dest, expected=SHA)
    assert dest.read_bytes() == DATA


def test_overlong_part_starts_over(server: FakeServer, tmp_path: Path) -> None:
    dest = tmp_path / "disk.img"
    part_path(dest).write_bytes(DATA + b"extra")
    download(URL, dest, expected=SHA)
    assert server.ranges == [f"bytes={len(DATA) + 5}-", None]
    assert dest.read_bytes() == DATA


def test_mismatch_deletes_part(server: FakeServer, tmp_path: Path) -> None:
    dest = tmp_path / "disk.img"
    with pytest.raises(InvalidInput) as err:
        download(URL, dest, expected=("sha256", "0" * 64))
    assert "checksum mismatch" in err.value.message
    assert not dest.exists() and not part_path(dest).exists()


def test_verified_dest_is_reused_without_a_request(server: FakeServer, tmp_path: Path) -> None:
    dest = tmp_path / "disk.img"
    dest.write_bytes(DATA)
    assert download(URL, dest, expected=SHA) == dest
    assert server.ranges == []


def test_stale_dest_is_replaced(server: FakeServer, tmp_path: Path) -> None:
    dest = tmp_path / "disk.img"
    dest.write_bytes(b"an older release")
    download(URL, dest, expected=SHA)
    assert dest.read_bytes() == DATA


def test_http_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(dl, "_open", FakeServer(status=404))
    with pytest.raises(NotFound):
        download(URL, tmp_path / "a.img")
    monkeypatch.setattr(dl, "_open", FakeServer(status=503))
    with pytest.raises(DownloadFailed):
        download(URL, tmp_path / "a.img")


def test_connection_refused_is_an_interruption(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def refuse(request: urllib.request.Request, timeout: float) -> FakeResponse:
        raise urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))

    monkeypatch.setattr(dl, "_open", refuse)
    with pytest.raises(DownloadInterrupted) as err:
        download(URL, tmp_path / "a.img")
    assert "Connection refused" in err.value.message


def test_only_http_urls(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput):
        download("file:///etc/passwd", tmp_path / "a")


def test_bad_expected_digest_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput):
        download(URL, tmp_path / "a", expected=("sha256", "abc"))


def test_a_locked_part_means_busy(server: FakeServer, tmp_path: Path) -> None:
    import fcntl

    dest = tmp_path / "disk.img"
    with open(part_path(dest), "ab") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(Busy):
            download(URL, dest, expected=SHA)


def test_fetch_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dl, "_open", FakeServer(data=b"abc  disk.img\n"))
    assert fetch_text("https://x/SHA256SUMS") == "abc  disk.img\n"
    monkeypatch.setattr(dl, "_open", FakeServer(data=b"x" * 100))
    with pytest.raises(InvalidInput):
        fetch_text("https://x/SHA256SUMS", limit=10)


class EndlessResponse(FakeResponse):
    """A slow server: a small chunk every few milliseconds, for ever."""

    def read(self, amt: int, /) -> bytes:
        time.sleep(0.005)
        return b"x" * min(amt, 1000)


def test_cancel_between_chunks_removes_the_part_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def endless(request: urllib.request.Request, timeout: float) -> FakeResponse:
        return EndlessResponse(200, b"", _headers())

    monkeypatch.setattr(dl, "_open", endless)
    dest = tmp_path / "disk.img"
    got: list[int] = []
    with cancelled_soon() as token:
        download(URL, dest, expected=SHA, progress=lambda done, _total: got.append(done),
                 cancel=token)  # fmt: skip
    assert got and got[-1] > 0  # it was under way
    assert not dest.exists() and not part_path(dest).exists()
    # The lock on the .part is gone with it: the next download runs.
    monkeypatch.setattr(dl, "_open", FakeServer())
    assert download(URL, dest, expected=SHA).read_bytes() == DATA


def test_cancelled_pull_leaves_no_part_file_and_no_image(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from cloudlet.images.catalog import CatalogEntry
    from cloudlet.images.importer import pull

    entry = CatalogEntry(
        name="distro-1", title="Distro", os="distro", arch="x86_64", url=URL,
        checksum_url="https://images.example/SHA256SUMS", checksum_algorithm="sha256",
        checksum_filename="disk.img", format="qcow2", licence="free", licence_name="MIT",
        default_user="distro",
    )  # fmt: skip
    sums = f"{SHA[1]}  disk.img\n".encode()

    def serve(request: urllib.request.Request, timeout: float) -> FakeResponse:
        if request.full_url == entry.checksum_url:
            return FakeResponse(200, sums, _headers(Content_Length=len(sums)))
        return EndlessResponse(200, b"", _headers())

    monkeypatch.setattr(dl, "_open", serve)
    images, cache = tmp_path / "images", tmp_path / "cache"
    with cancelled_soon() as token:
        pull(entry, images, cache, cancel=token)
    assert not list(cache.iterdir()) and not (images / "distro-1").exists()
