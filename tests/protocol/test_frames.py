import pytest

from echopanel.protocol.errors import ErrorCode, ProtocolError
from echopanel.protocol.frames import decode_frame, encode_frame


def test_round_trip() -> None:
    assert decode_frame(encode_frame(1, b"\x01\x02"), 2) == (1, b"\x01\x02")


@pytest.mark.parametrize(
    ("frame", "param"),
    [(b"XX\x01\x00ab", "magic"), (b"E", "magic"), (b"EP\x02\x00ab", "version"), (b"EP\x01\x02ab", "source")],
)
def test_bad_frames(frame: bytes, param: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_frame(frame, 2)
    assert info.value.code == ErrorCode.INVALID_FRAME and info.value.param == param
