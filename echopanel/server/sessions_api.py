"""Stored sessions over HTTP (docs/protocol.md, "Stored sessions"): list, read, export, delete.

The same token rule as the WebSocket: with a token configured, ``Authorization: Bearer TOKEN`` is required (401
otherwise). Store reads run off the event loop (``AsyncStore.read``).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from echopanel.analysis.export import FORMATS, export
from echopanel.server.auth import authorized
from echopanel.storage.recording import delete_session_recordings
from echopanel.storage.store import AsyncStore, SessionStore

MAX_LIMIT = 500


def _error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, **extra}}, status_code=status)


def _guard(request: Request) -> tuple[AsyncStore | None, Response | None]:
    settings = request.app.state.settings
    if not authorized(settings.token, request.headers, ()):
        return None, _error(401, "unauthorized", "missing or wrong bearer token")
    store: AsyncStore | None = getattr(request.app.state, "store", None)
    if store is None:
        return None, _error(503, "store_unavailable", "this server has no session store")
    return store, None


def session_detail(store: SessionStore, session_id: str, words: bool) -> dict[str, Any] | None:
    record = store.get_session(session_id)
    if record is None:
        return None
    summary = store.summary(session_id)
    return {
        **record.as_dict(),
        "items": [i.as_dict(words=words) for i in store.items(session_id)],
        "speakers": [
            {"speaker": s.label, "source": s.source, "talk_ms": s.talk_ms, "items": s.items}
            for s in store.speakers(session_id)
        ],
        "shed_spans": [
            {"source": s.source, "start_ms": s.start_ms, "end_ms": s.end_ms} for s in store.shed_spans(session_id)
        ],
        "summary": summary,
    }


async def list_sessions(request: Request) -> Response:
    store, denied = _guard(request)
    if denied is not None:
        return denied
    assert store is not None
    try:
        limit = min(MAX_LIMIT, max(1, int(request.query_params.get("limit", "100"))))
        offset = max(0, int(request.query_params.get("offset", "0")))
    except ValueError:
        return _error(400, "invalid_query", "limit and offset must be integers")
    records = await store.read(store.store.list_sessions, limit, offset)
    return JSONResponse({"sessions": [r.as_dict() for r in records], "limit": limit, "offset": offset})


async def get_session(request: Request) -> Response:
    store, denied = _guard(request)
    if denied is not None:
        return denied
    assert store is not None
    sid = request.path_params["session_id"]
    words = request.query_params.get("words", "1") not in ("0", "false", "no")
    body = await store.read(session_detail, store.store, sid, words)
    if body is None:
        return _error(404, "session_not_found", f"no stored session {sid!r}")
    return JSONResponse(body)


async def delete_session(request: Request) -> Response:
    store, denied = _guard(request)
    if denied is not None:
        return denied
    assert store is not None
    sid = request.path_params["session_id"]
    record = await store.read(store.store.get_session, sid)
    if record is None:
        return _error(404, "session_not_found", f"no stored session {sid!r}")
    if record.status == "active":  # sessions of a dead server were marked interrupted at start: this one is live
        return _error(409, "session_active", "the session is still running; close it first")
    deleted = await store.write(store.store.delete_session, sid)
    if not deleted:
        return _error(404, "session_not_found", f"no stored session {sid!r}")
    await store.write(delete_session_recordings, request.app.state.settings.data_dir, sid)
    return Response(status_code=204)


async def export_session(request: Request) -> Response:
    store, denied = _guard(request)
    if denied is not None:
        return denied
    assert store is not None
    sid = request.path_params["session_id"]
    fmt = request.query_params.get("format", "json")
    if fmt not in FORMATS:
        return _error(400, "invalid_format", f"format must be one of {sorted(FORMATS)}", param="format")

    def build(s: SessionStore) -> str | None:
        record = s.get_session(sid)
        if record is None:
            return None
        return export(fmt, record, s.items(sid), s.summary(sid))

    text = await store.read(build, store.store)
    if text is None:
        return _error(404, "session_not_found", f"no stored session {sid!r}")
    filename = f"{sid}.{fmt}"
    return Response(
        text,
        media_type=FORMATS[fmt],
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def session_routes() -> list[Route]:
    return [
        Route("/v1/sessions", list_sessions, methods=["GET"]),
        Route("/v1/sessions/{session_id}", get_session, methods=["GET"]),
        Route("/v1/sessions/{session_id}", delete_session, methods=["DELETE"]),
        Route("/v1/sessions/{session_id}/export", export_session, methods=["GET"]),
    ]
