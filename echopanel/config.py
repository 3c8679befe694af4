"""One settings object for the server. Units are in the names; every bound lives here."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

ENV_PREFIX = "ECHOPANEL_"


@dataclass(frozen=True)
class RecognizerSettings:
    """Per-source streaming recognizer tuning (see docs/behaviour.md)."""

    vad_threshold: float = 0.5
    vad_start_windows: int = 2  # consecutive 32 ms windows above threshold to open an utterance
    pre_roll_ms: int = 300  # audio kept before the detected onset, so first syllables survive
    hangover_ms: int = 300  # silence that ends an utterance
    soft_max_utterance_ms: int = 10_000  # past this, end the utterance at the next short pause
    max_utterance_ms: int = 15_000  # hard cut: force-commit before Whisper's 30 s window
    first_partial_ms: int = 300  # speech needed before the first partial decode
    # Nothing becomes stable before this much speech: two early decodes of a very short clip can agree on the
    # wrong words ("How do you marry" for "Had he married"), and stable text can never be taken back.
    commit_after_ms: int = 1500
    partial_interval_ms: int = 500  # base cadence of partial re-decodes while someone speaks (load stretches it)
    # Previous final text given to the decoder as a prompt. Off by default: on our fixtures a context prompt made
    # tiny.en invent words at clip ends ("Thank you so much."); see docs/architecture.md.
    context_chars: int = 0
    max_pending_finals: int = 4  # closed utterances awaiting decode before push() blocks
    event_queue_size: int = 256  # engine events not yet taken by the session


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    data_dir: Path = field(default_factory=lambda: Path.home() / ".local" / "share" / "echopanel")
    model_dir: Path | None = None  # None: the packaged Whisper tiny.en
    inference_workers: int = 2  # decodes run in parallel on one shared model
    cpu_threads_per_worker: int = 1  # 2 workers x 1 thread: best latency under load on 2 cores (docs/architecture.md)
    max_message_bytes: int = 1 << 20  # larger WebSocket messages close the connection with 1009
    mic_queue_ms: int = 4_000  # audio waiting for the recognizer, first (highest-priority) source
    system_queue_ms: int = 2_000  # the same for every other source: they shed first
    overflow: str = "shed"  # at a queue bound: "shed" oldest audio (recorded, repaired later) or "block" the socket
    send_timeout_s: float = 10.0  # a client that takes no event for this long is disconnected (1008)
    idle_timeout_s: float = 300.0  # a connection that sends nothing (not even audio or ping) this long is finalized
    send_queue_events: int = 1024  # server events waiting for a slow client
    max_sources: int = 4
    max_sessions: int = 16  # past it: HTTP 503 + Retry-After (native) or close 1013 (OpenAI dialect)
    # Resilience (docs/behaviour.md "Faults"): engines behind circuit breakers, a fallback engine, resume.
    fallback_engine: str = "pocketsphinx"  # "none": Whisper alone (a failed decode fails its item)
    fallback_workers: int = 1  # pocketsphinx processes (~110 MB each), started with the server
    breaker_failures: int = 5  # consecutive failed decodes that open an engine's circuit breaker
    breaker_reset_s: float = 60.0  # an open breaker lets one trial decode through after this long
    decode_timeout_s: float = 10.0  # a decode running longer is abandoned and its worker replaced (a failure)
    resume_grace_s: float = 30.0  # a dropped connection's session waits this long for its client to resume
    resume_replay_s: float = 30.0  # on resume, finals written this long before the drop are sent again
    fault_injection: bool = False  # tests and demos only: POST /faults makes engines fail, hang or die
    # Speakers and the session store (docs/behaviour.md): labels, finals written as they land, retention.
    speakers: bool = True  # live speaker labels (off when False, or when the encoder weights are not installed)
    speaker_workers: int = 1  # threads that embed and cluster utterances, shared by all sessions
    speaker_wait_ms: int = 250  # a final waits at most this long for its label, then goes out with speaker null
    speaker_max_pending: int = 32  # utterances waiting for a label per source; past it, labelled at finalization
    recording_retention_days: float = 30.0  # recordings of ended sessions older than this are deleted (0: at once)
    retention_sweep_s: float = 3600.0  # how often the server looks for expired recordings (and once at start)
    recognizer: RecognizerSettings = field(default_factory=RecognizerSettings)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then ECHOPANEL_* variables, then explicit overrides (CLI flags)."""
        env = dict(os.environ if env is None else env)
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "recognizer":
                continue
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is None or raw == "":
                continue
            values[f.name] = _coerce(f.name, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "data_dir" in values:
            values["data_dir"] = Path(values["data_dir"])
        if values.get("model_dir") is not None:
            values["model_dir"] = Path(values["model_dir"])
        return replace(cls(), **values)


def _coerce(name: str, raw: str) -> Any:
    default = getattr(Settings(), name)
    if isinstance(default, bool):
        return raw.lower() in ("1", "true", "yes", "on")
    if isinstance(default, int):
        return int(raw)
    if isinstance(default, float):
        return float(raw)
    return raw
