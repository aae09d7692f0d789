"""omactl tokens list|create|revoke: operators' API tokens; omactl audit: the audit log (admin role)."""

from __future__ import annotations

import argparse
import itertools
import re
from pathlib import Path

from oma.v1 import access_pb2
from oma_server.omactl import config, render
from oma_server.omactl.client import CliError
from oma_server.omactl.config import OmactlConfig
from oma_server.omactl.context import Commands, Context, effective_settings
from oma_server.omactl.render import enum_label, field_time

_TTL = re.compile(r"\A(\d+)([smhd])\Z")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_ROLES = {"viewer": access_pb2.ROLE_VIEWER, "operator": access_pb2.ROLE_OPERATOR, "admin": access_pb2.ROLE_ADMIN}


def ttl_seconds(text: str) -> int:
    """`90d`, `12h`, `30m`, `45s` (or plain seconds) into seconds; 0 for `never`."""
    if text == "never":
        return 0
    if text.isdigit():
        return int(text)
    match = _TTL.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"invalid lifetime {text!r}: give 90d, 12h, 30m, 45s or never")
    return int(match.group(1)) * _SECONDS[match.group(2)]


def _role(token: access_pb2.ApiToken) -> str:
    return enum_label(access_pb2.Role, token.role, "ROLE")


def _state(token: access_pb2.ApiToken) -> str:
    return "revoked" if token.HasField("revoked_at") else "active"


def cmd_list(ctx: Context, args: argparse.Namespace) -> int:
    tokens = list(
        ctx.client.paged(ctx.client.access, "ListApiTokens", access_pb2.ListApiTokensRequest(), lambda r: r.tokens)
    )
    if ctx.out.as_json:
        ctx.out.messages(tokens)
        return 0
    ctx.out.table(
        ["ID", "NAME", "ROLE", "STATE", "CREATED", "EXPIRES"],
        ([t.id, t.name, _role(t), _state(t), field_time(t, "created_at"), field_time(t, "expires_at")] for t in tokens),
        title="API tokens",
    )
    return 0


def cmd_create(ctx: Context, args: argparse.Namespace) -> int:
    if args.role not in _ROLES:
        raise CliError(f"--role must be one of {', '.join(_ROLES)}", exit_code=2)
    config_file = Path(args.omactl_config) if args.omactl_config else None
    if config_file is not None and config_file.exists():  # before the token exists: a refusal leaves nothing behind
        raise CliError(f"--omactl-config {config_file} exists; give a new path (or remove it first)", exit_code=2)
    request = access_pb2.CreateApiTokenRequest(name=args.name, role=_ROLES[args.role], ttl_seconds=args.ttl)
    reply = ctx.client.call(ctx.client.access, "CreateApiToken", request)
    if config_file is not None:
        _write_config(config_file, effective_settings(args), reply.secret)
    if ctx.out.as_json:
        ctx.out.message(reply)
        return 0
    expires = field_time(reply.token, "expires_at") if reply.token.HasField("expires_at") else render.NONE
    ctx.out.line(f"Created API token {reply.token.name} (id {reply.token.id}, role {args.role}, expires {expires}).")
    ctx.out.line(f"Token: {reply.secret}")
    ctx.out.line("It is shown once: the OMA keeps only its hash. Use it as OMA_TOKEN or omactl --token.")
    if config_file is not None:
        ctx.out.line(
            f"Wrote {config_file} (0600) with it: give it to its user as OMA_CONFIG or ~/.config/omactl/config.toml."
        )
    return 0


def _write_config(path: Path, settings: OmactlConfig, secret: str) -> None:
    """The new token's omactl config: the OMA as this omactl reaches it (server, CA, plaintext or not)."""
    assert settings.server is not None
    try:
        config.write(path, server=settings.server, ca=settings.ca, token=secret, insecure=bool(settings.insecure))
    except OSError as exc:
        raise CliError(
            f"the token was created but {path} could not be written ({exc.strerror}); revoke it", exit_code=1
        ) from None


def cmd_revoke(ctx: Context, args: argparse.Namespace) -> int:
    reply = ctx.client.call(ctx.client.access, "RevokeApiToken", access_pb2.RevokeApiTokenRequest(id=args.id))
    if ctx.out.as_json:
        ctx.out.message(reply.token)
        return 0
    ctx.out.line(f"Revoked API token {reply.token.name} (id {reply.token.id}): every call with it is refused.")
    return 0


def cmd_audit(ctx: Context, args: argparse.Namespace) -> int:
    request = access_pb2.ListAuditEntriesRequest(token_id=args.token_id, method=args.method, resource=args.resource)
    pages = ctx.client.paged(ctx.client.access, "ListAuditEntries", request, lambda r: r.entries)
    entries = list(itertools.islice(pages, args.limit))
    if ctx.out.as_json:
        ctx.out.messages(entries)
        return 0
    ctx.out.table(
        ["WHEN", "ACTOR", "METHOD", "RESOURCE", "OUTCOME", "REASON", "PEER"],
        (
            [field_time(e, "at"), e.actor, e.method.rsplit("/", 1)[-1], e.resource, e.outcome, e.reason, e.peer]
            for e in entries
        ),
        title=f"audit log (newest first, at most {args.limit})",
    )
    return 0


def register(commands: Commands) -> None:
    group = commands.group("tokens", "operators' API tokens: create, list, revoke (admin role)")
    commands.leaf(group, "list", "list API tokens (never their secrets)", cmd_list)
    create = commands.leaf(group, "create", "create an API token and print it once", cmd_create)
    create.add_argument("name", metavar="NAME", help="who or what uses it: 1-63 letters, digits, '.', '_', '@', '-'")
    create.add_argument("--role", required=True, help="viewer (reads), operator (replication, failover), admin")
    create.add_argument("--ttl", type=ttl_seconds, default=0, help="lifetime: 90d, 12h, 30m, 45s (default: never)")
    create.add_argument(
        "--omactl-config",
        metavar="FILE",
        help="also write an omactl config file (0600) with this OMA's address, CA and the new token; must not exist",
    )
    revoke = commands.leaf(group, "revoke", "revoke an API token", cmd_revoke)
    revoke.add_argument("id", metavar="ID", help="token id (omactl tokens list)")
    audit = commands.leaf(commands.root, "audit", "the audit log: every mutating call, newest first (admin)", cmd_audit)
    audit.add_argument("--token-id", default="", help="only calls made with this token id")
    audit.add_argument("--method", default="", help="only calls of this method (e.g. StartFailover)")
    audit.add_argument("--resource", default="", help="only calls that named this id")
    audit.add_argument("--limit", type=int, default=50, help="at most this many entries (default 50)")
