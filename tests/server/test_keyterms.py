"""Keyterms, the replacement list and settings that change mid-session, through the native protocol against a real
server, on real and synthetic speech (issue 14).

The names speech (tests/fixtures/audio/names) is synthetic (espeak-ng): it shows recall of rare names, not accuracy.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from echopanel.client import LiveClient
from echopanel.client.live import TranscriptView
from echopanel.client.stream import send_source, transcribe

from support import (
    CARDS,
    KEYTERMS,
    LIBRIVOX,
    NAMES,
    PHONE,
    ServerProcess,
    cards_refs,
    clips,
    librivox_refs,
    names_found,
    names_refs,
    normalize,
    wer,
)

BLOCK = {"overflow": "block"}


def repeats(text: str) -> list[str]:
    """Runs of the same one to three words three or more times in a row ("bye bye bye", "10 of 10 of 10 of")."""
    words = normalize(text).split()
    found = []
    for n in (1, 2, 3):
        for i in range(len(words) - 3 * n + 1):
            if words[i : i + n] == words[i + n : i + 2 * n] == words[i + 2 * n : i + 3 * n]:
                found.append(" ".join(words[i : i + 3 * n]))
    return found


async def session_text(server: ServerProcess, pcm: bytes, **session: Any) -> TranscriptView:
    async with LiveClient(server.url, sources=["mic"], session={**BLOCK, **session}) as client:
        view = await transcribe(client, {"mic": pcm}, realtime=False)
    assert not view.errors, view.errors
    assert view.violations == []  # deltas (replacements applied) still concatenate to each final
    return view


async def test_keyterms_raise_the_recall_of_rare_names(server: ServerProcess) -> None:
    refs = names_refs()
    pcm = clips(NAMES, sorted(refs))
    plain = names_found((await session_text(server, pcm)).text())
    hinted = names_found((await session_text(server, pcm, keyterms=list(KEYTERMS))).text())
    assert len(plain) <= 2, plain
    assert len(hinted) >= 6 and len(hinted) >= len(plain) + 4, (plain, hinted)


async def test_keyterms_are_never_inserted_into_speech_that_does_not_say_them(server: ServerProcess) -> None:
    refs = librivox_refs()
    pcm = clips(LIBRIVOX, sorted(refs))
    view = await session_text(server, pcm, keyterms=list(KEYTERMS))
    assert names_found(view.text()) == set(), view.text()
    assert wer(" ".join(refs[s] for s in sorted(refs)), view.text()) <= 0.12, view.text()
    call = await session_text(server, clips(PHONE, ["sample"]), keyterms=list(KEYTERMS))
    assert names_found(call.text()) == set(), call.text()


async def test_short_clips_do_not_repeat_with_keyterms_set(server: ServerProcess) -> None:
    refs = cards_refs()
    for stem in sorted(refs):  # one session per 1-3 s clip: nothing before it to lean on
        view = await session_text(server, clips(CARDS, [stem], gap_s=1.5), keyterms=list(KEYTERMS))
        text = view.text()
        assert repeats(text) == repeats(refs[stem]), (stem, text)
        assert len(normalize(text).split()) <= len(refs[stem].split()) + 2, (stem, text)
        assert names_found(text) == set(), (stem, text)


async def test_replacements_rewrite_finals_and_stable_deltas_alike(server: ServerProcess) -> None:
    rules = {"quarterly numbers": "Q3 figures", "contract": "MSA"}
    view = await session_text(server, clips(NAMES, ["01", "02"]), keyterms=list(KEYTERMS), replace=rules)
    text = view.text()
    assert "Q3 figures" in text and "MSA" in text and "contract" not in text.lower(), text
    words = [w["word"] for item in view.finals() for w in item.words]
    assert "figures" not in words and any(w.startswith("Q3 figures") for w in words), words


async def next_of(client: LiveClient, kind: str, view: TranscriptView, timeout_s: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        ev = await asyncio.wait_for(client.recv(), deadline - time.monotonic())
        view.apply(ev)
        assert ev.get("type") != "error", ev
        if ev.get("type") == kind:
            return ev


async def finals_of(client: LiveClient, view: TranscriptView, n: int) -> list[str]:
    texts = []
    while len(texts) < n:
        texts.append((await next_of(client, "response.done", view))["text"])
    return texts


async def test_session_update_mid_stream_changes_keyterms_and_turn_detection(server: ServerProcess) -> None:
    view = TranscriptView()
    names = ["02", "05", "07", "08"]
    async with LiveClient(server.url, sources=["mic"], session=BLOCK) as client:
        await send_source(client, "mic", clips(NAMES, names), realtime=False)
        before = await finals_of(client, view, len(names))
        await client.send({"type": "session.update", "session": {"keyterms": list(KEYTERMS)}})
        updated = await next_of(client, "session.updated", view)
        assert updated["session"]["keyterms"] == list(KEYTERMS)
        await send_source(client, "mic", clips(NAMES, names), realtime=False)
        after = await finals_of(client, view, len(names))

        # Turn detection: two clips 1 s apart are two turns at the default 300 ms of silence, one turn at 1.5 s.
        pair = clips(CARDS, ["001"], gap_s=1.0) + clips(CARDS, ["003"], gap_s=2.5)
        await send_source(client, "mic", pair, realtime=False)
        split = await finals_of(client, view, 2)
        td = {"type": "server_vad", "silence_duration_ms": 1500}
        await client.send({"type": "session.update", "session": {"turn_detection": td}})
        updated = await next_of(client, "session.updated", view)
        assert updated["session"]["turn_detection"]["silence_duration_ms"] == 1500
        await send_source(client, "mic", pair, realtime=False)
        joined = await finals_of(client, view, 1)

        # No turn detection: nothing ends until the client commits.
        await client.send({"type": "session.update", "session": {"turn_detection": None}})
        assert (await next_of(client, "session.updated", view))["session"]["turn_detection"] is None
        await send_source(client, "mic", pair, realtime=False)
        await asyncio.sleep(2.0)
        assert not [i for i in view.items.values() if i.final is None and i.stable], "ended without a commit"
        await client.commit("mic")
        committed = await finals_of(client, view, 1)
    found_before = set().union(*(names_found(t) for t in before))
    found_after = set().union(*(names_found(t) for t in after))
    assert len(found_after) >= len(found_before) + 3, (before, after)
    assert [len(normalize(t).split()) for t in split] == [3, 3], split
    assert len(normalize(joined[0]).split()) == 6, joined
    assert len(normalize(committed[0]).split()) == 6, committed
    assert view.violations == []


async def test_a_keyterm_list_past_its_bound_is_refused_and_the_session_goes_on(server: ServerProcess) -> None:
    async with LiveClient(server.url, sources=["mic"], session=BLOCK) as client:
        await client.send({"type": "session.update", "event_id": "big", "session": {"keyterms": ["x"] * 51}})
        ev = await client.recv()
        while ev["type"] != "error":
            ev = await client.recv()
        assert (ev["code"], ev["param"], ev["event_id"]) == ("invalid_update", "session.keyterms", "big")
        view = await transcribe(client, {"mic": clips(CARDS, ["001"])}, realtime=False)
    assert re.search(r"\bclubs\b", view.text().lower()), view.text()
