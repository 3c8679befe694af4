"""Exports parsed back with real parsers (srt, webvtt-py): times increase, speakers appear, text survives."""

from __future__ import annotations

import io
import json

import srt
import webvtt

from echopanel.analysis.export import FORMATS, export, to_markdown, to_srt, to_vtt
from echopanel.storage.store import SessionRecord, StoredItem

RECORD = SessionRecord("sess_x", "completed", 1.0, ("mic", "system"), 16000)


def items() -> list[StoredItem]:
    return [
        StoredItem("sess_x", "item_system_00001", "system", "Hello --> everyone.\n\nWelcome.", 500, 2500, "system:S1"),
        StoredItem("sess_x", "item_mic_00001", "mic", "Thanks, glad to be here.", 2600, 4000, "mic:S1"),
        StoredItem("sess_x", "item_mic_00002", "mic", "   ", 4100, 4200, "mic:S1"),  # no text: no cue
        StoredItem("sess_x", "item_system_00002", "system", "Over an hour in.", 3_723_004, 3_725_000, None),
        StoredItem("sess_x", "item_mic_00003", "mic", "Zero length.", 3_726_000, 3_726_000, "mic:S1"),
    ]


def test_srt_parses_with_increasing_times_and_speakers() -> None:
    cues = list(srt.parse(to_srt(items())))
    assert [c.index for c in cues] == [1, 2, 3, 4]
    starts = [c.start.total_seconds() for c in cues]
    assert starts == sorted(starts) and all(c.end > c.start for c in cues)
    assert cues[0].content == "[system:S1] Hello -> everyone. Welcome."
    assert cues[1].content.startswith("[mic:S1] ")
    assert cues[2].content == "[system] Over an hour in."  # no speaker: the source
    assert cues[2].start.total_seconds() == 3723.004


def test_vtt_parses_with_voices() -> None:
    vtt = webvtt.from_buffer(io.StringIO(to_vtt(items())))
    cues = list(vtt)
    assert len(cues) == 4
    assert [c.identifier for c in cues] == [
        "item_system_00001",
        "item_mic_00001",
        "item_system_00002",
        "item_mic_00003",
    ]
    assert all(c.end > c.start for c in cues)  # fixed-width HH:MM:SS.mmm: text order is time order
    assert [c.start for c in cues] == sorted(c.start for c in cues)
    assert cues[0].voice == "system:S1" and cues[1].voice == "mic:S1"
    assert cues[0].text == "Hello -> everyone. Welcome."
    assert cues[2].start == "01:02:03.004"


def test_json_and_markdown() -> None:
    summary = {
        "speakers": [{"speaker": "mic:S1", "talk_ms": 61_000, "share": 0.6, "items": 2}],
        "summary": [{"text": "Welcome.", "item_id": "item_system_00001", "speaker": "system:S1", "start_ms": 500}],
        "action_items": [
            {
                "text": "I'll send it.",
                "item_id": "item_mic_00001",
                "speaker": "mic:S1",
                "owner": "mic:S1",
                "due": "by Friday",
            }
        ],
        "topics": [{"text": "launch"}],
        "entities": [{"text": "Friday", "type": "DATE"}],
    }
    body = json.loads(export("json", RECORD, items(), summary))
    assert body["session"]["id"] == "sess_x" and len(body["items"]) == 4 and body["summary"] == summary
    md = to_markdown(RECORD, items(), summary)
    assert "## Action items" in md and "- [00:02] I'll send it. (due by Friday) — mic:S1" in md
    assert "**[00:00] system:S1:** Hello --> everyone. Welcome." in md and "1:02:03" in md
    assert "- mic:S1: 01:01 (60%), 2 items" in md
    assert set(FORMATS) == {"json", "md", "srt", "vtt"}
