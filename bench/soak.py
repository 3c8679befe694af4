"""Long-session soak: server memory and per-utterance cost over long live sessions.

What it measures
    One session (or ``--sessions N`` back to back on one server) fed a long stream (default 30 minutes of audio)
    built from real speech in tests/fixtures/audio (the five LibriVox sentences, the five card readings, the 30 s
    phone call), seeded, so every run streams the same audio:

    - ``--sources 1`` (default): one source "mic", the clips in order, looped, with 0.5-1.5 s of silence between.
    - ``--sources 2``: a call, sources "mic" and "system" taking turns: a turn is one or two clips picked at random
      from the same pool (never the clip just heard), the other source silent meanwhile; the other side answers
      0.3-1.5 s after a turn ends, or (one turn in four) cuts in 0.3-1.5 s before it ends, so both talk at once
      for a moment. Each source talks about half the time (the report prints the shares and the overlap); the two
      streams are different audio at every moment, never a copy.

    The audio is sent as fast as the server takes it (``transcribe(realtime=False)``, like ``echopanel transcribe
    --fast``): the session asks for ``overflow="block"`` so the server pushes back through TCP instead of shedding.

    The server process RSS (psutil, children included) is sampled once before the session opens (idle: for the
    first session the fresh server, for later ones what the previous close left), every ~2 s while streaming (and
    read every 0.25 s in between, the lowest kept with the sample), and after close: right away and every 5 s until
    35 s later (the server returns free heap to the OS every 30 s, so the last, "settled", sample comes after at
    least one trim). Each sample keeps how much audio has been sent and how much transcribed (``end_ms`` of the
    latest ``response.done``, any source). RSS figures use the transcribed position: on loopback the kernel socket
    buffers (tcp_rmem up to 32 MB here) take several minutes of 16 kHz audio before TCP pushes back, so the sent
    position runs minutes ahead of the server. For every ``response.done`` the bench keeps its source,
    ``compute_ms``, audio duration (``end_ms - start_ms``) and position (minute of audio, from ``start_ms``).

    The spawned server runs with its degrade ladder pinned at level 0 (``ECHOPANEL_LADDER__MAX_LEVEL=0``; ``--ladder``
    lets it act): sent as fast as it is taken, the audio keeps both workers busy, and the ladder would spend the run
    on its cheaper steps (beam-1 finals, no partials, system audio shed and repaired), so cost and memory would
    measure the ladder rather than the session's length. Full quality throughout is also the heaviest case.

    Retained RSS: the lowest RSS read in each 30 s of wall time while streaming (``RETAINED_WINDOW_S``; the
    server's malloc-trim period), placed at the transcribed minute at the window's end. A sample taken while a
    decode runs also holds that decode's working set (encoder activations and beam caches of tens of MB, gone within
    a second; every-sample RSS swings +-40 MB with no trend on a 2-source call); the lowest reading between decodes
    is what the server keeps, so the issue 16 targets (slope, growth after minute 10) are judged on retained RSS.
    The same figures over every sample are printed beside them, for information.

    Printed per session: a table per audio minute (per 10 minutes from 120 minutes of audio; ``--table-every``):
    max RSS, finals (per source), mean compute_ms per utterance and compute ms per second of audio (over every
    source), WER (over every source, and per source with two); then a summary:
    - RSS idle, after the first audio minute, the maximum afterwards and the growth (target <= 50 MB);
    - the retained RSS slope after minute 10 (least squares against transcribed audio minutes over the points at
      or after minute 10, in MB per hour; issue 16 target <= 5) and growth after minute 10 (the highest point
      after minute 10 minus the first; target <= 30 MB); n/a for runs shorter than 10 minutes
      (``--slope-from-min``); then the same over every sample, for information;
    - the RSS right after close and settled (35 s later), each also as the difference from idle;
    - per-utterance cost and WER in the first vs the last 5 minutes (ratio, should be ~1); from 120 minutes of
      audio also the first vs the last hour (issue 16 target: ratio <= 1.1x, WER unchanged);
    - the delta contract (for every item the concatenated deltas equal the final text;
      ``TranscriptView.violations``), server error events, backpressure notices, repaired items, degrade events.
    With ``--sessions N``: the full report of the first and the last session, then one line per session (RSS at
    its start, max during, right after close, settled after close, finals, cost, WER, violations, errors, close
    code) and "RSS after close N minus after close 1" (settled; issue 16 target <= 30 MB for ten 30-minute
    sessions). Every session streams the same audio on the same server.
    With ``--profile``: the spawned server runs with ``ECHOPANEL_MEMORY_DEBUG=1`` (tracemalloc), and every
    ``--profile-every-min`` minutes of transcribed audio (default 30) and once settled after close the bench fetches
    ``GET /debug/memory?top=15`` and prints its ``top`` list (size, growth since the server's baseline, count, where);
    a 404 (the setting off, or a server without the endpoint) prints "memory debug not available". tracemalloc
    slows the server: cost figures of a profiled run are not comparable with an unprofiled one.

    ``--json`` writes everything (every sample, every final, the per-minute rows, the profiles). One session:
    that session's figures at the top level, as before; ``--sessions N`` > 1: ``{"sessions": [...],
    "across_sessions": {...}}``.

How to run (from the repository root)
    .venv/bin/python -m bench.soak                        # 30 minutes of audio; takes a few minutes of wall time
    .venv/bin/python -m bench.soak --minutes 5 --json /tmp/soak.json
    .venv/bin/python -m bench.soak --minutes 480 --sources 2 --json /tmp/soak-8h.json   # issue 16: a working day
    .venv/bin/python -m bench.soak --minutes 30 --sessions 10 --json /tmp/soak-10x30.json   # issue 16: back to back
    .venv/bin/python -m bench.soak --minutes 120 --sources 2 --profile                 # where the memory goes
    .venv/bin/python -m bench.soak --url ws://127.0.0.1:8765/v1/live --server-pid 1234   # a running server
    (``.venv/bin/python bench/soak.py ...`` works too.) On 2 shared cores 2-3 minute runs went at 11-21x real time,
    two sources as fast as one (together they talk about as much as the one-source stream); every session adds 35 s
    of settling after close. From those, an estimate (not measured): 0.5-1 hour of wall time for the 8-hour run or
    the ten 30-minute sessions.

    A connection closed with 1011 "keepalive ping timeout" means the websocket keepalive ping/pong waited behind
    the audio held in the socket buffers for longer than the ping timeout (the server then drops the session).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from websockets.exceptions import ConnectionClosed

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # also runnable as bench/soak.py

from bench.common import (
    PHONE,
    SAMPLE_RATE,
    ContentionMonitor,
    cards_files,
    describe_close,
    git_state,
    librivox_files,
    phone_reference,
    write_json,
)
from bench.soak_report import (
    LONG_RUN_MIN,
    Final,
    Placed,
    Sample,
    SoakResult,
    across_sessions,
    analyse,
    print_report,
    print_sessions,
    table_rows,
)
from echopanel.audio.wav import read_pcm16
from echopanel.client import LiveClient, ServerError, TranscriptView
from echopanel.client.stream import BYTES_PER_SAMPLE, transcribe
from echopanel.testing.server import process_tree_cpu, process_tree_rss, start_server

SOURCES = {1: ["mic"], 2: ["mic", "system"]}
SAMPLE_EVERY_S = 2.0
FLOOR_EVERY_S = 0.25  # between samples, RSS is read this often and the lowest kept (Sample.rss_min_mb)
SETTLE_S = 35.0  # after close: past the server's 30 s malloc-trim tick (memory_trim_s)
SETTLE_EVERY_S = 5.0
PROFILE_TOP = 15
PROFILE_TIMEOUT_S = 120.0  # a tracemalloc snapshot of a big heap takes a while
MB = 1024 * 1024
MAX_LOG_LINES = 20  # server warning lines printed at the end


@dataclass(frozen=True)
class Clip:
    name: str
    pcm: bytes
    reference: str

    @property
    def samples(self) -> int:
        return len(self.pcm) // BYTES_PER_SAMPLE


# -- the stream ------------------------------------------------------------------------------------------------------


def load_clips() -> list[Clip]:
    clips = [Clip(p.stem, read_pcm16(p), ref) for p, ref in librivox_files()]
    clips += [Clip(f"cards-{p.stem}", read_pcm16(p), ref) for p, ref in cards_files()]
    clips.append(Clip("phone", read_pcm16(PHONE / "sample.wav"), phone_reference()))
    return clips


def build_stream(minutes: float, seed: int = 1) -> tuple[bytes, list[Placed]]:
    """Clips in order, looped, each followed by 0.5-1.5 s of silence, until ``minutes`` of audio (PCM16 blob)."""
    clips = load_clips()
    rng = random.Random(seed)
    total = round(minutes * 60 * SAMPLE_RATE)
    out = bytearray()
    placed: list[Placed] = []
    position = 0
    i = 0
    while position < total:
        clip = clips[i % len(clips)]
        i += 1
        gap = round(rng.uniform(0.5, 1.5) * SAMPLE_RATE)
        out += clip.pcm
        out += bytes(gap * BYTES_PER_SAMPLE)
        placed.append(Placed(clip.name, position, position + clip.samples, clip.reference))
        position += clip.samples + gap
    return bytes(out[: total * BYTES_PER_SAMPLE]), [p for p in placed if p.end <= total]


def build_meeting(
    minutes: float, seed: int = 1, sources: tuple[str, str] = ("mic", "system")
) -> tuple[dict[str, bytes], list[Placed]]:
    """Two sources taking turns like a call (the module docstring): one PCM16 blob per source, and every clip."""
    clips = load_clips()
    rng = random.Random(seed)
    total = round(minutes * 60 * SAMPLE_RATE)
    tracks = {s: bytearray(total * BYTES_PER_SAMPLE) for s in sources}
    placed: list[Placed] = []
    free_at = dict.fromkeys(sources, 0)  # where each source's own channel is silent again
    position = round(rng.uniform(0.2, 1.0) * SAMPLE_RATE)
    speaker = 0
    previous = ""
    full = False
    while not full:
        source = sources[speaker]
        start = max(position, free_at[source])
        turn_start = start
        for _ in range(rng.choice((1, 1, 2))):  # a turn: one clip, sometimes two
            clip = rng.choice([c for c in clips if c.name != previous])
            end = start + clip.samples
            if end > total:
                full = True
                break
            previous = clip.name
            tracks[source][start * BYTES_PER_SAMPLE : end * BYTES_PER_SAMPLE] = clip.pcm
            placed.append(Placed(clip.name, start, end, clip.reference, source))
            free_at[source] = end
            start = end + round(rng.uniform(0.3, 0.8) * SAMPLE_RATE)
        turn_end = free_at[source]
        if rng.random() < 0.25 and turn_end > turn_start:  # the other side cuts in before this turn ends
            overlap = min(rng.uniform(0.3, 1.5) * SAMPLE_RATE, (turn_end - turn_start) / 2)
            position = turn_end - round(overlap)
        else:
            position = turn_end + round(rng.uniform(0.3, 1.5) * SAMPLE_RATE)
        speaker = 1 - speaker
    audio = {s: bytes(tracks.pop(s)) for s in sources}  # one copy at a time: 8 hours are 0.9 GB a source
    return audio, sorted(placed, key=lambda p: (p.start, p.source))


def speech_shares(placed: list[Placed], sources: list[str], total_samples: int) -> tuple[dict[str, float], float]:
    """Share of the stream each source talks, and the share where two talk at once."""
    shares = {s: sum(p.end - p.start for p in placed if p.source == s) / total_samples for s in sources}
    edges = sorted([(p.start, 1) for p in placed] + [(p.end, -1) for p in placed])
    both = 0
    talking = 0
    last = 0
    for at, step in edges:
        if talking >= 2:
            both += at - last
        talking += step
        last = at
    return shares, both / total_samples


# -- streaming -------------------------------------------------------------------------------------------------------


@dataclass
class Streamed:
    view: TranscriptView
    samples: list[Sample]
    finals: list[Final]
    degraded: list[dict[str, Any]]
    wall_s: float
    close: dict[str, Any]
    profiles: list[dict[str, Any]] = field(default_factory=list)


class Profiler:
    """``GET /debug/memory?top=N`` of the server (``--profile``); a 404 means memory debug is off or missing."""

    def __init__(self, http: str, every_min: float) -> None:
        self.client = httpx.AsyncClient(base_url=http, timeout=PROFILE_TIMEOUT_S)
        self.every_min = every_min
        self.said_unavailable = False

    async def fetch(self, label: str, transcribed_min: float, wall_s: float) -> dict[str, Any]:
        out: dict[str, Any] = {"label": label, "transcribed_min": transcribed_min, "wall_s": wall_s}
        try:
            resp = await self.client.get("/debug/memory", params={"top": PROFILE_TOP})
        except httpx.HTTPError as exc:
            out |= {"available": False, "status": None, "error": f"{type(exc).__name__}: {exc}"}
        else:
            out["status"] = resp.status_code
            if resp.status_code == 200:
                try:
                    out |= {"available": True, "data": resp.json()}
                except ValueError:
                    out |= {"available": False, "error": f"not JSON: {resp.text[:200]!r}"}
            else:
                out |= {"available": False, "error": f"HTTP {resp.status_code}"}
        if out["available"]:
            d = out["data"]
            top = (d.get("top") or [{}])[0]
            print(
                f"memory profile {label} at audio minute {transcribed_min:.1f}: rss {d.get('rss_mb')} MB, traced "
                f"{d.get('traced_mb')} MB, top {top.get('where')} {top.get('size_kb')} kB",
                file=sys.stderr,
            )
        elif not self.said_unavailable:
            print(f"memory debug not available ({out['error']})", file=sys.stderr)
            self.said_unavailable = True
        return out

    async def aclose(self) -> None:
        await self.client.aclose()


async def stream(
    url: str,
    audio: dict[str, bytes],
    pid: int | None,
    *,
    overflow: str | None,
    chunk_ms: int,
    profiler: Profiler | None = None,
) -> Streamed:
    sources = list(audio)
    sent = dict.fromkeys(sources, 0)
    last_done_ms = [0]
    finals: list[Final] = []
    samples: list[Sample] = []
    degraded: list[dict[str, Any]] = []
    views: list[TranscriptView] = []
    profiles: list[dict[str, Any]] = []

    def on_chunk(source: str, offset: int, now: float) -> None:
        sent[source] = offset

    def on_event(ev: dict[str, Any], view: TranscriptView) -> None:
        if not views:
            views.append(view)  # kept so the report survives a connection that dies mid-stream
        if ev.get("type") == "session.degraded":
            degraded.append(
                {
                    "wall_s": round(time.monotonic() - started, 1),
                    "transcribed_min": round(last_done_ms[0] / 60_000, 2),
                    "level": ev.get("level"),
                    "name": ev.get("name"),
                    "reason": ev.get("reason"),
                }
            )
        elif ev.get("type") == "response.done":
            finals.append(
                Final(
                    ev["item_id"],
                    str(ev.get("source") or sources[0]),
                    int(ev["start_ms"]),
                    int(ev["end_ms"]),
                    float(ev.get("compute_ms") or 0.0),
                    ev.get("text") or "",
                    bool(ev.get("repaired")),
                )
            )
            last_done_ms[0] = max(last_done_ms[0], int(ev["end_ms"]))

    started = time.monotonic()
    closed_at = [0.0]
    neighbours = ContentionMonitor(pid)
    overall = ContentionMonitor(pid)

    lowest = [math.inf]  # the lowest RSS read since the previous sample

    def take_sample(phase: str) -> None:
        if pid is None:
            return
        now = time.monotonic()
        rss = process_tree_rss(pid) / MB
        samples.append(
            Sample(
                wall_s=now - started,
                sent_min=min(sent.values()) / SAMPLE_RATE / 60,
                transcribed_min=last_done_ms[0] / 60_000,
                rss_mb=rss,
                rss_min_mb=min(rss, lowest[0]),
                cpu_s=process_tree_cpu(pid),
                other_cpus=neighbours.other_cpus(),
                phase=phase,
                after_close_s=now - closed_at[0] if phase == "closed" else None,
            )
        )
        neighbours.reset()
        lowest[0] = math.inf

    async def sampler() -> None:
        next_profile = profiler.every_min if profiler else math.inf
        while True:
            take_sample("streaming")
            done_min = last_done_ms[0] / 60_000
            if profiler is not None and done_min >= next_profile:
                next_profile = (math.floor(done_min / profiler.every_min) + 1) * profiler.every_min
                profiles.append(await profiler.fetch("while streaming", done_min, time.monotonic() - started))
            until = time.monotonic() + SAMPLE_EVERY_S
            while (left := until - time.monotonic()) > 0:
                await asyncio.sleep(min(FLOOR_EVERY_S, left))
                if pid is not None:
                    lowest[0] = min(lowest[0], process_tree_rss(pid) / MB)

    take_sample("idle")
    session = {"overflow": overflow} if overflow else None
    task = asyncio.create_task(sampler())
    client: LiveClient | None = None
    try:
        try:
            client = LiveClient(url, sources=sources, sample_rate=SAMPLE_RATE, session=session)
            await client.open()
        except ServerError as exc:
            if session is None:
                raise
            print(f"server refused overflow={overflow!r} ({exc}); retrying with the server default", file=sys.stderr)
            client = LiveClient(url, sources=sources, sample_rate=SAMPLE_RATE)
            await client.open()
        try:
            print(f"session {client.session.get('id')} limits {client.session.get('limits')}", file=sys.stderr)
            try:
                view = await transcribe(
                    client, audio, realtime=False, chunk_ms=chunk_ms, on_event=on_event, on_chunk=on_chunk
                )
            except ConnectionClosed as exc:
                print(f"connection lost while streaming: {exc}", file=sys.stderr)
                view = views[0] if views else TranscriptView()
        finally:
            await client.disconnect()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    wall = time.monotonic() - started
    other = overall.other_cpus()
    closed_at[0] = time.monotonic()
    take_sample("closed")  # right after the session closed
    while pid is not None and time.monotonic() - closed_at[0] < SETTLE_S:
        await asyncio.sleep(min(SETTLE_EVERY_S, max(0.1, SETTLE_S - (time.monotonic() - closed_at[0]))))
        take_sample("closed")
    if profiler is not None:
        profiles.append(
            await profiler.fetch("settled after close", last_done_ms[0] / 60_000, time.monotonic() - started)
        )
    return Streamed(view, samples, finals, degraded, wall, {**describe_close(client.ws), "other_cpus": other}, profiles)


# -- main ------------------------------------------------------------------------------------------------------------


def make_result(
    streamed: Streamed,
    minutes: float,
    placed: list[Placed],
    sources: list[str],
    *,
    session: int,
    of_sessions: int,
    slope_from_min: float,
    extra: dict[str, Any],
) -> SoakResult:
    rows, summary = analyse(minutes, streamed.samples, streamed.finals, placed, sources, slope_from_min=slope_from_min)
    summary |= {**extra, "of_sessions": of_sessions}
    view = streamed.view
    backpressure: dict[str, int] = {}
    for ev in getattr(view, "backpressure", []):
        key = f"{ev.get('source')} {ev.get('level')}" if len(sources) > 1 else str(ev.get("level"))
        backpressure[key] = backpressure.get(key, 0) + 1
    stats = (view.summary or {}).get("stats", {}).get("sources", {})
    return SoakResult(
        minutes=minutes,
        wall_s=streamed.wall_s,
        samples=streamed.samples,
        finals=streamed.finals,
        rows=rows,
        summary=summary,
        errors=list(view.errors),
        violations=list(view.violations),
        backpressure=backpressure,
        session_stats={k: {n: v for n, v in s.items() if n != "shed_spans"} for k, s in stats.items()},
        close=streamed.close,
        degraded=streamed.degraded,
        sources=sources,
        session=session,
        profiles=streamed.profiles,
    )


async def run_sessions(
    args: argparse.Namespace, url: str, pid: int | None, http: str
) -> tuple[list[SoakResult], list[Placed]]:
    """``--sessions`` sessions one after the other on one server, each streaming the same audio."""
    sources = SOURCES[args.sources]
    if args.sources == 1:
        pcm, placed = build_stream(args.minutes, args.seed)
        audio = {sources[0]: pcm}
    else:
        audio, placed = build_meeting(args.minutes, args.seed)
    total = len(next(iter(audio.values()))) // BYTES_PER_SAMPLE
    minutes = total / SAMPLE_RATE / 60
    extra: dict[str, Any] = {}
    if args.sources > 1:
        shares, overlap = speech_shares(placed, sources, total)
        extra = {"speech_share": shares, "overlap_share": overlap}
    size = sum(len(b) for b in audio.values()) / MB
    print(
        f"streaming {minutes:.1f} min of audio x {len(sources)} source(s) ({len(placed)} clips, {size:.1f} MB PCM16)"
        f"{f' x {args.sessions} sessions' if args.sessions > 1 else ''}",
        file=sys.stderr,
    )
    overflow = None if args.overflow == "default" else args.overflow
    profiler = Profiler(http, args.profile_every_min) if args.profile else None
    results: list[SoakResult] = []
    try:
        for n in range(1, args.sessions + 1):
            try:
                streamed = await stream(url, audio, pid, overflow=overflow, chunk_ms=args.chunk_ms, profiler=profiler)
            except (OSError, ServerError, ConnectionClosed) as exc:  # the server is gone or refuses: report so far
                print(f"session {n} could not run: {type(exc).__name__}: {exc}", file=sys.stderr)
                break
            r = make_result(
                streamed,
                minutes,
                placed,
                sources,
                session=n,
                of_sessions=args.sessions,
                slope_from_min=args.slope_from_min,
                extra=extra,
            )
            results.append(r)
            s = r.summary
            print(
                f"session {n}/{args.sessions} done in {r.wall_s:.0f} s: RSS start {s['rss_idle_mb']}, max "
                f"{s['rss_max_during_mb']}, after close {s['rss_after_close_mb']}, settled {s['rss_settled_mb']} MB; "
                f"{s['finals']} finals, close {r.close.get('code')}",
                file=sys.stderr,
            )
    finally:
        if profiler is not None:
            await profiler.aclose()
    return results, placed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Server memory and per-utterance cost over long live sessions.")
    parser.add_argument("--minutes", type=float, default=30.0, help="minutes of audio per session (default 30)")
    parser.add_argument(
        "--sources", type=int, choices=[1, 2], default=1, help="1: mic (default); 2: mic + system, a call"
    )
    parser.add_argument("--sessions", type=int, default=1, help="sessions back to back on one server (default 1)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the stream (gaps, turns; default 1)")
    parser.add_argument("--chunk-ms", type=int, default=40, help="audio per binary frame (default 40)")
    parser.add_argument(
        "--overflow",
        choices=["block", "shed", "default"],
        default="block",
        help="session overflow policy to ask for (default block: TCP pushes back; 'default': the server's)",
    )
    parser.add_argument(
        "--slope-from-min",
        type=float,
        default=10.0,
        help="RSS slope and growth over the samples from this audio minute on (default 10)",
    )
    parser.add_argument(
        "--table-every",
        type=int,
        metavar="MIN",
        help=f"one printed table row per MIN audio minutes (default 1; 10 from {LONG_RUN_MIN:g} min; JSON: per minute)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run the server with ECHOPANEL_MEMORY_DEBUG=1 and print GET /debug/memory?top=15 during and after",
    )
    parser.add_argument(
        "--profile-every-min", type=float, default=30.0, help="with --profile: every this many audio minutes (30)"
    )
    parser.add_argument("--url", help="use this running server (ws://HOST:PORT/v1/live) instead of starting one")
    parser.add_argument(
        "--ladder",
        action="store_true",
        help="let the spawned server's degrade ladder act (default: pinned at level 0, full quality throughout; audio "
        "sent as fast as taken saturates the server, and the ladder's cheaper steps would then set the per-utterance "
        "cost and the memory instead of the session's length)",
    )
    parser.add_argument("--server-pid", type=int, help="with --url: the server's pid, to sample its RSS")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.minutes <= 0:
        parser.error("--minutes must be positive")
    if args.sessions < 1:
        parser.error("--sessions must be at least 1")
    if args.profile_every_min <= 0:
        parser.error("--profile-every-min must be positive")
    if args.table_every is not None and args.table_every < 1:
        parser.error("--table-every must be at least 1")
    table_every = args.table_every or (10 if args.minutes >= LONG_RUN_MIN else 1)

    version = git_state()
    print(f"checkout {version}", file=sys.stderr)
    server_log: list[str] = []
    server_tail: list[str] = []
    if args.url:
        http = args.url.replace("wss://", "https://").replace("ws://", "http://").rsplit("/v1/", 1)[0]
        if args.profile:
            print("--url: the server must already run with ECHOPANEL_MEMORY_DEBUG=1 for --profile", file=sys.stderr)
        results, placed = asyncio.run(run_sessions(args, args.url, args.server_pid, http))
    else:
        env = {"ECHOPANEL_MEMORY_DEBUG": "1"} if args.profile else {}
        if not args.ladder:
            env["ECHOPANEL_LADDER__MAX_LEVEL"] = "0"
        with start_server(env=env) as server:
            results, placed = asyncio.run(run_sessions(args, server.url, server.pid, server.http))
            server_log = server.warnings
            server_tail = list(server.log)[-15:]
    if not results:
        print("no session ran")
        return 1
    shown = [results[0]] if len(results) == 1 else [results[0], results[-1]]
    for r in shown:
        print_report(r, r.rows if table_every == 1 else table_rows(r, placed, table_every))
    across = across_sessions(results) if args.sessions > 1 else None
    if across is not None:
        print_sessions(across)
    for line in server_log[:MAX_LOG_LINES]:
        print(f"server: {line}")
    if len(server_log) > MAX_LOG_LINES:
        print(f"server: ... {len(server_log) - MAX_LOG_LINES} more warning lines (all in --json)")
    if any(r.close.get("code") != 1000 for r in results) and server_tail:
        print("server log, last lines:")
        for line in server_tail:
            print(f"  {line}")
    if args.json:
        data: dict[str, Any] = (
            asdict(results[0])
            if args.sessions == 1
            else {"sessions": [asdict(r) for r in results], "across_sessions": across}
        )
        data["config"] = {
            "minutes": args.minutes,
            "sources": args.sources,
            "sessions": args.sessions,
            "seed": args.seed,
            "chunk_ms": args.chunk_ms,
            "overflow": args.overflow,
            "slope_from_min": args.slope_from_min,
            "profile": args.profile,
            "profile_every_min": args.profile_every_min,
            "url": args.url or "spawned",
            "checkout": version,
        }
        data["server_warnings"] = server_log
        write_json(args.json, data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
