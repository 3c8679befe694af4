"""The analysis part of ``session.summary``: a pure function of the whole transcript (every item, every minute)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from echopanel.analysis.entities import entities, topics
from echopanel.analysis.extract import extract
from echopanel.analysis.summarize import summarize
from echopanel.analysis.text import Utterance, sentences_of, words

ANALYSIS_VERSION = 1


def talk_time(utterances: list[Utterance], turns: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """Per speaker: talk time (from speaker turns when given, else the items' spans), share, items (where they
    are the main speaker) and words. Items without a speaker count under their source's name ("mic", "system")."""
    by: dict[str, dict[str, Any]] = {}
    for u in utterances:
        label = u.speaker or u.source
        row = by.setdefault(label, {"speaker": label, "source": u.source, "talk_ms": 0, "items": 0, "words": 0})
        row["items"] += 1
        row["words"] += len(words(u.text))
        row["talk_ms"] += max(0, u.end_ms - u.start_ms)
    if turns:
        for label, ms in turns.items():
            # A speaker heard only inside others' items (overlapping talk) still has talk time.
            row = by.setdefault(label, {"speaker": label, "source": label.split(":")[0], "items": 0, "words": 0})
            row["talk_ms"] = ms
    total = sum(r["talk_ms"] for r in by.values()) or 1
    rows = sorted(by.values(), key=lambda r: (-r["talk_ms"], r["speaker"]))
    for r in rows:
        r["share"] = round(r["talk_ms"] / total, 3)
    return rows


def analyse(utterances: list[Utterance], turns: dict[str, int] | None = None) -> dict[str, Any]:
    """Speakers, summary, action items, decisions, risks, open questions, entities, topics and totals."""
    utts = sorted((u for u in utterances if u.text.strip()), key=lambda u: (u.start_ms, u.source, u.item_id))
    sentences = sentences_of(utts)
    findings = extract(sentences)
    by_item: dict[str, list[str]] = defaultdict(list)
    for u in utts:
        by_item[u.item_id].append(u.text)
    return {
        "analysis_version": ANALYSIS_VERSION,
        "speakers": talk_time(utts, turns),
        "summary": [
            {"text": s.text, "item_id": s.item_id, "speaker": s.speaker, "start_ms": s.start_ms}
            for s in summarize(utts)
        ],
        **{k: [f.as_dict() for f in v] for k, v in findings.items()},
        "entities": [e.as_dict() for e in entities(sentences)],
        "topics": [t.as_dict() for t in topics(sentences)],
        "totals": {
            "items": len(utts),
            "sentences": len(sentences),
            "words": sum(len(words(u.text)) for u in utts),
            "duration_ms": max((u.end_ms for u in utts), default=0) - min((u.start_ms for u in utts), default=0),
            "speakers": len({u.speaker for u in utts if u.speaker}),
        },
    }
