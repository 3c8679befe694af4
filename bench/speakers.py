"""Cost of speaker labels and of the session store, and whether they delay finals.

What it measures
    1. Component: every VAD utterance of the phone call and of the 4-speaker stream (tests/fixtures/audio) labelled
       by a ``SpeakerTracker`` (embedding + online clustering), one at a time on this thread: ms per utterance and
       ms per second of speech.
    2. Store: ``SqliteStore.add_item`` of a 12-word final (WAL, synchronous=NORMAL), 500 times, ms per write.
    3. Server: the phone call, then the 4-speaker stream, at real-time pace into one session each on a real server
       (port 0); from each ``session.summary``: ``stats.speaker_labels`` (how long finals waited for their label,
       how many went out without one, labelling cost per utterance on the server), the final DER of the phone call,
       the final latency p50/p95 from ``session.metrics``, and the largest event-loop lag the server's gauge showed
       (sampled every 0.1 s: the numpy LSTM holds the GIL between its small matrix products). Run with
       ``--no-speakers`` to compare the final
       latency with labels off (ECHOPANEL_SPEAKERS=0).

How to run (from the repository root; hold /tmp/echopanel-bench.lock while it runs on a shared machine)
    .venv/bin/python -m bench.speakers
    .venv/bin/python -m bench.speakers --no-speakers
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.common import ROOT
from echopanel.testing.server import start_server

sys.path.insert(0, str(ROOT / "tests" / "speakers"))

from speaker_streams import four_speaker_stream, read, vad_utterances

from echopanel.client import LiveClient, TranscriptView
from echopanel.client.stream import transcribe
from echopanel.speakers.embedding import SpeakerEncoder
from echopanel.speakers.metrics import diarization_error_rate, read_rttm
from echopanel.speakers.tracker import SpeakerTracker
from echopanel.storage.sqlite import SqliteStore
from echopanel.storage.store import SessionRecord, StoredItem

SR = 16000


def component() -> None:
    encoder = SpeakerEncoder.load()
    costs, seconds = [], []
    for audio in (read("phone/sample.wav"), four_speaker_stream().audio):
        tracker = SpeakerTracker(encoder)
        for start, utt in vad_utterances(audio):
            t0 = time.perf_counter()
            tracker.add_utterance(utt, start / SR)
            costs.append((time.perf_counter() - t0) * 1000)
            seconds.append(len(utt) / SR)
    per_s = sum(costs) / sum(seconds)
    print(
        f"labelling, one thread: {len(costs)} utterances of {statistics.median(seconds):.1f} s median "
        f"({min(seconds):.1f}-{max(seconds):.1f} s): p50 {statistics.median(costs):.0f} ms, "
        f"max {max(costs):.0f} ms per utterance, {per_s:.1f} ms per second of speech"
    )


def store_cost() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "db")
        store.create_session(SessionRecord("s", "active", 0.0, ("mic",), 16000), [])
        words = tuple({"word": f"w{k}", "start_ms": k, "end_ms": k + 1, "confidence": 0.9} for k in range(12))
        times = []
        for n in range(500):
            t0 = time.perf_counter()
            store.add_item(
                StoredItem("s", f"item_mic_{n:05d}", "mic", "a final of about twelve words " * 2, n, n + 1, words=words)
            )
            times.append((time.perf_counter() - t0) * 1000)
        store.close()
    times.sort()
    print(f"store write per final: p50 {times[250]:.3f} ms, p95 {times[475]:.3f} ms, max {times[-1]:.2f} ms")


def pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()


async def session(url: str, audio: np.ndarray) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    metrics: list[dict[str, Any]] = []

    def keep(ev: dict[str, Any], view: TranscriptView) -> None:
        if ev["type"] == "session.metrics":
            metrics.append(ev)

    async with LiveClient(url, sources=["mic"]) as client:
        view = await transcribe(client, {"mic": pcm16(audio)}, realtime=True, on_event=keep)
    assert view.summary is not None
    return view.summary, metrics


def watch_loop_lag(http: str, stop: threading.Event, out: list[float]) -> None:
    """Samples the server's event-loop lag gauge (how late its 0.5 s controller timer fired) every 0.1 s."""
    with httpx.Client(base_url=http, timeout=5) as client:
        while not stop.wait(0.1):
            for line in client.get("/metrics").text.splitlines():
                if line.startswith("echopanel_event_loop_lag_seconds "):
                    out.append(float(line.split()[1]) * 1000)


def server(speakers: bool) -> None:
    env = {} if speakers else {"ECHOPANEL_SPEAKERS": "0"}
    with start_server(env=env) as srv:
        for name, audio in (("phone call", read("phone/sample.wav")), ("4 speakers", four_speaker_stream().audio)):
            lags: list[float] = []
            stop = threading.Event()
            watcher = threading.Thread(target=watch_loop_lag, args=(srv.http, stop, lags), daemon=True)
            watcher.start()
            summary, metrics = asyncio.run(session(srv.url, audio))
            stop.set()
            watcher.join()
            final = metrics[-1]["sources"]["mic"]["final_latency_ms"] if metrics else None
            labels = summary["stats"].get("speaker_labels", {}).get("mic")
            lag = f"event-loop lag max {max(lags):.1f} ms" if lags else "no lag samples"
            line = f"{name} at real-time pace: final latency {final}; {lag}; labels {labels}"
            if name == "phone call" and speakers:
                ref = read_rttm(ROOT / "tests/fixtures/audio/phone/sample.rttm")
                hyp = [(t["start_ms"] / 1000, t["end_ms"] / 1000, t["speaker"]) for t in summary["speaker_turns"]]
                line += f"; final DER {diarization_error_rate(ref, hyp).der:.3f}"
            print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-speakers", action="store_true", help="server part with speaker labels off")
    parser.add_argument("--skip-server", action="store_true")
    args = parser.parse_args()
    component()
    store_cost()
    if not args.skip_server:
        server(not args.no_speakers)


if __name__ == "__main__":
    main()
