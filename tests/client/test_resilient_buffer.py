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
