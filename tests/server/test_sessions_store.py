"""The session store through real servers: finals survive kill -9, the HTTP API and exports, the CLI, and the
summary of a 10-minute meeting-like stream (real speech spread over ten minutes, scripted speech at the end)."""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import srt
import webvtt

from echopanel.audio.wav import read_audio
from echopanel.client import LiveClient, TranscriptView
from echopanel.client.stream import send_source, transcribe

from support import CARDS, LIBRIVOX, PHONE, ServerProcess, run_server

SR = 16000


def pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def librivox(n: str) -> np.ndarray:
    return read_audio(LIBRIVOX / f"sense_and_sensibility_01_austen_64kb-{n}.wav", SR)


def scripted_speech(tmp: Path) -> np.ndarray | None:
    """espeak-ng speaking sentences with known action items and a decision (None when espeak-ng is missing)."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        return None
    wav = tmp / "scripted.wav"
    text = (
        "I will send the budget report by Friday. Can you review the slides before tomorrow? "
        "We decided to launch the new website in March."
    )
    subprocess.run([espeak, "-s", "150", "-w", str(wav), text], check=True, capture_output=True)
    return read_audio(wav, SR)


def meeting(tmp: Path) -> tuple[np.ndarray, list[tuple[float, str]]]:
    """Ten minutes: one real clip at the start of every minute, silence between, scripted speech in minute 10."""
    cards = np.concatenate([read_audio(CARDS / f"00{n}.wav", SR) for n in range(1, 6)])
    phone = read_audio(PHONE / "sample.wav", SR)
    clips = [
        ("librivox 0870", librivox("0870")),
        ("cards", cards),
        ("phone", phone[: 20 * SR]),
        ("librivox 0880", librivox("0880")),
        ("librivox 0890", librivox("0890")),
        ("phone", phone[20 * SR :]),
        ("librivox 0920", librivox("0920")),
        ("cards", cards),
        ("librivox 0930", librivox("0930")),
    ]
    scripted = scripted_speech(tmp)
    clips.append(("scripted", scripted if scripted is not None else librivox("0870")))
    audio = np.zeros(600 * SR, np.float32)
    placed = []
    for minute, (name, clip) in enumerate(clips):
        at = minute * 60 * SR + SR
        audio[at : at + len(clip)] = clip[: 58 * SR]
        placed.append((at / SR, name))
    return audio, placed


async def stream(
    server: ServerProcess, audio: np.ndarray, **client: Any
) -> tuple[list[dict[str, Any]], TranscriptView]:
    events: list[dict[str, Any]] = []

    def keep(ev: dict[str, Any], view: TranscriptView) -> None:
        events.append(ev)

    async with LiveClient(server.url, sources=["mic"], session={"overflow": "block"}, **client) as c:
        view = await transcribe(c, {"mic": pcm16(audio)}, realtime=False, on_event=keep)
    return events, view


@pytest.fixture(scope="module")
def meeting_run(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    audio, placed = meeting(tmp_path_factory.mktemp("meeting"))
    events, view = asyncio.run(stream(server, audio))
    assert view.summary is not None and not view.violations and not view.errors
    return {"summary": view.summary, "events": events, "placed": placed, "view": view}


def test_summary_of_a_ten_minute_meeting(meeting_run: dict[str, Any]) -> None:
    summary = meeting_run["summary"]
    times = {t["item_id"]: t["start_ms"] for t in summary["transcript"]}
    picked = sorted(times[s["item_id"]] for s in summary["summary"])
    print(
        f"10-minute meeting: {len(summary['transcript'])} items, summary at {[p // 1000 for p in picked]} s, "
        f"finalize {summary['stats']['finalize_ms']}"
    )
    assert summary["status"] == "completed"
    assert picked[0] < 60_000, picked  # the first minute ...
    assert picked[-1] >= 540_000, picked  # ... and the last one
    assert len({p // 60_000 for p in picked}) >= 5  # and the stretch between
    assert all(s["item_id"] in times for key in ("summary", "action_items", "decisions") for s in summary[key])
    assert summary["topics"] and summary["entities"] and summary["speakers"]
    assert summary["stats"]["duration_ms"] > 540_000 and summary["stats"]["words"] > 100


def test_scripted_action_items_through_the_server(meeting_run: dict[str, Any]) -> None:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (scripts/setup.sh test installs it)")
    summary = meeting_run["summary"]
    last_minute = {t["item_id"] for t in summary["transcript"] if t["start_ms"] >= 540_000}
    actions = [a for a in summary["action_items"] if a["item_id"] in last_minute]
    decisions = [d for d in summary["decisions"] if d["item_id"] in last_minute]
    print("scripted minute:", [t["text"] for t in summary["transcript"] if t["item_id"] in last_minute])
    dues = {a["due"] for a in actions}
    assert "by Friday" in dues, actions
    assert any(a["owner"] == "you" for a in actions), actions
    assert len(decisions) == 1 and "launch" in decisions[0]["text"].lower()


async def test_http_api_and_exports(server: ServerProcess, meeting_run: dict[str, Any]) -> None:
    sid = meeting_run["summary"]["session_id"]
    async with httpx.AsyncClient(base_url=server.http, timeout=30) as http:
        listed = (await http.get("/v1/sessions")).json()["sessions"]
        assert sid in [s["id"] for s in listed]
        detail = (await http.get(f"/v1/sessions/{sid}")).json()
        assert detail["status"] == "completed" and detail["summary"]["session_id"] == sid
        items = detail["items"]
        assert [i["item_id"] for i in items] == [t["item_id"] for t in meeting_run["summary"]["transcript"]]
        assert all(i["speaker"] and i["text"] and i["end_ms"] >= i["start_ms"] for i in items)
        assert items[0]["words"]
        srt_text = (await http.get(f"/v1/sessions/{sid}/export", params={"format": "srt"})).text
        cues = list(srt.parse(srt_text))
        assert len(cues) == len(items)
        assert all(a.start <= b.start for a, b in itertools.pairwise(cues))
        assert all(c.end > c.start for c in cues)
        assert all(c.content.startswith(f"[{i['speaker']}] ") for c, i in zip(cues, items, strict=True))
        vtt = await http.get(f"/v1/sessions/{sid}/export", params={"format": "vtt"})
        assert vtt.headers["content-type"].startswith("text/vtt")
        captions = list(webvtt.from_buffer(io.StringIO(vtt.text)))
        assert [c.identifier for c in captions] == [i["item_id"] for i in items]
        assert [c.voice for c in captions] == [i["speaker"] for i in items]
        assert all(c.end > c.start for c in captions) and [c.start for c in captions] == sorted(
            c.start for c in captions
        )
        md = (await http.get(f"/v1/sessions/{sid}/export", params={"format": "md"})).text
        assert md.startswith(f"# Session {sid}") and "## Transcript" in md and "## Summary" in md
        body = json.loads((await http.get(f"/v1/sessions/{sid}/export")).text)
        assert body["session"]["id"] == sid and len(body["items"]) == len(items)
        bad = await http.get(f"/v1/sessions/{sid}/export", params={"format": "docx"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_format"
        assert (await http.get("/v1/sessions/sess_nope")).status_code == 404
        assert (await http.delete("/v1/sessions/sess_nope")).status_code == 404


async def test_sessions_api_needs_the_token(token_server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=token_server.http) as http:
        assert (await http.get("/v1/sessions")).status_code == 401
        assert (await http.get("/v1/sessions", headers={"Authorization": "Bearer wrong"})).status_code == 401
        ok = await http.get("/v1/sessions", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and isinstance(ok.json()["sessions"], list)
        assert (await http.delete("/v1/sessions/x")).status_code == 401


def cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "echopanel", "sessions", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_kill_9_keeps_every_final_the_client_received(tmp_path: Path) -> None:
    audio = np.concatenate(
        [np.concatenate([librivox(n), np.zeros(SR, np.float32)]) for n in ("0870", "0880", "0890", "0920")]
    )
    received: dict[str, str] = {}
    with run_server(tmp_path) as first:
        async with LiveClient(first.url, sources=["mic"], session={"overflow": "block"}) as client:
            sid = client.session["id"]
            sender = asyncio.create_task(send_source(client, "mic", pcm16(audio), realtime=False))
            async for ev in client.events():
                if ev["type"] == "response.done" and ev["text"]:
                    received[ev["item_id"]] = ev["text"]
                    if len(received) == 3:
                        async with httpx.AsyncClient(base_url=first.http, timeout=30) as http:
                            live = await http.get(f"/v1/sessions/{sid}", params={"words": "0"})
                            assert live.json()["status"] == "active" and "words" not in live.json()["items"][0]
                            refused = await http.delete(f"/v1/sessions/{sid}")
                            assert refused.status_code == 409 and refused.json()["error"]["code"] == "session_active"
                        first.proc.kill()  # SIGKILL: no shutdown, no finalization
                        first.proc.wait(10)
                        break
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
    assert len(received) == 3
    with run_server(tmp_path) as second:
        async with httpx.AsyncClient(base_url=second.http, timeout=30) as http:
            detail = (await http.get(f"/v1/sessions/{sid}")).json()
            assert detail["status"] == "interrupted" and detail["ended_at"] is not None
            stored = {i["item_id"]: i["text"] for i in detail["items"]}
            assert {k: stored.get(k) for k in received} == received  # every final the client had
            srt_text = (await http.get(f"/v1/sessions/{sid}/export", params={"format": "srt"})).text
            assert len(list(srt.parse(srt_text))) == len(stored)
            recordings = tmp_path / "recordings" / sid
            assert recordings.is_dir()
        # The CLI reads the same data directory (the server still runs: WAL lets both in).
        listed = cli(tmp_path, "list")
        assert listed.returncode == 0 and sid in listed.stdout and "interrupted" in listed.stdout
        shown = cli(tmp_path, "show", sid, "--json")
        assert shown.returncode == 0 and json.loads(shown.stdout)["status"] == "interrupted"
        exported = cli(tmp_path, "export", sid, "--format", "vtt")
        assert exported.returncode == 0 and len(list(webvtt.from_buffer(io.StringIO(exported.stdout)))) == len(stored)
        async with httpx.AsyncClient(base_url=second.http, timeout=30) as http:
            assert (await http.delete(f"/v1/sessions/{sid}")).status_code == 204
            assert (await http.get(f"/v1/sessions/{sid}")).status_code == 404
        assert not recordings.exists()
        assert cli(tmp_path, "show", sid).returncode == 1


async def test_openai_dialect_session_is_stored_when_the_client_hangs_up(server: ServerProcess) -> None:
    from openai import AsyncOpenAI

    pcm24 = pcm16(
        np.concatenate(
            [read_audio(LIBRIVOX / "sense_and_sensibility_01_austen_64kb-0880.wav", 24000), np.zeros(24000, np.float32)]
        )
    )
    client = AsyncOpenAI(base_url=f"{server.http}/v1", api_key="x", max_retries=0)
    async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        created = await conn.recv()
        sid = created.session.id  # type: ignore[union-attr]
        for i in range(0, len(pcm24), 4800):
            await conn.input_audio_buffer.append(audio=base64.b64encode(pcm24[i : i + 4800]).decode())
        async for ev in conn:
            if ev.type == "conversation.item.input_audio_transcription.completed":
                text = ev.transcript
                break
    async with httpx.AsyncClient(base_url=server.http, timeout=30) as http:
        for _ in range(100):
            detail = (await http.get(f"/v1/sessions/{sid}")).json()
            if detail["status"] != "active":
                break
            await asyncio.sleep(0.1)
    assert detail["status"] == "completed" and detail["dialect"] == "openai"
    assert [i["text"] for i in detail["items"]] == [text] and detail["items"][0]["speaker"] == "mic:S1"
    assert detail["summary"]["status"] == "completed"
