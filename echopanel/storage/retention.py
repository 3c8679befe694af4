"""Recording retention: raw recordings of ended sessions are deleted after ``recording_retention_days``.

The transcript, speakers and summary stay in the store (delete a session to remove those too); only the audio goes.
The server sweeps at start and every ``retention_sweep_s`` (an hour by default), so a recording lives at most
retention + one sweep interval. Recording folders that no stored session knows (left by a server that died before
its first store write, or by an older version) are swept by their modification time. 0 days: recordings are
deleted at the first sweep after their session ended.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from echopanel.storage.recording import delete_session_recordings, session_dir
from echopanel.storage.store import SessionStore

log = logging.getLogger(__name__)

DAY_S = 86_400.0


def sweep(store: SessionStore, data_dir: Path, retention_days: float, now: float | None = None) -> list[str]:
    """Delete expired recordings; returns the session ids whose recordings were deleted."""
    now = time.time() if now is None else now
    cutoff = now - retention_days * DAY_S
    gone = []
    for sid in store.ended_before(cutoff + (1.0 if retention_days <= 0 else 0.0)):
        if session_dir(data_dir, sid).exists():
            delete_session_recordings(data_dir, sid)
            gone.append(sid)
        store.forget_recordings(sid)
    root = data_dir / "recordings"
    if root.is_dir():
        for folder in root.iterdir():
            if not folder.is_dir() or folder.name in gone:
                continue
            record = store.get_session(folder.name)
            if record is None and folder.stat().st_mtime < cutoff:
                delete_session_recordings(data_dir, folder.name)
                gone.append(folder.name)
    if gone:
        log.info("retention: deleted the recordings of %d sessions older than %g days", len(gone), retention_days)
    return gone
