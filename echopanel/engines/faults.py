"""Fault injection: an engine wrapper that fails, hangs or dies on command (tests and demos).

``FaultyEngine`` is a real ``SpeechEngine``: it wraps an utterance engine (Whisper, pocketsphinx) and passes each
decode request on with a failpoint when a rule says so. The wrapped engine enacts the failpoint where the decode
really runs (``inference/jobs.py``):

- ``fail``: the decode raises (an engine exception).
- ``hang``: the decode never returns; the time limit abandons it and replaces the worker (thread or process).
- ``die``: the worker dies: a pocketsphinx process exits mid-decode; a Whisper worker thread raises ``WorkerDied``.

Rules are set on a shared ``FaultSwitch`` by engine name, for a number of decodes or until cleared; the server
exposes it at ``POST /faults`` only when started with ``ECHOPANEL_FAULT_INJECTION=1`` (docs/behaviour.md).
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

from echopanel.config import RecognizerSettings
from echopanel.engines.base import EngineStatus
from echopanel.engines.utterance import RunnerEngine, UtteranceEngine
from echopanel.inference.jobs import Decoded, DecodeRequest, DecodeRunner, release_hangs
from echopanel.inference.pool import JobResult

MODES = ("ok", "fail", "hang", "die")
KINDS = frozenset({"final", "partial"})


@dataclass
class FaultRule:
    mode: str  # fail | hang | die
    remaining: int | None = None  # decodes left to fault; None: until cleared
    kinds: frozenset[str] = KINDS  # which decodes: final, partial


class FaultSwitch:
    """Fault rules by engine name. Thread-safe; read on every decode request."""

    def __init__(self) -> None:
        self._rules: dict[str, FaultRule] = {}
        self._lock = threading.Lock()
        self.injected: Counter[str] = Counter()  # "engine:mode" -> decodes faulted

    def set(self, engine: str, mode: str, count: int | None = None, kinds: frozenset[str] | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        if count is not None and count < 1:
            raise ValueError("count must be at least 1")
        if kinds is not None and (not kinds or not kinds <= KINDS):
            raise ValueError(f"kinds must be a non-empty subset of {sorted(KINDS)}")
        with self._lock:
            if mode == "ok":
                self._rules.pop(engine, None)
            else:
                self._rules[engine] = FaultRule(mode, count, kinds or KINDS)
        if mode == "ok":
            release_hangs()

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()
        release_hangs()

    def take(self, engine: str, final: bool) -> str | None:
        """The failpoint for this decode, if a rule applies (and count it)."""
        with self._lock:
            rule = self._rules.get(engine)
            if rule is None or ("final" if final else "partial") not in rule.kinds:
                return None
            if rule.remaining is not None:
                rule.remaining -= 1
                if rule.remaining <= 0:
                    del self._rules[engine]
            self.injected[f"{engine}:{rule.mode}"] += 1
            return rule.mode

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            rules = {
                name: {"mode": r.mode, "remaining": r.remaining, "kinds": sorted(r.kinds)}
                for name, r in self._rules.items()
            }
            return {"rules": rules, "injected": dict(self.injected)}


class FaultyRunner:
    def __init__(self, inner: DecodeRunner, switch: FaultSwitch) -> None:
        self.inner = inner
        self.switch = switch
        self.name = inner.name

    def submit(self, request: DecodeRequest) -> asyncio.Future[JobResult[Decoded]]:
        fault = self.switch.take(self.name, request.final)
        return self.inner.submit(replace(request, fault=fault) if fault else request)


class FaultyEngine(UtteranceEngine):
    """``inner`` with failpoints on command. Same capabilities, policy and streams as ``inner``."""

    vad_thread_name = "faulty-vad"

    def __init__(
        self, inner: RunnerEngine, switch: FaultSwitch, *, recognizer: RecognizerSettings | None = None
    ) -> None:
        self.inner = inner
        self.switch = switch
        super().__init__(
            FaultyRunner(inner.runner, switch),
            capabilities=inner.capabilities,
            recognizer=recognizer,
            policy=inner.policy,
        )
        self.scheduler = getattr(inner, "scheduler", None)  # the flow controller measures Whisper's scheduler

    def status(self) -> EngineStatus:
        return EngineStatus(self.capabilities.name, primary=self.capabilities.name)

    def warmup(self) -> None:
        self.inner.warmup()

    def close(self) -> None:
        self.inner.close()
        super().close()
