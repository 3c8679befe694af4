"""Test support: real server processes on port 0, fixture audio and references, WER."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from echopanel.evaluation import normalize as normalize  # re-exported for the tests
from echopanel.evaluation import wer as wer
from echopanel.testing.server import ServerProcess as ServerProcess  # re-exported for the tests
from echopanel.testing.server import free_port as free_port
from echopanel.testing.server import start_server

FIXTURES = Path(__file__).parent / "fixtures" / "audio"
LIBRIVOX = FIXTURES / "librivox"
PHONE = FIXTURES / "phone"
CARDS = FIXTURES / "cards"


def librivox_refs() -> dict[str, str]:
    refs = {}
    for line in (LIBRIVOX / "transcription").read_text().splitlines():
        m = re.match(r"<s> (.*) </s> \((.*)\)", line.strip())
        if m:
            refs[m.group(2)] = m.group(1)
    return refs


def cards_refs() -> dict[str, str]:
    """The card readings' references by file stem (``001`` ...)."""
    refs = {}
    for line in (CARDS / "cards.transcription").read_text().splitlines():
        m = re.match(r"<s>(.*)</s>\s*\((.*)\)", line.strip())
        if m:
            refs[m.group(2).strip()] = " ".join(m.group(1).split())
    return refs


def phone_ref(start_s: float = 0.0) -> str:
    words = []
    for line in (PHONE / "sample.stm").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and float(parts[3]) >= start_s:
            words.append(parts[5])
    return " ".join(words)


@contextmanager
def run_server(
    tmp: Path, *, env: dict[str, str] | None = None, args: list[str] | None = None
) -> Iterator[ServerProcess]:
    """A real ``echopanel serve --port 0`` process with its data in ``tmp`` (``echopanel.testing.server``)."""
    with start_server(env=env, args=args or (), data_dir=tmp) as server:
        yield server


SMALL_MESSAGE_BYTES = 64 * 1024  # the small_server fixture's WebSocket message limit


async def wait_until_ready(server: ServerProcess, timeout_s: float = 5.0) -> None:
    """Wait until the server has a free session slot again (``/ready`` answers 200)."""
    async with httpx.AsyncClient(base_url=server.http) as http:
        for _ in range(int(timeout_s / 0.1)):
            if (await http.get("/ready")).status_code == 200:
                return
            await asyncio.sleep(0.1)
    raise AssertionError("server never became ready again")


def speech_wav(path: Path, stems: list[str], *, lead_s: float = 1.0, gap_s: float = 1.0, tail_s: float = 1.5) -> str:
    """Write LibriVox sentences (by file stem) as one 16 kHz mono PCM16 WAV with silence around them; the reference.

    Chromium's fake capture device and ``paplay`` both play such a file.
    """
    import numpy as np
    import soundfile as sf

    rate = 16000
    parts = [np.zeros(int(lead_s * rate), dtype=np.int16)]
    for stem in stems:
        audio, file_rate = sf.read(str(LIBRIVOX / f"{stem}.wav"), dtype="int16")
        assert file_rate == rate, file_rate
        parts += [audio, np.zeros(int(gap_s * rate), dtype=np.int16)]
    parts.append(np.zeros(int(tail_s * rate), dtype=np.int16))
    sf.write(str(path), np.concatenate(parts), rate, subtype="PCM_16")
    refs = librivox_refs()
    return " ".join(refs[stem] for stem in stems)


NAMES = FIXTURES / "names"
# The rare names and jargon that tests/fixtures/audio/names says (synthetic speech, espeak-ng).
KEYTERMS = (
    "Ragnhild", "Okonkwo", "Zyxel", "Szczepanski", "Thorvaldsen", "Siobhan", "Grafana", "Nguyen", "Kubernetes",
    "Ingeborg", "Reykjavik",
)  # fmt: skip


def names_refs() -> dict[str, str]:
    rows = (line.split("\t", 1) for line in (NAMES / "transcription.tsv").read_text().splitlines() if line)
    return {stem: text for stem, text in rows}


def names_found(text: str, terms: tuple[str, ...] = KEYTERMS) -> set[str]:
    """The keyterms ``text`` spells exactly (case-insensitive, whole words)."""
    words = set(normalize(text).split())
    return {t for t in terms if normalize(t) in words}


LANGUAGES = FIXTURES / "languages"  # synthetic (espeak-ng): no registry package ships real non-English speech


def languages_refs() -> dict[str, str]:
    rows = (line.split("\t", 1) for line in (LANGUAGES / "transcription.tsv").read_text().splitlines() if line)
    return {code: text for code, text in rows}


def clips(folder: Path, stems: list[str], gap_s: float = 1.0, rate: int = 16000) -> bytes:
    """The fixture clips ``folder/<stem>.wav`` at ``rate``, each followed by ``gap_s`` of silence, as PCM16."""
    import numpy as np

    from echopanel.audio.convert import float_to_pcm16
    from echopanel.audio.wav import read_audio

    gap = np.zeros(int(gap_s * rate), np.float32)
    return float_to_pcm16(np.concatenate([np.concatenate([read_audio(folder / f"{s}.wav", rate), gap]) for s in stems]))
