"""``amc token create USER | list | revoke ID``: the service's API tokens (only their sha256 is stored).

``create`` prints the secret once; send it as ``Authorization: Bearer <secret>``.
"""

from __future__ import annotations

import argparse
import time

from amc.commands.serve import add_service_args, service_config


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("token", help="create, list or revoke the service's API tokens", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_service_args(p)
    tsub = p.add_subparsers(dest="action", required=True)
    c = tsub.add_parser("create", help="a new token for USER; prints the secret once")
    c.add_argument("user")
    c.add_argument("--note", default="")
    tsub.add_parser("list", help="tokens (id, user, created, revoked); never the secrets")
    r = tsub.add_parser("revoke", help="revoke the token ID")
    r.add_argument("id")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from amc.errors import AmcError
    from amc.service.auth import create_token
    from amc.service.store import Store

    cfg = service_config(args)
    cfg.root.mkdir(parents=True, exist_ok=True)
    store = Store(cfg.database)
    if args.action == "create":
        if not args.user.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise AmcError(f"user names are letters, digits, '-', '_' and '.', got {args.user!r}")
        tid, secret = create_token(store, args.user, args.note)
        print(secret)
        print(f"token {tid} for {args.user} (shown once; only its hash is stored)", flush=True)
    elif args.action == "list":
        for t in store.list_tokens():
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(t["created"]))
            state = "revoked" if t["revoked"] else "active"
            print(f"{t['id']}  {t['user']:<16} {when}  {state}  {t['note']}")
    else:
        if not store.revoke_token(args.id):
            raise AmcError(f"no active token {args.id!r}")
        print(f"revoked {args.id}")
    return 0
