"""The session store: what a session leaves behind (sessions, sources, items, speakers, summary, shed spans).

``SessionStore`` is the interface; ``echopanel/storage/sql.py`` implements it in SQL for SQLite (``sqlite.py``,
WAL, in the data directory: the embedded default) and PostgreSQL (``postgres.py``, shared by a fleet);
``open.py`` picks one from ``--store``. The methods are synchronous and cheap; the server calls them
through ``AsyncStore``, which runs writes one at a time on a dedicated thread (in the order they were asked for) and
reads on another, so the event loop never waits on the disk.

Finals are written as they land, before their event is queued to the client: a killed server keeps everything a
client already received. On start the server marks sessions still ``active`` as ``interrupted``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

STATUSES = ("active", "completed", "interrupted")


class StaleOwner(RuntimeError):
    """This node no longer owns the session (another node took it over): the write was not made."""


@dataclass(frozen=True, slots=True)
class SessionRecord:
    id: str
    status: str  # active | completed | interrupted
    created_at: float  # unix seconds
    sources: tuple[str, ...]
    sample_rate: int
    dialect: str = "native"  # native | openai
    engine: str = ""
    model: str = ""
    language: str = "en"
    ended_at: float | None = None
    items: int = 0  # number of stored items (filled in by reads)
    duration_ms: int = 0  # end of the last item (filled in by reads)
    # Written at creation, read only by a node taking the session over (``Handoff``), never listed: the resume
    # token's SHA-256 and the session's settings that are not columns.
    handoff: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "created_at": self.created_at,
            "ended_at": self.ended_at,
            "sources": list(self.sources),
            "sample_rate": self.sample_rate,
            "dialect": self.dialect,
            "engine": self.engine,
            "model": self.model,
            "language": self.language,
            "items": self.items,
            "duration_ms": self.duration_ms,
        }


@dataclass(frozen=True, slots=True)
class StoredItem:
    """One final, as the client received it (speaker updated when labels settle)."""

    session_id: str
    item_id: str
    source: str
    text: str
    start_ms: int
    end_ms: int
    speaker: str | None = None
    words: tuple[dict[str, Any], ...] = ()
    engine: str = ""
    repaired: bool = False
    superseded: bool = False  # cut by shed audio; replaced by a repaired item at finalization
    compute_ms: float = 0.0
    created_at: float = field(default_factory=time.time)

    def as_dict(self, *, words: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "item_id": self.item_id,
            "source": self.source,
            "text": self.text,
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "speaker": self.speaker,
            "engine": self.engine,
            "repaired": self.repaired,
        }
        if self.superseded:
            out["superseded"] = True
        if words:
            out["words"] = list(self.words)
        return out


@dataclass(frozen=True, slots=True)
class SourceRecord:
    name: str
    priority: int
    sample_rate: int
    received_ms: int = 0
    dropped_ms: int = 0
    recording: str = ""  # path of the raw PCM16 recording ("" once deleted)


@dataclass(frozen=True, slots=True)
class SpeakerRecord:
    label: str
    source: str
    talk_ms: int
    items: int


@dataclass(frozen=True, slots=True)
class ShedSpan:
    source: str
    start_ms: int
    end_ms: int


@dataclass(frozen=True, slots=True)
class Handoff:
    """An ``active`` session as another node finds it in a shared store (docs/deployment.md "Resume on any node")."""

    session_id: str
    created_at: float
    sources: tuple[str, ...]
    sample_rate: int
    dialect: str
    language: str
    extra: dict[str, Any]  # SessionRecord.handoff: token_sha256, turn_detection, overflow


@dataclass(frozen=True, slots=True)
class Finalization:
    """Everything finalization writes at once (one transaction)."""

    status: str
    ended_at: float
    summary: dict[str, Any]
    speakers: tuple[SpeakerRecord, ...] = ()
    shed_spans: tuple[ShedSpan, ...] = ()
    sources: tuple[SourceRecord, ...] = ()
    # item_id -> final speaker label, for items whose label changed
    relabelled: dict[str, str | None] = field(default_factory=dict)
    # The final transcript's item ids: stored items not among them (superseded by a repair, replaced by a decode
    # again with the primary engine) are deleted. None: keep every item, only drop superseded ones.
    keep_items: tuple[str, ...] | None = None


class SessionStore(Protocol):
    """Storage of finished and running sessions. Implementations must be safe to call from several threads."""

    def create_session(self, record: SessionRecord, sources: list[SourceRecord]) -> None: ...

    def add_item(self, item: StoredItem) -> None: ...

    def set_speakers(self, session_id: str, labels: dict[str, str | None]) -> None: ...

    def finalize(self, session_id: str, fin: Finalization) -> None: ...

    def mark_interrupted(self, every_node: bool = False) -> list[str]:
        """This node's sessions left ``active`` (it died) become ``interrupted`` (every node's with
        ``every_node``); returns their ids."""
        ...

    def list_sessions(self, limit: int = 100, offset: int = 0) -> list[SessionRecord]: ...

    def get_session(self, session_id: str) -> SessionRecord | None: ...

    def items(self, session_id: str) -> list[StoredItem]: ...

    def summary(self, session_id: str) -> dict[str, Any] | None: ...

    def speakers(self, session_id: str) -> list[SpeakerRecord]: ...

    def shed_spans(self, session_id: str) -> list[ShedSpan]: ...

    def sources(self, session_id: str) -> list[SourceRecord]: ...

    def delete_session(self, session_id: str) -> bool: ...

    def ended_before(self, cutoff: float) -> list[str]:
        """Ids of sessions that ended (completed or interrupted) before ``cutoff`` (unix seconds)."""
        ...

    def forget_recordings(self, session_id: str) -> None:
        """The session's recordings were deleted (retention): clear their paths."""
        ...

    def heartbeat(self, now: float | None = None) -> None:
        """This node is alive and not hung (a fleet's nodes read it)."""
        ...

    # Ownership in a shared store (echopanel/storage/sql.py, docs/deployment.md).
    def take_over(self, session_id: str) -> int: ...

    def takeable(self, session_id: str, stale_after_s: float, now: float | None = None) -> bool: ...

    def set_detached(self, session_id: str, at: float | None) -> None: ...

    def still_owner(self, session_id: str) -> bool: ...

    def handoff(self, session_id: str) -> Handoff | None: ...

    def take_fleet_slot(self, slot: str, limit: int, stale_after_s: float, force: bool = False) -> bool: ...

    def free_fleet_slots(self, slots: Sequence[str] = ()) -> None: ...

    @property
    def kind(self) -> str:
        """ "sqlite" or "postgresql"."""
        ...

    def close(self) -> None: ...


def store_kind_of(store: AsyncStore | None) -> str | None:
    """ "sqlite" or "postgresql" (what ``/ready`` and ``session.created`` say), or None without a store."""
    return None if store is None else store.store.kind


class AsyncStore:
    """Runs a ``SessionStore`` off the event loop: writes in order on one thread, reads on another."""

    def __init__(self, store: SessionStore) -> None:
        self.store = store
        self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="store-write")
        self._reader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="store-read")

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._writer, fn, *args)

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._reader, fn, *args)

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        self._reader.shutdown(wait=True)
        self.store.close()
