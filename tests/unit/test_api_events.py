"""The API's event stream on the fake driver, through a real TLS server: ordered events
naming who caused them, replay after a reconnect, the local CLI's actions, keep-alive
comments and readers that end with their clients."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudlet.api import event_stream
from cloudlet.engine.engine import Engine
from cloudlet.spec.document import VMBody
from tests.api_server import Api, running_api, wait_for
from tests.fakes import make_fake_engine
from tests.sse import Frame, read_until
from tests.unit.test_api import VM_DOC, error_of, wait_done


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


def summary(frames: list[Frame]) -> list[tuple[str | None, str, str | None]]:
    return [(f.event, f.data["kind"], f.data["requester"]) for f in frames if f.data]


def has(*kinds: str) -> Any:
    return lambda got: [f.data["kind"] for f in got if f.data][-len(kinds) :] == list(kinds)


def test_a_create_and_a_stop_give_ordered_events_naming_the_requester(api: Api, token: str) -> None:
    with api.client(token) as client, client.stream("GET", "/api/v1/events") as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        created = wait_done(client, client.post("/api/v1/instances", json=VM_DOC))
        stopped = wait_done(client, client.post("/api/v1/instances/web1/stop"))
        got = read_until(stream, lambda got: len(got) >= 7)
    assert summary(got) == [
        ("operation", "running", "ci"),
        ("lifecycle", "created", "ci"),
        ("lifecycle", "started", "ci"),
        ("operation", "success", "ci"),
        ("operation", "running", "ci"),
        ("lifecycle", "stopped", "ci"),
        ("operation", "success", "ci"),
    ]
    ids = [f.id for f in got]
    assert ids == sorted(ids) and len(set(ids)) == 7 and all(f.data["id"] == f.id for f in got)
    assert {f.data["operation"] for f in got[:4]} == {created["id"]}
    assert {f.data["operation"] for f in got[4:]} == {stopped["id"]}
    first = got[0].data
    assert first is not None and set(first) == {
        "id", "at", "kind", "instance", "message", "operation", "requester"
    }  # fmt: skip
    assert first["instance"] == "web1" and first["message"] == "create running"
    assert first["at"].endswith("Z")


def test_a_reconnect_with_last_event_id_replays_what_was_missed(
    api: Api, token: str, engine: Engine
) -> None:
    with api.client(token) as client:
        with client.stream("GET", "/api/v1/events") as stream:
            wait_done(client, client.post("/api/v1/instances", json=VM_DOC))
            seen = read_until(stream, lambda got: len(got) >= 2)
        # the client is away while the VM is stopped and started again
        wait_done(client, client.post("/api/v1/instances/web1/stop"))
        wait_done(client, client.post("/api/v1/instances/web1/start"))
        everything = engine.events.after(0)
        missed = [e for e in everything if e.id > seen[-1].id]
        assert len(missed) >= 6
        headers = {"Last-Event-ID": str(seen[-1].id)}
        with client.stream("GET", "/api/v1/events", headers=headers) as stream:
            replayed = read_until(stream, lambda got: len(got) >= len(missed))
        assert [f.id for f in replayed] == [e.id for e in missed]
        assert [f.data["kind"] for f in replayed if f.data] == [e.kind for e in missed]
        # ?since= does the same for a client that cannot send headers
        with client.stream("GET", "/api/v1/events", params={"since": seen[0].id}) as stream:
            again = read_until(stream, lambda got: len(got) >= len(everything) - 1)
        assert [f.id for f in again] == [e.id for e in everything[1:]]


def test_a_local_engine_call_reaches_the_stream_within_a_second(
    api: Api, token: str, engine: Engine
) -> None:
    local = make_fake_engine(engine.paths.home)  # another process's engine: the local CLI
    with api.client(token) as client, client.stream("GET", "/api/v1/events") as stream:
        read_until(stream, lambda got: True, comments=True)  # the stream is open
        local.create("cli1", VMBody(state="stopped"))
        began = time.monotonic()  # the event is in the table now
        got = read_until(stream, lambda got: len(got) >= 1, timeout=5)
        took = time.monotonic() - began
    assert summary(got) == [("lifecycle", "created", "local")]
    assert got[0].data is not None and got[0].data["instance"] == "cli1"
    assert got[0].data["operation"] is None
    assert took < 1.0, took


def test_bad_replay_points_are_one_clear_error(api: Api, token: str) -> None:
    with api.client(token) as client:
        r = client.get("/api/v1/events", headers={"Last-Event-ID": "ten"})
        assert r.status_code == 400 and "Last-Event-ID" in error_of(r)["message"]
        r = client.get("/api/v1/events", params={"since": -1})
        assert r.status_code == 422 and "since" in error_of(r)["message"]
    with api.client() as anonymous:
        assert anonymous.get("/api/v1/events").status_code == 401


def test_an_id_beyond_the_newest_starts_at_the_newest(api: Api, token: str) -> None:
    with api.client(token) as client:
        with client.stream("GET", "/api/v1/events", headers={"Last-Event-ID": "999999"}) as s:
            wait_done(client, client.post("/api/v1/instances", json=VM_DOC))
            got = read_until(s, lambda got: len(got) >= 1)
        assert got[0].data is not None and got[0].data["kind"] == "running"


def test_quiet_streams_get_keep_alive_comments(
    api: Api, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(event_stream, "KEEPALIVE", 0.3)
    with api.client(token) as client, client.stream("GET", "/api/v1/events") as stream:
        got = read_until(
            stream, lambda got: sum(f.comment == "keep-alive" for f in got) >= 2, comments=True
        )
    assert all(f.data is None for f in got)


def test_clients_that_go_away_leave_no_reader_behind(api: Api, token: str) -> None:
    streams = api.app.state.streams
    threads = threading.active_count()
    for _ in range(10):
        with api.client(token) as client, client.stream("GET", "/api/v1/events") as stream:
            read_until(stream, lambda got: True, comments=True)
            assert streams.open >= 1
    wait_for(lambda: streams.open == 0, what="the readers to end")
    assert threading.active_count() <= threads + 3


# ---------------------------------------------------------------- ETag, If-Match
def test_reads_carry_an_etag_and_if_none_match_is_304(api: Api, token: str) -> None:
    with api.client(token) as client:
        done = wait_done(client, client.post("/api/v1/instances", json=VM_DOC))
        r = client.get("/api/v1/instances/web1")
        tag = r.headers["etag"]
        assert r.status_code == 200 and tag.startswith('"') and r.json()["name"] == "web1"
        r = client.get("/api/v1/instances/web1", headers={"If-None-Match": tag})
        assert r.status_code == 304 and r.content == b"" and r.headers["etag"] == tag
        r = client.get("/api/v1/instances/web1", headers={"If-None-Match": f'"x", W/{tag}'})
        assert r.status_code == 304
        op = client.get(f"/api/v1/operations/{done['id']}")
        assert op.status_code == 200 and op.json()["status"] == "success"
        r = client.get(
            f"/api/v1/operations/{done['id']}", headers={"If-None-Match": op.headers["etag"]}
        )
        assert r.status_code == 304
        wait_done(client, client.post("/api/v1/instances/web1/stop"))
        r = client.get("/api/v1/instances/web1", headers={"If-None-Match": tag})
        assert r.status_code == 200 and r.headers["etag"] != tag and r.json()["state"] == "stopped"


def test_a_stale_if_match_is_412_and_changes_nothing(api: Api, token: str, engine: Engine) -> None:
    with api.client(token) as client:
        wait_done(client, client.post("/api/v1/instances", json=VM_DOC))
        running = client.get("/api/v1/instances/web1").headers["etag"]
        wait_done(client, client.post("/api/v1/instances/web1/stop", headers={"If-Match": running}))
        stopped = client.get("/api/v1/instances/web1").headers["etag"]
        events = len(engine.events.after(0))
        for action in ("start", "restart", "stop"):
            r = client.post(f"/api/v1/instances/web1/{action}", headers={"If-Match": running})
            assert r.status_code == 412, r.text
            assert error_of(r)["code"] == "precondition_failed"
            assert "changed since" in error_of(r)["message"]
        r = client.delete("/api/v1/instances/web1", headers={"If-Match": f"W/{stopped}"})
        assert r.status_code == 412  # a weak tag never matches a change
        assert engine.show("web1").state == "stopped"
        assert len(engine.events.after(0)) == events  # no operation was even begun
        done = wait_done(
            client,
            client.delete("/api/v1/instances/web1", headers={"If-Match": f'"old", {stopped}'}),
        )
        assert done["status"] == "success"
        assert client.get("/api/v1/instances").json() == []


# ---------------------------------------------------------------- Idempotency-Key
def test_one_idempotency_key_makes_one_vm_and_answers_the_same(
    api: Api, token: str, engine: Engine
) -> None:
    key = {"Idempotency-Key": "create-web1-7f3c"}
    with api.client(token) as client:
        first = client.post("/api/v1/instances", json=VM_DOC, headers=key)
        again = client.post("/api/v1/instances", json=VM_DOC, headers=key)
        assert first.status_code == again.status_code == 202
        assert again.json() == first.json()
        assert again.headers["location"] == first.headers["location"]
        assert again.headers["idempotent-replayed"] == "true"
        assert "idempotent-replayed" not in first.headers
        wait_done(client, first)
        late = client.post("/api/v1/instances", json=VM_DOC, headers=key)  # after it is done
        assert late.status_code == 202 and late.json()["id"] == first.json()["id"]
        # the actions too: a retried stop is the first stop, not a 409 "already stopped"
        stop_key = {"Idempotency-Key": "stop-1"}
        stop = client.post("/api/v1/instances/web1/stop", headers=stop_key)
        wait_done(client, stop)
        retry = client.post("/api/v1/instances/web1/stop", headers=stop_key)
        assert retry.status_code == 202 and retry.json()["id"] == stop.json()["id"]
        assert client.post("/api/v1/instances/web1/stop").status_code == 409
    assert [vm.name for vm in engine.instances()] == ["web1"]
    creates = [e for e in engine.events.after(0) if e.kind == "created"]
    assert len(creates) == 1


def test_concurrent_posts_with_one_key_make_one_vm(api: Api, token: str, engine: Engine) -> None:
    key = {"Idempotency-Key": "same-key"}
    answers: list[Any] = []
    barrier = threading.Barrier(4)

    def post() -> None:
        with api.client(token) as client:
            barrier.wait()
            answers.append(client.post("/api/v1/instances", json=VM_DOC, headers=key))

    threads = [threading.Thread(target=post) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert [r.status_code for r in answers] == [202] * 4, [r.text for r in answers]
    assert len({r.json()["id"] for r in answers}) == 1
    assert len({r.headers["location"] for r in answers}) == 1
    with api.client(token) as client:
        assert wait_done(client, answers[0])["status"] == "success"
    assert [vm.name for vm in engine.instances()] == ["web1"]
    assert len([e for e in engine.events.after(0) if e.kind == "created"]) == 1


def test_one_key_with_another_body_is_422_naming_the_key(
    api: Api, token: str, engine: Engine
) -> None:
    key = {"Idempotency-Key": "k-42"}
    with api.client(token) as client:
        assert client.post("/api/v1/instances", json=VM_DOC, headers=key).status_code == 202
        other = {**VM_DOC, "metadata": {"name": "web2"}}
        r = client.post("/api/v1/instances", json=other, headers=key)
        assert r.status_code == 422 and error_of(r)["code"] == "idempotency_key_reused"
        assert "'k-42'" in error_of(r)["message"]
        r = client.post("/api/v1/instances/web1/stop", headers=key)  # another route
        assert r.status_code == 422
        # the same JSON written differently is the same request
        same = json.dumps({"spec": VM_DOC["spec"], **{k: VM_DOC[k] for k in VM_DOC if k != "spec"}})
        r = client.post(
            "/api/v1/instances", content=same, headers={**key, "content-type": "application/json"}
        )
        assert r.status_code == 202 and r.headers["idempotent-replayed"] == "true"
        for bad in ("", "x" * 256, "has space", "tab\there"):
            r = client.post("/api/v1/instances", json=other, headers={"Idempotency-Key": bad})
            assert r.status_code == 400 and "Idempotency-Key" in error_of(r)["message"], bad
    assert [vm.name for vm in engine.instances()] == ["web1"]


def test_a_refused_request_keeps_no_answer_and_keys_survive_a_restart(
    engine: Engine, token: str
) -> None:
    key = {"Idempotency-Key": "retry-me"}
    engine.create("web1", VMBody(state="stopped"))
    with running_api(engine) as api, api.client(token) as client:
        r = client.post("/api/v1/instances/web1/stop", headers=key)
        assert r.status_code == 409  # refused: nothing kept, so a retry acts anew
        first = client.post("/api/v1/instances/web1/start", headers={"Idempotency-Key": "s"})
        wait_done(client, first)
        r = client.post("/api/v1/instances/web1/stop", headers=key)
        assert r.status_code == 202 and "idempotent-replayed" not in r.headers
        wait_done(client, r)
    again = make_fake_engine(engine.paths.home)  # a new server process on the same state
    with running_api(again) as api, api.client(token) as client:
        r = client.post("/api/v1/instances/web1/start", headers={"Idempotency-Key": "s"})
        assert r.status_code == 202 and r.json()["id"] == first.json()["id"]
        other = again.tokens.create("other").secret
        with api.client(other) as theirs:  # keys belong to one token
            r = theirs.post("/api/v1/instances/web1/start", headers={"Idempotency-Key": "s"})
            assert r.status_code == 202 and r.json()["id"] != first.json()["id"]
