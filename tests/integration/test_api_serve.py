"""`cloudlet serve` on real QEMU, reached only through HTTPS with the certificate pinned:
create a tiny VM (a retry with its Idempotency-Key makes no second), follow the
operation, see it running, stop it with the local CLI and see that on the event stream,
be refused a stale If-Match, delete it, stop the server by its pid, and find no QEMU
left."""

from __future__ import annotations

import hashlib
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloudlet.host import processes
from tests.integration import cli
from tests.sse import read_until

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def served_fingerprint(port: int) -> str:
    """The SHA-256 of the certificate the server presents (what a client pins)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    digest = hashlib.sha256(der).hexdigest()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def wait_op(client: httpx.Client, accepted: httpx.Response) -> dict[str, Any]:
    assert accepted.status_code == 202, accepted.text
    location = accepted.headers["location"]
    for _ in range(20):
        op: dict[str, Any] = client.get(f"{location}/wait", params={"timeout": 60}).json()
        if op["status"] != "running":
            assert op["status"] == "success", op
            return op
    raise AssertionError(f"{location} never finished")


def test_a_vm_created_and_deleted_through_the_api_only(cloudlet_home: Path) -> None:
    home = cloudlet_home
    secret = cli.run(home, "token", "create", "--name", "it").stdout.strip()
    port = free_port()
    server = subprocess.Popen(
        cli.argv("serve", "--listen", f"127.0.0.1:{port}"),
        env=cli.env_for(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    qemu_pid = None
    try:
        assert server.stdout is not None
        first = server.stdout.readline()
        assert first == f"cloudlet API listening on https://127.0.0.1:{port}/api/v1\n", first + (
            server.stderr.read() if server.poll() is not None and server.stderr else ""
        )
        fingerprint = server.stdout.readline().split(": ")[1].strip()
        assert served_fingerprint(port) == fingerprint
        cert = home / "api" / "server.crt"
        assert (home / "api" / "server.key").stat().st_mode & 0o077 == 0
        context = ssl.create_default_context(cafile=str(cert))
        headers = {"Authorization": f"Bearer {secret}"}
        url = f"https://127.0.0.1:{port}"
        with httpx.Client(base_url=url, verify=context, headers=headers, timeout=90) as client:
            body = {
                "apiVersion": "cloudlet/v1",
                "kind": "VM",
                "metadata": {"name": "api1"},
                "spec": {"image": "tiny", "type": "gp.micro", "restrict_network": True},
            }
            key = {"Idempotency-Key": "it-create-1"}
            accepted = client.post("/api/v1/instances", json=body, headers=key)
            retried = client.post("/api/v1/instances", json=body, headers=key)
            assert retried.status_code == 202 and retried.json()["id"] == accepted.json()["id"]
            done = wait_op(client, accepted)
            assert done["result"]["state"] == "running"
            shown = client.get("/api/v1/instances/api1")
            vm, running_tag = shown.json(), shown.headers["etag"]
            assert vm["state"] == "running" and vm["network"]["restrict"] is True
            qemu_pid = vm["pid"]
            assert qemu_pid and processes.is_alive(qemu_pid)
            r = client.post("/api/v1/instances/api1/start")
            assert r.status_code == 409
            with client.stream("GET", "/api/v1/events") as stream:
                read_until(stream, lambda got: True, comments=True)  # open
                cli.run(home, "stop", "api1")  # the local CLI, another process
                began = time.monotonic()
                got = read_until(stream, lambda got: len(got) >= 1, timeout=5)
                assert time.monotonic() - began < 1.0
            assert [(f.event, f.data["kind"], f.data["requester"]) for f in got if f.data] == [
                ("lifecycle", "stopped", "local")
            ]
            shown = client.get("/api/v1/instances/api1")
            assert shown.json()["state"] == "stopped"
            assert not processes.is_alive(qemu_pid)
            r = client.post("/api/v1/instances/api1/start", headers={"If-Match": running_tag})
            assert r.status_code == 412 and r.json()["error"]["code"] == "precondition_failed"
            assert client.get("/api/v1/instances/api1").json()["state"] == "stopped"
            fresh = {"If-Match": shown.headers["etag"]}
            done = wait_op(client, client.delete("/api/v1/instances/api1", headers=fresh))
            assert done["result"]["action"] == "deleted"
            assert client.get("/api/v1/instances").json() == []
            with client.stream("GET", "/api/v1/events", params={"since": 0}) as stream:
                got = read_until(stream, lambda got: any(f.data["kind"] == "deleted" for f in got))
            assert [
                (f.data["kind"], f.data["requester"]) for f in got if f.event == "lifecycle"
            ] == [("created", "it"), ("started", "it"), ("stopped", "local"), ("deleted", "it")]
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0
    finally:
        if server.poll() is None:
            processes.kill_and_wait(server.pid)
        if qemu_pid is not None and processes.is_alive(qemu_pid):
            processes.kill_and_wait(qemu_pid)
    assert qemu_pid is not None and not processes.is_alive(qemu_pid)
    assert list((home / "run").glob("*")) == []
