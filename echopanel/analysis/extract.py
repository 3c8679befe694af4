"""Action items, decisions, risks and open questions: sentence patterns of spoken meeting English.

Rule-based on purpose (docs/architecture.md): the phrases people use for these in meetings are few and explicit
("I'll send...", "can you check...", "let's go with...", "we decided...", "my concern is..."), Whisper punctuates
and capitalises, and rules are predictable, fast and testable; a statistical model would add a large dependency for
little gain on these four lists. Each finding points at the item (utterance) it came from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from echopanel.analysis.text import Sentence, words

_DAYS = r"monday|tuesday|wednesday|thursday|friday|saturday|sunday"
_MONTHS = r"january|february|march|april|may|june|july|august|september|october|november|december"
_DUE = re.compile(
    rf"\b(?:by|before|until|due|no later than)\s+(?:the\s+)?(?:end of (?:the\s+)?(?:day|week|month|quarter|sprint)|"
    rf"(?:next|this)\s+(?:week|month|{_DAYS})|{_DAYS}|tomorrow|tonight|today|(?:{_MONTHS})\s+\d{{1,2}}(?:st|nd|rd|th)?|"
    rf"\d{{1,2}}(?::\d{{2}})?\s*(?:am|pm|o'clock)|noon|eod|cob)\b"
    rf"|\b(?:tomorrow|tonight|later today|next week|this week|end of (?:the\s+)?(?:day|week|month)|asap)\b",
    re.IGNORECASE,
)
# Verbs that, after "I will" / "we should", describe a state or a guess rather than a task.
_NOT_TASKS = frozenset(
    "be see know think guess hope believe wonder feel assume suppose probably definitely never always still also "
    "just really not have".split()
)
_MODAL = (
    r"(?:will|'ll|’ll|shall|need to|needs to|have to|has to|must|should|am going to|'m going to|’m going to|"
    r"are going to|'re going to|’re going to|is going to|'s going to|’s going to|can|could)"
)
_SUBJECT = r"(?P<subject>(?i:i|we|you|he|she|they|someone|somebody)|[A-Z][a-z]+)"
_COMMITMENT = re.compile(rf"\b{_SUBJECT}\s*{_MODAL}\s+(?:also\s+|then\s+|just\s+|please\s+)?(?P<verb>[A-Za-z]+)")
_REQUEST = re.compile(
    r"\b(?:can|could|would|will)\s+(?P<subject>you|someone|somebody|(?-i:[A-Z][a-z]+))\s+(?:(?:please|also|just|quickly)\s+)*(?P<verb>[A-Za-z]+)",
    re.IGNORECASE,
)
_LETS = re.compile(r"\b(?:let's|let’s|let us)\s+(?P<verb>[A-Za-z]+)", re.IGNORECASE)
_PLEASE = re.compile(r"(?:^|[,.;]\s*)please\s+(?P<verb>[A-Za-z]+)", re.IGNORECASE)
_MARKER = re.compile(
    r"\b(?:action items?|to-?dos?|follow[- ]ups?|next steps?|take(?:s)? care of|assign(?:ed)? to)\b", re.I
)

_DECISION = re.compile(
    r"\b(?:(?:we|i|they)(?:'ve|’ve| have)?\s+(?:just\s+)?(?:decided|agreed|settled on|chose|chosen|concluded|"
    r"approved|signed off)|decision (?:is|was|has been)|(?:let's|let’s|we'll|we’ll|we will|we're|we’re|we are)\s+"
    r"(?:going to\s+)?go(?:ing)? with|(?:it's|it’s|that's|that’s) (?:decided|settled|agreed|final)|the plan is|"
    r"we(?:'re| are) not going to|agreed[.!]|sounds like a plan|final answer)\b",
    re.IGNORECASE,
)
_RISK = re.compile(
    r"\b(?:risks?|risky|concerns?|concerned|worried|worry|worries|blockers?|blocked|blocking|danger|dangerous|"
    r"delays?|delayed|behind schedule|slip(?:s|ped|ping)?|might not|may not|won't be able|can't|cannot|unclear|"
    r"uncertain|not sure|depends on|dependency|bottleneck|fail(?:s|ed|ure|ing)?|problems?|issues?|broken|"
    r"over budget|deadline)\b",
    re.IGNORECASE,
)
_QUESTION_WORDS = re.compile(
    r"^(?:so\s+|and\s+|but\s+|okay\s+|well\s+)?(?:what|why|how|when|where|who|which|should|do|does|did|is|are|can|"
    r"could|would|will|have|has|any)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str  # action | decision | risk | question
    text: str
    item_id: str
    speaker: str | None
    start_ms: int
    owner: str | None = None  # actions: who will do it ("speaker" label, a name, "we", "you")
    due: str | None = None  # actions: the deadline phrase, if any

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "text": self.text,
            "item_id": self.item_id,
            "speaker": self.speaker,
            "start_ms": self.start_ms,
        }
        if self.kind == "action":
            out["owner"] = self.owner
            out["due"] = self.due
        return out


def _owner(subject: str, speaker: str | None) -> str:
    s = subject.lower()
    if s == "i":
        return speaker or "speaker"
    if s in ("we", "you", "someone", "somebody", "he", "she", "they"):
        return s
    return subject


def action_of(s: Sentence) -> Finding | None:
    """The action item stated in one sentence, or None."""
    text = s.text.strip()
    due_m = _DUE.search(text)
    due = due_m.group(0) if due_m else None
    question = text.endswith("?")
    m = _REQUEST.search(text)
    if m and m.group("verb").lower() not in _NOT_TASKS and (question or due):
        return Finding("action", text, s.item_id, s.speaker, s.start_ms, _owner(m.group("subject"), s.speaker), due)
    if not question:
        for m in _COMMITMENT.finditer(text):
            subject, verb = m.group("subject"), m.group("verb").lower()
            if subject.lower() in _NON_NAMES or verb in _NOT_TASKS or verb in _NON_NAMES:
                continue
            modal = m.group(0)[len(subject) :].strip().lower()
            if modal.startswith(("can", "could")) and not due:
                continue  # "we can do X" is an option, not a commitment, unless it has a deadline
            return Finding("action", text, s.item_id, s.speaker, s.start_ms, _owner(subject, s.speaker), due)
        m = _LETS.search(text)
        if m and m.group("verb").lower() not in _NOT_TASKS | _FLOW_VERBS:
            return Finding("action", text, s.item_id, s.speaker, s.start_ms, "we", due)
        m = _PLEASE.search(text)
        if m and m.group("verb").lower() not in _NOT_TASKS:
            return Finding("action", text, s.item_id, s.speaker, s.start_ms, "you", due)
    if _MARKER.search(text) and len(words(text)) >= 4:
        return Finding("action", text, s.item_id, s.speaker, s.start_ms, None, due)
    return None


# "Let's get started", "let's move on": running the meeting, not tasks.
_FLOW_VERBS = frozenset("go get start begin move say see talk wrap continue recap kick hear".split())

# Capitalised words that start sentences or clauses and are not names.
_NON_NAMES = frozenset(
    "it this that there here what who which then so and but or if when maybe also everyone everybody nobody "
    "nothing something anything everything somebody one the a an ok okay yes no yeah well now today tomorrow".split()
)


def is_decision(s: Sentence) -> bool:
    return bool(_DECISION.search(s.text)) and not s.text.rstrip().endswith("?")


def is_risk(s: Sentence) -> bool:
    return bool(_RISK.search(s.text)) and len(words(s.text)) >= 4


def is_question(s: Sentence) -> bool:
    t = s.text.strip()
    return t.endswith("?") and len(words(t)) >= 4 and bool(_QUESTION_WORDS.search(t))


def extract(sentences: list[Sentence]) -> dict[str, list[Finding]]:
    """Action items, decisions, risks and open questions, each in time order (a sentence lands in one list at most,
    in that order of precedence; a question that asks someone to do something by a date is an action)."""
    out: dict[str, list[Finding]] = {"action_items": [], "decisions": [], "risks": [], "open_questions": []}
    for s in sentences:
        action = action_of(s)
        if is_decision(s):
            out["decisions"].append(Finding("decision", s.text, s.item_id, s.speaker, s.start_ms))
        elif action is not None:
            out["action_items"].append(action)
        elif is_question(s):
            out["open_questions"].append(Finding("question", s.text, s.item_id, s.speaker, s.start_ms))
        elif is_risk(s):
            out["risks"].append(Finding("risk", s.text, s.item_id, s.speaker, s.start_ms))
    return out
