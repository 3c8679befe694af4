"""The multilingual extra: assembled once from its two packages, checked by sha256, and only when asked for."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from echopanel.engines import multilingual
from echopanel.engines.whisper import WhisperDecoder, packaged_model_dir
from echopanel.inference.jobs import UnsupportedLanguage

pytestmark = pytest.mark.skipif(not multilingual.installed(), reason="the multilingual extra is not installed")


def test_assembled_once_then_checked_and_a_damaged_copy_is_made_again(tmp_path: Path) -> None:
    path = multilingual.model_dir(tmp_path)
    model = path / "model.bin"
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.bin", "tokenizer.json", "vocabulary.txt"]
    made = model.stat().st_mtime_ns
    assert multilingual.model_dir(tmp_path) == path and model.stat().st_mtime_ns == made  # checked, not rebuilt
    with model.open("r+b") as f:  # a torn or tampered copy
        f.seek(1000)
        f.write(b"\0" * 16)
    multilingual.model_dir(tmp_path)
    assert multilingual._sha256(model) == multilingual.MODEL_SHA256


def test_without_the_extra_only_english_is_offered_and_others_are_refused() -> None:
    decoder = WhisperDecoder(packaged_model_dir(), workers=1, cpu_threads=1)  # multilingual=None: not installed
    assert decoder.languages == ("en",)
    with pytest.raises(UnsupportedLanguage):
        decoder.decode(np.zeros(16000, np.float32), prefix="", context="", final=False, language="de")
    assert not decoder.multilingual_loaded


def test_with_the_extra_every_whisper_language_and_auto_are_offered_but_nothing_is_loaded(tmp_path: Path) -> None:
    decoder = WhisperDecoder(packaged_model_dir(), workers=1, cpu_threads=1, multilingual=tmp_path)
    assert {"en", "de", "fr", "ja", "auto"} <= set(decoder.languages) and decoder.languages[0] == "en"
    decoder.decode(np.zeros(16000, np.float32), prefix="", context="", final=False, language="en")
    assert not decoder.multilingual_loaded and not (tmp_path / "whisper-base").exists()
    with pytest.raises(UnsupportedLanguage):
        decoder.decode(np.zeros(16000, np.float32), prefix="", context="", final=False, language="tlh")
