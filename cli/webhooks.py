"""``kdserve webhooks``: endpoints that receive your jobs' final states (add, list, remove,
deliveries), through :class:`client.KDServeClient`. Exit codes as the other remote commands
(:mod:`cli.remote`): 0 done, 2 the request was refused or the server unreachable."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from cli.remote import (
    JsonOpt,
    KeyOpt,
    UrlOpt,
    _print_json,
    _print_table,
    _remote,
    _table,
    err,
    out,
)

webhooks_app = typer.Typer(
    help="Webhooks on a kdserve server: URLs that receive your jobs' final states, signed "
    "(Standard Webhooks); add, list, remove, deliveries.",
    no_args_is_help=True,
)

WebhookArg = Annotated[
    str, typer.Argument(metavar="ID", help="The endpoint's id (`kdserve webhooks list`).")
]


def register(app: typer.Typer) -> None:
    app.add_typer(webhooks_app, name="webhooks")


@webhooks_app.command("add")
def webhooks_add(
    endpoint: Annotated[str, typer.Argument(metavar="URL", help="http(s) URL to POST to.")],
    description: Annotated[
        str | None, typer.Option("--description", help="A note to recognise it by.")
    ] = None,
    as_json: JsonOpt = False,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Register an endpoint; prints its signing secret, which is shown only this once."""
    with _remote(url, api_key) as kd:
        hook = kd.add_webhook(endpoint, description=description)
    if as_json:
        _print_json(hook)
        return
    out.print(f"id      {hook['id']}")
    out.print(f"secret  {hook['secret']}")
    err.print(
        "keep the secret: it verifies each delivery's webhook-signature and is not shown again"
    )


@webhooks_app.command("list")
def webhooks_list(as_json: JsonOpt = False, url: UrlOpt = None, api_key: KeyOpt = None) -> None:
    """List your webhook endpoints, newest first."""
    with _remote(url, api_key) as kd:
        items = kd.list_webhooks()
    if as_json:
        _print_json(items)
        return
    table = _table("id", "url", "description", "created")
    for w in items:
        table.add_row(w["id"], escape(w["url"]), escape(w["description"]), w["created_at"][:19])
    _print_table(table)


@webhooks_app.command("remove")
def webhooks_remove(id_: WebhookArg, url: UrlOpt = None, api_key: KeyOpt = None) -> None:
    """Delete an endpoint and its delivery records; nothing more is sent to it."""
    with _remote(url, api_key) as kd:
        kd.delete_webhook(id_)
    err.print(f"removed webhook {escape(id_)}")


@webhooks_app.command("deliveries")
def webhooks_deliveries(
    id_: WebhookArg, as_json: JsonOpt = False, url: UrlOpt = None, api_key: KeyOpt = None
) -> None:
    """The endpoint's deliveries, newest first: state, attempts and the last answer."""
    with _remote(url, api_key) as kd:
        items = kd.list_webhook_deliveries(id_)
    if as_json:
        _print_json(items)
        return
    table = _table("id", "event", "job", "state", "attempts", "last answer", "created")
    for d in items:
        last = str(d["last_status_code"]) if d["last_status_code"] else (d["last_error"] or "-")
        table.add_row(
            d["id"],
            d["event_type"],
            d["job_id"],
            d["state"],
            str(d["attempts"]),
            escape(last),
            d["created_at"][:19],
        )
    _print_table(table)
