"""Speaker labels for one source's utterances: live as each utterance closes, final for the whole session.

An utterance from the VAD segmenter may hold several speakers (in a lively call the voices overlap, so the VAD
finds no pause between turns). So each utterance is cut into even pieces of about ``piece_s`` (1 s), each piece
is embedded and labelled, and runs of equal labels become speaker turns. 1 s pieces were the best trade here
between turn resolution and embedding noise (see tests/speakers/test_clustering.py).

Memory: the online clusterer is bounded; what the final re-clustering needs of every piece (its time, live label and
embedding) is in a ``PieceLog`` (``pieces.py``): ~70 KB per hour of speech in memory, the embeddings (~3.7 MB per hour
of speech) in a file when the tracker is given one.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from echopanel.speakers.clustering import (
    DEFAULT_BASE,
    DEFAULT_MAX_SPEAKERS,
    DEFAULT_SLACK,
    OnlineClusterer,
    recluster,
)
from echopanel.speakers.embedding import EMBEDDING_SIZE, SAMPLE_RATE, SpeakerEncoder
from echopanel.speakers.pieces import PieceLog

DEFAULT_PIECE_S = 1.0


@dataclass(frozen=True, slots=True)
class SpeakerTurn:
    start_s: float
    end_s: float
    speaker: str


def split_even(n_samples: int, piece: int) -> list[tuple[int, int]]:
    """Cut ``n_samples`` into max(1, round(n / piece)) pieces of equal length (+-1 sample): (start, end) pairs."""
    if n_samples <= 0:
        return []
    count = max(1, round(n_samples / piece))
    edges = [n_samples * i // count for i in range(count + 1)]
    return list(itertools.pairwise(edges))


def merge_turns(turns: Sequence[SpeakerTurn]) -> list[SpeakerTurn]:
    """Join consecutive turns of the same speaker that touch (pieces of one utterance)."""
    out: list[SpeakerTurn] = []
    for t in turns:
        if out and out[-1].speaker == t.speaker and abs(out[-1].end_s - t.start_s) < 1e-6:
            out[-1] = SpeakerTurn(out[-1].start_s, t.end_s, t.speaker)
        else:
            out.append(t)
    return out


def main_speaker(turns: Sequence[SpeakerTurn]) -> str | None:
    """The speaker with the most time in ``turns`` (the first one on a tie), e.g. an utterance's label."""
    time: dict[str, float] = {}
    for t in turns:
        time[t.speaker] = time.get(t.speaker, 0.0) + t.end_s - t.start_s
    if not time:
        return None
    top = max(time.values())
    return next(t.speaker for t in turns if time[t.speaker] == top)


class SpeakerTracker:
    """Live and final speaker turns for one source. Deterministic; not thread-safe (one caller at a time)."""

    def __init__(
        self,
        encoder: SpeakerEncoder,
        *,
        piece_s: float = DEFAULT_PIECE_S,
        base: float = DEFAULT_BASE,
        slack: float = DEFAULT_SLACK,
        max_speakers: int = DEFAULT_MAX_SPEAKERS,
        sample_rate: int = SAMPLE_RATE,
        embeddings_path: Path | None = None,
    ) -> None:
        if sample_rate != SAMPLE_RATE:
            raise ValueError(f"the speaker encoder needs {SAMPLE_RATE} Hz audio")
        self._encoder = encoder
        self._piece = max(1, round(piece_s * sample_rate))
        self._rate = sample_rate
        self._base = base
        self._slack = slack
        self._max_speakers = max_speakers
        self._online = OnlineClusterer(base, slack, max_speakers=max_speakers)
        self._pieces = PieceLog(EMBEDDING_SIZE, embeddings_path)

    def add_utterance(self, audio: npt.NDArray[np.float32], start_s: float) -> list[SpeakerTurn]:
        """Live turns of one closed utterance (float32 16 kHz audio starting at ``start_s`` on the source clock)."""
        return self.add_utterances([(audio, start_s)])[0]

    def add_utterances(self, utterances: Sequence[tuple[npt.NDArray[np.float32], float]]) -> list[list[SpeakerTurn]]:
        """``add_utterance`` for several utterances in order, with one pass through the network for all their pieces
        (the LSTM's per-step Python cost is paid once per batch: finalization labels paused utterances this way)."""
        spans = [split_even(len(audio), self._piece) for audio, _ in utterances]
        clips = [audio[a:b] for (audio, _), mine in zip(utterances, spans, strict=True) for a, b in mine]
        embeddings = iter(self._encoder.embed_batch(clips)) if clips else iter(())
        out = []
        for (_, start_s), mine in zip(utterances, spans, strict=True):
            turns = []
            for a, b in mine:
                emb = next(embeddings)
                label = self._online.assign(emb, (b - a) / self._rate)
                piece_start, piece_end = start_s + a / self._rate, start_s + b / self._rate
                self._pieces.append(piece_start, piece_end, emb, label)
                turns.append(SpeakerTurn(piece_start, piece_end, label))
            out.append(merge_turns(turns))
        return out

    def live_turns(self) -> list[SpeakerTurn]:
        """Every piece so far with the label it was given live."""
        p = self._pieces
        return merge_turns([SpeakerTurn(p.starts[i], p.ends[i], p.live(i)) for i in range(len(p))])

    def final_turns(self) -> list[SpeakerTurn]:
        """Every piece so far re-labelled with all of the session's speech (``recluster``)."""
        p = self._pieces
        if not len(p):
            return []
        starts = np.frombuffer(p.starts, dtype=np.float64)
        ends = np.frombuffer(p.ends, dtype=np.float64)
        order = np.argsort(starts, kind="stable")  # utterances labelled at finalization came last
        live = p.live_labels()
        labels = recluster(
            p.embeddings()[order],
            [float(ends[i] - starts[i]) for i in order],
            [live[i] for i in order],
            self._base,
            self._slack,
            max_speakers=self._max_speakers,
        )
        turns = [SpeakerTurn(float(starts[i]), float(ends[i]), lab) for i, lab in zip(order, labels, strict=True)]
        return merge_turns(turns)

    def close(self) -> None:
        """Close the embeddings file (the tracker is done; its turns stay readable)."""
        self._pieces.close()
