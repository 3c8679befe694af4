"""Speaker labels through the real server: live labels on ``response.done``, final ones in ``session.summary``.

Audio goes in with the client's fast mode (``overflow: block``: as fast as the server takes it, nothing shed); the
utterances and their labels are the same as at real-time pace, since both come from the audio, not the clock.
The tests have a server of their own: the degrade level is server-wide and live labels pause under load (level >= 1),
so load left by other tests on a shared server would take away the live labels checked here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from speaker_streams import AUDIO, four_speaker_stream, read

from echopanel.client import LiveClient, TranscriptView
from echopanel.client.stream import transcribe
from echopanel.speakers.metrics import Segment, diarization_error_rate, read_rttm
from echopanel.speakers.tracker import SpeakerTurn, main_speaker

from support import ServerProcess, run_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with run_server(tmp_path_factory.mktemp("speakers")) as srv:
        yield srv


def pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()


async def run_session(server: ServerProcess, audio: np.ndarray) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    events: list[dict[str, Any]] = []

    def keep(ev: dict[str, Any], view: TranscriptView) -> None:
        events.append(ev)

    async with LiveClient(server.url, sources=["mic"], session={"overflow": "block"}) as client:
        view = await transcribe(client, {"mic": pcm16(audio)}, realtime=False, on_event=keep)
    assert view.summary is not None and not view.violations
    return events, view.summary


def turns_of(summary: dict[str, Any]) -> list[Segment]:
    return [(t["start_ms"] / 1000, t["end_ms"] / 1000, t["speaker"]) for t in summary["speaker_turns"]]


def items_of(summary: dict[str, Any]) -> list[Segment]:
    return [(t["start_ms"] / 1000, t["end_ms"] / 1000, t["speaker"]) for t in summary["transcript"] if t["speaker"]]


def frames(turns: list[Segment]) -> dict[int, str]:
    """10 ms frame -> speaker."""
    return {f: s for a, b, s in turns for f in range(round(a * 100), round(b * 100))}


def turn_agreement(events: list[dict[str, Any]], summary: dict[str, Any]) -> float:
    """Share of speech time whose live label (``response.done.speaker_turns``, as sent) is the final one."""
    live = frames(
        [
            (t["start_ms"] / 1000, t["end_ms"] / 1000, t["speaker"])
            for e in events
            if e["type"] == "response.done"
            for t in e.get("speaker_turns", [])
        ]
    )
    final = frames(turns_of(summary))
    return sum(final.get(f) == s for f, s in live.items()) / len(live)


def live_agreement(events: list[dict[str, Any]], summary: dict[str, Any]) -> float:
    """Share of the items' speech time whose live item label (``response.done.speaker``) is the final one."""
    live = {e["item_id"]: e["speaker"] for e in events if e["type"] == "response.done" and e["text"]}
    total = same = 0
    for t in summary["transcript"]:
        ms = t["end_ms"] - t["start_ms"]
        total += ms
        same += ms if live.get(t["item_id"]) == t["speaker"] else 0
    return same / total


async def test_phone_call_labels_through_the_server(server: ServerProcess) -> None:
    events, summary = await run_session(server, read("phone/sample.wav"))
    dones = [e for e in events if e["type"] == "response.done" and e["text"]]
    assert dones and all(e["speaker"] is not None and e["speaker"].startswith("mic:S") for e in dones)
    updates = [e for e in events if e["type"] == "speaker.updated"]
    summary_at = events.index(summary)
    assert all(events.index(u) < summary_at for u in updates)  # settled before the summary
    final = {t["item_id"]: t["speaker"] for t in summary["transcript"]}
    for u in updates:
        assert final[u["item_id"]] == u["speaker"]
    ref = read_rttm(AUDIO / "phone/sample.rttm")
    der_turns = diarization_error_rate(ref, turns_of(summary), collar=0.25)
    der_items = diarization_error_rate(ref, items_of(summary), collar=0.25)
    agree = turn_agreement(events, summary)
    der_live = diarization_error_rate(
        ref, [(t["start_ms"] / 1000, t["end_ms"] / 1000, t["speaker"]) for e in dones for t in e["speaker_turns"]]
    )
    print(
        f"phone through the server: final DER {der_turns.der:.3f} (speaker turns; {der_items.der:.3f} with one label "
        f"per item), live DER {der_live.der:.3f}; live = final on {agree:.0%} of speech time "
        f"({live_agreement(events, summary):.0%} by item label); {len(dones)} items, {len(updates)} speaker.updated"
    )
    assert len({s for _, _, s in turns_of(summary)}) == 2
    assert der_turns.der <= 0.20
    assert agree >= 0.80
    talk = {s["speaker"]: s["talk_ms"] for s in summary["speakers"]}
    assert len(talk) == 2 and all(ms > 5000 for ms in talk.values())


async def test_four_real_speakers_through_the_server(server: ServerProcess) -> None:
    stream = four_speaker_stream()
    events, summary = await run_session(server, stream.audio)
    turns = [SpeakerTurn(a, b, s) for a, b, s in turns_of(summary)]
    assert len({t.speaker for t in turns}) == 4, {t.speaker for t in turns}

    def clip(start: float, end: float) -> list[SpeakerTurn]:
        return [
            SpeakerTurn(max(t.start_s, start), min(t.end_s, end), t.speaker)
            for t in turns
            if t.end_s > start and t.start_s < end
        ]

    main = [main_speaker(clip(a, b)) for a, b, _ in stream.truth]
    pairs = set(zip((s for _, _, s in stream.truth), main, strict=True))
    assert len(pairs) == 4 == len({lab for _, lab in pairs}), pairs  # one label per true speaker and back
    der = diarization_error_rate(stream.truth, turns_of(summary), collar=0.25)
    items = summary["transcript"]
    # Every item's final label is the label of the true speaker of the turn it lies in.
    label_of = dict(pairs)
    wrong = [
        t["item_id"]
        for t in items
        for a, b, who in stream.truth
        if a <= (t["start_ms"] + t["end_ms"]) / 2000 < b and t["speaker"] != label_of[who]
    ]
    print(
        f"four speakers through the server: {len(stream.truth)} turns, final DER {der.der:.3f}, "
        f"{len(wrong)}/{len(items)} items mislabelled, live = final on {live_agreement(events, summary):.0%}"
    )
    assert der.der <= 0.10
    assert len(wrong) <= 1
