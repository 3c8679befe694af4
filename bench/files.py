"""A live session's latency while a long file is transcribed on the same server (issue 15: within 20 % of the
latency without it), and how fast the file goes.

What it measures
    One server (spawned, defaults). The live stream of bench/latency.py (the five LibriVox sentences at real-time
    pace, one source) is streamed ``--runs`` times alone and ``--runs`` times while ``POST /v1/audio/transcriptions``
    decodes a long file (``--file-min`` minutes of real speech: the phone call, the card readings and the LibriVox
    sentences looped, as one WAV), alternating alone / with file so drift on a shared machine hits both. A new file
    request starts whenever the previous one finished, so every "with file" run has a file decoding throughout.
    Printed: first-partial and final latency p50 / p95 for both conditions and their ratio (target: final p50 and
    p95 within 1.2x), WER of both, and the file's audio seconds per wall second.

How to run (from the repository root)
    .venv/bin/python -m bench.files                   # 3 + 3 runs, a 10-minute file
    .venv/bin/python -m bench.files --runs 5 --file-min 20 --json /tmp/files.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import statistics
import time
from typing import Any

import httpx
import numpy as np
import soundfile

from bench.common import CARDS, LIBRIVOX, PHONE, fmt, git_state, write_json
from bench.latency import build_stream, measure, stream_session
from echopanel.audio.wav import read_audio
from echopanel.evaluation import wer
from echopanel.metrics import percentile
from echopanel.testing.server import start_server

RATE = 16000


def long_file(minutes: float) -> bytes:
    clips = sorted(LIBRIVOX.glob("*.wav")) + sorted(CARDS.glob("*.wav")) + sorted(PHONE.glob("*.wav"))
    gap = np.zeros(RATE // 2, np.float32)
    parts: list[np.ndarray] = []
    total = 0
    while total < minutes * 60 * RATE:
        for clip in clips:
            audio = read_audio(clip, RATE)
            parts += [audio, gap]
            total += len(audio) + len(gap)
    buf = io.BytesIO()
    soundfile.write(buf, np.concatenate(parts), RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


async def run(runs: int, file_min: float) -> dict[str, Any]:
    pcm, sentences, _alt = build_stream()
    wav = long_file(file_min)
    file_s = (len(wav) - 44) / 2 / RATE
    reference = " ".join(s.reference for s in sentences)
    out: dict[str, Any] = {"alone": [], "with_file": [], "files": []}
    with start_server() as server:
        async with httpx.AsyncClient(base_url=server.http, timeout=3600) as http:
            stop = asyncio.Event()

            async def files_forever() -> None:
                while not stop.is_set():
                    t0 = time.monotonic()
                    r = await http.post(
                        "/v1/audio/transcriptions",
                        files={"file": ("long.wav", wav, "audio/wav")},
                        data={"model": "whisper-1", "response_format": "json"},
                    )
                    r.raise_for_status()
                    out["files"].append({"audio_s": file_s, "wall_s": time.monotonic() - t0})

            for n in range(runs):
                session = await stream_session(server.url, pcm, server.pid)
                out["alone"].append(_figures(measure(session, sentences), session, reference))
                print(f"run {n + 1} alone: {_line(out['alone'][-1])}")
                stop.clear()
                task = asyncio.create_task(files_forever())
                await asyncio.sleep(3.0)  # the upload is in and its decodes have begun
                session = await stream_session(server.url, pcm, server.pid)
                out["with_file"].append(_figures(measure(session, sentences), session, reference))
                print(f"run {n + 1} with a file decoding: {_line(out['with_file'][-1])}")
                stop.set()
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                    await task
            # one whole file alone, for its speed
            t0 = time.monotonic()
            r = await http.post(
                "/v1/audio/transcriptions",
                files={"file": ("long.wav", wav, "audio/wav")},
                data={"model": "whisper-1"},
            )
            r.raise_for_status()
            out["file_alone"] = {"audio_s": file_s, "wall_s": time.monotonic() - t0}
    return out


def _figures(results: list[Any], session: Any, reference: str) -> dict[str, Any]:
    text = " ".join(i.final or "" for i in session.done_items() if i.final)
    return {
        "first_partial_s": [r.first_partial_s for r in results if r.first_partial_s is not None],
        "final_s": [r.final_s for r in results if r.final_s is not None],
        "wer": wer(reference, text),
    }


def _line(f: dict[str, Any]) -> str:
    return (
        f"first partial p50 {fmt(statistics.median(f['first_partial_s']) if f['first_partial_s'] else None)} s, "
        f"final p50 {fmt(statistics.median(f['final_s']) if f['final_s'] else None)} s, WER {f['wer']:.1%}"
    )


def summarize(out: dict[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for cond in ("alone", "with_file"):
        fp = [v for f in out[cond] for v in f["first_partial_s"]]
        fin = [v for f in out[cond] for v in f["final_s"]]
        summary[cond] = {
            "first_partial_p50": percentile(fp, 0.5),
            "first_partial_p95": percentile(fp, 0.95),
            "final_p50": percentile(fin, 0.5),
            "final_p95": percentile(fin, 0.95),
            "wer": statistics.mean(f["wer"] for f in out[cond]),
        }
    a, w = summary["alone"], summary["with_file"]
    summary["ratio"] = {k: (w[k] / a[k] if a[k] and w[k] else None) for k in a if k != "wer"}
    fa = out.get("file_alone")
    summary["file_speed_alone"] = fa["audio_s"] / fa["wall_s"] if fa else None
    return summary


def print_summary(s: dict[str, Any]) -> None:
    print("\n== a live session with and without a long file decoding")
    print(f"{'':<26}{'alone':>10}{'with file':>12}{'ratio':>8}")
    for key in ("first_partial_p50", "first_partial_p95", "final_p50", "final_p95"):
        r = s["ratio"][key]
        print(f"{key:<26}{fmt(s['alone'][key]):>10}{fmt(s['with_file'][key]):>12}{fmt(r, '.2f'):>8}")
    print(f"{'WER':<26}{s['alone']['wer']:>10.1%}{s['with_file']['wer']:>12.1%}")
    ok = all(s["ratio"][k] is not None and s["ratio"][k] <= 1.2 for k in ("final_p50", "final_p95"))
    print(f"final latency with a file within 1.2x of alone: {'PASS' if ok else 'FAIL'}")
    print(f"file alone: {fmt(s['file_speed_alone'], '.1f')}x real time")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Live latency while a long file is transcribed on the same server.")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--file-min", type=float, default=10.0, help="minutes of audio in the file (default 10)")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    print(f"checkout {git_state()}")
    out = asyncio.run(run(args.runs, args.file_min))
    summary = summarize(out)
    print_summary(summary)
    if args.json:
        write_json(args.json, {"runs": out, "summary": summary, "config": vars(args)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
