"""The analysis on a scripted meeting whose action items, decisions, risks, questions and names are known."""

from __future__ import annotations

from echopanel.analysis import Utterance, analyse
from echopanel.analysis.entities import entities, topics
from echopanel.analysis.extract import action_of, extract
from echopanel.analysis.summarize import summarize, target_length
from echopanel.analysis.text import Sentence, content_terms, sentences_of, split_sentences, stem

# (speaker, text); each line one utterance 6 s long.
MEETING = [
    ("mic:S1", "Good morning everyone, let's get started with the launch review for the mobile app."),
    ("system:S1", "Thanks. The beta build went out to two hundred testers on Monday."),
    ("system:S2", "Crash reports dropped by 40 percent since the last release."),
    ("mic:S1", "That's great news. What is still blocking the launch?"),
    ("system:S1", "The payment integration with Stripe is not finished, and that is a risk for the date."),
    ("system:S2", "I'm worried the app store review could delay us by a week."),
    ("mic:S1", "Okay. Priya will finish the payment integration by Friday."),
    ("system:S1", "Sure, I can do that."),
    ("mic:S1", "We decided to launch on March 14th if the review passes."),
    ("system:S2", "I'll send the release notes to the marketing team tomorrow."),
    ("mic:S1", "Can you also update the onboarding screens before the launch?"),
    ("system:S2", "Yes, no problem."),
    ("mic:S1", "Should we keep the old login flow for existing users?"),
    ("system:S1", "Let's go with the new login flow for everyone."),
    ("mic:S1", "Good. The launch review is done; the next review is on Thursday at 10 am."),
]


def utterances() -> list[Utterance]:
    return [
        Utterance(f"item_{n:03d}", spk.split(":")[0], spk, n * 6000, n * 6000 + 5500, text)
        for n, (spk, text) in enumerate(MEETING)
    ]


def items_of(findings: list[dict[str, object]]) -> list[str]:
    return [str(f["item_id"]) for f in findings]


def test_sentences_point_at_their_items() -> None:
    assert split_sentences("Okay. Priya will finish it. Done?") == ["Okay.", "Priya will finish it.", "Done?"]
    assert split_sentences("no punctuation at all") == ["no punctuation at all"]
    utts = [Utterance("a", "mic", None, 1000, 4000, "One two. Three four five six.")]
    s = sentences_of(utts)
    assert [x.item_id for x in s] == ["a", "a"] and s[0].start_ms == 1000 and s[1].end_ms <= 4000
    assert s[0].end_ms == s[1].start_ms
    assert stem("budgets") == stem("budget") and stem("deploying") == "deploy" and stem("stories") == "story"
    assert content_terms("Um, yeah, the budget budgets") == ["budget", "budget"]


def test_scripted_meeting_findings() -> None:
    report = analyse(utterances())
    assert items_of(report["action_items"]) == ["item_006", "item_009", "item_010"]
    owners = {f["item_id"]: (f["owner"], f["due"]) for f in report["action_items"]}
    assert owners["item_006"] == ("Priya", "by Friday")
    assert owners["item_009"] == ("system:S2", "tomorrow")  # "I'll" is the speaker
    assert owners["item_010"] == ("you", "before the launch") or owners["item_010"][0] == "you"
    assert items_of(report["decisions"]) == ["item_008", "item_013"]
    assert "item_004" in items_of(report["risks"]) and "item_005" in items_of(report["risks"])
    assert items_of(report["open_questions"]) == ["item_003", "item_012"]
    # Nothing is both an action and a decision; small talk ("Sure, I can do that.") is not an action.
    assert "item_007" not in items_of(report["action_items"])


def test_entities_and_topics() -> None:
    sentences = sentences_of(utterances())
    found = {e.text: e for e in entities(sentences)}
    assert found["Priya"].type == "PERSON" and found["Priya"].item_ids == ("item_006",)
    assert "Stripe" in found and found["Stripe"].item_ids == ("item_004",)
    assert found["40 percent"].type == "PERCENT"
    assert found["March 14th"].type == "DATE"
    assert found["Thursday"].type == "DATE"
    assert "Good" not in found and "Okay" not in found and "The" not in found  # sentence-initial words
    tops = {t.text: t for t in topics(sentences)}
    assert "launch" in tops and len(tops["launch"].item_ids) >= 4
    assert any("payment integration" == t for t in tops)
    launch = tops["launch"]
    assert launch.start_ms == 0 and launch.end_ms >= 13 * 6000  # first and last mention


def test_talk_time_per_speaker() -> None:
    report = analyse(utterances())
    rows = {r["speaker"]: r for r in report["speakers"]}
    assert rows["mic:S1"]["items"] == 7 and rows["mic:S1"]["talk_ms"] == 7 * 5500
    assert abs(sum(r["share"] for r in rows.values()) - 1.0) < 0.01
    turns = analyse(utterances(), {"mic:S1": 30000, "system:S1": 20000, "system:S2": 10000})["speakers"]
    assert (turns[0]["speaker"], turns[0]["talk_ms"]) == ("mic:S1", 30000)
    # Items without a speaker count under their source.
    bare = analyse([Utterance("x", "mic", None, 0, 1000, "hello there friends")])
    assert bare["speakers"][0]["speaker"] == "mic"


def long_meeting(minutes: int = 20) -> list[Utterance]:
    """A long meeting: the same dull filler everywhere, plus one distinctive sentence per minute."""
    topics_by_minute = [
        "quarterly budget forecast",
        "database migration plan",
        "customer support backlog",
        "hiring pipeline",
        "security audit findings",
        "mobile release schedule",
        "pricing experiment results",
        "office move logistics",
        "partner contract renewal",
        "analytics dashboard redesign",
        "incident postmortem actions",
        "onboarding documentation gaps",
        "cloud cost reduction",
        "accessibility review",
        "holiday coverage rota",
        "vendor evaluation shortlist",
        "team offsite agenda",
        "performance review calibration",
        "roadmap priorities",
        "final wrap up and next quarter goals",
    ]
    out = []
    for m in range(minutes):
        t = m * 60_000
        topic = topics_by_minute[m % len(topics_by_minute)]
        out.append(
            Utterance(
                f"m{m:02d}a",
                "mic",
                "mic:S1",
                t,
                t + 8000,
                f"Now the {topic}: we reviewed the "
                f"{topic} in detail and the {topic} needs careful attention from the team.",
            )
        )
        for k in range(5):
            out.append(
                Utterance(
                    f"m{m:02d}f{k}",
                    "system",
                    "system:S1",
                    t + 10_000 * (k + 1),
                    t + 10_000 * (k + 1) + 5000,
                    "Yeah okay, right, sounds good, thanks.",
                )
            )
    return out


def test_summary_covers_the_whole_meeting() -> None:
    utts = long_meeting(20)
    summary = summarize(utts)
    items = [s.item_id for s in summary]
    assert "m00a" in items and "m19a" in items, items  # the first and the last minutes are both there
    assert items == sorted(items)  # time order
    assert all(not i.startswith("m") or "f" not in i for i in items)  # filler never makes it
    # One sentence per slice: the opening minute, the closing one, 12 - 2 slices between (about 1.5 min each).
    assert len(summary) == 12 == max(target_length(20), 12)
    assert target_length(0) == 0 and target_length(4) == 3 and target_length(10_000) == 15


def test_action_item_patterns() -> None:
    def act(text: str) -> str | None:
        f = action_of(Sentence(text, "i", "mic:S1", 0, 0, 0))
        return None if f is None else f"{f.owner}|{f.due}"

    assert act("I will review the pull request by tomorrow.") == "mic:S1|by tomorrow"
    assert act("We need to book the venue.") == "we|None"
    assert act("Could you send me the slides?") == "you|None"
    assert act("John is going to call the customer next week.") == "John|next week"
    assert act("Please file a ticket for the crash.") == "you|None"
    assert act("Let's schedule a follow-up with legal.") == "we|None"
    assert act("I think it will be fine.") is None
    assert act("It will rain tomorrow.") is None
    assert act("We can talk about it some day.") is None
    assert act("How are you?") is None


def test_extract_is_total_and_empty_input() -> None:
    assert analyse([])["summary"] == [] and analyse([])["totals"]["items"] == 0
    out = extract(sentences_of(utterances()))
    seen = [f.item_id + f.text for fs in out.values() for f in fs]
    assert len(seen) == len(set(seen))  # a sentence lands in one list at most
