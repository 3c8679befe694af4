"""Fleet figures: a node killed under a live session, a rolling restart, and what a PostgreSQL commit adds to a final.

What it measures (PostgreSQL and HAProxy from Debian's packages, three ``echopanel serve`` nodes on this machine,
the resilient client at real-time pace through HAProxy; docs/deployment.md)
    * node kill: ``--kills`` sessions in turn, each LibriVox speech at real-time pace; mid-speech its node is killed
      with SIGKILL. Resume time = the client's connection lost -> the resumed ``session.created`` (from another
      node). Audio lost = bytes sent that are not in the shared recording, and whether the recording is
      byte-identical to what was sent. WER of each session against its reference. The killed node is restarted.
    * rolling restart: ``--sessions`` sessions stream while each node in turn gets SIGTERM (it drains: sessions
      handed off at a pause, close 1012), exits, starts again and passes HAProxy's health check. Time per node and
      for the whole fleet, resumes, audio lost, sessions completed.
    * store commit: the final's store write (``add_item``: one transaction, made before the client sees the final)
      timed ``--commits`` times on SQLite (the data directory's file, WAL, synchronous=NORMAL) and on the fleet's
      PostgreSQL (loopback, fsync on), p50/p95 in ms: what a fleet adds to every final's latency.

How to run (from the repository root, alone on the machine)
    .venv/bin/python -m bench.fleet
    .venv/bin/python -m bench.fleet --kills 10 --json /tmp/fleet.json
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # also runnable as bench/fleet.py

from bench.common import LIBRIVOX, fmt, git_state, read_transcription, write_json
from echopanel.audio.wav import read_pcm16
from echopanel.client.stream import transcribe_resilient
from echopanel.evaluation import normalize, wer
from echopanel.storage.postgres import PostgresStore
from echopanel.storage.sql import SqlStore
from echopanel.storage.sqlite import SqliteStore
from echopanel.storage.store import SessionRecord, StoredItem
from echopanel.testing.fleet import Fleet, fleet

RATE = 16000
GAP = b"\x00\x00" * RATE
STEMS = [
    "sense_and_sensibility_01_austen_64kb-0870",
    "sense_and_sensibility_01_austen_64kb-0880",
    "sense_and_sensibility_01_austen_64kb-0890",
    "sense_and_sensibility_01_austen_64kb-0920",
    "sense_and_sensibility_01_austen_64kb-0930",
]


def speech() -> tuple[bytes, str]:
    refs = read_transcription(LIBRIVOX / "transcription")
    pcm = GAP + b"".join(read_pcm16(LIBRIVOX / f"{s}.wav") + GAP for s in STEMS) + GAP
    return pcm, " ".join(refs[s] for s in STEMS)


def lost_bytes(f: Fleet, session_id: str, sent: bytes) -> tuple[int, bool]:
    data = (f.data_dir / "recordings" / session_id / "mic.pcm").read_bytes()
    return max(0, len(sent) - len(data)), data == sent


def session_wer(view: Any, ref: str) -> float:
    return wer(normalize(ref), normalize(view.text()))


async def kills(f: Fleet, n: int, at_s: float) -> dict[str, Any]:
    pcm, ref = speech()
    rows = []
    for k in range(n):
        c = f.client()
        await c.open()
        sid = c.session["id"]
        killed: dict[str, Any] = {}
        at = int(at_s * RATE) + k * RATE // 3  # a little later each time: other words, other decoder states

        def on_chunk(
            source: str, sample: int, now: float, sid: str = sid, at: int = at, killed: dict[str, Any] = killed
        ) -> None:
            if not killed and sample >= at:
                killed["node"] = f.owner(sid)
                f.kill(killed["node"])

        view = await transcribe_resilient(c, {"mic": pcm}, on_chunk=on_chunk)
        lost, same = lost_bytes(f, sid, pcm)
        row = {
            "session": sid,
            "killed": killed.get("node"),
            "resume_s": c.stats.resume_s[0] if c.stats.resume_s else None,
            "status": (view.summary or {}).get("status"),
            "lost_ms": lost // 2 * 1000 // RATE,
            "identical": same,
            "wer": session_wer(view, ref),
        }
        rows.append(row)
        print(
            f"kill {k + 1}/{n}: node{row['killed']} killed; resumed in {fmt(row['resume_s'], '.3f', ' s')}, "
            f"{row['status']}, lost {row['lost_ms']} ms, recording identical {same}, WER {row['wer']:.3f}",
            flush=True,
        )
        await asyncio.to_thread(f.restart, killed["node"])
    times = [r["resume_s"] for r in rows if r["resume_s"] is not None]
    return {
        "rows": rows,
        "resume_p50_s": statistics.median(times) if times else None,
        "resume_max_s": max(times) if times else None,
        "lost_ms": sum(r["lost_ms"] for r in rows),
        "all_identical": all(r["identical"] for r in rows),
        "all_completed": all(r["status"] == "completed" for r in rows),
        "wer_mean": statistics.fmean(r["wer"] for r in rows),
    }


async def rolling(f: Fleet, sessions: int) -> dict[str, Any]:
    pcm, ref = speech()
    pcm = pcm + pcm  # ~70 s: room for three nodes to restart in turn
    ref = ref + " " + ref
    clients = [f.client() for _ in range(sessions)]
    for c in clients:
        await c.open()
    per_node: list[dict[str, float]] = []

    async def roll() -> float:
        await asyncio.sleep(3.0)
        started = time.monotonic()
        for i in range(len(f.ports)):
            t0 = time.monotonic()
            stop_s = await asyncio.to_thread(f.stop, i)
            await asyncio.to_thread(f.restart, i)
            per_node.append({"node": i, "stop_s": stop_s, "total_s": time.monotonic() - t0})
        return time.monotonic() - started

    task = asyncio.create_task(roll())
    views = await asyncio.gather(*(transcribe_resilient(c, {"mic": pcm}) for c in clients))
    whole = await task
    lost = [lost_bytes(f, c.session["id"], pcm) for c in clients]
    out = {
        "fleet_s": whole,
        "per_node": per_node,
        "resumes": [c.stats.resumes for c in clients],
        "completed": sum((v.summary or {}).get("status") == "completed" for v in views),
        "sessions": sessions,
        "lost_ms": sum(b // 2 * 1000 // RATE for b, _ in lost),
        "all_identical": all(same for _, same in lost),
        "wer": [session_wer(v, ref) for v in views],
    }
    nodes = ", ".join(f"{p['stop_s']:.1f} s drain+exit, {p['total_s']:.1f} s back" for p in per_node)
    print(
        f"rolling restart of {len(f.ports)} nodes under {sessions} sessions: {whole:.1f} s (per node: {nodes}); "
        f"{out['completed']}/{sessions} completed, resumes {out['resumes']}, lost {out['lost_ms']} ms, "
        f"recordings identical {out['all_identical']}, WER {', '.join(f'{w:.3f}' for w in out['wer'])}",
        flush=True,
    )
    return out


def commits(store: SqlStore, n: int) -> dict[str, float]:
    sid = f"sess_bench_{time.monotonic_ns()}"
    store.create_session(SessionRecord(sid, "active", time.time(), ("mic",), RATE), [])
    words = tuple({"word": "word", "start_ms": i * 300, "end_ms": i * 300 + 250, "confidence": 0.9} for i in range(12))
    times = []
    for i in range(n):
        item = StoredItem(sid, f"item_mic_{i:05d}", "mic", "a final of a dozen words " * 2, i * 4000, i * 4000 + 3500,
                          "mic:S1", words, "whisper")  # fmt: skip
        t0 = time.perf_counter()
        store.add_item(item)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {"p50_ms": times[len(times) // 2], "p95_ms": times[int(len(times) * 0.95)], "n": n}


async def main_async(a: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="echopanel-fleet-bench-"))
    out: dict[str, Any] = {"checkout": git_state(), "config": vars(a)}
    with fleet(3, root, fsync=True) as f:  # commits wait for the disk, as in production
        print(f"fleet up: 3 nodes behind HAProxy at {f.url}", flush=True)
        if a.kills:
            out["kills"] = await kills(f, a.kills, a.kill_at_s)
        if a.sessions:
            out["rolling"] = await rolling(f, a.sessions)
        if a.commits:
            pg = PostgresStore(f.store, "bench-node")
            lite = SqliteStore(root / "bench.db", "bench-node")
            try:
                out["commit"] = {"sqlite": commits(lite, a.commits), "postgresql": commits(pg, a.commits)}
            finally:
                pg.close()
                lite.close()
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=5, help="sessions whose node is killed mid-speech (default 5)")
    p.add_argument("--kill-at-s", type=float, default=12.0, help="audio second of the first kill (default 12)")
    p.add_argument("--sessions", type=int, default=4, help="live sessions during the rolling restart (default 4)")
    p.add_argument("--commits", type=int, default=300, help="store writes timed per database (default 300)")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    out = asyncio.run(main_async(a))
    k, r, c = out.get("kills"), out.get("rolling"), out.get("commit")
    print("\n== fleet (3 nodes, PostgreSQL + HAProxy on loopback)")
    if k:
        print(
            f"resume after a node kill      p50 {fmt(k['resume_p50_s'], '.3f', ' s')}, max "
            f"{fmt(k['resume_max_s'], '.3f', ' s')} over {len(k['rows'])} kills; audio lost {k['lost_ms']} ms; "
            f"recordings identical {k['all_identical']}; all completed {k['all_completed']}; mean WER "
            f"{k['wer_mean']:.3f}"
        )
    if r:
        print(
            f"rolling restart of 3 nodes    {r['fleet_s']:.1f} s under {r['sessions']} sessions; "
            f"{r['completed']}/{r['sessions']} completed; audio lost {r['lost_ms']} ms"
        )
    if c:
        lite, pg = c["sqlite"], c["postgresql"]
        print(
            f"final's store commit          SQLite p50 {lite['p50_ms']:.2f} ms (p95 {lite['p95_ms']:.2f}), "
            f"PostgreSQL p50 {pg['p50_ms']:.2f} ms (p95 {pg['p95_ms']:.2f}): +{pg['p50_ms'] - lite['p50_ms']:.2f} ms "
            "per final"
        )
    if a.json:
        write_json(a.json, out)


if __name__ == "__main__":
    main()
