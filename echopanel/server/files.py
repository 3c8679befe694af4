"""OpenAI's file transcription, ``POST /v1/audio/transcriptions``, and ``GET /v1/models`` (docs/protocol.md).

Multipart as the official SDK sends it: ``file``, ``model``, ``language``, ``prompt``, ``response_format`` (json,
text, srt, vtt, verbose_json), ``timestamp_granularities[]`` (segment, word), ``temperature``, ``stream``. Same
token rule as the WebSocket endpoints. Bounds (docs/behaviour.md): the request body (``max_upload_mb``: 413 past
it, counted as it arrives, so a body without a length cannot pass either), the decoded audio (``max_file_s``: 413),
and the files decoded at once (``max_file_jobs``: 429 with ``Retry-After`` past it). The file is decoded (PyAV) on
a thread; its utterances are decoded as background jobs of the shared scheduler, after every live decode
(``echopanel/batch``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Message, Receive

from echopanel.audio.decode import AudioDecodeError, AudioTooLong, decode_audio
from echopanel.batch import formats
from echopanel.batch.transcribe import FileRequest, TranscriptionFailed, finals
from echopanel.server.auth import authorized
from echopanel.server.context import ServerContext

log = logging.getLogger(__name__)

MODEL_OWNER = "echopanel"
GRANULARITIES = ("segment", "word")


class BodyTooLarge(Exception):
    pass


def _error(status: int, message: str, *, code: str, param: str | None = None, **headers: str) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers or None)


def _bounded(receive: Receive, limit: int) -> Receive:
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge
        return message

    return wrapped


class _Jobs:
    """Files being transcribed now, server-wide."""

    def __init__(self) -> None:
        self.active = 0


def _field(form: Any, name: str, default: str = "") -> str:
    value = form.get(name)
    return value if isinstance(value, str) else default


async def transcriptions(request: Request) -> Response:
    ctx: ServerContext = request.app.state.context
    settings = ctx.settings
    if not authorized(settings.token, request.headers, ()):
        return _error(401, "missing or wrong bearer token", code="invalid_api_key")
    limit = int(settings.max_upload_mb * 1024 * 1024)
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        return _error(413, f"the request is larger than {settings.max_upload_mb:g} MB", code="file_too_large")
    jobs: _Jobs = request.app.state.file_jobs
    if jobs.active >= settings.max_file_jobs:
        return _error(
            429,
            f"{jobs.active} files are being transcribed; try again later",
            code="too_many_files",
            **{"Retry-After": "5"},
        )
    jobs.active += 1
    try:
        return await _transcribe(ctx, Request(request.scope, _bounded(request.receive, limit)), limit)
    except BodyTooLarge:
        return _error(413, f"the request is larger than {settings.max_upload_mb:g} MB", code="file_too_large")
    finally:
        jobs.active -= 1


async def _transcribe(ctx: ServerContext, request: Request, limit: int) -> Response:
    settings = ctx.settings
    caps = ctx.engine.capabilities
    async with request.form(max_files=1, max_fields=32) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            return _error(400, "a file is required (multipart field 'file')", code="invalid_request", param="file")
        data = await upload.read()
        fmt = _field(form, "response_format", "json")
        language = _field(form, "language") or "en"
        prompt = _field(form, "prompt")[-500:]
        stream = _field(form, "stream").lower() == "true"
        granularities = [g for g in form.getlist("timestamp_granularities[]") if isinstance(g, str)]
        temperature = _field(form, "temperature", "0")
    if fmt not in formats.FORMATS:
        return _error(400, f"response_format must be one of {list(formats.FORMATS)}", code="invalid_request",
                      param="response_format")  # fmt: skip
    bad = [g for g in granularities if g not in GRANULARITIES]
    if bad:
        return _error(400, f"timestamp_granularities: {bad[0]!r} is not one of {list(GRANULARITIES)}",
                      code="invalid_request", param="timestamp_granularities")  # fmt: skip
    if granularities and fmt != "verbose_json":
        return _error(400, "timestamp_granularities needs response_format verbose_json", code="invalid_request",
                      param="timestamp_granularities")  # fmt: skip
    try:
        if not 0.0 <= float(temperature) <= 1.0:
            raise ValueError
    except ValueError:
        return _error(400, "temperature must be a number 0-1", code="invalid_request", param="temperature")
    if language not in caps.languages:
        return _error(400, f"language {language!r} is not supported; use one of {list(caps.languages)}",
                      code="unsupported_language", param="language")  # fmt: skip
    if stream and fmt not in ("json", "text"):
        return _error(400, "stream=true works with response_format json or text", code="invalid_request",
                      param="stream")  # fmt: skip
    t0 = time.monotonic()
    try:
        audio = await asyncio.to_thread(decode_audio, data, caps.sample_rate, settings.max_file_s)
    except AudioTooLong as exc:
        return _error(413, str(exc), code="audio_too_long", param="file")
    except AudioDecodeError as exc:
        return _error(400, str(exc), code="invalid_audio", param="file")
    del data
    duration_s = len(audio) / caps.sample_rate
    request_ = FileRequest(language=language, prompt=prompt)
    log.info("file transcription: %.1f s of audio, %s, decoded in %.2f s", duration_s, fmt, time.monotonic() - t0)
    if stream:
        return StreamingResponse(_events(ctx, audio, request_, duration_s), media_type="text/event-stream")
    got = []
    try:
        async for final in finals(ctx.engine, audio, request_):
            got.append(final)
            if await request.is_disconnected():  # the client gave up: stop decoding its file
                log.info("file transcription: the client went away after %d utterances; stopped", len(got))
                return Response(status_code=499)
    except TranscriptionFailed as exc:
        return _error(503, f"transcription failed: {exc}", code="engine_unavailable")
    log.info("file transcription: %d utterances in %.2f s", len(got), time.monotonic() - t0)
    if fmt == "json":
        return JSONResponse({"text": formats.full_text(got), "usage": formats.usage(duration_s)})
    if fmt == "text":
        return PlainTextResponse(formats.full_text(got))
    if fmt == "srt":
        return PlainTextResponse(formats.srt(got))
    if fmt == "vtt":
        return PlainTextResponse(formats.vtt(got), media_type="text/vtt")
    body = formats.verbose(
        got,
        duration_s,
        language,
        segments=not granularities or "segment" in granularities,
        words="word" in granularities,
    )
    return JSONResponse(body)


async def _events(ctx: ServerContext, audio: Any, request: FileRequest, duration_s: float) -> AsyncIterator[bytes]:
    """Server-sent events as the SDK reads them: ``transcript.text.delta`` per utterance, then ``.done``."""
    texts: list[str] = []
    try:
        async for final in finals(ctx.engine, audio, request):
            delta = (" " if texts else "") + final.text.strip()
            texts.append(final.text.strip())
            yield _sse({"type": "transcript.text.delta", "delta": delta})
    except TranscriptionFailed as exc:
        yield _sse({"error": {"message": f"transcription failed: {exc}", "type": "server_error",
                              "code": "engine_unavailable"}})  # fmt: skip
        return
    yield _sse({"type": "transcript.text.done", "text": " ".join(texts), "usage": formats.usage(duration_s)})


def _sse(event: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(event)}\n\n".encode()


async def models(request: Request) -> Response:
    ctx: ServerContext = request.app.state.context
    if not authorized(ctx.settings.token, request.headers, ()):
        return _error(401, "missing or wrong bearer token", code="invalid_api_key")
    caps = ctx.engine.capabilities
    model_id = caps.model.split(" (")[0]  # "whisper-tiny.en (model)": the name, without the folder it came from
    data = [{"id": model_id, "object": "model", "created": 0, "owned_by": MODEL_OWNER}]
    return JSONResponse({"object": "list", "data": data})


def file_routes() -> list[Route]:
    return [
        Route("/v1/audio/transcriptions", transcriptions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
    ]


def file_jobs() -> _Jobs:
    return _Jobs()
