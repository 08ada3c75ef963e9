"""Pull from a local HTTP server and import local files, with real qemu-img.

The server (http.server on 127.0.0.1) supports Range requests and can drop the first
response half way or ignore Range, which is what real mirrors do to a downloader.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pycdlib
import pytest

from cloudlet.errors import Conflict, DownloadInterrupted, InvalidInput
from cloudlet.host.run import run
from cloudlet.images.catalog import CatalogEntry
from cloudlet.images.download import part_path
from cloudlet.images.importer import check_safe, import_image, pull
from cloudlet.images.store import Image

pytestmark = pytest.mark.integration

IMAGE_FILE = "test-cloudimg-amd64.qcow2"


class Files:
    """What the server serves and how it misbehaves; the handler reads it."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.ignore_range = False
        self.drop_after: int | None = None  # cut the next image response after N bytes
        self.requests: list[tuple[str, str | None]] = []


class Handler(BaseHTTPRequestHandler):
    state: Files

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        state = self.state
        rng = self.headers.get("Range")
        state.requests.append((self.path, rng))
        body = state.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        if rng and not state.ignore_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if state.drop_after is not None and self.path.endswith(".qcow2"):
            cut, state.drop_after = state.drop_after, None
            self.wfile.write(payload[:cut])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(payload)


@pytest.fixture
def server() -> Iterator[tuple[str, Files]]:
    state = Files()
    handler = type("BoundHandler", (Handler,), {"state": state})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def _qemu_img(*args: str | Path) -> None:
    run(["qemu-img", *[str(a) for a in args]])


@pytest.fixture
def small_qcow2(tmp_path: Path) -> Path:
    """A 4 MiB qcow2 with 1 MiB of random data (large enough to cut in the middle)."""
    raw = tmp_path / "seed.raw"
    with open(raw, "wb") as f:
        f.write(os.urandom(1 << 20))
        f.truncate(4 << 20)
    out = tmp_path / "src" / IMAGE_FILE
    out.parent.mkdir()
    _qemu_img("convert", "-f", "raw", "-O", "qcow2", raw, out)
    return out


def _publish(base: str, state: Files, image: Path, digest: str | None = None) -> CatalogEntry:
    data = image.read_bytes()
    digest = digest or hashlib.sha256(data).hexdigest()
    state.files[f"/{IMAGE_FILE}"] = data
    state.files["/SHA256SUMS"] = f"{'0' * 64} *other.img\n{digest} *{IMAGE_FILE}\n".encode()
    return CatalogEntry(
        name="test-1.0",
        title="Test cloud image",
        os="testos",
        arch="x86_64",
        url=f"{base}/{IMAGE_FILE}",
        checksum_url=f"{base}/SHA256SUMS",
        checksum_algorithm="sha256",
        checksum_filename=IMAGE_FILE,
        format="qcow2",
        licence="free",
        licence_name="MIT",
        default_user="tester",
    )


def _nothing_in(root: Path) -> bool:
    return not root.exists() or list(root.iterdir()) == []


def _same_disk(a: Path, a_fmt: str, b: Path) -> None:
    _qemu_img("compare", "-q", "-f", a_fmt, "-F", "qcow2", a, b)


def _info(path: Path, fmt: str) -> dict[str, object]:
    out = run(["qemu-img", "info", "-f", fmt, "--output=json", str(path)]).stdout
    info: dict[str, object] = json.loads(out)
    return info


# ---------------------------------------------------------------- pull


def test_pull_downloads_verifies_and_imports(
    server: tuple[str, Files], small_qcow2: Path, tmp_path: Path
) -> None:
    base, state = server
    entry = _publish(base, state, small_qcow2)
    seen: list[tuple[int, int | None]] = []
    version = pull(entry, tmp_path / "images", tmp_path / "cache", lambda d, t: seen.append((d, t)))
    assert version.parent == tmp_path / "images" / "test-1.0"  # named after the entry
    assert (tmp_path / "images" / "test-1.0" / "current").resolve() == version
    image = Image.load(version)
    assert image.disk_format == "qcow2" and image.disk.name == "disk.qcow2"
    assert image.min_disk_bytes == 4 << 20
    meta = json.loads((version / "image.json").read_text())
    assert meta["default_user"] == "tester" and meta["os"] == "testos"
    assert meta["licence"] == "free" and meta["licence_name"] == "MIT"
    assert image.cloud_init and image.os_family == "linux" and image.default_user == "tester"
    assert meta["source"] == {
        "url": entry.url,
        "sha256": hashlib.sha256(small_qcow2.read_bytes()).hexdigest(),
    }
    assert "backing-filename" not in _info(image.disk, "qcow2")
    _same_disk(small_qcow2, "qcow2", image.disk)
    assert seen[-1] == (small_qcow2.stat().st_size, small_qcow2.stat().st_size)
    assert (tmp_path / "cache" / IMAGE_FILE).exists()  # kept: a re-pull downloads nothing
    assert not [p for p in (tmp_path / "images").iterdir() if p.name.startswith(".import")]
    with pytest.raises(Conflict):
        pull(entry, tmp_path / "images", tmp_path / "cache")
    # Under another name the cached, verified download is reused: no second transfer.
    before = len(state.requests)
    other = pull(entry, tmp_path / "images", tmp_path / "cache", name="mytest")
    assert [p for p, _ in state.requests[before:]] == ["/SHA256SUMS"]
    assert Image.load(other).name == "mytest"


def test_checksum_mismatch_deletes_the_download(
    server: tuple[str, Files], small_qcow2: Path, tmp_path: Path
) -> None:
    base, state = server
    entry = _publish(base, state, small_qcow2, digest="1" * 64)
    with pytest.raises(InvalidInput, match="checksum mismatch"):
        pull(entry, tmp_path / "images", tmp_path / "cache")
    assert _nothing_in(tmp_path / "cache")
    assert _nothing_in(tmp_path / "images")


def test_interrupted_download_resumes_with_range(
    server: tuple[str, Files], small_qcow2: Path, tmp_path: Path
) -> None:
    base, state = server
    entry = _publish(base, state, small_qcow2)
    state.drop_after = 300_000
    with pytest.raises(DownloadInterrupted) as err:
        pull(entry, tmp_path / "images", tmp_path / "cache")
    assert err.value.hint is not None and "run the command again" in err.value.hint
    part = part_path(tmp_path / "cache" / IMAGE_FILE)
    assert part.stat().st_size == 300_000
    assert _nothing_in(tmp_path / "images")

    version = pull(entry, tmp_path / "images", tmp_path / "cache")
    image_requests = [r for p, r in state.requests if p == f"/{IMAGE_FILE}"]
    assert image_requests == [None, "bytes=300000-"]
    assert not part.exists()
    _same_disk(small_qcow2, "qcow2", Image.load(version).disk)


def test_server_ignoring_range_restarts(
    server: tuple[str, Files], small_qcow2: Path, tmp_path: Path
) -> None:
    base, state = server
    entry = _publish(base, state, small_qcow2)
    state.ignore_range = True
    state.drop_after = 100_000
    with pytest.raises(DownloadInterrupted):
        pull(entry, tmp_path / "images", tmp_path / "cache")
    version = pull(entry, tmp_path / "images", tmp_path / "cache")
    image_requests = [r for p, r in state.requests if p == f"/{IMAGE_FILE}"]
    assert image_requests == [None, "bytes=100000-"]  # asked, got 200, started over
    assert (tmp_path / "cache" / IMAGE_FILE).read_bytes() == small_qcow2.read_bytes()
    _same_disk(small_qcow2, "qcow2", Image.load(version).disk)


def test_pulled_image_with_backing_file_is_refused(
    server: tuple[str, Files], tmp_path: Path
) -> None:
    base, state = server
    evil = tmp_path / "evil.qcow2"
    _qemu_img("create", "-q", "-f", "qcow2", "-b", "/etc/passwd", "-F", "raw", evil)
    entry = _publish(base, state, evil)  # the checksum is right: the content is the problem
    with pytest.raises(InvalidInput, match="backing-filename"):
        pull(entry, tmp_path / "images", tmp_path / "cache")
    assert _nothing_in(tmp_path / "images")


# ---------------------------------------------------------------- malicious local files


def _refuse(src: Path, fmt: str, root: Path, pattern: str) -> None:
    with pytest.raises(InvalidInput, match=pattern):
        import_image(src, "evil", fmt, root)
    assert _nothing_in(root)


def test_backing_file_is_refused(tmp_path: Path) -> None:
    evil = tmp_path / "evil.qcow2"
    _qemu_img("create", "-q", "-f", "qcow2", "-b", "/etc/passwd", "-F", "raw", evil)
    _refuse(evil, "qcow2", tmp_path / "images", "backing-filename")


def test_external_data_file_is_refused(tmp_path: Path) -> None:
    evil = tmp_path / "evil.qcow2"
    _qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={tmp_path / 'data.raw'}", evil, "1M")
    _refuse(evil, "qcow2", tmp_path / "images", "format-specific.data.data-file")


def test_vmdk_with_extents_is_refused(tmp_path: Path) -> None:
    evil = tmp_path / "evil.vmdk"
    _qemu_img("create", "-q", "-f", "vmdk", evil, "1M")
    _refuse(evil, "qcow2", tmp_path / "images", "declared qcow2 but looks like vmdk")
    _refuse(evil, "raw", tmp_path / "images", "declared raw but looks like vmdk")
    with pytest.raises(InvalidInput, match="extents"):
        check_safe(_info(evil, "vmdk"), "qcow2")  # what qemu-img really reports is caught


def test_vmdk_descriptor_is_refused(tmp_path: Path) -> None:
    evil = tmp_path / "evil.vmdk"
    _qemu_img("create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", evil, "1M")
    assert evil.read_bytes().startswith(b"# Disk DescriptorFile")
    _refuse(evil, "raw", tmp_path / "images", "declared raw but looks like vmdk")


def test_qcow2_declared_raw_is_refused(small_qcow2: Path, tmp_path: Path) -> None:
    _refuse(small_qcow2, "raw", tmp_path / "images", "declared raw but looks like qcow2")


def test_corrupt_qcow2_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.qcow2"
    bad.write_bytes(b"QFI\xfb" + b"\xff" * 508)
    _refuse(bad, "qcow2", tmp_path / "images", "not a valid qcow2 image")


# ---------------------------------------------------------------- good local files


def test_import_raw(tmp_path: Path) -> None:
    src = tmp_path / "disk.raw"
    with open(src, "wb") as f:
        f.write(b"\x00" * 510 + b"\x55\xaa" + os.urandom(64 << 10))
        f.truncate(2 << 20)
    version = import_image(
        src, "myraw", "raw", tmp_path / "images", default_user="root", os_name="custom"
    )
    meta = json.loads((version / "image.json").read_text())
    assert meta == {
        "name": "myraw",
        "arch": "x86_64",
        "format": "qcow2",
        "disk": "disk.qcow2",
        "kernel": None,
        "initrd": None,
        "cmdline": "",
        "recipe": "",
        "os": "custom",
        "min_disk_bytes": 2 << 20,
        "os_family": "linux",
        "licence": "free",
        "licence_name": "",
        "default_user": "root",
        "cloud_init": False,
        "guest_agent": False,
        "source": {"path": str(src), "sha256": hashlib.sha256(src.read_bytes()).hexdigest()},
    }
    assert version.name == meta["source"]["sha256"][:16]
    assert (tmp_path / "images" / "myraw" / "current").resolve() == version
    image = Image.load(version)
    assert _info(image.disk, "qcow2")["format"] == "qcow2"
    _same_disk(src, "raw", image.disk)
    with pytest.raises(Conflict):
        import_image(src, "myraw", "raw", tmp_path / "images")


def test_import_iso(tmp_path: Path) -> None:
    src = tmp_path / "install.iso"
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident="CLOUDLET")
    iso.add_fp(io.BytesIO(b"hello from an installer\n"), 24, "/HELLO.TXT;1")
    iso.write(str(src))
    iso.close()
    version = import_image(src, "installer", "iso", tmp_path / "images", licence="free")
    meta = json.loads((version / "image.json").read_text())
    assert meta["format"] == "iso" and meta["disk"] == "install.iso"
    assert meta["min_disk_bytes"] == src.stat().st_size
    assert meta["kernel"] is None and meta["default_user"] is None
    image = Image.load(version)
    assert image.disk_format == "iso"
    assert image.disk.read_bytes() == src.read_bytes()
    assert (version.stat().st_mode & 0o777) == 0o755


def test_plain_file_declared_iso_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "fake.iso"
    src.write_bytes(b"\x00" * 0x9000)
    _refuse(src, "iso", tmp_path / "images", "no ISO9660 signature")
