"""`cloudlet token` and the pieces of `cloudlet serve` that need no server process:
the listen address, the certificate made once (key 0600) and reused."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cloudlet.api.server import Listen, bind, parse_listen
from cloudlet.api.tls import server_cert
from cloudlet.cli import api_commands, main
from cloudlet.engine.engine import Engine
from cloudlet.errors import CloudletError, Conflict, InvalidInput
from tests.fakes import make_fake_engine


@pytest.fixture
def engine(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Engine:
    e = make_fake_engine(short_tmp / "home")
    monkeypatch.setattr(api_commands, "open_engine", lambda: e)
    return e


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main.app, list(args))
    error = result.exception
    if isinstance(error, CloudletError):
        return error.exit_code, result.stdout, result.stderr + error.one_line()
    return result.exit_code, result.stdout, result.stderr


def test_token_create_prints_the_secret_once_and_list_never_does(engine: Engine) -> None:
    code, out, err = cli("token", "create", "--name", "ci", "--expires", "30d")
    assert code == 0, err
    secret = out.strip()
    assert secret.startswith("clt_") and "shown only now" in err
    assert engine.tokens.check(secret) is not None
    code, out, _ = cli("token", "list")
    assert code == 0 and "ci" in out and "active" in out and secret not in out
    code, out, _ = cli("token", "list", "-o", "json")
    (listed,) = json.loads(out)
    assert listed["name"] == "ci" and listed["expires_at"] and "secret" not in listed
    code, _, err = cli("token", "revoke", "ci")
    assert code == 0 and "revoked" in err
    assert engine.tokens.check(secret) is None
    code, out, _ = cli("token", "list")
    assert "revoked" in out


def test_token_mistakes_are_one_line_each(engine: Engine) -> None:
    code, _, err = cli("token", "create", "--name", "ci", "--expires", "forever")
    assert code == 2 and "invalid token lifetime 'forever'" in err
    cli("token", "create", "--name", "ci")
    code, _, err = cli("token", "create", "--name", "ci")
    assert code == 4 and "exists already" in err
    code, _, err = cli("token", "revoke", "nope")
    assert code == 3 and "no token named nope" in err


@pytest.mark.parametrize(
    ("text", "listen"),
    [("0.0.0.0:8443", Listen("0.0.0.0", 8443)), ("[::1]:9000", Listen("::1", 9000))],
)
def test_listen_addresses(text: str, listen: Listen) -> None:
    assert parse_listen(text) == listen


@pytest.mark.parametrize(
    "text", ["8443", "host:8443", "1.2.3.4:0", "1.2.3.4:70000", "1.2.3.4:x", ":"]
)
def test_bad_listen_addresses_are_one_clear_error(text: str) -> None:
    with pytest.raises(InvalidInput, match="invalid listen address"):
        parse_listen(text)


def test_a_taken_port_is_one_clear_error() -> None:
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        with pytest.raises(Conflict, match=r"cannot listen on 127\.0\.0\.1"):
            bind(Listen("127.0.0.1", taken.getsockname()[1]))
    finally:
        taken.close()


def test_the_certificate_is_made_once_with_a_private_key(short_tmp: Path) -> None:
    first = server_cert(short_tmp / "api")
    assert stat.S_IMODE(first.key.stat().st_mode) == 0o600
    assert stat.S_IMODE((short_tmp / "api").stat().st_mode) == 0o700
    assert len(first.fingerprint.split(":")) == 32
    again = server_cert(short_tmp / "api")
    assert again.fingerprint == first.fingerprint
    first.cert.write_text("garbage")
    with pytest.raises(InvalidInput, match="cannot be read"):
        server_cert(short_tmp / "api")
