"""Per-source recordings: every accepted sample is appended here before any flow-control decision.

One raw PCM16 LE mono file per source (``<data_dir>/recordings/<session>/<source>.pcm``) at the rate the client
sent, plus a small JSON header. Spans shed from live transcription under load are read back from it at
finalization, so the stored transcript has no holes.

Writes are unbuffered: every accepted chunk is handed to the OS before ``append`` returns, so what the server
acknowledges (``received_ms`` counts ``samples``) survives the server process being killed (``kill -9``). A 64 KB
write buffer used to hold up to 2 s of acknowledged audio that such a kill lost. (It is not an ``fsync``: a crash
of the machine itself may still lose what the OS had not written; one write per chunk, 25 a second per source.)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

BYTES_PER_SAMPLE = 2


class Recording:
    def __init__(self, path: Path, sample_rate: int, *, resume: bool = False) -> None:
        """``resume``: go on with a recording another process wrote (a session carried over from another node): its
        samples are kept, a torn last sample (an odd byte) is cut, new ones are appended."""
        self.path = path
        self.sample_rate = sample_rate
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".json").write_text(json.dumps({"format": "pcm16le", "channels": 1, "rate": sample_rate}))
        self._file = open(path, "ab", buffering=0)  # kept open for the session; unbuffered (the module docstring)
        self.samples = 0
        if resume:
            size = self._file.seek(0, 2)
            if size % BYTES_PER_SAMPLE:
                self._file.truncate(size - size % BYTES_PER_SAMPLE)
            self.samples = size // BYTES_PER_SAMPLE

    def append(self, pcm16: bytes) -> int:
        """Append whole samples (in the OS when this returns); returns the sample offset where they start."""
        start = self.samples
        view = memoryview(pcm16)
        while view:
            written = self._file.write(view)
            if not written:
                raise OSError(f"could not write to {self.path}")
            view = view[written:]
        self.samples += len(pcm16) // BYTES_PER_SAMPLE
        return start

    def read(self, start: int, end: int) -> bytes:
        """Samples [start, end) as PCM16 bytes."""
        start = max(0, start)
        end = min(end, self.samples)
        if end <= start:
            return b""
        with open(self.path, "rb") as f:
            f.seek(start * BYTES_PER_SAMPLE)
            return f.read((end - start) * BYTES_PER_SAMPLE)

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


def session_dir(data_dir: Path, session_id: str) -> Path:
    return data_dir / "recordings" / session_id


def delete_session_recordings(data_dir: Path, session_id: str) -> None:
    shutil.rmtree(session_dir(data_dir, session_id), ignore_errors=True)
