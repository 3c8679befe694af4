"""The numpy speaker encoder against the original resemblyzer (PyTorch) on real speech, without torch."""

from __future__ import annotations

import io
import pickle
import struct
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from speaker_streams import REFERENCE, read

from echopanel.speakers.embedding import (
    HOP,
    PARTIAL_FRAMES,
    SpeakerEncoder,
    default_weights_path,
    mel_frames,
    normalize_volume,
    partial_starts,
)
from echopanel.speakers.weights import (
    LEGACY_MAGIC,
    LEGACY_PROTOCOL,
    CheckpointError,
    load_encoder_arrays,
    load_legacy_checkpoint,
)


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(REFERENCE) as ref:
        return {k: ref[k] for k in ref.files}


def clip(reference: dict[str, np.ndarray], i: int) -> np.ndarray:
    a, b = (int(v) for v in reference["spans"][i])
    return read(str(reference["files"][i]))[a:b]


def test_partial_windows_follow_resemblyzer() -> None:
    # compute_partial_slices(n, rate=1.3, min_coverage=0.75): frame step round(16000 / 1.3 / 160) = 77.
    assert partial_starts(8000) == [0]
    assert partial_starts(16000 * 3) == [0, 77, 154]
    assert partial_starts(16000 * 2) == [0, 77]  # the third window would hold < 75 % audio
    assert partial_starts(25600) == [0]


def test_mel_frames_match_librosa(reference: dict[str, np.ndarray]) -> None:
    i = list(reference["ids"]).index(str(reference["mel_id"]))
    wav = normalize_volume(clip(reference, i))
    starts = partial_starts(len(wav))
    wav = np.pad(wav, (0, (starts[-1] + PARTIAL_FRAMES) * HOP - len(wav)))
    ours = mel_frames(wav)
    ref = reference["mel"]
    assert ours.shape == ref.shape == (161, 40)
    assert np.max(np.abs(ours - ref)) <= 1e-5 * np.max(np.abs(ref))


def test_embeddings_match_original(encoder: SpeakerEncoder, reference: dict[str, np.ndarray]) -> None:
    clips = [clip(reference, i) for i in range(len(reference["ids"]))]
    ours = encoder.embed_batch(clips)
    cosines = np.sum(ours * reference["embeddings"], axis=1)
    assert cosines.min() >= 0.999, dict(zip(reference["ids"], cosines.round(5), strict=True))
    one = encoder.embed(clips[0])  # the single-utterance path gives the same vector
    assert float(one @ reference["embeddings"][0]) >= 0.999
    assert one.shape == (256,) and one.dtype == np.float32
    assert abs(float(np.linalg.norm(one)) - 1.0) < 1e-5


def test_same_speaker_is_closer_than_different_speakers(
    encoder: SpeakerEncoder, reference: dict[str, np.ndarray]
) -> None:
    emb = encoder.embed_batch([clip(reference, i) for i in range(len(reference["ids"]))])
    who = reference["speakers"]
    sim = emb @ emb.T
    for speaker in sorted(set(who)):
        mine = who == speaker
        same = sim[np.ix_(mine, mine)][~np.eye(mine.sum(), dtype=bool)].mean()
        for other in sorted(set(who) - {speaker}):
            cross = sim[np.ix_(mine, who == other)].mean()
            assert same > cross, (speaker, other, same, cross)
    # and every utterance is nearest to its own speaker's centroid (leave-one-out)
    for i in range(len(who)):
        best, best_sim = None, -2.0
        for speaker in sorted(set(who)):
            members = [j for j in range(len(who)) if who[j] == speaker and j != i]
            cent = emb[members].mean(axis=0)
            s = float(emb[i] @ cent / np.linalg.norm(cent))
            if s > best_sim:
                best, best_sim = speaker, s
        assert best == who[i], reference["ids"][i]


def test_embedding_speed(encoder: SpeakerEncoder) -> None:
    audio = read("librivox/sense_and_sensibility_01_austen_64kb-0880.wav")[: 3 * 16000]
    encoder.embed(audio)
    runs = []
    for _ in range(3):
        t = time.perf_counter()
        encoder.embed(audio)
        runs.append(time.perf_counter() - t)
    # ~50 ms on one core here; the bound only catches a pathological slowdown (e.g. a per-sample Python loop).
    assert min(runs) < 0.5


def test_no_torch_needed(encoder: SpeakerEncoder) -> None:
    assert "torch" not in sys.modules
    assert "librosa" not in sys.modules


def test_packaged_weights_are_read_without_pickle(encoder: SpeakerEncoder) -> None:
    state = load_encoder_arrays(default_weights_path())  # np.load(allow_pickle=False)
    assert state["lstm.weight_ih_l0"].shape == (1024, 40)
    assert state["lstm.weight_hh_l2"].shape == (1024, 256)
    assert state["linear.weight"].shape == (256, 256)
    assert all(v.dtype == np.float32 for v in state.values())


def _legacy_file(tmp_path: Path, obj_pickle: bytes) -> Path:
    buf = io.BytesIO()
    for head in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"little_endian": True}):
        pickle.dump(head, buf, protocol=2)
    buf.write(obj_pickle)
    pickle.dump([], buf, protocol=2)
    path = tmp_path / "x.pt"
    path.write_bytes(buf.getvalue())
    return path


def test_checkpoint_refuses_foreign_globals(tmp_path: Path) -> None:
    evil = b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00true\x85R."  # os.system("true")
    with pytest.raises(CheckpointError, match=r"os\.system"):
        load_legacy_checkpoint(_legacy_file(tmp_path, evil))


def _text(s: str) -> bytes:
    return b"X" + struct.pack("<I", len(s)) + s.encode()


def test_checkpoint_reads_a_small_state(tmp_path: Path) -> None:
    # {"w": tensor of size (2, 2), strides (1, 2) over a 4-float storage "k"}, as torch's legacy format pickles it
    obj = b"".join(
        [
            b"\x80\x02}",
            _text("w"),
            b"ctorch._utils\n_rebuild_tensor_v2\n(",
            b"(" + _text("storage") + b"ctorch\nFloatStorage\n" + _text("k") + _text("cpu") + b"K\x04Nt",
            b"Q",  # persistent id -> storage
            b"K\x00" + b"K\x02K\x02\x86" + b"K\x01K\x02\x86" + b"\x89",  # offset, size, stride, requires_grad
            b"ccollections\nOrderedDict\n)R",  # backward hooks
            b"tRs.",
        ]
    )
    raw = io.BytesIO()
    for head in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"little_endian": True}):
        pickle.dump(head, raw, protocol=2)
    raw.write(obj)
    pickle.dump(["k"], raw, protocol=2)
    raw.write(struct.pack("<q", 4) + np.array([1, 2, 3, 4], "<f4").tobytes())
    path = tmp_path / "small.pt"
    path.write_bytes(raw.getvalue())
    state = load_legacy_checkpoint(path)
    np.testing.assert_array_equal(state["w"], [[1, 3], [2, 4]])
    path.write_bytes(raw.getvalue()[:-4])
    with pytest.raises(CheckpointError, match="truncated"):
        load_legacy_checkpoint(path)
