"""Binary audio frames: bytes 0-1 ``EP``, byte 2 version 1, byte 3 source index, then PCM16 LE mono."""

from __future__ import annotations

from echopanel.protocol.errors import ErrorCode, ProtocolError

MAGIC = b"EP"
VERSION = 1
HEADER_BYTES = 4


def encode_frame(source_index: int, pcm: bytes) -> bytes:
    if not 0 <= source_index <= 255:
        raise ValueError("source index must fit in one byte")
    return MAGIC + bytes((VERSION, source_index)) + pcm


def decode_frame(frame: bytes, n_sources: int) -> tuple[int, bytes]:
    if len(frame) < HEADER_BYTES or frame[:2] != MAGIC:
        raise ProtocolError(ErrorCode.INVALID_FRAME, "binary frame must start with 'EP'", param="magic")
    if frame[2] != VERSION:
        raise ProtocolError(ErrorCode.INVALID_FRAME, f"unsupported frame version {frame[2]}", param="version")
    index = frame[3]
    if index >= n_sources:
        raise ProtocolError(
            ErrorCode.INVALID_FRAME, f"source index {index} is not one of the session's {n_sources}", param="source"
        )
    return index, frame[HEADER_BYTES:]
