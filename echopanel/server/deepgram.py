"""The Deepgram live dialect at ``/v1/listen``: a thin I/O shell over the same ``Session`` pipeline.

Deepgram's query parameters open the session (``echopanel/protocol/deepgram.py``; a parameter that cannot work is
refused before the upgrade with HTTP 400, as Deepgram does); ``Authorization: Token KEY`` or ``Bearer``. The
session exists from the first moment; binary frames are audio; ``CloseStream`` flushes every final, sends
``Metadata`` and closes 1000; a client that hangs up ends the session as completed (Deepgram has no resume).
"""

from __future__ import annotations

import logging

from starlette.responses import JSONResponse
from starlette.websockets import WebSocket

from echopanel.engines.base import TurnSettings
from echopanel.events import UtteranceEnd
from echopanel.flow.admission import Lease
from echopanel.protocol import commands as cmd
from echopanel.protocol import deepgram as dg
from echopanel.protocol.errors import CloseCode, ErrorCode, ProtocolError
from echopanel.server.connection import DialectConnection
from echopanel.server.context import ServerContext
from echopanel.server.endpoint import context_of, dialect_endpoint
from echopanel.session.finalize import finalize

log = logging.getLogger(__name__)


def _options(ws: WebSocket) -> dg.DeepgramOptions:
    ctx = context_of(ws)
    caps = ctx.engine.capabilities
    return dg.parse_options(ws.scope.get("query_string", b"").decode(), ctx.settings.max_sources, caps.languages)


class DeepgramConnection(DialectConnection):
    @staticmethod
    async def refuse(ws: WebSocket) -> bool:
        """Bad query parameters: HTTP 400 before the upgrade, Deepgram's shape. True when refused."""
        try:
            _options(ws)
        except ProtocolError as err:
            body = {"err_code": "Bad Request", "err_msg": err.message, "param": err.param, "variant": str(err.code)}
            try:
                await ws.send_denial_response(JSONResponse(body, status_code=400))
            except RuntimeError:  # the server cannot send HTTP responses on a WebSocket route
                await ws.accept()
                await ws.close(CloseCode.POLICY, reason=err.message[:120])
            return True
        return False

    def __init__(self, ws: WebSocket, context: ServerContext, lease: Lease | None) -> None:
        self.options = _options(ws)
        caps = context.engine.capabilities
        codec = dg.DeepgramCodec(self.options, model_name=caps.model.split(" (")[0])
        super().__init__(ws, context, lease, codec)
        self.dg = codec

    async def on_open(self) -> None:
        opts = self.options
        silence = opts.silence_ms
        session = self.new_session(
            sources=opts.sources,
            sample_rate=opts.sample_rate,
            dialect="deepgram",
            language=opts.language,
            turn_detection=opts.turn_detection,
            overflow="block",  # Deepgram clients expect every result live, not repaired at the end
        )
        self.dg.request_id = session.id
        for source in session.source_names:
            if silence is not None and opts.turn_detection:
                await session.configure(source, TurnSettings(silence_duration_ms=silence))
            if opts.keyterms:
                session.stream_of(source).set_prompt(cmd.glossary(opts.keyterms))
        self.dg.configured = opts.keyterms
        log.info("deepgram session %s created: sources=%s rate=%d", session.id, opts.sources, opts.sample_rate)

    async def apply(self, command: cmd.Command) -> bool:
        done = await super().apply(command)
        if isinstance(command, cmd.AppendAudio | cmd.AppendAudioMany) and self.options.utterance_end_ms:
            await self._utterance_ends()
        return done

    async def _utterance_ends(self) -> None:
        """An ``UtteranceEnd`` for every source whose last final's last word is ``utterance_end_ms`` behind."""
        session = self.session
        assert session is not None and self.options.utterance_end_ms is not None
        for source, end_ms in list(self.dg.last_word_end_ms.items()):
            heard_ms = session.received_ms(source)
            if heard_ms - end_ms >= self.options.utterance_end_ms:
                del self.dg.last_word_end_ms[source]
                await self.outbox.put(UtteranceEnd(source, end_ms))

    async def on_command(self, command: cmd.Command) -> bool:
        if isinstance(command, cmd.CloseSession):
            session = self.session
            assert session is not None
            await finalize(session, "completed")  # every final, then session.summary: Metadata
            await self.drain()
            await self.ws.close(CloseCode.NORMAL)
            log.info("deepgram session %s closed normally", session.id)
            return True
        raise ProtocolError(ErrorCode.UNKNOWN_EVENT, f"{type(command).__name__} is not part of this dialect")

    async def on_session_end(self) -> None:
        await self.finalize_unattended("interrupted" if self.failed else "completed")


deepgram_endpoint = dialect_endpoint(DeepgramConnection)
