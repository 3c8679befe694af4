"""What clients ask for, whatever their dialect: the commands a codec's ``parse`` returns.

Each dialect's codec (``native.py``, ``openai_realtime.py``) turns a wire message into one of these, already
validated (base64 decoded, whole PCM16 samples, known source, supported settings); the server's connection applies
them to the session. ``source`` None means "every source" for commit / clear / response.create and "the first
source" for audio.
"""

from __future__ import annotations

from dataclasses import dataclass

from echopanel.engines.base import Replacements, TurnSettings

# Keyterms (OpenAI ``keywords``, Deepgram ``keyterm``): how many, how long, and the one way they reach the decoder.
MAX_KEYTERMS = 50
MAX_KEYTERM_CHARS = 50


def glossary(terms: tuple[str, ...]) -> str:
    """Keyterms as the glossary sentence the decoder's prompt carries; it works with the forced prefix."""
    return f"Glossary: {', '.join(terms)}." if terms else ""


@dataclass(slots=True, frozen=True)
class CreateSession:
    sources: tuple[str, ...]
    sample_rate: int
    language: str
    turn_detection: bool
    overflow: str | None  # None: the server's default
    event_id: str | None = None
    settings: UpdateSession | None = None  # further settings of session.create, applied as by session.update


@dataclass(slots=True, frozen=True)
class ResumeSession:
    session_id: str
    resume_token: str
    event_id: str | None = None


@dataclass(slots=True, frozen=True)
class AppendAudio:
    source: str  # a source of the session
    pcm: bytes  # PCM16 LE mono, whole samples (may be empty)
    event_id: str | None = None


@dataclass(slots=True, frozen=True)
class AppendAudioMany:
    """One message holding audio of several sources (a multichannel frame, split by the codec)."""

    parts: tuple[AppendAudio, ...]
    event_id: str | None = None


@dataclass(slots=True, frozen=True)
class CommitAudio:
    sources: tuple[str, ...]
    event_id: str | None = None


@dataclass(slots=True, frozen=True)
class ClearAudio:
    sources: tuple[str, ...]
    event_id: str | None = None


@dataclass(slots=True, frozen=True)
class RequestResponse:
    sources: tuple[str, ...]
    event_id: str | None = None


@dataclass(slots=True, frozen=True)
class UpdateSession:
    """Settings that change mid-session; None leaves a setting as it is."""

    language: str | None = None
    turns: TurnSettings | None = None
    prompt: str | None = None
    agreement: int | None = None  # decodes that must agree before text is stable (OpenAI ``delay``)
    replacements: Replacements | None = None  # the client's replacement list (recognizer/replace.py)
    partials: bool | None = None
    event_id: str | None = None


@dataclass(slots=True, frozen=True)
class CloseSession:
    event_id: str | None = None


@dataclass(slots=True, frozen=True)
class Ping:
    event_id: str | None = None


Command = (
    CreateSession
    | ResumeSession
    | AppendAudio
    | AppendAudioMany
    | CommitAudio
    | ClearAudio
    | RequestResponse
    | UpdateSession
    | CloseSession
    | Ping
)
