"""Downloads that resume, verify, and only then appear under their final name.

Cloud images are hundreds of megabytes fetched over networks that drop: the bytes go to
``<dest>.part`` and a rerun continues with an HTTP Range request. Nothing reads the
.part file; ``dest`` appears (by an atomic rename) only once the whole file matched its
checksum, so a half-downloaded or tampered image can never be imported.
"""

from __future__ import annotations

import fcntl
import hashlib
import http.client
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from email.message import Message
from pathlib import Path
from typing import BinaryIO, Protocol

from cloudlet import __version__
from cloudlet.errors import (
    Busy,
    Cancelled,
    CloudletError,
    DownloadFailed,
    DownloadInterrupted,
    InvalidInput,
    NotFound,
)
from cloudlet.images.catalog import hex_length
from cloudlet.next_steps import Step, step
from cloudlet.progress import ByteCallback, CancelToken, check

ByteProgress = ByteCallback
"""Called with (bytes so far, total bytes or None when the server does not say);
``progress.byte_callback`` turns a ProgressSink into one."""

CHUNK = 1 << 20
TEXT_LIMIT = 4 << 20
USER_AGENT = f"cloudlet/{__version__} (+urllib)"


class _Response(Protocol):
    """What we use of http.client.HTTPResponse (tests supply fakes)."""

    status: int
    headers: Message

    def read(self, amt: int, /) -> bytes: ...

    def close(self) -> None: ...


def _open(request: urllib.request.Request, timeout: float) -> _Response:
    """The one place that opens a connection (tests replace it)."""
    response: _Response = urllib.request.urlopen(request, timeout=timeout)
    return response


def part_path(dest: Path) -> Path:
    """Where the bytes of ``dest`` collect until they are complete and verified."""
    return dest.with_name(dest.name + ".part")


def _check_url(url: str) -> None:
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise InvalidInput(
            f"cannot download {url!r}: only http and https URLs are supported",
            hint="import a local file instead",
            next_steps=[step(Step.IMAGE_IMPORT)],
        )


def file_digest(path: Path, algorithm: str) -> str:
    """The hex digest of a whole file, read in chunks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm.lower()).hexdigest()


def _network_error(url: str, part: Path, done: int, exc: BaseException) -> DownloadInterrupted:
    reason = "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        reason = str(exc.reason)
    kept = f"{done} bytes are kept in {part}" if done else "nothing was downloaded yet"
    return DownloadInterrupted(
        f"download of {url} was interrupted ({reason})",
        hint=f"run the command again to resume; {kept}",
    )


def _http_error(url: str, exc: urllib.error.HTTPError) -> CloudletError:
    if exc.code in (404, 410):
        return NotFound(
            f"{url} does not exist (HTTP {exc.code})",
            hint="the image may have moved; update cloudlet or check the URL",
        )
    return DownloadFailed(
        f"the server answered HTTP {exc.code} {exc.reason} for {url}",
        hint="try again later; a partial download resumes where it stopped",
    )


_CONTENT_RANGE = re.compile(r"^bytes\s+(\d+)-(\d+)/(\d+|\*)$")


def _content_range(value: str | None) -> tuple[int, int | None] | None:
    """(first byte, total length or None) from a 206's Content-Range."""
    match = _CONTENT_RANGE.match((value or "").strip())
    if not match:
        return None
    total = None if match[3] == "*" else int(match[3])
    return int(match[1]), total


def _int_header(response: _Response, name: str) -> int | None:
    value = response.headers.get(name)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _write(out: BinaryIO, chunk: bytes, part: Path) -> None:
    try:
        out.write(chunk)
    except OSError as exc:
        raise DownloadFailed(
            f"cannot write {part}: {exc.strerror or exc}",
            hint=f"free space in {part.parent} and run the command again to resume",
        ) from exc


def _transfer(
    url: str,
    out: BinaryIO,
    part: Path,
    progress: ByteProgress | None,
    timeout: float,
    cancel: CancelToken | None,
) -> None:
    """Append the rest of ``url`` to ``out``; start over when the server ignores Range."""
    for _attempt in range(3):
        check(cancel)
        offset = out.seek(0, os.SEEK_END)
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        request = urllib.request.Request(url, headers=headers)
        try:
            response = _open(request, timeout)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset:
                # The .part is as long as the file, or longer (the file changed): a
                # complete .part still gets verified; anything else starts over.
                size = (exc.headers.get("Content-Range") or "").rpartition("/")[2]
                exc.close()
                if size == str(offset):
                    return
                out.truncate(0)
                continue
            raise _http_error(url, exc) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise _network_error(url, part, offset, exc) from exc
        try:
            if offset and response.status == 206:
                span = _content_range(response.headers.get("Content-Range"))
                if span is None or span[0] != offset:
                    out.truncate(0)  # a range we did not ask for: trust nothing, start over
                    continue
                total = span[1]
            elif response.status == 200:
                if offset:
                    out.truncate(0)  # the server ignored Range and sends it all again
                    offset = 0
                total = _int_header(response, "Content-Length")
            else:
                raise DownloadFailed(
                    f"unexpected HTTP {response.status} for {url}", hint="try again later"
                )
            length = _int_header(response, "Content-Length")
            _stream(url, response, out, part, (offset, length, total), progress, cancel)
            return
        finally:
            response.close()
    raise DownloadFailed(
        f"the server for {url} keeps answering with the wrong byte range",
        hint=f"delete {part} and run the command again",
    )


def _stream(
    url: str,
    response: _Response,
    out: BinaryIO,
    part: Path,
    span: tuple[int, int | None, int | None],
    progress: ByteProgress | None,
    cancel: CancelToken | None,
) -> None:
    """Append the response to ``out``; ``span`` is (offset, body length, total length)."""
    offset, length, total = span
    done = offset
    if progress:
        progress(done, total)
    while True:
        check(cancel)
        try:
            chunk = response.read(CHUNK)
        except (OSError, http.client.HTTPException) as exc:
            out.flush()
            raise _network_error(url, part, done, exc) from exc
        if not chunk:
            break
        _write(out, chunk, part)
        done += len(chunk)
        if progress:
            progress(done, total)
    out.flush()
    if length is not None and done - offset < length:
        raise _network_error(url, part, done, ConnectionError("connection closed early"))


def download(
    url: str,
    dest: Path,
    *,
    expected: tuple[str, str] | None = None,
    progress: ByteProgress | None = None,
    timeout: float = 30,
    cancel: CancelToken | None = None,
) -> Path:
    """Fetch ``url`` into ``dest``, resuming ``dest``'s .part file, verifying ``expected``.

    ``expected`` is (algorithm, hex digest). When ``dest`` already holds a file with that
    digest nothing is fetched. A mismatch deletes the .part file (its bytes are wrong, so
    resuming it would never succeed) and raises InvalidInput. A cancel (checked between
    chunks) deletes the .part file too, and raises Cancelled: a cancelled call leaves
    nothing behind.
    """
    check(cancel)
    _check_url(url)
    algorithm, want = "", ""
    if expected is not None:
        algorithm, want = expected[0].lower(), expected[1].strip().lower()
        if len(want) != hex_length(algorithm) or not re.fullmatch(r"[0-9a-f]+", want):
            raise InvalidInput(
                f"{want!r} is not a {algorithm} digest", hint="check the expected checksum"
            )
        if dest.is_file() and file_digest(dest, algorithm) == want:
            return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    with open(part, "ab") as out:
        try:
            fcntl.flock(out, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Busy(
                f"another process is downloading {dest.name}",
                hint="wait for it to finish, then run the command again",
            ) from None
        try:
            _transfer(url, out, part, progress, timeout, cancel)
        except Cancelled:
            part.unlink(missing_ok=True)  # still under our lock: nobody else writes it
            raise
        os.fsync(out.fileno())
        if expected is not None:
            got = file_digest(part, algorithm)
            if got != want:
                part.unlink(missing_ok=True)
                raise InvalidInput(
                    f"checksum mismatch for {dest.name}: expected {algorithm} {want}, got {got}",
                    hint="the download was damaged or the file changed on the server; the "
                    "partial file was deleted, run the command again to download it afresh",
                )
        os.replace(part, dest)
    return dest


def fetch_text(url: str, *, timeout: float = 30, limit: int = TEXT_LIMIT) -> str:
    """A small text file (a checksum list), whole or not at all."""
    _check_url(url)
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        response = _open(request, timeout)
    except urllib.error.HTTPError as exc:
        raise _http_error(url, exc) from exc
    except (OSError, http.client.HTTPException) as exc:
        raise _fetch_error(url, exc) from exc
    try:
        length = _int_header(response, "Content-Length")
        data = bytearray()
        while len(data) <= limit:
            chunk = response.read(CHUNK)
            if not chunk:
                break
            data += chunk
    except (OSError, http.client.HTTPException) as exc:
        raise _fetch_error(url, exc) from exc
    finally:
        response.close()
    if len(data) > limit:
        raise InvalidInput(f"{url} is larger than {limit} bytes", hint="check the URL")
    if length is not None and len(data) < length:
        raise _fetch_error(url, ConnectionError("connection closed early"))
    return data.decode("utf-8", errors="replace")


def _fetch_error(url: str, exc: BaseException) -> DownloadInterrupted:
    reason = "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
    if isinstance(exc, urllib.error.URLError):
        reason = str(exc.reason)
    return DownloadInterrupted(
        f"could not fetch {url} ({reason})", hint="check the network and run the command again"
    )
