"""`cloudlet serve` and `cloudlet token`: the REST API server and its bearer tokens."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from cloudlet.cli.options import Output

if TYPE_CHECKING:
    from cloudlet.api.server import Listen
    from cloudlet.api.tls import ServerCert
    from cloudlet.cli import render
    from cloudlet.cli.render import err, out
    from cloudlet.engine.factory import open_engine
    from cloudlet.engine.tokens import lifetime
else:
    from cloudlet.cli.lazy import lazy

    render = lazy("cloudlet.cli.render")
    err = lazy("cloudlet.cli.render", "err")
    out = lazy("cloudlet.cli.render", "out")
    open_engine = lazy("cloudlet.engine.factory", "open_engine")
    lifetime = lazy("cloudlet.engine.tokens", "lifetime")

token_app = typer.Typer(help="Bearer tokens of the REST API.", no_args_is_help=True)
OutputOpt = Annotated[Output, typer.Option("--output", "-o", help="table or json")]


def serve(
    listen: Annotated[
        str, typer.Option("--listen", help="ADDR:PORT to listen on (HTTPS)")
    ] = "0.0.0.0:8443",
) -> None:
    """Serve the REST API over HTTPS (a self-signed certificate is made on first start)."""
    from cloudlet.api import server

    where = server.parse_listen(listen)

    def ready(bound: Listen, cert: ServerCert) -> None:
        sys.stdout.write(
            f"cloudlet API listening on {bound.url}/api/v1\n"
            f"certificate SHA-256 fingerprint: {cert.fingerprint}\n"
        )
        sys.stdout.flush()

    server.serve(open_engine(), where, ready=ready)


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option("--name", help="a name to list and revoke it by")],
    expires: Annotated[
        str | None, typer.Option("--expires", help="lifetime such as 30d or 12h; none: no end")
    ] = None,
    output: OutputOpt = Output.table,
) -> None:
    """Make a token; its secret is printed this once (only a hash is kept)."""
    made = open_engine().tokens.create(name, expires=lifetime(expires))
    if output == Output.json:
        render.print_json(made.to_dict())
        return
    sys.stdout.write(made.secret + "\n")
    ends = made.token.expires_at
    err.print(
        f"token {name} made{f', valid until {ends:%Y-%m-%d %H:%M} UTC' if ends else ''}: "
        "it is shown only now; send it as 'Authorization: Bearer TOKEN'"
    )


@token_app.command("list")
def token_list(output: OutputOpt = Output.table) -> None:
    """The tokens (never their secrets)."""
    items = open_engine().tokens.list()
    if output == Output.json:
        render.print_json([t.to_dict() for t in items])
        return
    if not items:
        err.print("no tokens yet: 'cloudlet token create --name NAME'")
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("NAME", "PROJECT", "CREATED", "EXPIRES", "STATE"):
        table.add_column(column)
    for t in items:
        table.add_row(
            t.name,
            t.project,
            f"{t.created_at:%Y-%m-%d %H:%M}",
            f"{t.expires_at:%Y-%m-%d %H:%M}" if t.expires_at else "-",
            "revoked" if t.revoked else "active",
        )
    out.print(table)


@token_app.command("revoke")
def token_revoke(name: Annotated[str, typer.Argument(help="token name")]) -> None:
    """Revoke a token: calls carrying it get 401 from now on."""
    render.said(open_engine().tokens.revoke(name))


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.add_typer(token_app, name="token")
