from echopanel.recognizer.agreement import LocalAgreement, split_words


def test_words_agreed_by_two_decodes_become_stable_and_last_word_is_held_back() -> None:
    la = LocalAgreement()
    assert la.update(split_words(" Mr. John")) == ""
    assert la.tentative_text == "Mr. John"
    assert la.update(split_words(" Mr. John Dashwood")) == "Mr. John"
    assert la.tentative_text == " Dashwood"
    # Same words again: the newest hypothesis' last word is never committed.
    assert la.update(split_words(" Dashwood had")) == " Dashwood"
    assert la.stable_text == "Mr. John Dashwood"


def test_comparison_ignores_case_and_punctuation_but_commits_newest_form() -> None:
    la = LocalAgreement()
    la.update(split_words(" he was not."))
    delta = la.update(split_words(" He was not an"))
    assert delta == "He was not"


def test_disagreement_commits_nothing() -> None:
    la = LocalAgreement()
    la.update(split_words(" I'll less to be"))
    assert la.update(split_words(" Unless to be rather")) == ""
    assert la.stable == []


def test_deltas_concatenate_to_stable_text() -> None:
    la = LocalAgreement()
    hyps = [" a", " a b", " a b c", " a b c d", " x"]
    deltas = []
    for h in hyps:
        rest = split_words(h)[len(la.stable) :]
        deltas.append(la.update(rest))
    assert "".join(deltas) == la.stable_text == "a b c"


def test_punctuation_only_tokens_are_ignored() -> None:
    la = LocalAgreement()
    la.update(split_words(" hello ."))
    assert la.update(split_words(" hello . world")) == "hello"


def test_observed_hypotheses_are_tentative_only_and_do_not_vote() -> None:
    la = LocalAgreement()
    la.observe(split_words(" How do you marry"))
    assert la.tentative_text == "How do you marry" and la.stable == []
    # The first trusted decode does not agree with the observed one: nothing is committed from the early guess.
    assert la.update(split_words(" How do you marry a")) == ""
    assert la.update(split_words(" Had he married a more")) == ""
    assert la.update(split_words(" Had he married a more amiable")) == "Had he married a more"


def test_agree_one_commits_all_but_the_last_word_at_once() -> None:
    la = LocalAgreement(agree=1)
    assert la.update(split_words(" the quick brown")) == "the quick"
    assert la.tentative_text == " brown"
    assert la.update(split_words(" brown fox jumps")) == " brown fox"


def test_agree_three_waits_for_three_decodes() -> None:
    la = LocalAgreement(agree=3)
    assert la.update(split_words(" the quick brown")) == ""
    assert la.update(split_words(" the quick brown fox")) == ""
    assert la.update(split_words(" the quick brow fox")) == "the quick"
    # the history keeps what came after the stable text: " brown fox" / " brow fox" / ... must agree three times
    assert la.update(split_words(" brown fox jumps")) == ""
    assert la.update(split_words(" brown fox jumps over")) == ""  # " brow fox" still votes
    assert la.update(split_words(" brown fox jumps over the")) == " brown fox jumps"


def test_agree_must_be_positive() -> None:
    import pytest

    with pytest.raises(ValueError):
        LocalAgreement(agree=0)
