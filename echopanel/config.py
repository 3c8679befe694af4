"""One settings object for the server. Units are in the names; every bound lives here.

Validated by pydantic (pydantic-settings reads the environment): a bad value is refused when the server starts, with
the variable's name and what is allowed (``SettingsError``), never half-applied.

- ``Settings(**values)``: the defaults and the values given, validated (code and tests; the environment is not read).
- ``Settings.from_env(env, **overrides)``: the defaults, then ``ECHOPANEL_*`` variables, then ``overrides`` (CLI
  flags; None means "not given"). Every field is a variable: ``ECHOPANEL_MAX_SESSIONS``; nested settings take the
  section and a double underscore: ``ECHOPANEL_RECOGNIZER__HANGOVER_MS``, ``ECHOPANEL_LADDER__UP_AFTER_S``
  (docs/behaviour.md, "Settings"). Empty variables count as unset.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError

from echopanel.flow.ladder import LadderSettings, Level

ENV_PREFIX = "ECHOPANEL_"
NESTED = "__"
SECRET_FIELDS = frozenset({"token"})  # never echoed in an error message
WHISPER_WINDOW_MS = 30_000  # Whisper never sees more than 30 s at once: utterances are cut before that


class RecognizerSettings(BaseModel):
    """Per-source streaming recognizer tuning (see docs/behaviour.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    vad_threshold: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5  # speech probability that counts as speech
    vad_start_windows: PositiveInt = 2  # consecutive 32 ms windows above threshold to open an utterance
    pre_roll_ms: NonNegativeInt = 300  # audio kept before the detected onset, so first syllables survive
    hangover_ms: NonNegativeInt = 300  # silence that ends an utterance
    soft_max_utterance_ms: PositiveInt = 10_000  # past this, end the utterance at the next short pause
    max_utterance_ms: Annotated[int, Field(gt=0, le=WHISPER_WINDOW_MS)] = 15_000  # hard cut: force-commit before 30 s
    first_partial_ms: NonNegativeInt = 300  # speech needed before the first partial decode
    # Nothing becomes stable before this much speech: two early decodes of a very short clip can agree on the
    # wrong words ("How do you marry" for "Had he married"), and stable text can never be taken back.
    commit_after_ms: NonNegativeInt = 1500
    # Base cadence of partial re-decodes while someone speaks (load stretches it).
    partial_interval_ms: PositiveInt = 500
    # Previous final text given to the decoder as a prompt. Off by default: on our fixtures a context prompt made
    # tiny.en invent words at clip ends ("Thank you so much."); see docs/architecture.md.
    context_chars: NonNegativeInt = 0
    max_pending_finals: PositiveInt = 4  # closed utterances awaiting decode before push() blocks
    event_queue_size: PositiveInt = 256  # engine events not yet taken by the session

    @model_validator(mode="after")
    def _soft_below_hard(self) -> RecognizerSettings:
        if self.soft_max_utterance_ms > self.max_utterance_ms:
            raise ValueError(
                f"soft_max_utterance_ms ({self.soft_max_utterance_ms}) must not exceed max_utterance_ms "
                f"({self.max_utterance_ms})"
            )
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=NESTED,
        env_ignore_empty=True,
        validate_default=True,
    )

    host: Annotated[str, Field(min_length=1)] = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8765  # 0: any free port
    token: str | None = None
    data_dir: Path = Field(default_factory=lambda: Path.home() / ".local" / "share" / "echopanel")
    # The session store: "" (SQLite in data_dir, the embedded default), a path or sqlite:///PATH, or
    # postgresql://USER@HOST:PORT/DB for a fleet of nodes sharing it (docs/deployment.md).
    store: str = ""
    node_id: str = ""  # this node's name in a shared store ("": hostname:port)
    model_dir: Path | None = None  # None: the packaged Whisper tiny.en
    inference_workers: PositiveInt = 2  # decodes run in parallel on one shared model
    # 2 workers x 1 thread: best latency under load on 2 cores (docs/architecture.md).
    cpu_threads_per_worker: PositiveInt = 1
    # Larger WebSocket messages close the connection with 1009.
    max_message_bytes: Annotated[int, Field(ge=1024)] = 1 << 20
    mic_queue_ms: PositiveInt = 4_000  # audio waiting for the recognizer, first (highest-priority) source
    system_queue_ms: PositiveInt = 2_000  # the same for every other source: they shed first
    # At a queue bound: "shed" the oldest audio (recorded, repaired later) or "block" the socket.
    overflow: Literal["shed", "block"] = "shed"
    send_timeout_s: PositiveFloat = 10.0  # a client that takes no event for this long is disconnected (1008)
    # A connection that sends nothing (not even audio or ping) this long is finalized.
    idle_timeout_s: PositiveFloat = 300.0
    send_queue_events: PositiveInt = 1024  # server events waiting for a slow client
    max_sources: PositiveInt = 4
    max_sessions: PositiveInt = 16  # past it: HTTP 503 + Retry-After (native) or close 1013 (OpenAI dialect)
    # Sessions of the whole fleet sharing the store (None: only each node's max_sessions); past it: close 1013.
    fleet_max_sessions: PositiveInt | None = None
    # Native sockets hold no session slot until session.create; one that has not created (or resumed) a session this
    # long after the upgrade is closed 1008, and at most this many such sockets wait at once (past it: HTTP 503).
    handshake_timeout_s: PositiveFloat = 10.0
    max_pending_connections: PositiveInt = 64
    # Resilience (docs/behaviour.md "Faults"): engines behind circuit breakers, a fallback engine, resume.
    fallback_engine: Literal["pocketsphinx", "none"] = "pocketsphinx"  # "none": Whisper alone
    fallback_workers: PositiveInt = 1  # pocketsphinx processes (~110 MB each), started with the server
    breaker_failures: PositiveInt = 5  # consecutive failed decodes that open an engine's circuit breaker
    breaker_reset_s: NonNegativeFloat = 60.0  # an open breaker lets one trial decode through after this long
    decode_timeout_s: PositiveFloat = 10.0  # a decode running longer is abandoned and its worker replaced
    resume_grace_s: NonNegativeFloat = 30.0  # a dropped connection's session waits this long for its client
    resume_replay_s: NonNegativeFloat = 30.0  # on resume, finals written this long before the drop are sent again
    # A shared store: a node whose heartbeat is this old is hung, and its sessions may be taken over on resume.
    takeover_after_s: PositiveFloat = 10.0
    # SIGTERM drains: sessions are handed off at their next pause between utterances (1012), the node exits after
    # at most this long (the last 5 s are for flushing: a session with no pause by then is handed off mid-speech).
    drain_timeout_s: PositiveFloat = 20.0
    fault_injection: bool = False  # tests and demos only: POST /faults makes engines fail, hang or die
    memory_debug: bool = False  # diagnostics only: tracemalloc on, GET /debug/memory (docs/behaviour.md)
    # Speakers and the session store (docs/behaviour.md): labels, finals written as they land, retention.
    speakers: bool = True  # live speaker labels (off when False, or when the encoder weights are not installed)
    speaker_workers: PositiveInt = 1  # threads that embed and cluster utterances, shared by all sessions
    speaker_wait_ms: NonNegativeInt = 250  # a final waits at most this long for its label, then speaker null
    speaker_max_pending: NonNegativeInt = 32  # utterances waiting for a label per source; past it, at the end
    recording_retention_days: NonNegativeFloat = 30.0  # recordings of ended sessions older than this go (0: at once)
    retention_sweep_s: PositiveFloat = 3600.0  # how often the server looks for expired recordings
    memory_trim_s: PositiveFloat = 30.0  # how often free heap goes back to the OS (glibc malloc_trim)
    # File transcription (POST /v1/audio/transcriptions): bounds on one request and on the files decoded at once.
    max_upload_mb: PositiveFloat = 100.0  # request body; past it 413
    max_file_s: PositiveFloat = 7_200.0  # decoded audio (2 h, 0.46 GB as float32 at 16 kHz); past it 413
    max_file_jobs: PositiveInt = 2  # files transcribed at once, server-wide; past it 429 + Retry-After
    recognizer: RecognizerSettings = Field(default_factory=RecognizerSettings)
    ladder: LadderSettings = Field(default_factory=LadderSettings)  # the degrade ladder (echopanel/flow/ladder.py)

    @field_validator("ladder")
    @classmethod
    def _ladder_in_range(cls, ladder: LadderSettings) -> LadderSettings:
        problems = [f"{n} must be >= 0, not {v}" for n, v in vars(ladder).items() if isinstance(v, float) and v < 0]
        problems += [
            f"{n} must be <= 1, not {getattr(ladder, n)}"
            for n in ("up_final_utilization", "down_final_utilization")
            if getattr(ladder, n) > 1
        ]
        if ladder.max_level > Level.SHED_SYSTEM:
            problems.append(f"max_level must be at most {int(Level.SHED_SYSTEM)} (the fallback is not a load step)")
        if problems:
            raise ValueError("; ".join(problems))
        return ladder

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """``Settings(...)`` is the defaults and what it is given; the environment comes in through ``from_env``."""
        return (init_settings,)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then ECHOPANEL_* variables (``env``, or the process's), then explicit overrides (CLI flags;
        None: not given). ``SettingsError`` names each bad variable or flag and what is allowed."""
        given = {k: v for k, v in overrides.items() if v is not None}
        try:
            values = _Environment(cls, os.environ if env is None else env)()
        except SourceError as exc:  # a whole section given as a variable that is not JSON
            raise SettingsError(
                f"invalid settings:\n  {exc}: a section's variable takes JSON, for example "
                f"{ENV_PREFIX}RECOGNIZER='{{\"hangover_ms\": 200}}'; "
                f"or set one value: {ENV_PREFIX}RECOGNIZER__HANGOVER_MS=200"
            ) from None
        try:
            return cls(**{**values, **given})
        except ValidationError as exc:
            raise SettingsError(describe(exc, flags=set(given))) from None

    def replace(self, **changes: Any) -> Settings:
        """A validated copy with ``changes`` (what ``dataclasses.replace`` did for the dataclass this was)."""
        return type(self)(**{**{name: getattr(self, name) for name in type(self).model_fields}, **changes})


class SettingsError(ValueError):
    """Settings refused at start; the message names each variable (or flag) and what it allows."""


class _Environment(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping (the process environment, or a test's)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        fold = (lambda k: k) if self.case_sensitive else str.lower
        return {fold(k): v for k, v in self._environ.items() if not (self.env_ignore_empty and v == "")}


def variable(loc: tuple[int | str, ...]) -> str:
    """The environment variable of a setting: ("recognizer", "hangover_ms") -> ECHOPANEL_RECOGNIZER__HANGOVER_MS."""
    return ENV_PREFIX + NESTED.join(str(part) for part in loc).upper()


def describe(exc: ValidationError, *, flags: Collection[str] = ()) -> str:
    """One line per refused value: where it came from (variable or ``--flag``), the value, what is allowed."""
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        name = f"--{str(loc[0]).replace('_', '-')}" if loc and loc[0] in flags else variable(loc)
        shown = "" if not loc or loc[0] in SECRET_FIELDS or err["type"] == "value_error" else f"={err['input']!r}"
        message = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            message = "no such setting"
        lines.append(f"{name}{shown}: {message}")
    return "invalid settings:\n  " + "\n  ".join(lines)
