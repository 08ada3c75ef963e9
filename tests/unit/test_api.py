"""The REST API on the fake driver, through a real TLS server and a pinned client:
tokens, error envelopes, bodies, operations and their life across a restart."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from cloudlet.cli import main
from cloudlet.engine.engine import Engine
from cloudlet.engine.tokens import lifetime
from cloudlet.spec.document import VMBody
from cloudlet.store.models import ApiOperationRow, ApiTokenRow, utcnow
from tests.api_server import Api, running_api
from tests.fakes import make_fake_engine

VM_DOC: dict[str, Any] = {
    "apiVersion": "cloudlet/v1",
    "kind": "VM",
    "metadata": {"name": "web1"},
    "spec": {"image": "tiny", "type": "gp.micro"},
}


@pytest.fixture
def engine(short_tmp: Path) -> Engine:
    return make_fake_engine(short_tmp / "home")


@pytest.fixture
def api(engine: Engine) -> Iterator[Api]:
    with running_api(engine) as running:
        yield running


@pytest.fixture
def token(engine: Engine) -> str:
    return engine.tokens.create("ci").secret


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "hint"}
    error: dict[str, Any] = body["error"]
    return error


def wait_done(client: httpx.Client, accepted: httpx.Response) -> dict[str, Any]:
    assert accepted.status_code == 202, accepted.text
    location = accepted.headers["location"]
    assert location == f"/api/v1/operations/{accepted.json()['id']}"
    for _ in range(50):
        op: dict[str, Any] = client.get(f"{location}/wait", params={"timeout": 10}).json()
        if op["status"] != "running":
            return op
    raise AssertionError("the operation never finished")


# ---------------------------------------------------------------- tokens
def test_no_token_a_bad_one_an_expired_one_and_a_revoked_one_are_401(
    api: Api, engine: Engine, token: str
) -> None:
    with api.client() as anonymous:
        r = anonymous.get("/api/v1/instances")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert error_of(r)["code"] == "unauthorized"
    for bad in ("clt_" + "A" * 43, "not-a-token", token + "x"):
        with api.client(bad) as client:
            assert client.get("/api/v1/instances").status_code == 401
    with api.client(token) as client:
        assert client.get("/api/v1/instances").status_code == 200
    with httpx.Client(base_url=api.url, verify=False) as plain:
        r = plain.get("/api/v1/instances", headers={"Authorization": f"Basic {token}"})
        assert r.status_code == 401 and "bearer" in error_of(r)["message"]
    short = engine.tokens.create("short", expires=lifetime("1s")).secret
    with engine.db.session() as s:
        row = s.query(ApiTokenRow).filter_by(name="short").one()
        row.expires_at = utcnow()
    with api.client(short) as client:
        assert client.get("/api/v1/instances").status_code == 401
    assert engine.tokens.revoke("ci").changed
    with api.client(token) as client:
        assert client.get("/api/v1/instances").status_code == 401


def test_only_a_hash_of_a_token_is_stored(engine: Engine) -> None:
    made = engine.tokens.create("ci", expires=lifetime("30d"))
    assert made.secret.startswith("clt_") and len(made.secret) >= 40
    raw = engine.paths.database.read_bytes()
    assert made.secret.encode() not in raw
    with engine.db.session() as s:
        row = s.query(ApiTokenRow).filter_by(name="ci").one()
        assert row.project == "default" and len(row.secret_sha256) == 64
    assert [t.name for t in engine.tokens.list()] == ["ci"]
    assert "secret" not in engine.tokens.list()[0].to_dict()


@pytest.mark.parametrize(
    ("text", "says"), [("soon", "token lifetime"), ("99999d", "too long"), ("0d", "token lifetime")]
)
def test_bad_token_lifetimes_are_one_clear_error(text: str, says: str) -> None:
    from cloudlet.errors import InvalidInput

    with pytest.raises(InvalidInput, match=says):
        lifetime(text)


def test_a_token_name_is_validated_and_unique(engine: Engine) -> None:
    from cloudlet.errors import Conflict, InvalidInput, NotFound

    engine.tokens.create("ci")
    with pytest.raises(Conflict, match="exists already"):
        engine.tokens.create("ci")
    with pytest.raises(InvalidInput, match="invalid token name"):
        engine.tokens.create("../x\n")
    with pytest.raises(NotFound, match="no token named nope"):
        engine.tokens.revoke("nope")


# ---------------------------------------------------------------- errors and bodies
def test_unknown_paths_and_vms_are_404_in_the_envelope(api: Api, token: str) -> None:
    with api.client(token) as client:
        r = client.get("/api/v1/nothing-here")
        assert r.status_code == 404 and error_of(r)["code"] == "not_found"
        r = client.get("/api/v1/instances/ghost")
        assert r.status_code == 404 and "ghost" in error_of(r)["message"]
        r = client.get("/api/v1/instances/Bad..Name")
        assert r.status_code == 400 and error_of(r)["code"] == "invalid_input"
        r = client.get("/api/v1/operations/not-an-id")
        assert r.status_code == 400 and "operation id" in error_of(r)["message"]
        r = client.get("/api/v1/operations/00000000-0000-0000-0000-000000000000")
        assert r.status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**VM_DOC, "colour": "red"}, "colour: unknown field"),
        ({**VM_DOC, "spec": {"cpus": "many"}}, "spec.cpus"),
        ({**VM_DOC, "spec": {"memory": "lots"}}, "spec.memory"),
        ({**VM_DOC, "metadata": {"name": "Bad Name"}}, "metadata.name"),
        ({"kind": "VM", "metadata": {"name": "x"}}, "apiVersion: required field is missing"),
        ({**VM_DOC, "spec": {"access": {"root": True}}}, "spec.access.root: unknown field"),
    ],
)
def test_bodies_that_do_not_match_the_model_are_422_naming_the_field(
    api: Api, token: str, engine: Engine, body: dict[str, Any], field: str
) -> None:
    with api.client(token) as client:
        r = client.post("/api/v1/instances", json=body)
    assert r.status_code == 422, r.text
    assert field in error_of(r)["message"]
    assert engine.instances() == []


def test_host_paths_in_a_body_are_refused_naming_the_field(
    api: Api, token: str, engine: Engine
) -> None:
    cases = {
        "spec.iso": {"iso": "/etc/shadow", "disk_size": "1G"},
        "spec.user_data_file": {"user_data_file": "/etc/shadow"},
        "spec.access.ssh_keys.0": {"access": {"ssh_keys": ["/root/.ssh/id_rsa.pub"]}},
    }
    with api.client(token) as client:
        for field, spec in cases.items():
            r = client.post("/api/v1/instances", json={**VM_DOC, "spec": spec})
            assert r.status_code == 400, r.text
            assert field in error_of(r)["message"] and "server's host" in error_of(r)["message"]
        r = client.post("/api/v1/instances", json={**VM_DOC, "spec": {"type": "gp.huge"}})
        assert r.status_code == 400 and "unknown machine type" in error_of(r)["message"]
        r = client.post(
            "/api/v1/instances", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert r.status_code == 422 and "not valid JSON" in error_of(r)["message"]
    assert engine.instances() == []


def test_a_body_over_the_limit_is_413(api: Api, token: str) -> None:
    big = {**VM_DOC, "spec": {"user_data": "#cloud-config\n" + "x" * (2 << 20)}}
    with api.client(token) as client:
        r = client.post("/api/v1/instances", json=big)
        assert r.status_code == 413 and error_of(r)["code"] == "too_large"

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it comes
            yield json.dumps(VM_DOC).encode()[:-1]
            for _ in range(300):
                yield b" " * 8192

        r = client.post(
            "/api/v1/instances", content=chunks(), headers={"content-type": "application/json"}
        )
        assert r.status_code == 413


# ---------------------------------------------------------------- instances and operations
def test_create_answers_202_and_the_operation_ends_with_the_vm(
    api: Api, token: str, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    with api.client(token) as client:
        accepted = client.post("/api/v1/instances", json=VM_DOC)
        op = accepted.json()
        assert set(op) == {
            "id", "kind", "status", "progress", "resources", "may_cancel", "error", "result",
            "created_at", "updated_at",
        }  # fmt: skip
        assert op["kind"] == "create" and op["resources"] == {
            "instances": ["/api/v1/instances/web1"]
        }
        done = wait_done(client, accepted)
        assert done["status"] == "success", done
        assert done["result"]["name"] == "web1" and done["result"]["state"] == "running"
        assert done["progress"] is not None and done["may_cancel"] is False
        listed = client.get("/api/v1/instances").json()
        shown = client.get("/api/v1/instances/web1").json()
    # the same JSON the CLI's -o json prints
    monkeypatch.setattr(main, "open_engine", lambda: engine)
    assert listed == json.loads(CliRunner().invoke(main.app, ["list", "-o", "json"]).stdout)
    assert shown == json.loads(CliRunner().invoke(main.app, ["show", "web1", "-o", "json"]).stdout)
    with api.client(token) as client:
        r = client.post("/api/v1/instances", json=VM_DOC)
        assert r.status_code == 409 and "exists already" in error_of(r)["message"]


def test_actions_in_the_wrong_state_are_409_and_busy_is_423(
    api: Api, token: str, engine: Engine
) -> None:
    engine.create("web1", VMBody(state="stopped"))
    with api.client(token) as client:
        r = client.post("/api/v1/instances/web1/stop")
        assert r.status_code == 409 and error_of(r)["message"] == "web1 is stopped"
        assert wait_done(client, client.post("/api/v1/instances/web1/start"))["status"] == (
            "success"
        )
        r = client.post("/api/v1/instances/web1/start")
        assert r.status_code == 409
        r = client.delete("/api/v1/instances/web1")
        assert r.status_code == 409 and error_of(r)["code"] == "still_running"
        with engine.ctx.lock("web1"):
            r = client.post("/api/v1/instances/web1/stop")
            assert r.status_code == 423 and error_of(r)["code"] == "busy"
        done = wait_done(client, client.post("/api/v1/instances/web1/restart"))
        assert done["status"] == "success" and done["result"]["instance"]["state"] == "running"
        done = wait_done(client, client.post("/api/v1/instances/web1/stop"))
        assert done["status"] == "success" and done["result"]["changed"] is True
        done = wait_done(client, client.delete("/api/v1/instances/web1"))
        assert done["status"] == "success" and done["result"]["action"] == "deleted"
        assert client.get("/api/v1/instances").json() == []


def test_an_operation_is_cancelled_and_leaves_no_vm(
    api: Api, token: str, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = []

    def slow_agent(instance_id: str, timeout: float, *, cancel: Any = None) -> None:
        started.append(instance_id)
        assert cancel is not None
        cancel.wait(30)
        cancel.raise_if_cancelled()

    monkeypatch.setattr(engine.driver, "wait_agent", slow_agent)
    with api.client(token) as client:
        accepted = client.post("/api/v1/instances", json=VM_DOC)
        assert accepted.status_code == 202
        op_id = accepted.json()["id"]
        from tests.api_server import wait_for

        wait_for(lambda: started, what="the create to wait for the agent")
        assert client.get(f"/api/v1/operations/{op_id}").json()["may_cancel"] is True
        r = client.delete(f"/api/v1/operations/{op_id}")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        assert r.json()["error"]["code"] == "cancelled"
        r = client.delete(f"/api/v1/operations/{op_id}")
        assert r.status_code == 409
    assert engine.instances() == []


def test_operations_survive_a_restart_and_a_dead_servers_read_interrupted(
    engine: Engine, token: str
) -> None:
    with running_api(engine) as api, api.client(token) as client:
        done = wait_done(client, client.post("/api/v1/instances", json=VM_DOC))
    dead = "11111111-2222-3333-4444-555555555555"
    with engine.db.session() as s:
        s.add(
            ApiOperationRow(
                id=dead, kind="start", status="running", resources_json="{}", may_cancel=True,
                owner_pid=2**22 + 1, owner_start=1, created_at=utcnow(), updated_at=utcnow(),
            )
        )  # fmt: skip
    again = make_fake_engine(engine.paths.home)  # a new process's engine on the same state
    with running_api(again) as api, api.client(token) as client:
        kept = client.get(f"/api/v1/operations/{done['id']}").json()
        assert kept["status"] == "success" and kept["result"] == done["result"]
        gone = client.get(f"/api/v1/operations/{dead}/wait", params={"timeout": 1}).json()
        assert gone["status"] == "interrupted" and gone["may_cancel"] is False
        assert gone["error"]["code"] == "interrupted"
        r = client.get(f"/api/v1/operations/{dead}/wait", params={"timeout": 100000})
        assert r.status_code == 422 and "timeout" in error_of(r)["message"]


def test_the_served_schema_is_the_checked_in_one(api: Api) -> None:
    from cloudlet.api.openapi import REGENERATE, schema_text

    checked_in = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
    with api.client() as anonymous:
        served = anonymous.get("/api/v1/openapi.json")
    assert served.status_code == 200
    assert checked_in.exists(), f"no docs/openapi.json: run {REGENERATE}"
    assert json.loads(checked_in.read_text()) == served.json(), (
        f"the API changed: run {REGENERATE} and review the diff"
    )
    assert schema_text() == checked_in.read_text()
    assert os.stat(checked_in).st_size > 1000
