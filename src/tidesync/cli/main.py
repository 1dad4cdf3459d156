"""The ``tidesync`` command.

::

    tidesync serve [--host 127.0.0.1] [--port 8765] [--data DIR] [--app-id ID] [--config FILE]
                   [--tls-cert FILE --tls-key FILE]
    tidesync conflicts [--data DIR] [--limit N]      resolved conflicts recorded by a server
    tidesync compact --keep N [--data DIR]            drop a server's log entries but the newest N
    tidesync history FILE [--limit N]                 a database file's transactions, newest first
    tidesync revert FILE TXN_ID                       revert one transaction of a database file
    tidesync users list|disable|enable|delete [USER_ID] [--data DIR]     a server's users
    tidesync api-keys create NAME|list|disable|enable|delete [KEY_ID] [--data DIR]
                                                      a server's server API keys
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from ..errors import TidesyncError, UsageError

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tidesync", description="Offline-first sync for Python.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the sync server", description="Run the sync server (Starlette under uvicorn).")
    s.add_argument("--host", default=None, help="address to bind (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=None, help="port (default 8765; 0 picks a free one)")
    s.add_argument("--data", default=None, help="data directory (default ./data)")
    s.add_argument("--app-id", default=None, help="app id (default 'default')")
    s.add_argument("--config", default=None, help="tidesync.toml; without it the server runs in development mode")
    s.add_argument("--tls-cert", default=None, help="TLS certificate (PEM)")
    s.add_argument("--tls-key", default=None, help="TLS private key (PEM)")

    c = sub.add_parser("conflicts", help="list resolved conflicts recorded by a server",
                       description="List the conflicts a server resolved: losing and winning values and stamps.")
    c.add_argument("--data", default="data", help="the server's data directory")
    c.add_argument("--limit", type=int, default=50)
    c.add_argument("--json", action="store_true", help="print JSON")

    sc = sub.add_parser("schema", help="show the schema a server learned from the data",
                        description="Show each collection's fields and the kinds of value the server has seen "
                                    "(learned from every write), or print it as JSON Schemas for [schema] in "
                                    "tidesync.toml.")
    sc.add_argument("--data", default="data", help="the server's data directory")
    sc.add_argument("--json", action="store_true", help="print the learned schema as JSON")
    sc.add_argument("--json-schema", action="store_true",
                    help="print one JSON Schema per collection (bsonType form), to enforce with [schema]")

    cp = sub.add_parser("compact", help="drop a server's old log entries",
                        description="Drop all but the newest KEEP entries of a server's log (also while it "
                                    "runs). Documents stay; a device further behind bootstraps again from "
                                    "document states and keeps its unsynced writes. [sync] log_keep in "
                                    "tidesync.toml makes the server do this by itself.")
    cp.add_argument("--keep", type=int, required=True, help="how many of the newest log entries to keep")
    cp.add_argument("--data", default="data", help="the server's data directory")

    h = sub.add_parser("history", help="list a database file's transactions",
                       description="List the transactions of a tidesync database file, newest first.")
    h.add_argument("file")
    h.add_argument("--limit", type=int, default=20)

    r = sub.add_parser("revert", help="revert one transaction of a database file",
                       description="Write a transaction that restores what TXN_ID changed (where nothing changed it since).")
    r.add_argument("file")
    r.add_argument("txn_id")

    u = sub.add_parser("users", help="list, disable, enable or delete a server's users",
                       description="Manage a server's users in DATA/auth.db (the server may be running: "
                                   "its open sync connections notice within auth.session_recheck_interval).")
    u.add_argument("action", choices=["list", "disable", "enable", "delete"])
    u.add_argument("user_id", nargs="?")
    u.add_argument("--data", default="data", help="the server's data directory")
    u.add_argument("--json", action="store_true", help="print JSON (list)")

    k = sub.add_parser("api-keys", help="manage server API keys (for backend services)",
                       description="Server API keys log in as a service user of their own "
                                   "(Credentials.api_key). A new key is printed once; only its hash is kept.")
    k.add_argument("action", choices=["create", "list", "disable", "enable", "delete"])
    k.add_argument("name_or_id", nargs="?", help="the new key's name (create) or a key id")
    k.add_argument("--data", default="data", help="the server's data directory")
    return p


def _auth_admin(args: argparse.Namespace) -> int:
    """``tidesync users`` and ``tidesync api-keys``."""
    from pathlib import Path

    from ..server.providers.api_keys import ApiKeyStore
    from ..server.users import UserStore

    path = Path(args.data) / "auth.db"
    if not path.exists():
        print(f"no server data in {args.data}", file=sys.stderr)
        return 1
    users = UserStore(path)
    try:
        if args.command == "users":
            if args.action == "list":
                records = users.list_users()
                if args.json:
                    print(json.dumps([{"id": r.id, "disabled": r.disabled, "identities": users.identities(r.id),
                                       "data": r.data} for r in records], indent=2))
                    return 0
                for r in records:
                    ids = ", ".join(f"{i['provider']}:{i['id']}" for i in users.identities(r.id))
                    print(f"{r.id}  {'disabled' if r.disabled else 'active  '}  {ids}")
                return 0
            if not args.user_id:
                raise UsageError(f"tidesync users {args.action} needs a USER_ID")
            done = users.delete_user(args.user_id) if args.action == "delete" \
                else users.set_disabled(args.user_id, args.action == "disable")
            if not done:
                print(f"no user {args.user_id}", file=sys.stderr)
                return 1
            print(f"{args.action}d user {args.user_id}")
            return 0
        keys = ApiKeyStore(users.db, users)
        if args.action == "list":
            for info in keys.list(None):
                print(f"{info.id}  {'disabled' if info.disabled else 'enabled '}  {info.name}  (user {info.user_id})")
            return 0
        if not args.name_or_id:
            raise UsageError(f"tidesync api-keys {args.action} needs a {'NAME' if args.action == 'create' else 'KEY_ID'}")
        if args.action == "create":
            info, key = keys.create(None, args.name_or_id)
            print(f"created server API key {info.id} ({info.name}) for user {info.user_id}; the key, shown once:")
            print(key)
        elif args.action == "delete":
            keys.delete(None, args.name_or_id)
            print(f"deleted server API key {args.name_or_id}")
        else:
            keys.set_disabled(None, args.name_or_id, args.action == "disable")
            print(f"{args.action}d server API key {args.name_or_id}")
        return 0
    finally:
        users.close()


def _schema(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..server.schemas import SchemaLearner, learned_to_json_schema

    path = Path(args.data) / "schema.json"
    if not path.exists():
        print(f"no learned schema in {args.data} (the server writes schema.json as data flows)", file=sys.stderr)
        return 1
    learned = SchemaLearner(path).snapshot()
    if args.json_schema:
        print(json.dumps(learned_to_json_schema(learned), indent=2, sort_keys=True))
    elif args.json:
        print(json.dumps(learned, indent=2, sort_keys=True))
    else:
        for coll, fields in sorted(learned.items()):
            print(coll)
            for name, entry in sorted(fields.items()):
                kinds = " | ".join(entry.get("kinds", []))
                elements = entry.get("elements")
                print(f"  {name}: {kinds}" + (f" of {' | '.join(elements)}" if elements else ""))
    return 0


def _compact(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..store.database import Database

    path = Path(args.data) / "sync.db"
    if not path.exists():
        print(f"no server data in {args.data}", file=sys.stderr)
        return 1
    if args.keep < 0:
        raise UsageError(f"--keep must be >= 0, not {args.keep}")
    with Database(path) as db:
        before = db.log_floor()
        floor = db.compact_log(args.keep)
        head = db.head_seq()
    if floor == before:
        print(f"nothing to drop: the log holds entries {floor + 1} to {head}")
    else:
        print(f"dropped log entries {before + 1} to {floor}; kept {head - floor} (up to {head})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            from ..server import load_config, serve_forever

            cfg = load_config(args.config, host=args.host, port=args.port, data_dir=args.data,
                              app_id=args.app_id, tls_cert=args.tls_cert, tls_key=args.tls_key)
            serve_forever(cfg)
            return 0
        if args.command == "conflicts":
            from pathlib import Path

            from ..store.database import Database

            path = Path(args.data) / "sync.db"
            if not path.exists():
                print(f"no server data in {args.data}", file=sys.stderr)
                return 1
            with Database(path) as db:
                rows = db.conflicts(args.limit)
            if args.json:
                print(json.dumps(rows, indent=2, default=str))
            else:
                for row in rows:
                    print(f"{row['collection']} {row['key']!r} {row['path']}: {row['rule']} kept "
                          f"{row['winner']!r} ({row['winner_stamp']}) over {row['loser']!r} ({row['loser_stamp']})")
                if not rows:
                    print("no conflicts recorded")
            return 0
        if args.command == "schema":
            return _schema(args)
        if args.command == "compact":
            return _compact(args)
        if args.command in ("users", "api-keys"):
            return _auth_admin(args)
        if args.command in ("history", "revert"):
            from ..store.database import Database

            with Database(args.file) as db:
                if args.command == "history":
                    for e in db.history(args.limit):
                        changes = ", ".join(f"{c.kind} {c.collection} {c.id!r} {list(c.fields)}" for c in e.changes)
                        print(f"{e.id}  seq {e.seq}  origin {e.origin}  {changes}")
                else:
                    res = db.revert(args.txn_id)
                    for coll, key, name in res.restored:
                        print(f"restored {coll} {key!r} {name}")
                    for coll, key, name, why in res.skipped:
                        print(f"left {coll} {key!r} {name}: {why}")
            return 0
    except TidesyncError as exc:
        print(f"tidesync: {exc}", file=sys.stderr)
        return 2
    return 1
