"""Resume after a dropped connection (docs/protocol.md "Resume"): detached sessions wait for their client.

A native session whose connection drops without ``session.close`` is *detached*, not finalized: it keeps its
admission slot and its outbox (``outbox.Outbox``, bounded; partial results dropped first), goes on transcribing the
audio it already has, and waits ``resume_grace_s`` for a ``session.create {resume: {session_id, resume_token}}``.
The resuming connection gets ``session.created`` (same session object, ``resumed: true``, ``received_ms`` per
source), then the finals it may have missed, then everything produced since. When the grace expires the session is
finalized as ``interrupted`` with nobody listening.

Finals the old socket took are not proof of delivery (a cut loses what was in flight), so the finals written during
the last ``resume_replay_s`` before the drop are sent again (marked ``replayed: true``); clients drop any
``response.done`` whose ``item_id`` they already have.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from echopanel.config import Settings
from echopanel.events import Replayed, SessionInfo, SourceEvent
from echopanel.flow.admission import Lease
from echopanel.metrics import ServerMetrics
from echopanel.server import memory
from echopanel.server.controller import FlowController
from echopanel.session.carried import Carried, token_hash
from echopanel.session.finalize import finalize
from echopanel.session.outbox import Outbox, discarding
from echopanel.session.session import Session
from echopanel.storage.store import AsyncStore

log = logging.getLogger(__name__)

MAX_REPLAY = 4096  # finals kept for replay per session, at most
TAKEOVER_WAIT_S = 3.0  # a resume of a session another node still holds waits this long for it to let go


def shares_sessions(session: Session) -> bool:
    """The session's store is shared by a fleet (another node can take it over)."""
    return session.store is not None and session.store.store.kind == "postgresql"


class Busy(Exception):
    """The session runs on another node that still has its client: not taken over (the client retries)."""


class Attachable(Protocol):
    """What the registry needs of a connection (``LiveConnection``)."""

    lease: Lease | None  # the admission slot; it moves to the registry while detached, then to the resuming one

    async def evict(self) -> None:
        """Stop this connection because its session was resumed on another one."""


@dataclass(eq=False)
class Resumable:
    session: Session
    token: str
    info: SessionInfo  # what session.created said, sent again on resume
    outbox: Outbox
    connection: Attachable | None = None
    sent_finals: deque[tuple[float, SourceEvent]] = field(default_factory=lambda: deque(maxlen=MAX_REPLAY))
    detached_at: float | None = None
    lease: Lease | None = None  # while detached, the session's admission slot
    skip: dict[str, int] = field(default_factory=dict)  # samples to ignore at the start of resent audio, per source
    released: asyncio.Event = field(default_factory=asyncio.Event)  # set when the connection let go (detached)
    expiry: asyncio.Task[None] | None = None
    resumes: int = 0
    taken_over: bool = False  # just taken over from another node: the next session.created says partials_reset
    finished: bool = False  # finalized; nothing left to resume

    def note_sent(self, final: SourceEvent, window_s: float) -> None:
        """A final was written to the socket (kept for replay for ``window_s``)."""
        now = time.monotonic()
        self.sent_finals.append((now, final))
        while self.sent_finals and self.sent_finals[0][0] < now - window_s:
            self.sent_finals.popleft()

    def received_ms(self) -> dict[str, int]:
        return {name: self.session.ms(s.recording.samples) for name, s in self.session.sources.items()}


class ResumeRegistry:
    def __init__(
        self, settings: Settings, metrics: ServerMetrics | None = None, controller: FlowController | None = None
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.controller = controller
        self.entries: dict[str, Resumable] = {}

    @property
    def detached(self) -> int:
        return sum(1 for e in self.entries.values() if e.connection is None and not e.finished)

    def register(self, session: Session, info: SessionInfo, connection: Attachable) -> Resumable:
        entry = Resumable(session, session.resume_token, info, session.outbox, connection)
        self.entries[session.id] = entry
        return entry

    def forget(self, entry: Resumable) -> None:
        entry.finished = True
        entry.connection = None  # the connection holds the entry too: no cycle keeps a closed session alive
        if entry.expiry is not None and entry.expiry is not asyncio.current_task():
            entry.expiry.cancel()
        entry.expiry = None  # the grace task's coroutine holds the entry
        if self.entries.get(entry.session.id) is entry:
            del self.entries[entry.session.id]
        self._export()

    def find(self, session_id: str, token: str) -> Resumable | None:
        entry = self.entries.get(session_id)
        if entry is None or entry.finished or entry.session.closing or entry.session.finalized:
            return None
        if not hmac.compare_digest(entry.token.encode(), token.encode()):
            return None
        return entry

    # -- detach ----------------------------------------------------------------------------------------------------

    def detach(self, entry: Resumable, connection: Attachable) -> None:
        """``connection`` dropped without closing the session: keep it for ``resume_grace_s``."""
        if entry.connection is not connection:
            return
        entry.connection = None
        entry.detached_at = time.monotonic()
        entry.outbox.detach()
        entry.lease, connection.lease = connection.lease, None  # the slot stays with the session
        entry.session.note_detached(time.time())  # in a shared store: another node may take it over on resume
        entry.expiry = asyncio.create_task(self._expire(entry), name=f"grace-{entry.session.id}")
        entry.released.set()
        self._export()
        log.info(
            "session %s detached: waiting %.0f s for its client to resume",
            entry.session.id,
            self.settings.resume_grace_s,
        )

    async def _expire(self, entry: Resumable) -> None:
        await asyncio.sleep(self.settings.resume_grace_s)
        if entry.connection is not None or entry.finished:
            return
        log.info(
            "session %s: no resume within %.0f s; finalizing it as interrupted",
            entry.session.id,
            self.settings.resume_grace_s,
        )
        entry.finished = True
        session = entry.session
        if session.store is not None and not session.ledger.lost:
            try:
                session.ledger.lost = not await session.store.read(session.store.store.still_owner, session.id)
            except Exception:
                log.warning("session %s: could not read its owner; finalizing it", session.id, exc_info=True)
        if session.ledger.lost:  # its client resumed on another node, which owns it now: nothing to finalize here
            log.info("session %s: taken over by another node; letting it go", session.id)
            await self._let_go(entry)
            return
        if self.metrics is not None:
            self.metrics.sessions_interrupted.inc()
        try:
            async with discarding(entry.outbox):
                await finalize(session, "interrupted")
        except Exception:
            log.exception("session %s: finalization after the grace period failed", session.id)
        finally:
            await self._let_go(entry)

    async def let_go_detached(self) -> None:
        """A drain: sessions waiting for their client are let go. With a shared store their finals are flushed to it
        and another node takes them over when their client resumes; alone, they are finalized as interrupted."""
        for entry in [e for e in self.entries.values() if e.connection is None and not e.finished]:
            entry.finished = True
            session = entry.session
            try:
                async with discarding(entry.outbox):
                    if shares_sessions(session):
                        await asyncio.wait_for(session.flush(), 5.0)
                    else:
                        await finalize(session, "interrupted")
            except Exception:
                log.warning("session %s: could not flush it while draining", session.id, exc_info=True)
            await self._let_go(entry)

    async def _let_go(self, entry: Resumable) -> None:
        if self.controller is not None:
            self.controller.unregister(entry.session)
        await entry.session.aclose()
        if entry.lease is not None:
            entry.lease.release()
            entry.lease = None
        self.forget(entry)
        memory.collect_soon()

    # -- resume ------------------------------------------------------------------------------------------------------

    async def take(self, entry: Resumable, connection: Attachable) -> bool:
        """Attach ``entry`` to ``connection``: evict a connection still holding it, stop the grace timer.
        False if the session ended meanwhile (nothing to resume)."""
        old = entry.connection
        if old is not None and old is not connection:
            entry.released.clear()
            await old.evict()
            try:
                await asyncio.wait_for(entry.released.wait(), 10.0)
            except TimeoutError:
                return False
        if entry.finished or entry.connection is not None:
            return False
        if entry.expiry is not None:
            entry.expiry.cancel()
            entry.expiry = None
        entry.connection = connection
        entry.outbox.attach()
        if entry.detached_at is not None:
            entry.session.note_detached(None)
        entry.released.clear()
        if entry.lease is not None:
            # The session already has a slot: it moves to this connection (which holds none of its own: the
            # native dialect takes a slot at session.create, and a resume creates no session).
            own, connection.lease, entry.lease = connection.lease, entry.lease, None
            if own is not None:
                own.release()
        entry.resumes += 1
        if self.metrics is not None:
            self.metrics.resumes.inc()
        self._export()
        return True

    # -- resume on another node (a shared store) --------------------------------------------------------------------

    async def claim(self, store: AsyncStore, session_id: str, token: str) -> Carried | None:
        """Take over a session another node ran (docs/deployment.md "Resume on any node"): None if there is no such
        active session or the token is wrong; ``Busy`` if its node still runs it with a client attached."""
        handoff = await store.read(store.store.handoff, session_id)
        if handoff is None or handoff.dialect != "native":
            return None
        want = str(handoff.extra.get("token_sha256", ""))
        if not want or not hmac.compare_digest(want.encode(), token_hash(token).encode()):
            return None
        # A node handing the session off (a drain, a dropped connection) marks it detached within about a second of
        # closing the client's connection: wait that long before calling it busy.
        deadline = time.monotonic() + TAKEOVER_WAIT_S
        while not await store.read(store.store.takeable, session_id, self.settings.takeover_after_s):
            if time.monotonic() >= deadline:
                raise Busy(session_id)
            await asyncio.sleep(0.1)
        try:
            epoch = await store.write(store.store.take_over, session_id)
        except LookupError:  # it ended meanwhile (its node finalized it)
            return None
        items = await store.read(store.store.items, session_id)
        log.info("session %s taken over at epoch %d (%d stored items)", session_id, epoch, len(items))
        return Carried(session_id, token, handoff.created_at, epoch, tuple(items), handoff)

    async def still_ours(self, entry: Resumable) -> bool:
        """Whether this node still owns a session it holds detached (with a shared store, another node may have
        taken it over meanwhile: then it is let go here, unfinalized, and False)."""
        session = entry.session
        if shares_sessions(session) and not session.ledger.lost:
            assert session.store is not None
            try:
                if await session.store.read(session.store.store.still_owner, session.id):
                    return True
            except Exception:
                log.warning("session %s: could not read its owner", session.id, exc_info=True)
                return True
        elif not session.ledger.lost:
            return True
        session.ledger.lost = True
        entry.finished = True
        log.info("session %s: taken over by another node while detached here; letting it go", session.id)
        await self._let_go(entry)
        return False

    def adopted(self, entry: Resumable) -> None:
        """``entry`` was taken over from another node by the connection it is registered with."""
        entry.taken_over = True
        entry.resumes += 1
        if self.metrics is not None:
            self.metrics.resumes.inc()
        self._export()

    def replay(self, entry: Resumable) -> list[Replayed]:
        """Finals written during the replay window before the drop, oldest first, marked ``replayed``. A session taken
        over from another node replays its stored finals of the last grace + replay window instead."""
        carried = entry.session.carried
        if carried is not None and entry.taken_over:
            entry.taken_over = False  # the next resume (on this node) replays what this node sent
            since = time.time() - self.settings.resume_grace_s - self.settings.resume_replay_s
            return carried.replay(since, MAX_REPLAY)
        return [Replayed(final) for _, final in entry.sent_finals]

    def _export(self) -> None:
        if self.metrics is not None:
            self.metrics.sessions_detached.set(self.detached)
