"""The OpenAI Realtime transcription dialect at ``/v1/realtime?intent=transcription``: a thin I/O shell.

The same ``Session`` pipeline as ``/v1/live`` behind ``OpenAICodec`` (``echopanel/protocol/openai_realtime.py``):
one source ("mic"), PCM16 at 24 kHz (resampled to the model rate), server VAD or manual commits. The session exists
from the first moment (``session.created`` is the server's first event); the client hanging up is the normal end.
docs/protocol.md shows both dialects side by side.
"""

from __future__ import annotations

import logging

from starlette.websockets import WebSocket

from echopanel.events import SessionCreated
from echopanel.flow.admission import Lease
from echopanel.protocol import commands as cmd
from echopanel.protocol import openai_realtime as oa
from echopanel.protocol.errors import ErrorCode, ProtocolError
from echopanel.server.connection import DialectConnection
from echopanel.server.context import ServerContext
from echopanel.server.endpoint import dialect_endpoint

log = logging.getLogger(__name__)


class RealtimeConnection(DialectConnection):
    @staticmethod
    def precheck(ws: WebSocket) -> str | None:
        if ws.query_params.get("intent", "transcription") != "transcription":
            return "only intent=transcription is supported"
        return None

    def __init__(self, ws: WebSocket, context: ServerContext, lease: Lease | None) -> None:
        caps = context.engine.capabilities
        super().__init__(ws, context, lease, oa.OpenAICodec(model=caps.model, languages=caps.languages))

    async def on_open(self) -> None:
        session = self.new_session(
            sources=[oa.SOURCE],
            sample_rate=oa.SAMPLE_RATE,
            dialect="openai",
            # This API has no finalization step to deliver repaired text, and its clients do not expect shedding:
            # a client that sends faster than we transcribe is pushed back through TCP instead.
            overflow="block",
        )
        await self.outbox.put(SessionCreated(session.info()))
        log.info("realtime session %s created", session.id)

    async def on_command(self, command: cmd.Command) -> bool:
        raise ProtocolError(ErrorCode.UNKNOWN_EVENT, f"{type(command).__name__} is not part of this dialect")

    async def on_session_end(self) -> None:
        # This API has no close event: the client hanging up is the normal end. The session is finalized for the
        # store (transcript, speakers, summary), with nobody listening.
        await self.finalize_unattended("interrupted" if self.failed else "completed")


realtime_endpoint = dialect_endpoint(RealtimeConnection)
