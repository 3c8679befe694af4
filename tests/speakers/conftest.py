"""The speaker encoder, loaded once from the packaged weights (echopanel/speakers/data/ge2e.npz).

No skip when they are missing: they ship inside the package, so a missing file is a failure of the package.
"""

from __future__ import annotations

import pytest

from echopanel.speakers.embedding import SpeakerEncoder


@pytest.fixture(scope="session")
def encoder() -> SpeakerEncoder:
    return SpeakerEncoder.load()
