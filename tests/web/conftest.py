"""Real headless Chromium (Debian's ``chromium``) driven by Playwright, with a fake microphone fed from a WAV."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_support import CHROMIUM, launch
from playwright.sync_api import Browser, Playwright, sync_playwright

from support import speech_wav

# Five LibriVox sentences, one reader: 24.7 s of speech.
STEMS = [f"sense_and_sensibility_01_austen_64kb-0{n}" for n in (870, 880, 890, 920, 930)]


@pytest.fixture(scope="session")
def speech(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The fake microphone's WAV (16 kHz mono PCM16, which Chromium's fake capture plays) and its reference."""
    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    reference = speech_wav(path, STEMS, lead_s=1.5, gap_s=1.0, tail_s=2.0)
    return path, reference


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"Chromium not found at {CHROMIUM}: `scripts/setup.sh test` installs Debian's chromium (as root)")
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright, speech: tuple[Path, str]) -> Iterator[Browser]:
    """Chromium playing the speech once per capture."""
    b = launch(playwright, speech[0], loop=False)
    yield b
    b.close()


@pytest.fixture()
def screenshots(tmp_path: Path) -> Path:
    """Where screenshots go: the test's tmp dir, and ECHOPANEL_SCREENSHOT_DIR too when it is set."""
    return tmp_path
