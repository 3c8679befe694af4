"""Soak: a 5-minute real-speech stream cut 20 times at random through a TCP proxy equals an uncut run.

Both runs stream the same 300 s of real speech (LibriVox, a phone call, card readings, repeated) at 4x real time,
side by side on one server: one directly, one through the proxy that cuts its connection 20 times. The resilient
client buffers, reconnects, resumes and deduplicates. bench/resilience.py does the same at real-time pace and
prints the timings.
"""

from __future__ import annotations

import asyncio
import random
import statistics
from collections.abc import Iterator

import numpy as np
import pytest

from echopanel.audio.convert import float_to_pcm16
from echopanel.audio.wav import read_audio
from echopanel.client.live import TranscriptView
from echopanel.client.resilient import ResilientClient, transcribe_resilient
from echopanel.evaluation import normalize
from echopanel.testing.proxy import ChaosProxy

from support import CARDS, LIBRIVOX, PHONE, ServerProcess, run_server, wer

SECONDS = 300
SPEED = 4.0
CUTS = 20
BUFFER_S = 10.0


def five_minutes() -> bytes:
    gap = np.zeros(16000, np.float32)
    parts = [a for f in sorted(LIBRIVOX.glob("*.wav")) for a in (read_audio(f, 16000), gap)]
    parts += [read_audio(PHONE / "sample.wav", 16000), gap]
    parts += [a for f in sorted(CARDS.glob("*.wav")) for a in (read_audio(f, 16000), gap)]
    cycle = np.concatenate(parts)
    audio = np.tile(cycle, SECONDS * 16000 // len(cycle) + 1)[: SECONDS * 16000]
    return float_to_pcm16(audio)


@pytest.fixture(scope="module")
def soak_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with run_server(tmp_path_factory.mktemp("soak")) as srv:
        yield srv


async def test_twenty_random_cuts_in_five_minutes_change_nothing(soak_server: ServerProcess) -> None:
    audio = five_minutes()
    proxy = ChaosProxy("127.0.0.1", soak_server.port)
    await proxy.start()
    rng = random.Random(20)
    # Block mode: a file sent faster than real time waits for the server instead of being shed (same in both runs).
    session = {"overflow": "block"}
    # A file waits for room in the buffer at its bound (a live microphone would drop the oldest instead).
    opts = {"sources": ["mic"], "session": session, "buffer_s": BUFFER_S, "when_full": "wait"}
    cut = ResilientClient(proxy.url(soak_server.url), rng=rng, **opts)  # type: ignore[arg-type]
    uncut = ResilientClient(soak_server.url, **opts)  # type: ignore[arg-type]
    await asyncio.gather(cut.open(), uncut.open())
    stream_s = SECONDS / SPEED
    times = sorted(rng.uniform(1.0, stream_s - 2.0) for _ in range(CUTS))

    async def cutter() -> int:
        t0 = asyncio.get_running_loop().time()
        done = 0
        for at in times:
            await asyncio.sleep(max(0.0, t0 + at - asyncio.get_running_loop().time()))
            for _ in range(200):  # cut a live connection (not one still resuming from the previous cut)
                if cut.live and proxy.open_connections:
                    break
                await asyncio.sleep(0.02)
            done += proxy.cut()
        return done

    try:
        cuts_task = asyncio.create_task(cutter())
        views: list[TranscriptView] = await asyncio.gather(
            transcribe_resilient(cut, {"mic": audio}, speed=SPEED),
            transcribe_resilient(uncut, {"mic": audio}, speed=SPEED),
        )
        cuts = await cuts_task
    finally:
        await proxy.stop()
    cut_view, ref_view = views
    assert cuts == CUTS and cut.stats.resumes == CUTS and uncut.stats.resumes == 0
    for client in (cut, uncut):
        assert client.summary is not None and client.close_code == 1000
        # Audio lost: none. The server holds every sample exactly once.
        assert client.summary["stats"]["sources"]["mic"]["received_ms"] == len(audio) // 32
        assert sum(b.dropped for b in client.buffers.values()) == 0 and client.lost_ms == 0
        assert client.max_buffered_ms <= BUFFER_S * 1000  # the client never buffered past its bound
    got = {i.item_id: i for i in cut_view.finals()}
    want = {i.item_id: i for i in ref_view.finals()}
    cut_ids = [i.item_id for i in cut_view.finals()]
    assert len(cut_ids) == len(set(cut_ids))  # no duplicate items (replayed finals were dropped by item_id)
    assert set(got) == set(want), (set(want) - set(got), set(got) - set(want))  # none missing, none extra
    differ = [k for k in want if normalize(want[k].final or "") != normalize(got[k].final or "")]
    text_wer = wer(ref_view.text(), cut_view.text())
    resume_ms = [s * 1000 for s in cut.stats.resume_s]
    print(
        f"\n{len(want)} items, {len(differ)} differ (WER {text_wer:.3f} between runs); {cuts} cuts, resume "
        f"p50 {statistics.median(resume_ms):.0f} ms max {max(resume_ms):.0f} ms; duplicates dropped "
        f"{cut.stats.duplicates_dropped}; resent {cut.stats.resent_ms} ms; max buffered {cut.max_buffered_ms} ms"
    )
    for k in differ:
        print(f"  {k}: uncut {want[k].final!r}\n  {' ' * len(k)}  cut   {got[k].final!r}")
    # The same text. Items may differ only where decoding is timing-dependent: the partials a final's stable prefix
    # comes from are decoded at other moments when a cut delays audio. The utterances themselves are identical.
    # Measured: 4-5 of 51 items differ by a word or a digit format, in both directions ("5 5." / "5 5. We'll").
    assert len(differ) <= len(want) // 5, [(want[k].final, got[k].final) for k in differ]
    assert text_wer <= 0.05
    assert [t["item_id"] for t in cut.summary["transcript"]] == [t["item_id"] for t in uncut.summary["transcript"]]
