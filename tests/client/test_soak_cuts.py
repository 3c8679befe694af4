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
from echopanel.client.resilient import ResilientClient
from echopanel.client.stream import transcribe_resilient
from echopanel.evaluation import normalize
from echopanel.testing.proxy import ChaosProxy

from support import CARDS, LIBRIVOX, PHONE, ServerProcess, cards_refs, librivox_refs, phone_ref, run_server, wer

SECONDS = 300
SPEED = 4.0
CUTS = 20
BUFFER_S = 10.0


def cycle() -> tuple[np.ndarray, str]:
    """LibriVox sentences, the phone call and the card readings (75 s), with the reference text."""
    gap = np.zeros(16000, np.float32)
    refs = librivox_refs()
    cards = cards_refs()
    parts = [a for f in sorted(LIBRIVOX.glob("*.wav")) for a in (read_audio(f, 16000), gap)]
    parts += [read_audio(PHONE / "sample.wav", 16000), gap]
    parts += [a for f in sorted(CARDS.glob("*.wav")) for a in (read_audio(f, 16000), gap)]
    text = [refs[f.stem] for f in sorted(LIBRIVOX.glob("*.wav"))] + [phone_ref()]
    text += [cards[f.stem] for f in sorted(CARDS.glob("*.wav"))]
    return np.concatenate(parts), " ".join(text)


def five_minutes() -> bytes:
    one, _ = cycle()
    audio = np.tile(one, SECONDS * 16000 // len(one) + 1)[: SECONDS * 16000]
    return float_to_pcm16(audio)


@pytest.fixture(scope="module")
def soak_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("soak")
    with run_server(data) as srv:
        srv.data_dir = data  # type: ignore[attr-defined]
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
    # The server recorded exactly the same bytes for both sessions: no sample lost, doubled or shifted by a resume.
    recordings = [
        (soak_server.data_dir / "recordings" / c.session["id"] / "mic.pcm").read_bytes()  # type: ignore[attr-defined]
        for c in (cut, uncut)
    ]
    assert recordings[0] == recordings[1] == audio
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
    # The same text, up to decoding that depends on timing: a final is forced to start with the stable text its
    # partials agreed on, and partials are decoded at other moments in any two runs (the load ladder moves too).
    # Measured: two *uncut* runs side by side differed in 11 of 51 items (WER 0.10 between them) while long finals
    # could stop at their prefix; since that fix (WhisperDecoder.decode, expect_more) cut vs uncut differ in ~8
    # items, WER ~0.02, in both directions ("5 5." / "5 5. We'll", "Seven" / "7"). So the text is held to the
    # reference instead: the cut run is as accurate as the uncut one, on the three whole cycles.
    one, ref_cycle = cycle()
    whole_ms = SECONDS * 1000 // (len(one) // 16) * (len(one) // 16)
    ref = " ".join([ref_cycle] * (SECONDS * 16000 // len(one)))

    def text(view: TranscriptView) -> str:
        return " ".join(i.final or "" for i in view.finals() if i.start_ms < whole_ms)

    cut_wer, uncut_wer = wer(ref, text(cut_view)), wer(ref, text(ref_view))
    print(f"WER against the reference: cut {cut_wer:.3f}, uncut {uncut_wer:.3f}")
    assert cut_wer <= uncut_wer + 0.04
    assert [t["item_id"] for t in cut.summary["transcript"]] == [t["item_id"] for t in uncut.summary["transcript"]]
