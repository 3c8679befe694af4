"""Exports of a stored session: JSON, Markdown, SubRip (SRT) and WebVTT. Pure functions of the stored data.

Cues are the session's items in time order (superseded items are left out when a repaired one covers them); each
cue names its speaker (or source). Overlapping items (two sources at once) stay separate cues; players show both.
"""

from __future__ import annotations

import json
from typing import Any

from echopanel.storage.store import SessionRecord, StoredItem

FORMATS = {
    "json": "application/json",
    "md": "text/markdown; charset=utf-8",
    "srt": "application/x-subrip",
    "vtt": "text/vtt; charset=utf-8",
}


def cue_items(items: list[StoredItem]) -> list[StoredItem]:
    """Items with text, in time order; cues get at least 1 ms so times always increase from start to end."""
    return sorted((i for i in items if i.text.strip()), key=lambda i: (i.start_ms, i.source, i.item_id))


def _who(item: StoredItem) -> str:
    return item.speaker or item.source


def _clock(ms: int, sep: str) -> str:
    ms = max(0, int(ms))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _cue_text(item: StoredItem) -> str:
    # A blank line or "-->" inside a cue would end it early in both formats.
    return " ".join(item.text.split()).replace("-->", "->")


def to_srt(items: list[StoredItem]) -> str:
    out = []
    for n, item in enumerate(cue_items(items), 1):
        end = max(item.end_ms, item.start_ms + 1)
        out.append(f"{n}\n{_clock(item.start_ms, ',')} --> {_clock(end, ',')}\n[{_who(item)}] {_cue_text(item)}\n")
    return "\n".join(out)


def to_vtt(items: list[StoredItem]) -> str:
    out = ["WEBVTT", ""]
    for item in cue_items(items):
        end = max(item.end_ms, item.start_ms + 1)
        voice = _who(item).replace(">", "")
        out.append(
            f"{item.item_id}\n{_clock(item.start_ms, '.')} --> {_clock(end, '.')}\n<v {voice}>{_cue_text(item)}\n"
        )
    return "\n".join(out)


def to_json(record: SessionRecord, items: list[StoredItem], summary: dict[str, Any] | None) -> str:
    body = {
        "session": record.as_dict(),
        "items": [i.as_dict() for i in cue_items(items)],
        "summary": summary,
    }
    return json.dumps(body, ensure_ascii=False, indent=1)


def _mmss(ms: int) -> str:
    s = max(0, ms) // 1000
    return f"{s // 3600:d}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


def to_markdown(record: SessionRecord, items: list[StoredItem], summary: dict[str, Any] | None) -> str:
    lines = [f"# Session {record.id}", "", f"- status: {record.status}", f"- sources: {', '.join(record.sources)}"]
    times = {i.item_id: i.start_ms for i in items}
    if summary:
        speakers = summary.get("speakers") or []
        if speakers:
            lines += ["", "## Speakers", ""]
            lines += [
                f"- {s['speaker']}: {_mmss(s['talk_ms'])} ({s['share']:.0%}), {s['items']} items" for s in speakers
            ]
        sections = [
            ("Summary", "summary"),
            ("Action items", "action_items"),
            ("Decisions", "decisions"),
            ("Risks", "risks"),
            ("Open questions", "open_questions"),
        ]
        for title, key in sections:
            entries = summary.get(key) or []
            if not entries:
                continue
            lines += ["", f"## {title}", ""]
            for e in entries:
                who = e.get("owner") or e.get("speaker") or ""
                due = f" (due {e['due']})" if e.get("due") else ""
                at = _mmss(times.get(e["item_id"], e.get("start_ms", 0)))
                lines.append(f"- [{at}] {e['text']}{due}" + (f" — {who}" if who else ""))
        if summary.get("topics"):
            lines += ["", "## Topics", "", ", ".join(t["text"] for t in summary["topics"])]
        if summary.get("entities"):
            lines += [
                "",
                "## Names and dates",
                "",
                ", ".join(f"{e['text']} ({e['type']})" for e in summary["entities"]),
            ]
    lines += ["", "## Transcript", ""]
    for item in cue_items(items):
        lines.append(f"**[{_mmss(item.start_ms)}] {_who(item)}:** {' '.join(item.text.split())}  ")
    return "\n".join(lines) + "\n"


def export(fmt: str, record: SessionRecord, items: list[StoredItem], summary: dict[str, Any] | None) -> str:
    if fmt == "srt":
        return to_srt(items)
    if fmt == "vtt":
        return to_vtt(items)
    if fmt == "md":
        return to_markdown(record, items, summary)
    if fmt == "json":
        return to_json(record, items, summary)
    raise ValueError(f"unknown export format {fmt!r}; use one of {sorted(FORMATS)}")
