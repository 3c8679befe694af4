import numpy as np

from echopanel.recognizer.segmenter import Closed, Opened, UtteranceSegmenter

W = 512  # 32 ms


def feed(seg: UtteranceSegmenter, probs: list[float]) -> list[object]:
    out: list[object] = []
    for i, p in enumerate(probs):
        window = np.full(W, float(i), np.float32)  # each window is marked with its index
        out.extend(seg.feed(window, p))
    return out


def test_opens_after_consecutive_speech_with_pre_roll_and_closes_after_hangover() -> None:
    seg = UtteranceSegmenter(start_windows=2, pre_roll_ms=96, hangover_ms=96, tail_ms=32)
    probs = [0.0] * 10 + [0.9] * 20 + [0.0] * 5
    events = feed(seg, probs)
    assert [type(e) for e in events] == [Opened, Closed]
    utt = events[1].utterance  # type: ignore[attr-defined]
    assert utt.onset == 10 * W  # the first speech window
    first_window_held = int(utt.audio()[0])
    assert first_window_held == 10 - 3  # 96 ms pre-roll = 3 windows before the onset
    # Closed after 3 silent windows; audio keeps one tail window of silence after the speech.
    assert utt.end == utt.audio_start + utt.samples
    assert int(utt.audio()[-1]) == 30  # last speech window is 29, one tail window kept
    assert utt.reason == "silence"


def test_single_blip_does_not_open() -> None:
    seg = UtteranceSegmenter(start_windows=2)
    assert feed(seg, [0.0, 0.9, 0.0, 0.9, 0.0] * 5) == []
    assert seg.current is None


def test_short_pause_inside_speech_does_not_close() -> None:
    seg = UtteranceSegmenter(start_windows=2, hangover_ms=300)
    events = feed(seg, [0.9] * 10 + [0.0] * 5 + [0.9] * 10)  # 160 ms pause < 300 ms hangover
    assert [type(e) for e in events] == [Opened]


def test_hard_max_force_commits_and_continues_without_gap() -> None:
    seg = UtteranceSegmenter(start_windows=1, soft_max_ms=100_000, hard_max_ms=1024, pre_roll_ms=0)
    events = feed(seg, [0.9] * 100)
    closed = [e.utterance for e in events if isinstance(e, Closed)]
    opened = [e.utterance for e in events if isinstance(e, Opened)]
    assert closed and all(u.samples <= 1024 * 16 + W for u in closed)
    assert all(u.reason == "max_length" for u in closed)
    # Consecutive utterances tile the stream: each starts where the previous ended.
    for a, b in zip(closed, opened[1:], strict=False):
        assert b.audio_start == a.end


def test_soft_max_ends_at_next_pause() -> None:
    seg = UtteranceSegmenter(start_windows=1, soft_max_ms=320, hard_max_ms=10_000, hangover_ms=1000, pre_roll_ms=0)
    events = feed(seg, [0.9] * 15 + [0.2] + [0.9] * 5)
    closed = [e.utterance for e in events if isinstance(e, Closed)]
    assert len(closed) == 1 and closed[0].reason == "pause"


def test_memory_is_bounded_by_hard_max_over_a_long_stream() -> None:
    seg = UtteranceSegmenter(start_windows=1, hard_max_ms=2000)
    rng = np.random.default_rng(1)
    longest = 0
    for _ in range(20_000):  # ~11 minutes of windows
        seg.feed(np.zeros(W, np.float32), float(rng.random() < 0.8))
        if seg.current is not None:
            longest = max(longest, seg.current.samples)
    assert longest <= 2000 * 16 + W
    assert len(seg._ring) <= seg._ring.maxlen  # type: ignore[operator]


def test_manual_turns_open_on_any_audio_and_close_only_on_commit() -> None:
    seg = UtteranceSegmenter(turn_detection=False)
    events = feed(seg, [0.0] * 30)
    assert [type(e) for e in events] == [Opened]
    utt = seg.force_close("commit")
    assert utt is not None and utt.samples == 30 * W and utt.reason == "commit"
    assert seg.force_close() is None


def test_items_are_numbered_from_first_item() -> None:
    seg = UtteranceSegmenter(start_windows=1, hangover_ms=32, first_item=7)
    events = feed(seg, [0.9, 0.0, 0.0, 0.9, 0.0, 0.0])
    assert [e.utterance.item for e in events if isinstance(e, Opened)] == [7, 8]
