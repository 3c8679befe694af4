"""Latency, cost and accuracy of live transcription: real speech, real-time pace, a real server over loopback.

What it measures
    The five LibriVox sentences (tests/fixtures/audio/librivox), each followed by 1.5 s of silence, are streamed as
    one source "mic" at real-time pace (40 ms chunks) into one session per run. For every sentence the reference
    speech onset and offset are found offline from 20 ms frame RMS: frames above -35 dB relative to the
    sentence's loudest frame and at least 6 dB above its noise floor; onset / offset = start of the first / end of
    the last run of >= 3 such frames (see ``speech_bounds``; the plain "first/last frame above -35 dB" rule is
    reported too, as a secondary row, but it lands on background noise on these clips). Items are matched to
    sentences by the overlap of their final ``start_ms``/``end_ms`` with the sentence's speech span (stream clock).

    * first-partial latency: arrival of the first text (stable delta or tentative, non-empty) of the first item
      overlapping the sentence, minus the time the chunk holding the onset sample was sent;
    * final latency: arrival of ``response.done`` of the last overlapping item, minus the time the chunk holding
      the last speech sample was sent;
    * real-time factor: sum of ``response.done`` ``compute_ms`` / audio duration, and server process CPU time
      (psutil, children included) / audio duration;
    * WER of the streamed finals (concatenated in order) against the reference, next to the WER of an offline
      whole-file decode of the same files with the same model (faster-whisper, beam 5, 30 s window).

    Also shown, to explain the latencies: when ``speech_started`` / ``speech_stopped`` arrived relative to the
    onset / offset chunk.

How to run (from the repository root)
    .venv/bin/python -m bench.latency                 # starts its own server (port 0), 3 runs = 3 sessions
    .venv/bin/python -m bench.latency --runs 1 --json /tmp/latency.json
    .venv/bin/python -m bench.latency --url ws://127.0.0.1:8765/v1/live --server-pid 1234   # a running server
    (``.venv/bin/python bench/latency.py ...`` works too.)

Targets: first-partial p50 <= 0.6 s, final p50 <= 0.8 s, streamed WER <= 1.1 x offline WER.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jiwer
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # also runnable as bench/latency.py

from bench.common import (
    SAMPLE_RATE,
    ContentionMonitor,
    cards_files,
    fmt,
    git_state,
    librivox_files,
    normalize,
    wer,
    write_json,
)
from echopanel.audio.convert import float_to_pcm16
from echopanel.audio.wav import read_audio
from echopanel.client import LiveClient, TranscriptView
from echopanel.client.live import ItemView
from echopanel.client.stream import BYTES_PER_SAMPLE, transcribe
from echopanel.metrics import percentile
from echopanel.testing.server import process_tree_cpu, start_server

SOURCE = "mic"
CHUNK_MS = 40
GAP_S = 1.5
FRAME_MS = 20
SPEECH_DB = -35.0  # speech frames: RMS above this, relative to the sentence's loudest 20 ms frame ...
FLOOR_MARGIN_DB = 6.0  # ... and at least this far above its noise floor (10th percentile frame RMS),
MIN_RUN_FRAMES = 3  # ... in runs of at least this many frames (60 ms)
TARGET_FIRST_PARTIAL_P50_S = 0.6
TARGET_FINAL_P50_S = 0.8
TARGET_WER_RATIO = 1.1
MAX_LOG_LINES = 20  # server warning lines printed at the end


@dataclass(frozen=True)
class Sentence:
    name: str
    reference: str
    start: int  # first sample of the clip in the stream
    onset: int  # first speech sample in the stream
    last: int  # last speech sample in the stream
    end: int  # one past the clip's last sample (its silence follows)

    @property
    def onset_ms(self) -> float:
        return self.onset * 1000 / SAMPLE_RATE

    @property
    def last_ms(self) -> float:
        return (self.last + 1) * 1000 / SAMPLE_RATE


@dataclass
class SentenceResult:
    name: str
    onset_ms: float
    last_ms: float
    items: list[str]
    first_partial_s: float | None
    final_s: float | None
    speech_started_s: float | None  # arrival of speech_started of the first item, after the onset chunk was sent
    speech_stopped_s: float | None  # arrival of speech_stopped of the last item, after the last speech chunk
    text: str


@dataclass
class Session:
    """What one streamed session recorded: send times per chunk, event arrival times, the folded transcript."""

    view: TranscriptView
    sent_at: dict[int, float]  # chunk's first sample -> monotonic time it was sent
    started_at: dict[str, float]
    stopped_at: dict[str, float]
    compute_ms: dict[str, float]
    notices: list[dict[str, Any]]  # session.degraded / backpressure events (none expected at real-time pace)
    wall_s: float
    server_cpu_s: float | None
    close_code: int | None
    other_cpus: float  # CPUs busy in other processes meanwhile (with --url and no --server-pid: server included)

    def done_items(self) -> list[ItemView]:
        done = (i for i in self.view.items.values() if i.done_at is not None)
        return sorted(done, key=lambda i: (i.start_ms, i.end_ms))

    def chunk_time(self, sample: int) -> float:
        step = SAMPLE_RATE * CHUNK_MS // 1000  # samples per chunk, as send_source slices them
        return self.sent_at[sample // step * step]


@dataclass
class RunResult:
    run: int
    audio_s: float
    wall_s: float
    sentences: list[SentenceResult]
    alt_sentences: list[SentenceResult]  # the same with the plain -35 dB-of-peak speech bounds
    transcript: str
    wer: float
    compute_ms: float
    rtf: float
    server_cpu_s: float | None
    cpu_rtf: float | None
    items: int
    empty_finals: int
    violations: list[str] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None
    notices: list[dict[str, Any]] = field(default_factory=list)
    other_cpus: float = 0.0


# -- the stream ------------------------------------------------------------------------------------------------------


def speech_bounds(
    audio: np.ndarray, *, rel_db: float = SPEECH_DB, floor_margin_db: float | None = FLOOR_MARGIN_DB
) -> tuple[int, int]:
    """First and last speech sample of a clip, from 20 ms frame RMS.

    A frame is speech when its RMS is above ``rel_db`` relative to the clip's loudest frame. With
    ``floor_margin_db`` (the default) it must also be that many dB above the clip's noise floor (10th percentile
    frame RMS), and the onset / offset are the ends of the first / last run of at least ``MIN_RUN_FRAMES`` speech
    frames. Why: the background of these LibriVox clips sits only 25-40 dB below the peak, so the plain -35 dB rule
    (``floor_margin_db=None``: first and last frame above it) puts three of the five onsets on the clip's first
    frame, ~0.25 s before the voice, and one offset on the clip's last frame.
    """
    frame = SAMPLE_RATE * FRAME_MS // 1000
    n = len(audio) // frame
    frames = audio[: n * frame].reshape(n, frame).astype(np.float64)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    threshold = rms.max() * 10 ** (rel_db / 20)
    run = 1
    if floor_margin_db is not None:
        threshold = max(threshold, float(np.percentile(rms, 10)) * 10 ** (floor_margin_db / 20))
        run = MIN_RUN_FRAMES
    voiced = (rms > threshold).astype(np.int32)
    starts = np.flatnonzero(np.convolve(voiced, np.ones(run, np.int32), "valid") == run)  # runs of `run` frames
    return int(starts[0] * frame), int((starts[-1] + run) * frame - 1)


def build_stream(
    gap_s: float = GAP_S, floor_margin_db: float | None = FLOOR_MARGIN_DB, files: list[tuple[Path, str]] | None = None
) -> tuple[bytes, list[Sentence], list[Sentence]]:
    """The sentences (default: the five LibriVox ones), each followed by ``gap_s`` of silence, as PCM16; speech
    bounds by both rules."""
    gap = np.zeros(round(gap_s * SAMPLE_RATE), np.float32)
    parts: list[np.ndarray] = []
    sentences: list[Sentence] = []
    alt: list[Sentence] = []
    position = 0
    for path, reference in files or librivox_files():
        audio = read_audio(path)
        for rule, out in ((floor_margin_db, sentences), (None, alt)):
            first, last = speech_bounds(audio, floor_margin_db=rule)
            out.append(
                Sentence(path.stem, reference, position, position + first, position + last, position + len(audio))
            )
        parts += [audio, gap]
        position += len(audio) + len(gap)
    return float_to_pcm16(np.concatenate(parts)), sentences, alt


# -- one session -----------------------------------------------------------------------------------------------------


async def stream_session(url: str, pcm: bytes, server_pid: int | None) -> Session:
    """Stream ``pcm`` at real-time pace as one session; record when each chunk left and each event arrived."""
    sent_at: dict[int, float] = {}
    started_at: dict[str, float] = {}
    stopped_at: dict[str, float] = {}
    compute_ms: dict[str, float] = {}
    notices: list[dict[str, Any]] = []

    def on_chunk(source: str, offset: int, now: float) -> None:
        sent_at[offset] = now

    def on_event(ev: dict[str, Any], view: TranscriptView) -> None:
        kind = ev.get("type")
        if kind == "input_audio_buffer.speech_started":
            started_at.setdefault(ev["item_id"], time.monotonic())
        elif kind == "input_audio_buffer.speech_stopped":
            stopped_at.setdefault(ev["item_id"], time.monotonic())
        elif kind == "response.done":
            compute_ms[ev["item_id"]] = float(ev.get("compute_ms") or 0.0)
        elif kind in ("session.degraded", "input_audio_buffer.backpressure"):
            notices.append(ev)

    cpu0 = process_tree_cpu(server_pid) if server_pid is not None else None
    neighbours = ContentionMonitor(server_pid)
    wall0 = time.monotonic()
    async with LiveClient(url, sources=[SOURCE], sample_rate=SAMPLE_RATE) as client:
        view = await transcribe(
            client, {SOURCE: pcm}, realtime=True, chunk_ms=CHUNK_MS, on_event=on_event, on_chunk=on_chunk
        )
        close_code = client.close_code
    wall = time.monotonic() - wall0
    cpu = process_tree_cpu(server_pid) - cpu0 if server_pid is not None and cpu0 is not None else None
    other = neighbours.other_cpus()
    return Session(view, sent_at, started_at, stopped_at, compute_ms, notices, wall, cpu, close_code, other)


def measure(session: Session, sentences: list[Sentence]) -> list[SentenceResult]:
    """Per-sentence latencies; items belong to a sentence when their final time span overlaps its speech."""
    done = session.done_items()
    results: list[SentenceResult] = []
    for s in sentences:
        matched = [i for i in done if i.start_ms < s.last_ms and i.end_ms > s.onset_ms]
        with_text = [i for i in matched if i.first_text_at is not None]
        first = with_text[0] if with_text else None
        last = max(matched, key=lambda i: i.end_ms) if matched else None
        onset_sent = session.chunk_time(s.onset)
        last_sent = session.chunk_time(s.last)
        started = session.started_at.get(matched[0].item_id) if matched else None
        stopped = session.stopped_at.get(last.item_id) if last else None
        results.append(
            SentenceResult(
                name=s.name,
                onset_ms=s.onset_ms,
                last_ms=s.last_ms,
                items=[i.item_id for i in matched],
                first_partial_s=first.first_text_at - onset_sent if first and first.first_text_at else None,
                final_s=last.done_at - last_sent if last and last.done_at else None,
                speech_started_s=started - onset_sent if started is not None else None,
                speech_stopped_s=stopped - last_sent if stopped is not None else None,
                text=" ".join(i.final or "" for i in matched),
            )
        )
    return results


def run_result(run: int, session: Session, pcm: bytes, sentences: list[Sentence], alt: list[Sentence]) -> RunResult:
    done = session.done_items()
    audio_s = len(pcm) / BYTES_PER_SAMPLE / SAMPLE_RATE
    transcript = " ".join(i.final or "" for i in done if i.final)
    compute_ms = sum(session.compute_ms.values())
    cpu = session.server_cpu_s
    return RunResult(
        run=run,
        audio_s=audio_s,
        wall_s=session.wall_s,
        sentences=measure(session, sentences),
        alt_sentences=measure(session, alt),
        transcript=transcript,
        wer=wer(" ".join(s.reference for s in sentences), transcript),
        compute_ms=compute_ms,
        rtf=compute_ms / 1000 / audio_s,
        server_cpu_s=cpu,
        cpu_rtf=cpu / audio_s if cpu is not None else None,
        items=len(done),
        empty_finals=sum(1 for i in done if not i.final),
        violations=list(session.view.violations),
        errors=list(session.view.errors),
        close_code=session.close_code,
        notices=session.notices,
        other_cpus=session.other_cpus,
    )


# -- offline reference ------------------------------------------------------------------------------------------------


def names_files() -> list[tuple[Path, str]]:
    folder = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "audio" / "names"
    rows = [line.split("\t", 1) for line in (folder / "transcription.tsv").read_text().splitlines() if line]
    return [(folder / f"{stem}.wav", normalize(text)) for stem, text in rows]


SPEECH = {"librivox": librivox_files, "names": names_files, "cards": cards_files}


def offline_decode(files: list[tuple[Path, str]] | None = None) -> tuple[list[str], float]:
    """Whole-file decode of each sentence with plain faster-whisper (beam 5): texts and corpus WER."""
    from faster_whisper import WhisperModel

    from echopanel.engines.whisper import packaged_model_dir

    model = WhisperModel(str(packaged_model_dir()), device="cpu", compute_type="int8")
    texts: list[str] = []
    refs: list[str] = []
    for path, reference in files or librivox_files():
        segments, _info = model.transcribe(read_audio(path), beam_size=5, language="en")
        texts.append("".join(s.text for s in segments).strip())
        refs.append(reference)
    return texts, wer(" ".join(refs), " ".join(texts))


# -- report ----------------------------------------------------------------------------------------------------------


def _stats(values: list[float]) -> dict[str, float]:
    p50, p95 = percentile(values, 0.5), percentile(values, 0.95)
    nan = math.nan
    return {"p50": nan if p50 is None else p50, "p95": nan if p95 is None else p95, "max": max(values, default=nan)}


def print_run(r: RunResult) -> None:
    print(
        f"\n== run {r.run}: {r.audio_s:.1f} s audio, wall {r.wall_s:.1f} s, {r.items} items "
        f"({r.empty_finals} empty), close code {r.close_code}"
    )
    print(
        f"{'sentence':<8} {'speech (stream ms)':>18} {'items':>5} {'1st partial':>11} {'final':>7} "
        f"{'sp_started':>10} {'sp_stopped':>10}  text"
    )
    for s in r.sentences:
        span = f"{s.onset_ms:.0f}-{s.last_ms:.0f}"
        print(
            f"{s.name[-4:]:<8} {span:>18} {len(s.items):>5} {fmt(s.first_partial_s, '.3f', 's'):>11} "
            f"{fmt(s.final_s, '.3f', 's'):>7} {fmt(s.speech_started_s, '.3f', 's'):>10} "
            f"{fmt(s.speech_stopped_s, '.3f', 's'):>10}  {s.text}"
        )
    print(
        f"WER {r.wer:.2%}  RTF(compute_ms) {r.rtf:.3f}  RTF(server CPU) {fmt(r.cpu_rtf)}  "
        f"violations {len(r.violations)}  errors {len(r.errors)}  other processes {r.other_cpus:.2f} CPUs"
    )
    for v in r.violations:
        print(f"  violation: {v}")
    for e in r.errors:
        print(f"  error: {e}")
    for n in r.notices:
        print(f"  notice: {n}")


def _latencies(results: list[list[SentenceResult]]) -> tuple[list[float], list[float], int]:
    first = [s.first_partial_s for rs in results for s in rs if s.first_partial_s is not None]
    final = [s.final_s for rs in results for s in rs if s.final_s is not None]
    missing = sum(1 for rs in results for s in rs if s.first_partial_s is None or s.final_s is None)
    return first, final, missing


def summarize(runs: list[RunResult], offline_wer: float, sentences: list[Sentence]) -> dict[str, Any]:
    first, final, missing = _latencies([r.sentences for r in runs])
    alt_first, alt_final, _ = _latencies([r.alt_sentences for r in runs])
    reference = normalize(" ".join(s.reference for s in sentences))
    hyps = [normalize(r.transcript) or "<empty>" for r in runs]
    streamed_wer = float(jiwer.wer([reference] * len(runs), hyps))
    if offline_wer > 0:
        ratio = streamed_wer / offline_wer
    else:
        ratio = 1.0 if streamed_wer == 0 else math.inf
    audio_s = sum(r.audio_s for r in runs)
    cpu = [r.server_cpu_s for r in runs]
    return {
        "runs": len(runs),
        "sentences": len(runs) * len(sentences),
        "unmatched_sentences": missing,
        "first_partial_s": _stats(first),
        "final_s": _stats(final),
        "first_partial_s_peak35": _stats(alt_first),
        "final_s_peak35": _stats(alt_final),
        "rtf_compute": sum(r.compute_ms for r in runs) / 1000 / audio_s,
        "rtf_server_cpu": sum(c for c in cpu if c is not None) / audio_s if all(c is not None for c in cpu) else None,
        "streamed_wer": streamed_wer,
        "streamed_wer_per_run": [r.wer for r in runs],
        "offline_wer": offline_wer,
        "wer_ratio": ratio,
        "violations": sum(len(r.violations) for r in runs),
        "errors": sum(len(r.errors) for r in runs),
        "other_cpus_max": max(r.other_cpus for r in runs),
        "pass": {
            "first_partial_p50": _stats(first)["p50"] <= TARGET_FIRST_PARTIAL_P50_S,
            "final_p50": _stats(final)["p50"] <= TARGET_FINAL_P50_S,
            "wer_ratio": ratio <= TARGET_WER_RATIO,
        },
    }


def print_summary(summary: dict[str, Any]) -> None:
    ok = summary["pass"]

    def mark(passed: bool) -> str:
        return "PASS" if passed else "FAIL"

    def row(label: str, stats: dict[str, float], target: str = "", result: str = "") -> None:
        cells = " ".join(f"{fmt(stats[k], '.3f', 's'):>8}" for k in ("p50", "p95", "max"))
        print(f"{label:<32} {cells}   {target:<14} {result}")

    print(
        f"\n== overall: {summary['runs']} run(s), {summary['sentences']} sentences "
        f"({summary['unmatched_sentences']} without a matched item)"
    )
    print(f"{'metric':<32} {'p50':>8} {'p95':>8} {'max':>8}   {'target':<14} result")
    row("first-partial latency", summary["first_partial_s"], "p50 <= 0.6 s", mark(ok["first_partial_p50"]))
    row("final latency", summary["final_s"], "p50 <= 0.8 s", mark(ok["final_p50"]))
    row("  first-partial (-35 dB of peak)", summary["first_partial_s_peak35"])
    row("  final (-35 dB of peak)", summary["final_s_peak35"])
    print(f"{'RTF (sum compute_ms / audio)':<32} {fmt(summary['rtf_compute']):>8}")
    print(f"{'RTF (server CPU s / audio)':<32} {fmt(summary['rtf_server_cpu']):>8}")
    per_run = " ".join(f"{w:.2%}" for w in summary["streamed_wer_per_run"])
    print(f"{'streamed WER':<32} {fmt(summary['streamed_wer'] * 100, '.2f', '%'):>8}   (per run: {per_run})")
    print(f"{'offline WER':<32} {fmt(summary['offline_wer'] * 100, '.2f', '%'):>8}")
    print(
        f"{'WER ratio streamed / offline':<32} {fmt(summary['wer_ratio'], '.2f', 'x'):>8}   "
        f"{'':<17} {'<= 1.1x':<14} {mark(ok['wer_ratio'])}"
    )
    print(f"{'delta/final violations':<32} {summary['violations']:>8}")
    print(f"{'server error events':<32} {summary['errors']:>8}")
    busy = summary["other_cpus_max"]
    warn = "   !! a loaded machine: latency and RTF figures are pessimistic" if busy > 0.2 else ""
    print(f"{'other processes, max CPUs':<32} {busy:>8.2f}{warn}")


# -- main ------------------------------------------------------------------------------------------------------------


async def run_all(
    url: str, runs: int, server_pid: int | None, files: list[tuple[Path, str]] | None = None
) -> tuple[list[RunResult], list[Sentence], list[Sentence]]:
    pcm, sentences, alt = build_stream(files=files)
    results = []
    for n in range(1, runs + 1):
        session = await stream_session(url, pcm, server_pid)
        result = run_result(n, session, pcm, sentences, alt)
        print_run(result)
        results.append(result)
    return results, sentences, alt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Latency, cost and accuracy of live transcription on real speech at real-time pace."
    )
    parser.add_argument("--runs", type=int, default=3, help="sessions to stream, one after another (default 3)")
    parser.add_argument("--url", help="use this running server (ws://HOST:PORT/v1/live) instead of starting one")
    parser.add_argument("--server-pid", type=int, help="with --url: the server's pid, for its CPU time")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")
    parser.add_argument(
        "--speech",
        choices=sorted(SPEECH),
        default="librivox",
        help="librivox (default; the recognizer was tuned on it), names (synthetic read sentences, held out from "
        "latency tuning) or cards (real, 1-3 s clips, held out)",
    )
    args = parser.parse_args(argv)
    files = SPEECH[args.speech]()
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    version = git_state()
    print(f"checkout {version}")
    print("offline reference decode (faster-whisper, beam 5, whole files)...", file=sys.stderr)
    offline_texts, offline_wer = offline_decode(files)
    print(f"offline WER {offline_wer:.2%}")
    for text in offline_texts:
        print(f"  offline: {text}")

    server_log: list[str] = []
    if args.url:
        runs, sentences, alt = asyncio.run(run_all(args.url, args.runs, args.server_pid, files))
    else:
        with start_server() as server:
            runs, sentences, alt = asyncio.run(run_all(server.url, args.runs, server.pid, files))
            server_log = server.warnings
    summary = summarize(runs, offline_wer, sentences)
    print_summary(summary)
    for line in server_log[:MAX_LOG_LINES]:
        print(f"server: {line}")
    if len(server_log) > MAX_LOG_LINES:
        print(f"server: ... {len(server_log) - MAX_LOG_LINES} more warning lines (all in --json)")
    if args.json:
        write_json(
            args.json,
            {
                "config": {
                    "runs": args.runs,
                    "chunk_ms": CHUNK_MS,
                    "gap_s": GAP_S,
                    "frame_ms": FRAME_MS,
                    "speech_db": SPEECH_DB,
                    "floor_margin_db": FLOOR_MARGIN_DB,
                    "url": args.url or "spawned",
                    "speech": args.speech,
                    "checkout": version,
                },
                "sentences": [asdict(s) for s in sentences],
                "sentences_peak35": [asdict(s) for s in alt],
                "offline": {"texts": offline_texts, "wer": offline_wer},
                "runs": [asdict(r) for r in runs],
                "summary": summary,
                "targets": {
                    "first_partial_p50_s": TARGET_FIRST_PARTIAL_P50_S,
                    "final_p50_s": TARGET_FINAL_P50_S,
                    "wer_ratio": TARGET_WER_RATIO,
                },
                "server_warnings": server_log,
            },
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
