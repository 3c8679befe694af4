"""Long-session soak: server memory and per-utterance cost over one long live session.

What it measures
    One session, one source "mic", fed a long stream (default 30 minutes of audio) built by looping real speech from
    tests/fixtures/audio (the five LibriVox sentences, the five card readings, the 30 s phone call) with 0.5-1.5 s
    of silence between clips (seeded, so every run streams the same audio). The audio is sent as fast as the server
    takes it (``transcribe(realtime=False)``, like ``echopanel transcribe --fast``): the session asks for
    ``overflow="block"`` so the server pushes back through TCP instead of shedding audio.

    While streaming, the server process RSS (psutil, children included) is sampled every ~2 s together with how much
    audio has been sent and how much has been transcribed (``end_ms`` of the latest ``response.done``). The
    per-minute RSS and "after the first audio minute" use the transcribed position: on loopback the kernel socket
    buffers (tcp_rmem up to 32 MB here) take several minutes of 16 kHz audio before TCP pushes back, so the sent
    position runs minutes ahead of the server. For every ``response.done`` the bench keeps its ``compute_ms``, its
    audio duration (``end_ms - start_ms``) and its position (minute of audio, from ``start_ms``).

    Printed: a table per audio minute (RSS, finals, mean compute_ms per utterance, compute ms per second of audio,
    WER of that minute's finals), then a summary: RSS after the first audio minute, the maximum afterwards and the
    growth (target <= 50 MB), per-utterance cost in the first vs the last 5 minutes (ratio, should be ~1), the WER
    of the first vs the last 5 minutes, the delta contract (for every item the concatenated deltas equal the final
    text; ``TranscriptView.violations``), server error events, backpressure notices and repaired items.

How to run (from the repository root)
    .venv/bin/python -m bench.soak                        # 30 minutes of audio; takes a few minutes of wall time
    .venv/bin/python -m bench.soak --minutes 5 --json /tmp/soak.json
    .venv/bin/python -m bench.soak --url ws://127.0.0.1:8765/v1/live --server-pid 1234   # a running server
    (``.venv/bin/python bench/soak.py ...`` works too.)

    A connection closed with 1011 "keepalive ping timeout" means the websocket keepalive ping/pong waited behind
    the audio held in the socket buffers for longer than the ping timeout (the server then drops the session).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jiwer
from websockets.exceptions import ConnectionClosed

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # also runnable as bench/soak.py

from bench.common import (
    PHONE,
    SAMPLE_RATE,
    ContentionMonitor,
    cards_files,
    describe_close,
    fmt,
    git_state,
    librivox_files,
    normalize,
    pct,
    phone_reference,
    write_json,
)
from echopanel.audio.wav import read_pcm16
from echopanel.client import LiveClient, ServerError, TranscriptView
from echopanel.client.stream import BYTES_PER_SAMPLE, transcribe
from echopanel.testing.server import ServerProcess, process_tree_cpu, process_tree_rss, start_server

SOURCE = "mic"
SAMPLE_EVERY_S = 2.0
WINDOW_MIN = 5.0  # first / last minutes compared
TARGET_GROWTH_MB = 50.0
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


@dataclass(frozen=True)
class Placed:
    """One clip in the stream, in samples of the stream clock."""

    name: str
    start: int
    end: int
    reference: str


@dataclass
class Sample:
    wall_s: float
    sent_min: float
    transcribed_min: float
    rss_mb: float
    cpu_s: float
    other_cpus: float  # CPUs busy in other processes since the previous sample
    phase: str  # "streaming" or "closed" (after the session ended)


@dataclass
class Final:
    item_id: str
    start_ms: int
    end_ms: int
    compute_ms: float
    text: str
    repaired: bool

    @property
    def minute(self) -> int:
        return self.start_ms // 60_000

    @property
    def duration_s(self) -> float:
        return max(0, self.end_ms - self.start_ms) / 1000


@dataclass
class MinuteRow:
    minute: int
    rss_mb: float | None
    finals: int
    mean_compute_ms: float | None
    compute_ms_per_audio_s: float | None
    wer: float | None
    other_cpus: float | None  # mean CPUs busy in other processes while the server was on this minute


@dataclass
class SoakResult:
    minutes: float
    wall_s: float
    samples: list[Sample]
    finals: list[Final]
    rows: list[MinuteRow]
    summary: dict[str, Any]
    errors: list[dict[str, Any]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    backpressure: dict[str, int] = field(default_factory=dict)
    session_stats: dict[str, Any] = field(default_factory=dict)
    close: dict[str, Any] = field(default_factory=dict)  # code, reason, closed_by
    degraded: list[dict[str, Any]] = field(default_factory=list)  # session.degraded events, if the server sends any


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


# -- streaming -------------------------------------------------------------------------------------------------------


async def stream(
    url: str, pcm: bytes, pid: int | None, *, overflow: str | None, chunk_ms: int
) -> tuple[TranscriptView, list[Sample], list[Final], list[dict[str, Any]], float, dict[str, Any]]:
    sent = [0]
    last_done_ms = [0]
    finals: list[Final] = []
    samples: list[Sample] = []
    degraded: list[dict[str, Any]] = []
    views: list[TranscriptView] = []

    def on_chunk(source: str, offset: int, now: float) -> None:
        sent[0] = offset

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
                    int(ev["start_ms"]),
                    int(ev["end_ms"]),
                    float(ev.get("compute_ms") or 0.0),
                    ev.get("text") or "",
                    bool(ev.get("repaired")),
                )
            )
            last_done_ms[0] = max(last_done_ms[0], int(ev["end_ms"]))

    started = time.monotonic()
    neighbours = ContentionMonitor(pid)
    overall = ContentionMonitor(pid)

    def take_sample(phase: str = "streaming") -> None:
        if pid is None:
            return
        samples.append(
            Sample(
                wall_s=time.monotonic() - started,
                sent_min=sent[0] / SAMPLE_RATE / 60,
                transcribed_min=last_done_ms[0] / 60_000,
                rss_mb=process_tree_rss(pid) / MB,
                cpu_s=process_tree_cpu(pid),
                other_cpus=neighbours.other_cpus(),
                phase=phase,
            )
        )
        neighbours.reset()

    async def sampler() -> None:
        while True:
            take_sample()
            await asyncio.sleep(SAMPLE_EVERY_S)

    session = {"overflow": overflow} if overflow else None
    task = asyncio.create_task(sampler())
    try:
        try:
            client = LiveClient(url, sources=[SOURCE], sample_rate=SAMPLE_RATE, session=session)
            await client.open()
        except ServerError as exc:
            if session is None:
                raise
            print(f"server refused overflow={overflow!r} ({exc}); retrying with the server default", file=sys.stderr)
            client = LiveClient(url, sources=[SOURCE], sample_rate=SAMPLE_RATE)
            await client.open()
        try:
            print(f"session {client.session.get('id')} limits {client.session.get('limits')}", file=sys.stderr)
            try:
                view = await transcribe(
                    client, {SOURCE: pcm}, realtime=False, chunk_ms=chunk_ms, on_event=on_event, on_chunk=on_chunk
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
    take_sample("closed")  # right after the session closed
    await asyncio.sleep(SAMPLE_EVERY_S)
    take_sample("closed")
    return view, samples, finals, degraded, wall, {**describe_close(client.ws), "other_cpus": other}


# -- analysis --------------------------------------------------------------------------------------------------------


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _cost(finals: list[Final]) -> tuple[float | None, float | None]:
    """Mean compute_ms per utterance and compute ms per second of audio."""
    spoken = [f for f in finals if f.text and not f.repaired]
    per_utt = _mean([f.compute_ms for f in spoken])
    audio_s = sum(f.duration_s for f in spoken)
    per_s = sum(f.compute_ms for f in spoken) / audio_s if audio_s > 0 else None
    return per_utt, per_s


def _window_wer(finals: list[Final], placed: list[Placed], lo_ms: float, hi_ms: float) -> float | None:
    """WER of the finals starting in [lo, hi) against the clips that start in that window (whole clips only)."""
    clips = [p for p in placed if lo_ms <= p.start * 1000 / SAMPLE_RATE < hi_ms]
    if not clips:
        return None
    first_ms = clips[0].start * 1000 / SAMPLE_RATE
    last_ms = clips[-1].end * 1000 / SAMPLE_RATE
    # An item belongs to the window when its midpoint falls inside the span of the window's clips.
    hyp = " ".join(f.text for f in finals if first_ms <= (f.start_ms + f.end_ms) / 2 < last_ms + 500)
    ref = normalize(" ".join(p.reference for p in clips))
    return float(jiwer.wer(ref, normalize(hyp) or "<empty>"))


def analyse(
    minutes: float, samples: list[Sample], finals: list[Final], placed: list[Placed]
) -> tuple[list[MinuteRow], dict[str, Any]]:
    finals = sorted(finals, key=lambda f: f.start_ms)
    n_minutes = int(minutes) + (1 if minutes % 1 else 0)
    rows: list[MinuteRow] = []
    for m in range(n_minutes):
        in_minute = [f for f in finals if f.minute == m]
        here = [s for s in samples if s.phase == "streaming" and m <= s.transcribed_min < m + 1]
        rss = [s.rss_mb for s in here]
        per_utt, per_s = _cost(in_minute)
        rows.append(
            MinuteRow(
                minute=m,
                rss_mb=max(rss) if rss else None,
                finals=sum(1 for f in in_minute if f.text),
                mean_compute_ms=per_utt,
                compute_ms_per_audio_s=per_s,
                wer=_window_wer(finals, placed, m * 60_000, (m + 1) * 60_000),
                other_cpus=_mean([s.other_cpus for s in here]),
            )
        )
    during = [s for s in samples if s.phase == "streaming"]
    baseline = next((s for s in during if s.transcribed_min >= 1.0), during[0] if during else None)
    after = [s for s in during if baseline is not None and s.wall_s >= baseline.wall_s]
    max_after = max(after, key=lambda s: s.rss_mb) if after else None
    growth = max_after.rss_mb - baseline.rss_mb if baseline and max_after else None
    window = min(WINDOW_MIN, minutes / 2)
    total_ms = minutes * 60_000
    head = [f for f in finals if f.start_ms < window * 60_000]
    tail = [f for f in finals if f.start_ms >= total_ms - window * 60_000]
    head_utt, head_s = _cost(head)
    tail_utt, tail_s = _cost(tail)
    summary: dict[str, Any] = {
        "audio_minutes": minutes,
        "rss_idle_mb": samples[0].rss_mb if samples else None,
        "rss_after_first_minute_mb": baseline.rss_mb if baseline else None,
        "rss_max_after_mb": max_after.rss_mb if max_after else None,
        "rss_max_at_audio_min": max_after.transcribed_min if max_after else None,
        "rss_growth_mb": growth,
        "rss_after_close_mb": samples[-1].rss_mb if samples else None,
        "growth_target_mb": TARGET_GROWTH_MB,
        "growth_pass": growth is not None and growth <= TARGET_GROWTH_MB,
        "window_minutes": window,
        "first_window": {"utterances": len(head), "mean_compute_ms": head_utt, "compute_ms_per_audio_s": head_s},
        "last_window": {"utterances": len(tail), "mean_compute_ms": tail_utt, "compute_ms_per_audio_s": tail_s},
        "cost_ratio_per_utterance": tail_utt / head_utt if head_utt and tail_utt else None,
        "cost_ratio_per_audio_s": tail_s / head_s if head_s and tail_s else None,
        "wer_first_window": _window_wer(finals, placed, 0, window * 60_000),
        "wer_last_window": _window_wer(finals, placed, total_ms - window * 60_000, total_ms),
        "finals": sum(1 for f in finals if f.text),
        "empty_finals": sum(1 for f in finals if not f.text),
        "repaired_finals": sum(1 for f in finals if f.repaired),
        "compute_s_total": sum(f.compute_ms for f in finals) / 1000,
        "server_cpu_s": samples[-1].cpu_s - samples[0].cpu_s if len(samples) > 1 else None,
    }
    return rows, summary


# -- report ----------------------------------------------------------------------------------------------------------


def print_report(r: SoakResult) -> None:
    print(
        f"\n{'minute':>6} {'RSS MB':>8} {'finals':>7} {'mean compute_ms':>16} {'compute ms/audio s':>19} {'WER':>7} "
        f"{'other CPUs':>10}"
    )
    for row in r.rows:
        print(
            f"{row.minute:>6} {fmt(row.rss_mb, '.1f'):>8} {row.finals:>7} {fmt(row.mean_compute_ms, '.1f'):>16} "
            f"{fmt(row.compute_ms_per_audio_s, '.1f'):>19} {pct(row.wer):>7} {fmt(row.other_cpus, '.2f'):>10}"
        )
    s = r.summary
    first, last = s["first_window"], s["last_window"]
    w = s["window_minutes"]
    audio_s = s["audio_minutes"] * 60
    print(
        f"\n== soak: {s['audio_minutes']:g} min of audio in {r.wall_s:.0f} s wall ({audio_s / r.wall_s:.1f}x real "
        f"time); connection closed by {r.close.get('closed_by')}: {r.close.get('code')} {r.close.get('reason')!r}"
    )
    busy = r.close.get("other_cpus", 0.0)
    warn = "  !! a loaded machine: cost figures are pessimistic" if busy > 0.2 else ""
    print(f"other processes used {busy:.2f} CPUs on average while streaming{warn}")
    if r.session_stats == {}:
        print("!! no session.summary arrived: the session did not end normally")
    print(f"{'RSS idle (before the session)':<44} {fmt(s['rss_idle_mb'], '.1f', ' MB')}")
    print(f"{'RSS after the first audio minute':<44} {fmt(s['rss_after_first_minute_mb'], '.1f', ' MB')}")
    print(
        f"{'max RSS afterwards':<44} {fmt(s['rss_max_after_mb'], '.1f', ' MB')}"
        f" (at audio minute {fmt(s['rss_max_at_audio_min'], '.1f')})"
    )
    mark = "PASS" if s["growth_pass"] else "FAIL"
    print(f"{'growth':<44} {fmt(s['rss_growth_mb'], '+.1f', ' MB')}   target <= {TARGET_GROWTH_MB:g} MB  {mark}")
    print(f"{'RSS after the session closed':<44} {fmt(s['rss_after_close_mb'], '.1f', ' MB')}")
    print(
        f"{f'mean compute_ms / utterance, first {w:g} min':<44} {fmt(first['mean_compute_ms'], '.1f')}"
        f"  ({first['utterances']} utterances, {fmt(first['compute_ms_per_audio_s'], '.1f')} ms per audio s)"
    )
    print(
        f"{f'mean compute_ms / utterance, last {w:g} min':<44} {fmt(last['mean_compute_ms'], '.1f')}"
        f"  ({last['utterances']} utterances, {fmt(last['compute_ms_per_audio_s'], '.1f')} ms per audio s)"
    )
    print(
        f"{'cost ratio last/first (per utterance)':<44} {fmt(s['cost_ratio_per_utterance'], '.2f', 'x')}   "
        f"(per audio second {fmt(s['cost_ratio_per_audio_s'], '.2f', 'x')}; should be ~1)"
    )
    print(f"{f'WER first / last {w:g} min':<44} {pct(s['wer_first_window'])} / {pct(s['wer_last_window'])}")
    print(
        f"{'finals (empty, repaired)':<44} {s['finals']} ({s['empty_finals']}, {s['repaired_finals']});"
        f" compute {s['compute_s_total']:.0f} s; server CPU {fmt(s['server_cpu_s'], '.0f', ' s')}"
    )
    print(f"{'delta/final violations':<44} {len(r.violations)}")
    for v in r.violations[:10]:
        print(f"  violation: {v}")
    print(f"{'server error events':<44} {len(r.errors)}")
    for e in r.errors[:10]:
        print(f"  error: {e}")
    levels = ", ".join(f"{k} {v}" for k, v in sorted(r.backpressure.items())) or "none"
    print(f"{'backpressure notices':<44} {levels}")
    print(f"{'session.degraded events':<44} {len(r.degraded)}")
    for d in r.degraded:
        print(
            f"  at {d['wall_s']:.1f} s wall, audio minute {d['transcribed_min']:.2f}: level {d['level']} "
            f"{d['name']} ({d['reason']})"
        )
    print(f"{'session stats':<44} {r.session_stats}")


# -- main ------------------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, url: str, server: ServerProcess | None) -> SoakResult:
    pcm, placed = build_stream(args.minutes, args.seed)
    minutes = len(pcm) / BYTES_PER_SAMPLE / SAMPLE_RATE / 60
    print(f"streaming {minutes:.1f} min of audio ({len(placed)} clips, {len(pcm) / MB:.1f} MB PCM16)", file=sys.stderr)
    pid = server.pid if server is not None else args.server_pid
    overflow = None if args.overflow == "default" else args.overflow
    view, samples, finals, degraded, wall, close = asyncio.run(
        stream(url, pcm, pid, overflow=overflow, chunk_ms=args.chunk_ms)
    )
    rows, summary = analyse(minutes, samples, finals, placed)
    backpressure: dict[str, int] = {}
    for ev in getattr(view, "backpressure", []):
        backpressure[str(ev.get("level"))] = backpressure.get(str(ev.get("level")), 0) + 1
    stats = (view.summary or {}).get("stats", {}).get("sources", {})
    return SoakResult(
        minutes=minutes,
        wall_s=wall,
        samples=samples,
        finals=finals,
        rows=rows,
        summary=summary,
        errors=list(view.errors),
        violations=list(view.violations),
        backpressure=backpressure,
        session_stats={k: {n: v for n, v in s.items() if n != "shed_spans"} for k, s in stats.items()},
        close=close,
        degraded=degraded,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Server memory and per-utterance cost over one long live session.")
    parser.add_argument("--minutes", type=float, default=30.0, help="minutes of audio to stream (default 30)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the silence gaps (default 1)")
    parser.add_argument("--chunk-ms", type=int, default=40, help="audio per binary frame (default 40)")
    parser.add_argument(
        "--overflow",
        choices=["block", "shed", "default"],
        default="block",
        help="session overflow policy to ask for (default block: TCP pushes back; 'default': the server's)",
    )
    parser.add_argument("--url", help="use this running server (ws://HOST:PORT/v1/live) instead of starting one")
    parser.add_argument("--server-pid", type=int, help="with --url: the server's pid, to sample its RSS")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.minutes <= 0:
        parser.error("--minutes must be positive")

    version = git_state()
    print(f"checkout {version}", file=sys.stderr)
    server_log: list[str] = []
    server_tail: list[str] = []
    if args.url:
        result = run(args, args.url, None)
    else:
        with start_server() as server:
            result = run(args, server.url, server)
            server_log = server.warnings
            server_tail = list(server.log)[-15:]
    print_report(result)
    for line in server_log[:MAX_LOG_LINES]:
        print(f"server: {line}")
    if len(server_log) > MAX_LOG_LINES:
        print(f"server: ... {len(server_log) - MAX_LOG_LINES} more warning lines (all in --json)")
    if result.close.get("code") != 1000 and server_tail:
        print("server log, last lines:")
        for line in server_tail:
            print(f"  {line}")
    if args.json:
        data = asdict(result)
        data["config"] = {
            "minutes": args.minutes,
            "seed": args.seed,
            "chunk_ms": args.chunk_ms,
            "overflow": args.overflow,
            "url": args.url or "spawned",
            "checkout": version,
        }
        data["server_warnings"] = server_log
        write_json(args.json, data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
