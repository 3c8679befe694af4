from echopanel.events import Word
from echopanel.recognizer.stream import Decoded, assemble_final


def words(*spec: tuple[str, int, int]) -> tuple[Word, ...]:
    return tuple(Word(t, s, e, 0.9) for t, s, e in spec)


def test_final_starts_with_the_stable_prefix() -> None:
    d = Decoded(
        " He was not an old",
        words((" He", 0, 100), (" was", 100, 200), (" not", 200, 300), (" an", 300, 400), (" old", 400, 500)),
    )
    text, kept = assemble_final(d, "He was", 2, voiced_end_ms=600)
    assert text == "He was not an old" and len(kept) == 5


def test_decoder_that_ignores_the_prefix_cannot_change_sent_text() -> None:
    d = Decoded(" We was not", words((" We", 0, 100), (" was", 100, 200), (" not", 200, 300)))
    text, _ = assemble_final(d, "He was", 2, voiced_end_ms=600)
    assert text.startswith("He was") and text == "He was not"


def test_trailing_inventions_after_the_voice_are_dropped() -> None:
    d = Decoded(
        " amiable himself. Thank you so much.",
        words(
            (" amiable", 0, 500),
            (" himself.", 500, 900),
            (" Thank", 1300, 1400),
            (" you", 1400, 1400),
            (" .", 1400, 1400),
        ),
    )
    text, kept = assemble_final(d, "", 0, voiced_end_ms=950)
    assert text == "amiable himself." and [w.text for w in kept] == [" amiable", " himself."]
    squeezed = Decoded(" himself. Thank you", words((" himself.", 0, 900), (" Thank", 905, 905), (" you", 905, 905)))
    assert assemble_final(squeezed, "", 0, voiced_end_ms=950)[0] == "himself."


def test_dropping_never_removes_stable_text() -> None:
    d = Decoded(" Hello there", words((" Hello", 0, 300), (" there", 2000, 2000)))
    text, _ = assemble_final(d, "Hello there", 2, voiced_end_ms=400)
    assert text == "Hello there"


def test_empty_decode_without_prefix_is_empty() -> None:
    assert assemble_final(Decoded("", ()), "", 0, voiced_end_ms=0)[0] == ""


def scored(*spec: tuple[str, int, int, float]) -> tuple[Word, ...]:
    return tuple(Word(t, s, e, c) for t, s, e, c in spec)


# Measured with the keyterm glossary on the cards clips (voice ending at 1088 and 1504 ms).
THANK = scored(
    (" 10", 0, 500, 0.83), (" of", 500, 720, 0.91), (" close.", 720, 960, 0.75), (" Thank", 1040, 1260, 0.10)
)
WELL = scored((" of", 780, 1080, 0.93), (" clubs.", 1080, 1380, 0.78), (" We'll", 1380, 1640, 0.26))


def test_with_a_prompt_the_unlikely_sign_off_at_the_voice_end_is_dropped() -> None:
    text, _ = assemble_final(Decoded("", THANK), "", 0, voiced_end_ms=1088, prompted=True)
    assert text == "10 of close."
    text, _ = assemble_final(Decoded("", WELL), "", 0, voiced_end_ms=1504, prompted=True)
    assert text == "of clubs."


def test_without_a_prompt_those_words_stay() -> None:
    text, _ = assemble_final(Decoded("", WELL), "", 0, voiced_end_ms=1504)
    assert text == "of clubs. We'll"


def test_with_a_prompt_a_real_last_word_stays_even_when_unsure() -> None:
    # "before noon" heard as "before you...": it began 384 ms before the voice ended and scored 0.49
    real = scored((" before", 2860, 3360, 0.94), (" you...", 3360, 3900, 0.49))
    text, _ = assemble_final(Decoded("", real), "", 0, voiced_end_ms=3744, prompted=True)
    assert text == "before you..."


def test_with_a_prompt_a_sent_word_is_never_taken_back() -> None:
    text, _ = assemble_final(Decoded("", THANK), "10 of close. Thank", 4, voiced_end_ms=1088, prompted=True)
    assert text == "10 of close. Thank"
