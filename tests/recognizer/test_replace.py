"""The replacement list: whole words, longest key first, append-only deltas that still concatenate to the final."""

from __future__ import annotations

from echopanel.events import Word
from echopanel.recognizer.replace import Replacements, Rewriter

RULES = Replacements.of({"post gress": "Postgres", "echo panel": "EchoPanel", "k8s": "Kubernetes", "post": "Post"})


def test_whole_words_case_and_edge_punctuation() -> None:
    r = Replacements.of({"post gress": "Postgres"})
    assert r.apply("We run Post gress, and post-gress.") == "We run Postgres, and post-gress."
    assert r.apply(" postgresql post gresses") == " postgresql post gresses"  # never inside a word
    assert r.apply('"Post gress"?') == '"Postgres"?'


def test_the_longest_key_wins_left_to_right() -> None:
    assert RULES.apply(" post gress and post office") == " Postgres and Post office"


def test_no_rules_pass_text_through_unchanged() -> None:
    w = Rewriter()
    assert [w.stable(d) for d in ["Hello", " there"]] == ["Hello", " there"]
    words = (Word("Hello", 0, 100, 0.9),)
    assert w.final("Hello there friend", words) == ("Hello there friend", words)


def test_a_word_that_may_start_a_key_is_held_until_the_next_word_settles_it() -> None:
    w = Rewriter(RULES)
    assert w.stable("We use") == "We use"
    assert w.stable(" post") == ""  # "post gress" may follow
    assert w.tentative(" for") == " Post for"
    assert w.stable(" gress") == " Postgres"
    assert w.stable(" and echo") == " and"
    assert w.stable(" chamber") == " echo chamber"


def test_deltas_concatenate_to_the_final_whatever_the_cut_points() -> None:
    raw = "So echo panel talks to post gress on k8s, and post it."
    expected = "So EchoPanel talks to Postgres on Kubernetes, and Post it."
    words = raw.split(" ")
    for cut in range(1, len(words)):
        w = Rewriter(RULES)
        deltas = [w.stable(" ".join(words[:cut]))]
        for word in words[cut:-2]:
            deltas.append(w.stable(" " + word))
        final, _ = w.final(raw, ())
        deltas.append(final[len(w.sent) :])
        assert final == expected
        assert "".join(deltas) == final


def test_a_held_word_the_final_does_not_continue_is_sent_as_it_was_said() -> None:
    w = Rewriter(RULES)
    assert w.stable("Our echo") == "Our"
    final, _ = w.final("Our echo.", ())
    assert final == "Our echo."


def test_a_final_that_rewrote_sent_words_keeps_what_was_sent() -> None:
    w = Rewriter(RULES)
    assert w.stable("We use k8s") == "We use Kubernetes"
    final, _ = w.final("We used case it", ())  # not the stable prefix (assemble_final never does this)
    assert final.startswith("We use Kubernetes")


def test_word_timings_merge_over_a_replaced_phrase() -> None:
    words = (Word("post", 100, 300, 0.9), Word("gress,", 300, 600, 0.6), Word("please", 700, 900, 0.8))
    out = Replacements.of({"post gress": "Postgres"}).apply_words(words)
    assert out == (Word("Postgres,", 100, 600, 0.6), Word("please", 700, 900, 0.8))


def test_keys_without_words_are_ignored() -> None:
    assert not Replacements.of({"...": "x", " ": "y"})
