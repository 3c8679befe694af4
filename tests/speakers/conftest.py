"""The speaker encoder, loaded once; its tests skip when the weights package is not installed."""

from __future__ import annotations

import pytest

from echopanel.speakers.embedding import SpeakerEncoder, default_weights_path


@pytest.fixture(scope="session")
def encoder() -> SpeakerEncoder:
    try:
        default_weights_path()
    except FileNotFoundError as exc:
        pytest.skip(f"speaker weights missing: {exc}")
    return SpeakerEncoder.load()
