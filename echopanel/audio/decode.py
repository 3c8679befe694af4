"""Audio files of any usual container (wav, mp3, m4a/aac, webm/opus, ogg/vorbis, flac, ...) to float32 mono at
the engine's rate, with PyAV (FFmpeg's decoders and resampler, bundled in its wheel).

CPU-bound: call it off the event loop. ``max_seconds`` bounds what one file may decode to (a small file of a very
low bit rate can hold hours), checked while decoding, so a hostile file costs at most that much.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np


class AudioDecodeError(ValueError):
    """The file is not audio PyAV can decode (or holds no audio stream)."""


class AudioTooLong(ValueError):
    """The file holds more audio than allowed."""


def decode_audio(
    source: str | Path | bytes | BinaryIO, rate: int = 16000, max_seconds: float | None = None
) -> np.ndarray:
    """All of the file's first audio stream as float32 mono at ``rate``."""
    file: str | BinaryIO = io.BytesIO(source) if isinstance(source, bytes) else (
        str(source) if isinstance(source, Path | str) else source
    )  # fmt: skip
    limit = None if max_seconds is None else int(max_seconds * rate)
    chunks: list[np.ndarray] = []
    total = 0
    try:
        with av.open(file, mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise AudioDecodeError("the file holds no audio stream")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunk = out.to_ndarray().reshape(-1)
                    chunks.append(chunk)
                    total += len(chunk)
                if limit is not None and total > limit:
                    raise AudioTooLong(f"the file holds more than {max_seconds:g} s of audio")
            for out in resampler.resample(None):  # flush
                chunks.append(out.to_ndarray().reshape(-1))
    except (AudioDecodeError, AudioTooLong):
        raise
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        raise AudioDecodeError(f"not a decodable audio file: {exc}") from None
    if not chunks:
        raise AudioDecodeError("the file holds no audio")
    return np.concatenate(chunks).astype(np.float32, copy=False)
