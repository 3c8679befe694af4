"""Helpers for the browser tests: Chromium launch flags and screenshots."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, Playwright

CHROMIUM = os.environ.get("ECHOPANEL_CHROMIUM", "/usr/bin/chromium")
# Flags that work on these machines (no network but the registries; running as root).
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
]


def launch(playwright: Playwright, wav: Path, *, loop: bool) -> Browser:
    """Chromium whose fake microphone plays ``wav`` (once, or looped). Permission comes from the context."""
    capture = f"--use-file-for-fake-audio-capture={wav}{'' if loop else '%noloop'}"
    return playwright.chromium.launch(executable_path=CHROMIUM, args=[*FLAGS, capture], headless=True)


def save_screenshot(page: Any, directory: Path, name: str) -> Path:
    path = directory / name
    page.screenshot(path=str(path), full_page=True)
    extra = os.environ.get("ECHOPANEL_SCREENSHOT_DIR")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(extra) / name)
    return path
