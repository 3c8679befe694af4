"""Resilience figures at real-time pace: engine faults and connection cuts on a real server.

What it measures
    * fault -> first fallback result: real speech is streamed at real-time pace; mid-sentence, Whisper is made to
      fail every decode (``POST /faults``). Time from that moment to the first text event (partial or final) that
      pocketsphinx produced, as the client receives it. Then faults are cleared and, after the breaker reset, a
      short utterance closes the breaker again. Repeated ``--fault-runs`` times.
    * hang -> fallback final: Whisper's next final decode hangs; time from that utterance's ``speech_stopped`` to
      its final (decoded by pocketsphinx once the decode time limit abandoned the hung one).
    * resume after a cut: ``--cut-seconds`` of real speech streamed at real-time pace through a TCP proxy that cuts
      the connection every 3-8 s (random). The resilient client reconnects and resumes; per cut: time from the drop
      (seen by the client) to the resumed ``session.created``, and to all buffered audio being resent. Audio lost =
      audio the server never received (its ``received_ms`` vs what was produced, and the client's silence fill).
    * memory of each pocketsphinx worker process (RSS).

How to run (from the repository root; hold /tmp/echopanel-bench.lock while it runs on a shared machine)
    .venv/bin/python -m bench.resilience                  # starts its own server with fault injection on
    .venv/bin/python -m bench.resilience --cut-seconds 120 --json /tmp/resilience.json

Targets: fault -> first fallback result <= 1 s; audio lost 0 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # also runnable as bench/resilience.py

from bench.common import (
    CARDS,
    LIBRIVOX,
    PHONE,
    fmt,
    git_state,
    write_json,
)
from echopanel.audio.convert import float_to_pcm16
from echopanel.audio.wav import read_audio, read_pcm16
from echopanel.client import LiveClient
from echopanel.client.resilient import ResilientClient
from echopanel.client.stream import send_source, transcribe_resilient
from echopanel.testing.proxy import ChaosProxy
from echopanel.testing.server import ServerProcess, start_server

GAP = b"\x00\x00" * 16000
SENTENCE = "sense_and_sensibility_01_austen_64kb-0870"
SHORT = "sense_and_sensibility_01_austen_64kb-0880"


async def faults(server: ServerProcess, method: str, body: dict[str, Any] | None = None) -> None:
    async with httpx.AsyncClient(base_url=server.http) as http:
        r = await http.request(method, "/faults", json=body)
        r.raise_for_status()


async def heal(server: ServerProcess, reset_s: float) -> None:
    """Clear faults, wait out the breaker, and let a short utterance be the trial that closes it."""
    await faults(server, "DELETE")
    for _ in range(5):
        async with httpx.AsyncClient(base_url=server.http) as http:
            text = (await http.get("/metrics")).text
        if 'echopanel_breaker_state{engine="whisper"} 0.0' in text:
            return
        await asyncio.sleep(reset_s)
        async with LiveClient(server.url, sources=["mic"], session={"overflow": "block"}) as c:
            await c.send_audio("mic", read_pcm16(LIBRIVOX / f"{SHORT}.wav") + GAP)
            await c.close_session()
            _ = [ev async for ev in c.events()]
    raise RuntimeError("the whisper breaker did not close")


async def fault_to_fallback(server: ServerProcess, reset_s: float) -> float:
    await heal(server, reset_s)
    pcm = read_pcm16(LIBRIVOX / f"{SENTENCE}.wav") + GAP
    events: list[tuple[float, dict[str, Any]]] = []
    async with LiveClient(server.url, sources=["mic"]) as client:

        async def receive() -> None:
            async for ev in client.events():
                events.append((time.monotonic(), ev))

        reader = asyncio.create_task(receive())
        sender = asyncio.create_task(send_source(client, "mic", pcm, realtime=True))
        await asyncio.sleep(3.0)
        t_fault = time.monotonic()
        await faults(server, "POST", {"engine": "whisper", "mode": "fail"})
        await sender
        await client.close_session()
        await reader
    await faults(server, "DELETE")
    kinds = ("response.text.delta", "response.done")
    first = min(
        (t for t, ev in events if t > t_fault and ev["type"] in kinds and ev.get("engine") == "pocketsphinx"),
        default=None,
    )
    if first is None:
        raise RuntimeError("no fallback result after the fault")
    return first - t_fault


async def hang_to_fallback(server: ServerProcess, reset_s: float) -> float:
    await heal(server, reset_s)
    await faults(server, "POST", {"engine": "whisper", "mode": "hang", "count": 1, "kinds": ["final"]})
    pcm = read_pcm16(LIBRIVOX / f"{SHORT}.wav") + GAP
    events: list[tuple[float, dict[str, Any]]] = []
    async with LiveClient(server.url, sources=["mic"]) as client:
        await send_source(client, "mic", pcm, realtime=True)
        await client.close_session()
        async for ev in client.events():
            events.append((time.monotonic(), ev))
    await faults(server, "DELETE")
    done = next((t, ev) for t, ev in events if ev["type"] == "response.done" and ev["text"])
    stopped = next(t for t, ev in events if ev["type"] == "input_audio_buffer.speech_stopped")
    if done[1]["engine"] != "pocketsphinx":
        raise RuntimeError("the hung final was not decoded by the fallback")
    return done[0] - stopped


def speech_stream(seconds: int) -> bytes:
    gap = np.zeros(16000, np.float32)
    parts = [a for f in sorted(LIBRIVOX.glob("*.wav")) for a in (read_audio(f, 16000), gap)]
    parts += [read_audio(PHONE / "sample.wav", 16000), gap]
    parts += [a for f in sorted(CARDS.glob("*.wav")) for a in (read_audio(f, 16000), gap)]
    cycle = np.concatenate(parts)
    return float_to_pcm16(np.tile(cycle, seconds * 16000 // len(cycle) + 1)[: seconds * 16000])


async def cuts(server: ServerProcess, seconds: int, seed: int) -> dict[str, Any]:
    await faults(server, "DELETE")
    audio = speech_stream(seconds)
    proxy = ChaosProxy("127.0.0.1", server.port)
    await proxy.start()
    rng = random.Random(seed)
    client = ResilientClient(proxy.url(server.url), sources=["mic"], buffer_s=30, rng=rng)
    await client.open()

    async def cutter() -> int:
        n = 0
        while True:
            await asyncio.sleep(rng.uniform(3, 8))
            n += proxy.cut()

    cut_task = asyncio.create_task(cutter())
    try:
        view = await transcribe_resilient(client, {"mic": audio}, realtime=True)
    finally:
        cut_task.cancel()
        await proxy.stop()
    assert client.summary is not None
    received_ms = client.summary["stats"]["sources"]["mic"]["received_ms"]
    return {
        "seconds": seconds,
        "cuts": proxy.cuts,
        "resumes": client.stats.resumes,
        "resume_ms": [round(s * 1000) for s in client.stats.resume_s],
        "caught_up_ms": [round(s * 1000) for s in client.stats.caught_up_s],
        "audio_ms": len(audio) // 32,
        "server_received_ms": received_ms,
        "audio_lost_ms": len(audio) // 32 - received_ms + client.lost_ms,
        "max_buffered_ms": client.max_buffered_ms,
        "duplicates_dropped": client.stats.duplicates_dropped,
        "items": len(view.finals()),
    }


def worker_memory(server: ServerProcess) -> list[int]:
    out = []
    for p in psutil.Process(server.pid).children(recursive=True):
        try:
            if "sphinx_worker" in " ".join(p.cmdline()):
                out.append(p.memory_info().rss)
        except psutil.Error:
            pass
    return out


def stats(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"p50 {statistics.median(values):.0f} ms, max {max(values):.0f} ms (n={len(values)})"


async def main(args: argparse.Namespace) -> dict[str, Any]:
    env = {
        "ECHOPANEL_FAULT_INJECTION": "1",
        "ECHOPANEL_BREAKER_RESET_S": str(args.reset_s),
        "ECHOPANEL_DECODE_TIMEOUT_S": str(args.decode_timeout_s),
    }
    with start_server(env=env) as server:
        await asyncio.sleep(1.0)  # the fallback's processes start beside Whisper's warm-up
        memory = worker_memory(server)
        fault_ms = [await fault_to_fallback(server, args.reset_s) * 1000 for _ in range(args.fault_runs)]
        hang_ms = [await hang_to_fallback(server, args.reset_s) * 1000 for _ in range(args.hang_runs)]
        cut = await cuts(server, args.cut_seconds, args.seed)
    result = {
        "git": git_state(),
        "fault_to_first_fallback_ms": [round(v) for v in fault_ms],
        "hang_speech_end_to_fallback_final_ms": [round(v) for v in hang_ms],
        "decode_timeout_s": args.decode_timeout_s,
        "pocketsphinx_worker_rss_mb": [round(m / 1e6, 1) for m in memory],
        **{f"cut_{k}": v for k, v in cut.items()},
    }
    print(f"\nresilience ({result['git']}), real-time pace")
    print(f"  fault -> first fallback result     {stats(fault_ms)}  (target <= 1000 ms)")
    print(f"  hung final -> fallback final       {stats(hang_ms)}  (decode time limit {args.decode_timeout_s} s)")
    print(f"  cuts {cut['cuts']} in {cut['seconds']} s of speech, resumed {cut['resumes']}")
    print(f"  drop -> resumed session            {stats(cut['resume_ms'])}")
    print(f"  drop -> buffered audio resent      {stats(cut['caught_up_ms'])}")
    print(f"  audio lost                         {cut['audio_lost_ms']} ms  (target 0 ms)")
    print(f"  client max buffered                {cut['max_buffered_ms']} ms (bound 30000 ms)")
    print(f"  replayed finals dropped as dupes   {cut['duplicates_dropped']}")
    print(f"  pocketsphinx worker RSS            {', '.join(fmt(m / 1e6, '.0f', ' MB') for m in memory) or 'n/a'}")
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fault-runs", type=int, default=3)
    parser.add_argument("--hang-runs", type=int, default=2)
    parser.add_argument("--cut-seconds", type=int, default=120)
    parser.add_argument("--reset-s", type=float, default=5.0, help="breaker reset for the server (default 5 s)")
    parser.add_argument("--decode-timeout-s", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--json", help="write the figures to this file")
    asyncio.run(main(parser.parse_args()))
