"""The client's audio buffer: bounded in samples, oldest dropped at the bound, acks trim it, resend fills drops."""

from __future__ import annotations

from echopanel.client.resilient import AudioBuffer, ConnectionStatus

SAMPLE = b"\x01\x00"


def chunk(n: int, byte: bytes = SAMPLE) -> bytes:
    return byte * n


def test_bound_at_n_and_n_plus_one_drops_the_oldest() -> None:
    buf = AudioBuffer(limit_samples=100)
    buf.append(chunk(50))
    buf.append(chunk(50))
    assert (buf.buffered, buf.dropped, buf.max_held) == (100, 0, 100)  # exactly at the bound: kept
    buf.append(chunk(10))
    assert (buf.buffered, buf.dropped) == (60, 50)  # one past: the oldest chunk goes
    assert buf.max_held <= 100 and buf.end == 110


def test_ack_trims_whole_and_partial_chunks() -> None:
    buf = AudioBuffer(limit_samples=1000)
    for _ in range(3):
        buf.append(chunk(100))
    buf.ack(150)
    assert buf.buffered == 150 and buf.held == 150 and buf.chunks[0].offset == 150
    buf.ack(100)  # an older ack changes nothing
    assert buf.acked == 150
    buf.ack(10_000)  # never past what was produced
    assert buf.acked == 300 and buf.buffered == 0


def test_resend_after_a_drop_starts_with_silence_of_the_dropped_length() -> None:
    buf = AudioBuffer(limit_samples=100)
    buf.append(chunk(60, b"\x01\x00"))
    buf.append(chunk(60, b"\x02\x00"))  # the first chunk is dropped (120 > 100)
    buf.sent = buf.acked = 0  # the server holds nothing: it must get 120 samples, 60 of them silence
    out = buf.unsent(chunk_samples=40)
    assert [(c.offset, c.end) for c in out] == [(0, 40), (40, 60), (60, 120)]
    assert out[0].pcm == b"\x00\x00" * 40 and out[2].pcm == chunk(60, b"\x02\x00")
    buf.sent = 90  # resume after part of it went out
    assert [(c.offset, c.end) for c in buf.unsent(40)] == [(90, 120)]


def test_status_text() -> None:
    s = ConnectionStatus("reconnecting", retry_in_s=1.25, buffered_ms=2400)
    assert s.describe() == "reconnecting in 1.2 s · buffering 2.4 s"
    assert ConnectionStatus("live", buffered_ms=900).describe() == "live"


def test_unacknowledged_audio_is_resent_with_silence_for_what_the_bound_dropped_and_rebased_for_a_new_session() -> None:
    """What ``echopanel listen`` needs of the buffer (it had its own before it ran on the resilient client)."""
    buf = AudioBuffer(limit_samples=100)
    for i in range(5):
        buf.append(bytes([i, 0]) * 20)  # 20 samples each
    assert (buf.buffered, buf.end, buf.dropped) == (100, 100, 0)  # at the bound: nothing dropped
    buf.append(b"\x05\x00" * 20)  # N + 1: the oldest chunk goes, unacknowledged
    assert (buf.chunks[0].offset, buf.end, buf.dropped) == (20, 120, 20)
    buf.ack(60)  # the server holds everything before sample 60
    assert buf.chunks[0].offset == 60 and buf.held == 60
    buf.sent = 70
    out = buf.unsent(chunk_samples=40, limit=15)  # from the middle of a chunk, across two, cut at the limit
    assert [(c.offset, c.end) for c in out] == [(70, 80), (80, 85)]
    assert b"".join(c.pcm for c in out) == b"\x03\x00" * 10 + b"\x04\x00" * 5
    # A resume that asks for audio already dropped at the bound gets silence in its place.
    fresh = AudioBuffer(limit_samples=40)
    fresh.append(b"\x01\x00" * 30)
    fresh.append(b"\x02\x00" * 30)  # the first 30 samples are dropped
    silence = fresh.unsent(chunk_samples=40, limit=10)
    assert [(c.offset, c.end, c.fill) for c in silence] == [(0, 10, True)] and silence[0].pcm == bytes(20)
    assert buf.rebase() == 60  # a new session: what the old one never acknowledged, counted from 0
    assert (buf.end, buf.acked, buf.sent, buf.chunks[0].offset) == (60, 0, 0, 0)
    assert buf.chunks[0].pcm[:2] == b"\x03\x00" and [c.offset for c in buf.chunks] == [0, 20, 40]
    assert buf.buffered == 60
