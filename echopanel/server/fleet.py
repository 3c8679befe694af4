"""The fleet-wide session limit (``--fleet-max-sessions``, docs/deployment.md "Admission"), held in the shared store.

Every session of the fleet holds one row in ``fleet_slots`` while it runs on a node, next to its node's own slot
(``flow/admission.py``): a new session takes one when its node admits it, a resumed or taken-over one takes one even at
the limit (it is a session the fleet already has), and the row goes when the node lets the session go (``Lease``
release). Counting and taking happen in one transaction under a lock, so two nodes admitting at once cannot pass the
limit. A node that dies leaves its rows; they are freed once its heartbeat is ``takeover_after_s`` old, and a node
that starts frees what a previous run of it left.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from echopanel.flow.admission import Lease
from echopanel.storage.store import AsyncStore

log = logging.getLogger(__name__)


class FleetSlots:
    def __init__(self, store: AsyncStore, limit: int, stale_after_s: float) -> None:
        self.store = store
        self.limit = limit
        self.stale_after_s = stale_after_s
        self._pending: set[asyncio.Task[None]] = set()

    async def take(self, lease: Lease, *, force: bool = False) -> bool:
        """A fleet slot for the session ``lease`` admitted on this node (freed with the lease); False at the limit."""
        slot = uuid.uuid4().hex
        ok = await self.store.write(self.store.store.take_fleet_slot, slot, self.limit, self.stale_after_s, force)
        if ok:
            lease.also = lambda: self._free(slot)
        return bool(ok)

    def _free(self, slot: str) -> None:
        task = asyncio.get_running_loop().create_task(self._write_free(slot))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _write_free(self, slot: str) -> None:
        try:
            await self.store.write(self.store.store.free_fleet_slots, [slot])
        except Exception:
            log.warning("could not free a fleet slot (freed when this node next starts)", exc_info=True)
