"""Load benchmark: ramps concurrent two-source sessions at real-time pace and prints latency, loss, CPU and RSS.

Each session is meeting-like: a "mic" and a "system" source, each speaking about half the time (real speech
clips from the LibriVox reader, the cards speaker and the two-speaker phone call, with 1-4 s gaps), streamed at
the pace it was recorded over loopback to a real server that this script starts (``--url`` for a running one).

Per step it prints, per source kind: first-partial latency p50/p95 (speech onset sent -> first text of the
utterance) and final latency p50/p95 (end of the utterance's last word sent -> ``response.done``), audio shed
from live transcription (repaired from the recording at close), the highest degrade level seen, server CPU
(cores) and RSS. After the top step it tries one session past the limit (expects HTTP 503) and times how long
the server takes to get back to full quality (degrade level 0) once the load falls.

    .venv/bin/python bench/load.py                      # steps 1,2,4,8,12,16 sessions, 40 s each
    .venv/bin/python bench/load.py --steps 8,16 --step-s 60 --json bench/results/load.json
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    PHONE,
    SAMPLE_RATE,
    cards_files,
    librivox_files,
    write_json,
)
from echopanel.audio.convert import float_to_pcm16
from echopanel.audio.wav import read_audio
from echopanel.client import LiveClient
from echopanel.client.stream import send_source
from echopanel.metrics import percentile
from echopanel.testing.server import ServerProcess, start_server


def clips() -> list[np.ndarray]:
    out = [read_audio(p) for p, _ in librivox_files()] + [read_audio(p) for p, _ in cards_files()]
    phone = read_audio(PHONE / "sample.wav")
    for start in range(6, 30, 6):  # the call cut into 6 s pieces
        out.append(phone[start * SAMPLE_RATE : (start + 6) * SAMPLE_RATE])
    return out


def track(pool: list[np.ndarray], seconds: float, rng: random.Random) -> bytes:
    """Speech about half the time: clips separated by 1-4 s of silence (and a random lead-in)."""
    parts = [np.zeros(int(rng.uniform(0.0, 3.0) * SAMPLE_RATE), np.float32)]
    total = len(parts[0])
    while total < seconds * SAMPLE_RATE:
        clip = pool[rng.randrange(len(pool))]
        gap = np.zeros(int(rng.uniform(1.0, 4.0) * SAMPLE_RATE), np.float32)
        parts += [clip, gap]
        total += len(clip) + len(gap)
    return float_to_pcm16(np.concatenate(parts)[: int(seconds * SAMPLE_RATE)])


@dataclass
class SessionResult:
    first_partial: dict[str, list[float]] = field(default_factory=lambda: {"mic": [], "system": []})
    final: dict[str, list[float]] = field(default_factory=lambda: {"mic": [], "system": []})
    dropped_ms: dict[str, int] = field(default_factory=lambda: {"mic": 0, "system": 0})
    repaired: int = 0
    max_level: int = 0
    errors: list[str] = field(default_factory=list)
    close_s: float = 0.0


async def run_session(url: str, pool: list[np.ndarray], seconds: float, seed: int) -> SessionResult:
    rng = random.Random(seed)
    audio = {"mic": track(pool, seconds, rng), "system": track(pool, seconds, rng)}
    result = SessionResult()
    first_seen: set[str] = set()
    t0 = 0.0
    try:
        async with LiveClient(url, sources=["mic", "system"], open_timeout_s=60) as client:

            async def receive() -> None:
                async for ev in client.events():
                    now = time.monotonic()
                    kind = ev.get("type")
                    if kind == "response.text.delta" and ev["item_id"] not in first_seen:
                        if ev["delta"] or ev["tentative"]:
                            first_seen.add(ev["item_id"])
                            result.first_partial[ev["source"]].append(now - (t0 + ev["start_ms"] / 1000))
                    elif kind == "response.done" and ev["text"] and not ev.get("repaired"):
                        result.final[ev["source"]].append(now - (t0 + ev["end_ms"] / 1000))
                        if ev["item_id"] not in first_seen:
                            first_seen.add(ev["item_id"])
                            result.first_partial[ev["source"]].append(now - (t0 + ev["start_ms"] / 1000))
                    elif kind == "response.done" and ev.get("repaired"):
                        result.repaired += 1
                    elif kind == "session.degraded":
                        result.max_level = max(result.max_level, int(ev["level"]))
                    elif kind == "session.summary":
                        for name, stats in ev["stats"]["sources"].items():
                            result.dropped_ms[name] = int(stats["dropped_ms"])
                    elif kind == "error":
                        result.errors.append(str(ev.get("code")))

            receiver = asyncio.create_task(receive())
            t0 = time.monotonic()
            await asyncio.gather(
                *(send_source(client, name, pcm, realtime=True, chunk_ms=40, t0=t0) for name, pcm in audio.items())
            )
            closing = time.monotonic()
            await client.close_session()
            await asyncio.wait_for(receiver, 300)
            result.close_s = time.monotonic() - closing
    except Exception as exc:  # reported per step, never silently
        result.errors.append(f"{type(exc).__name__}: {exc}")
    return result


async def degrade_level(http: httpx.AsyncClient) -> int:
    text = (await http.get("/metrics")).text
    m = re.search(r"^echopanel_degrade_level (\S+)$", text, re.MULTILINE)
    return int(float(m.group(1))) if m else -1


async def wait_for_normal(http: httpx.AsyncClient, timeout_s: float) -> float | None:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if await degrade_level(http) == 0:
            return time.monotonic() - start
        await asyncio.sleep(0.5)
    return None


def p(values: list[float], q: float) -> float | None:
    value = percentile(values, q / 100)
    return None if value is None else round(value, 3)


async def step(
    url: str, http: httpx.AsyncClient, server: ServerProcess | None, n: int, seconds: float, pool: list[np.ndarray]
) -> dict[str, Any]:
    cpu0 = server.cpu_seconds() if server else 0.0
    wall0 = time.monotonic()
    rss_peak = 0
    stop = asyncio.Event()

    async def sample_rss() -> None:
        nonlocal rss_peak
        while not stop.is_set():
            if server is not None:
                rss_peak = max(rss_peak, server.rss_bytes())
            await asyncio.sleep(1.0)

    sampler = asyncio.create_task(sample_rss())
    tasks = []
    for i in range(n):
        tasks.append(asyncio.create_task(run_session(url, pool, seconds, seed=1000 * n + i)))
        await asyncio.sleep(0.1)
    results = await asyncio.gather(*tasks)
    stop.set()
    await sampler
    wall = time.monotonic() - wall0
    cpu = (server.cpu_seconds() - cpu0) / wall if server else None
    row: dict[str, Any] = {"sessions": n, "seconds": seconds}
    for kind in ("mic", "system"):
        fp = [v for r in results for v in r.first_partial[kind]]
        fin = [v for r in results for v in r.final[kind]]
        row[kind] = {
            "first_partial_p50": p(fp, 50),
            "first_partial_p95": p(fp, 95),
            "final_p50": p(fin, 50),
            "final_p95": p(fin, 95),
            "finals": len(fin),
            "dropped_ms": sum(r.dropped_ms[kind] for r in results),
        }
    row["repaired_items"] = sum(r.repaired for r in results)
    row["max_degrade_level"] = max(r.max_level for r in results)
    row["errors"] = sorted({e for r in results for e in r.errors})
    row["close_s_max"] = round(max(r.close_s for r in results), 2)
    row["cpu_cores"] = None if cpu is None else round(cpu, 2)
    row["rss_mb_peak"] = round(rss_peak / 1e6) if server else None
    return row


def fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)


def print_row(r: dict[str, Any]) -> None:
    m, s = r["mic"], r["system"]
    print(
        f"{r['sessions']:>3} | mic fp {fmt(m['first_partial_p50'])}/{fmt(m['first_partial_p95'])}"
        f" final {fmt(m['final_p50'])}/{fmt(m['final_p95'])} n={m['finals']:<3} drop {m['dropped_ms']:>6}ms"
        f" | sys fp {fmt(s['first_partial_p50'])}/{fmt(s['first_partial_p95'])}"
        f" final {fmt(s['final_p50'])}/{fmt(s['final_p95'])} n={s['finals']:<3} drop {s['dropped_ms']:>6}ms"
        f" | lvl {r['max_degrade_level']} rep {r['repaired_items']} close {fmt(r['close_s_max'])}s"
        f" | cpu {fmt(r['cpu_cores'])} rss {fmt(r['rss_mb_peak'])}MB {' '.join(r['errors'])}",
        flush=True,
    )


async def refused_past_limit(url: str, holders: int) -> dict[str, Any]:
    """Hold ``holders`` sessions (the limit), then try one more: it must get HTTP 503 with Retry-After."""
    clients = [LiveClient(url, sources=["mic"]) for _ in range(holders)]
    try:
        for c in clients:
            await c.open()
        try:
            async with connect(url):
                return {"refused": False}
        except InvalidStatus as exc:
            return {
                "refused": exc.response.status_code == 503,
                "status": exc.response.status_code,
                "retry_after": exc.response.headers.get("Retry-After"),
            }
    finally:
        for c in clients:
            await c.disconnect()


async def main_async(args: argparse.Namespace, url: str, server: ServerProcess | None) -> dict[str, Any]:
    pool = clips()
    steps = [int(x) for x in args.steps.split(",")]
    http_base = url.replace("ws://", "http://").rsplit("/v1/", 1)[0]
    rows = []
    print(
        "sess | first-partial p50/p95 (s), final p50/p95 (s), finals, shed | ... | max degrade level, repaired"
        " items, slowest close | server CPU cores, peak RSS",
        flush=True,
    )
    async with httpx.AsyncClient(base_url=http_base, timeout=30) as http:
        for n in steps:
            settle = await wait_for_normal(http, 120)
            row = await step(url, http, server, n, args.step_s, pool)
            row["settled_before_s"] = None if settle is None else round(settle, 1)
            rows.append(row)
            print_row(row)
        # Load falls: one session, and the time until the ladder is back at level 0 (full quality).
        light = asyncio.create_task(run_session(url, pool, 40, seed=7))
        recovered = await wait_for_normal(http, 120)
        recovery = None if recovered is None else round(recovered, 1)
        await light
        refusal = await refused_past_limit(url, args.max_sessions)
    summary = {"steps": rows, "recovery_to_level0_s": recovery, "past_limit": refusal}
    print(f"recovery to full quality after load fell: {recovery} s (target <= 30 s)")
    print(f"session {args.max_sessions + 1} past the limit of {args.max_sessions}: {refusal}")
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", default="1,2,4,8,12,16", help="concurrent sessions per step")
    ap.add_argument("--step-s", type=float, default=40.0, help="seconds of audio each session streams per step")
    ap.add_argument("--max-sessions", type=int, default=16, help="the server's session limit")
    ap.add_argument("--url", help="use a running server (ws://HOST:PORT/v1/live) instead of starting one")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    if args.url:
        summary = asyncio.run(main_async(args, args.url, None))
    else:
        with start_server(env={"ECHOPANEL_MAX_SESSIONS": str(args.max_sessions)}) as server:
            summary = asyncio.run(main_async(args, server.url, server))
    if args.json:
        write_json(args.json, summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
