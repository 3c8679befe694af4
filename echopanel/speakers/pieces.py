"""What a source's final re-clustering needs, kept compactly for the whole session: every speech piece's time,
its live label and its embedding.

A long meeting has one piece per second of speech (about 3600 per hour per source). Kept as Python objects with a
small numpy array each, they cost ~1.4 KB apiece and, long-lived among the decoders' large temporary buffers, pin
heap pages the allocator can no longer return. Here the times and labels are plain arrays (20 bytes a piece,
~70 KB per hour of speech) and the embeddings go to an append-only file of float32 rows beside the session's
recordings (1 KB a piece, ~3.7 MB per hour of speech, on disk), read back once, at finalization. Without a file
(tests, tools) the embeddings stay in one growable array in memory.
"""

from __future__ import annotations

from array import array
from pathlib import Path

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]


class PieceLog:
    def __init__(self, dim: int, path: Path | None = None) -> None:
        self.dim = dim
        self.path = path
        self.starts = array("d")
        self.ends = array("d")
        self._live = array("H")  # index into labels
        self.labels: list[str] = []
        self._label_index: dict[str, int] = {}
        self._file = None if path is None else open(path, "wb", buffering=1 << 16)
        self._memory = np.zeros((0, dim), np.float32)

    def __len__(self) -> int:
        return len(self.starts)

    def append(self, start_s: float, end_s: float, embedding: F32, live: str) -> None:
        row = np.ascontiguousarray(embedding, dtype=np.float32).reshape(self.dim)
        index = self._label_index.get(live)
        if index is None:
            index = self._label_index[live] = len(self.labels)
            self.labels.append(live)
        n = len(self.starts)
        self.starts.append(start_s)
        self.ends.append(end_s)
        self._live.append(index)
        if self._file is not None:
            self._file.write(row.tobytes())
            return
        if n == len(self._memory):  # grow by doubling: one buffer, not one array per piece
            grown = np.zeros((max(64, 2 * n), self.dim), np.float32)
            grown[:n] = self._memory[:n]
            self._memory = grown
        self._memory[n] = row

    def live(self, i: int) -> str:
        return self.labels[self._live[i]]

    def live_labels(self) -> list[str]:
        return [self.labels[i] for i in self._live]

    def embeddings(self) -> F32:
        """Every piece's embedding, (n, dim), in the order they were added (read from the file when there is one)."""
        n = len(self.starts)
        if self._file is None:
            return self._memory[:n]
        self._file.flush()
        assert self.path is not None
        return np.fromfile(self.path, dtype=np.float32, count=n * self.dim).reshape(n, self.dim)

    def close(self) -> None:
        if self._file is not None and not self._file.closed:
            self._file.close()
