"""``echopanel sessions list|show|export|delete``: stored sessions, read straight from the data directory.

It opens the store the server writes (``--store`` / ``ECHOPANEL_STORE``: by default the SQLite file
``<data_dir>/echopanel.db``, which WAL lets it read while the server runs; or a fleet's PostgreSQL), so it works
with the server stopped too. ``delete`` refuses a session that is still running
(``active``) and removes its recordings with it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from echopanel.analysis.export import FORMATS, export
from echopanel.config import Settings, SettingsError
from echopanel.storage.open import open_store, sqlite_path, store_kind
from echopanel.storage.recording import delete_session_recordings
from echopanel.storage.sql import SqlStore


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("sessions", help="list, show, export or delete stored sessions (reads the data directory)")
    p.add_argument("--data-dir", help="the server's data directory (ECHOPANEL_DATA_DIR)")
    p.add_argument("--store", help="the server's store, if not the data dir's SQLite file (ECHOPANEL_STORE)")
    ops = p.add_subparsers(dest="op", required=True)
    ls = ops.add_parser("list", help="stored sessions, newest first")
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--json", action="store_true")
    show = ops.add_parser("show", help="one session: status, speakers and transcript")
    show.add_argument("session_id")
    show.add_argument("--json", action="store_true")
    ex = ops.add_parser("export", help="print or write a session as json, md, srt or vtt")
    ex.add_argument("session_id")
    ex.add_argument("--format", "-f", choices=sorted(FORMATS), default="md")
    ex.add_argument("--output", "-o", help="write to this file instead of standard output")
    rm = ops.add_parser("delete", help="delete a session and its recordings")
    rm.add_argument("session_id")


def run(args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_env(data_dir=args.data_dir, store=args.store)
    except SettingsError as exc:  # a bad ECHOPANEL_* variable: say which, and what it allows
        print(f"echopanel sessions: {exc}", file=sys.stderr)
        return 2
    data_dir = settings.data_dir
    if store_kind(settings.store) == "sqlite" and not sqlite_path(settings.store, data_dir).is_file():
        print(f"echopanel sessions: no session store in {data_dir}", file=sys.stderr)
        return 1
    store = open_store(settings.store, data_dir)
    try:
        return _run(args, store, data_dir)
    finally:
        store.close()


def _mmss(ms: int) -> str:
    s = max(0, ms) // 1000
    return f"{s // 60:02d}:{s % 60:02d}"


def _run(args: argparse.Namespace, store: SqlStore, data_dir: Path) -> int:
    if args.op == "list":
        records = store.list_sessions(limit=args.limit)
        if args.json:
            print(json.dumps([r.as_dict() for r in records], ensure_ascii=False))
        for r in [] if args.json else records:
            print(f"{r.id}  {r.status:<11}  {_mmss(r.duration_ms)}  {r.items:>4} items  {','.join(r.sources)}")
        return 0
    record = store.get_session(args.session_id)
    if record is None:
        print(f"echopanel sessions: no stored session {args.session_id!r}", file=sys.stderr)
        return 1
    if args.op == "show":
        items = store.items(record.id)
        if args.json:
            body = {**record.as_dict(), "items": [i.as_dict(words=False) for i in items]}
            print(json.dumps(body, ensure_ascii=False))
            return 0
        print(f"{record.id}  {record.status}  sources {', '.join(record.sources)}  {len(items)} items")
        for s in store.speakers(record.id):
            print(f"  {s.label}: {_mmss(s.talk_ms)} talk, {s.items} items")
        for i in items:
            print(f"[{_mmss(i.start_ms)} {i.speaker or i.source}] {i.text}")
        return 0
    if args.op == "export":
        text = export(args.format, record, store.items(record.id), store.summary(record.id))
        if args.output:
            Path(args.output).write_text(text, encoding="utf-8")
        else:
            sys.stdout.write(text)
        return 0
    if args.op == "delete":
        if record.status == "active":
            print(f"echopanel sessions: {record.id} is still running; close it first", file=sys.stderr)
            return 1
        store.delete_session(record.id)
        delete_session_recordings(data_dir, record.id)
        print(f"deleted {record.id}")
        return 0
    return 2
