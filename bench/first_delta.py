"""Time to the first ``delta`` in the OpenAI Realtime dialect, as a client that reads only ``delta`` (never the
extra ``tentative`` field) sees it, for each ``transcription.delay`` (issue 15).

What it measures
    The stream of bench/latency.py (the five LibriVox sentences, 1.5 s of silence after each; speech onsets found
    the same way) resampled to 24 kHz, sent at real-time pace in 40 ms appends over ``/v1/realtime`` with server
    VAD, one session per delay setting and run. Per sentence: first non-empty ``delta`` of its item minus the time
    the chunk holding the onset was sent; the first text of any kind (``delta`` or ``tentative``) the same way, for
    comparison; and the time from the last speech chunk to ``completed``. Also the WER of the completed transcripts
    and whether every item's deltas concatenate to its transcript.

How to run (from the repository root)
    .venv/bin/python -m bench.first_delta                     # delays minimal, medium (default), high; 2 runs each
    .venv/bin/python -m bench.first_delta --delays minimal,medium --runs 3 --json /tmp/first_delta.json
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import time
from collections import defaultdict
from typing import Any

import websockets

from bench.common import fmt, git_state, write_json
from bench.latency import CHUNK_MS, build_stream
from echopanel.audio.convert import float_to_pcm16, pcm16_to_float, resample
from echopanel.evaluation import wer
from echopanel.metrics import percentile
from echopanel.testing.server import start_server

RATE_IN = 16000
RATE = 24000


async def one_session(url: str, pcm16k: bytes, delay: str, sentences: list[Any]) -> dict[str, Any]:
    audio = resample(pcm16_to_float(pcm16k), RATE_IN, RATE)
    pcm = float_to_pcm16(audio)
    step = RATE * CHUNK_MS // 1000 * 2
    sent_at: dict[int, float] = {}  # 16 kHz sample offset of each chunk -> when it was sent
    first_delta: dict[str, float] = {}
    first_text: dict[str, float] = {}
    completed: dict[str, tuple[float, str, int, int]] = {}
    deltas: dict[str, str] = defaultdict(str)
    async with websockets.connect(url + "?intent=transcription", max_size=None) as ws:
        await ws.recv()  # session.created
        session = {
            "type": "transcription",
            "audio": {"input": {"transcription": {"delay": delay}, "turn_detection": {"type": "server_vad"}}},
        }
        await ws.send(json.dumps({"type": "session.update", "session": session}))

        async def reader() -> None:
            async for raw in ws:
                ev = json.loads(raw)
                now = time.monotonic()
                iid = ev.get("item_id")
                if ev["type"] == "conversation.item.input_audio_transcription.delta":
                    deltas[iid] += ev["delta"]
                    if ev["delta"]:
                        first_delta.setdefault(iid, now)
                    if ev["delta"] or ev.get("tentative"):
                        first_text.setdefault(iid, now)
                elif ev["type"] == "conversation.item.input_audio_transcription.completed":
                    completed[iid] = (now, ev["transcript"], ev["start_ms"], ev["end_ms"])
                    if ev["transcript"]:
                        first_delta.setdefault(iid, now)  # no delta before it: the final is the first text
                        first_text.setdefault(iid, now)

        task = asyncio.create_task(reader())
        t0 = time.monotonic()
        for n, i in enumerate(range(0, len(pcm), step)):
            await asyncio.sleep(max(0.0, t0 + n * CHUNK_MS / 1000 - time.monotonic()))
            await ws.send(
                json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm[i : i + step]).decode()})
            )
            sent_at[n * RATE_IN * CHUNK_MS // 1000] = time.monotonic()
        await asyncio.sleep(3.0)
        task.cancel()
    chunk = RATE_IN * CHUNK_MS // 1000

    def sent(sample: int) -> float:
        return sent_at[(sample // chunk) * chunk]

    rows = []
    for s in sentences:
        items = sorted(
            (iid for iid, (_, _, a, b) in completed.items() if a < s.last_ms and b > s.onset_ms),
            key=lambda iid: completed[iid][2],
        )
        if not items:
            rows.append({"first_delta_s": None, "first_text_s": None, "final_s": None})
            continue
        first, last = items[0], items[-1]
        rows.append(
            {
                "first_delta_s": first_delta[first] - sent(s.onset) if first in first_delta else None,
                "first_text_s": first_text[first] - sent(s.onset) if first in first_text else None,
                "final_s": completed[last][0] - sent(s.last),
            }
        )
    order = sorted(completed, key=lambda iid: completed[iid][2])
    transcript = " ".join(completed[i][1] for i in order if completed[i][1])
    broken = [i for i in order if deltas[i] != completed[i][1]]
    return {
        "rows": rows,
        "wer": wer(" ".join(s.reference for s in sentences), transcript),
        "contract_violations": len(broken),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Time to the first delta in the OpenAI dialect, per delay.")
    parser.add_argument("--delays", default="minimal,medium,high")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    delays = args.delays.split(",")
    print(f"checkout {git_state()}")
    pcm, sentences, _ = build_stream()
    out: dict[str, list[dict[str, Any]]] = {d: [] for d in delays}
    with start_server() as server:
        url = server.url.replace("/v1/live", "/v1/realtime")
        for run in range(args.runs):
            for d in delays:  # interleaved, so drift on a shared machine hits every setting
                r = asyncio.run(one_session(url, pcm, d, sentences))
                out[d].append(r)
                print(f"run {run + 1} delay={d}: WER {r['wer']:.1%}, violations {r['contract_violations']}")
    print(f"\n{'delay':<10}{'1st delta p50':>14}{'p95':>8}{'1st text p50':>14}{'final p50':>11}{'WER':>8}")
    summary = {}
    for d in delays:
        rows = [row for r in out[d] for row in r["rows"]]

        def q(key: str, p: float, rows: list[dict[str, Any]] = rows) -> float | None:
            return percentile([x[key] for x in rows if x[key] is not None], p)

        w = statistics.mean(r["wer"] for r in out[d])
        summary[d] = {
            "first_delta_p50": q("first_delta_s", 0.5),
            "first_delta_p95": q("first_delta_s", 0.95),
            "first_text_p50": q("first_text_s", 0.5),
            "final_p50": q("final_s", 0.5),
            "wer": w,
            "violations": sum(r["contract_violations"] for r in out[d]),
        }
        s = summary[d]
        print(
            f"{d:<10}{fmt(s['first_delta_p50']):>14}{fmt(s['first_delta_p95']):>8}{fmt(s['first_text_p50']):>14}"
            f"{fmt(s['final_p50']):>11}{w:>8.1%}"
        )
    if args.json:
        write_json(args.json, {"runs": out, "summary": summary, "config": vars(args)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
