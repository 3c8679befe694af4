"""What every connection of one server shares: settings, the engine, admission, the flow controller, the store,
the speaker service, the registry of detached sessions, and the Prometheus metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from echopanel.config import Settings
from echopanel.engines.base import SpeechEngine
from echopanel.flow.admission import Admission, Pending
from echopanel.metrics import ServerMetrics
from echopanel.server.fleet import FleetSlots
from echopanel.speakers.live import SpeakerService
from echopanel.storage.store import AsyncStore

if TYPE_CHECKING:
    from echopanel.server.controller import FlowController
    from echopanel.server.resume import ResumeRegistry


class Drainable(Protocol):
    """What a drain needs of an open connection (``DialectConnection``)."""

    async def hand_off(self, pause_wait_s: float) -> None: ...


@dataclass
class ServerContext:
    settings: Settings
    engine: SpeechEngine
    admission: Admission
    metrics: ServerMetrics
    registry: ResumeRegistry
    controller: FlowController | None = None
    store: AsyncStore | None = None  # stored sessions (echopanel/storage); None: nothing is stored
    speakers: SpeakerService | None = None  # live speaker labels; None: off
    pending: Pending = field(default_factory=lambda: Pending(64))  # native sockets without a session yet
    connections: set[Drainable] = field(default_factory=set)  # open ones (a drain hands them off)
    fleet: FleetSlots | None = None  # the fleet-wide session limit (fleet_max_sessions), in the shared store
    draining: bool = False  # SIGTERM: no new connection is taken (HTTP 503), sessions are handed off
