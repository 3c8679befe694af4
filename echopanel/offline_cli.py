"""``echopanel transcribe --offline FILE``: a file transcribed in this process, by the same path as
``POST /v1/audio/transcriptions`` (decode with PyAV, then the engine's finals-only stream), no server needed."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from echopanel.audio.decode import AudioDecodeError, AudioTooLong, decode_audio
from echopanel.batch import formats
from echopanel.batch.transcribe import FileRequest, TranscriptionFailed, transcribe
from echopanel.config import Settings


def run(path: Path, *, fmt: str, language: str, prompt: str) -> int:
    settings = Settings.from_env()
    from echopanel.server.run import build_engine

    engine = build_engine(settings)
    try:
        engine.warmup()
        rate = engine.capabilities.sample_rate
        if language not in engine.capabilities.languages:
            print(f"echopanel transcribe: language {language!r} is not supported", file=sys.stderr)
            return 2
        try:
            audio = decode_audio(path, rate, settings.max_file_s)
        except (AudioDecodeError, AudioTooLong) as exc:
            print(f"echopanel transcribe: {path}: {exc}", file=sys.stderr)
            return 2
        try:
            finals = asyncio.run(transcribe(engine, audio, FileRequest(language=language, prompt=prompt)))
        except TranscriptionFailed as exc:
            print(f"echopanel transcribe: {exc}", file=sys.stderr)
            return 1
    finally:
        engine.close()
    duration_s = len(audio) / rate
    if fmt == "json":
        print(json.dumps({"text": formats.full_text(finals), "usage": formats.usage(duration_s)}))
    elif fmt == "verbose_json":
        print(json.dumps(formats.verbose(finals, duration_s, language, segments=True, words=True)))
    elif fmt == "srt":
        print(formats.srt(finals))
    elif fmt == "vtt":
        print(formats.vtt(finals))
    else:
        print(formats.full_text(finals))
    return 0
