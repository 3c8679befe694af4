"""The fallback chain: a ``SpeechEngine`` over [primary, fallback, ...], each engine behind a circuit breaker.

Every decode request (a partial or a final of one utterance) goes to the first engine whose breaker allows it:

- A failure is an exception, a timeout (the decode ran past ``decode_timeout_s``: abandoned, its worker replaced)
  or a dead worker process. It counts against that engine's breaker, and the same request goes on at once to the
  next engine, so the item is not lost while the breaker counts.
- ``failure_threshold`` (5) failures in a row open the breaker: for ``reset_timeout_s`` (60 s) the engine gets no
  work and the next engine carries every session. Then one trial request goes to it (HALF_OPEN); success closes
  the breaker and the primary takes over again; failure opens it for another period.
- If no engine can decode a request, it fails with ``EnginesUnavailable`` (code ``engine_unavailable``): the item
  gets an error event, its audio stays in the recording and is decoded at finalization if an engine is back.

Segmentation, item numbering and the event contract do not change when engines switch: every engine is driven by
the same ``VadStreamingRecognizer``; only the decode of an utterance moves. Finals carry the ``engine`` that
decoded them; the session re-decodes fallback items with the primary at finalization (``primary_only`` requests).
Sessions hear of each switch through ``listeners`` (``ChainNotice``: ``session.degraded`` on the wire).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from echopanel.config import RecognizerSettings
from echopanel.engines.base import EngineStatus
from echopanel.engines.utterance import RunnerEngine, UtteranceEngine
from echopanel.flow.breaker import BreakerSettings, BreakerState, CircuitBreaker, Transition
from echopanel.inference.jobs import Decoded, DecodeRequest, UnsupportedLanguage, WorkerDied
from echopanel.inference.pool import DecodeTimeout, JobResult

if TYPE_CHECKING:
    from echopanel.metrics import ServerMetrics

log = logging.getLogger(__name__)

STATE_VALUE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


class EnginesUnavailable(RuntimeError):
    """No engine of the chain could decode a request."""

    code = "engine_unavailable"


@dataclass
class Link:
    engine: RunnerEngine
    breaker: CircuitBreaker
    name: str
    failures: Counter[str] = field(default_factory=Counter)  # kind (error, timeout, died) -> count
    decodes: int = 0
    last_failure: str = ""


@dataclass(frozen=True)
class ChainNotice:
    mode: str  # primary | fallback | down
    engine: str  # the engine new work goes to ("none" when down)
    reason: str
    at: float


def failure_kind(exc: BaseException) -> str:
    if isinstance(exc, DecodeTimeout):
        return "timeout"
    if isinstance(exc, WorkerDied):
        return "died"
    return "error"


class ChainRunner:
    def __init__(self, chain: ChainEngine) -> None:
        self.chain = chain
        self.name = chain.links[0].name

    def submit(self, request: DecodeRequest) -> asyncio.Future[JobResult[Decoded]]:
        return asyncio.ensure_future(self.chain.decode(request))


class ChainEngine(UtteranceEngine):
    def __init__(
        self,
        engines: Sequence[RunnerEngine],
        *,
        breaker: BreakerSettings | None = None,
        recognizer: RecognizerSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not engines:
            raise ValueError("a chain needs at least one engine")
        settings = breaker or BreakerSettings()
        self.links = [Link(e, CircuitBreaker(settings), e.capabilities.name) for e in engines]
        primary = engines[0]
        # Clients see the primary's capabilities (status() tells who decodes now); one decode policy (the flow
        # controller's) serves every engine.
        super().__init__(
            ChainRunner(self), capabilities=primary.capabilities, recognizer=recognizer, policy=primary.policy
        )
        self.scheduler = getattr(primary, "scheduler", None)
        self.clock = clock
        self.listeners: list[Callable[[ChainNotice], None]] = []
        self.metrics: ServerMetrics | None = None
        self._mode = ("primary", self.links[0].name)

    @property
    def names(self) -> list[str]:
        return [link.name for link in self.links]

    def bind_metrics(self, metrics: ServerMetrics) -> None:
        """Export breaker states, decodes and failures per engine to Prometheus."""
        self.metrics = metrics
        now = self.clock()
        for link in self.links:
            metrics.breaker_state.labels(link.name).set(STATE_VALUE[link.breaker.state(now)])
        self._export_mode()

    def _export_mode(self) -> None:
        if self.metrics is not None:
            for link in self.links:
                self.metrics.engine_active.labels(link.name).set(1 if link.name == self._mode[1] else 0)

    # -- SpeechEngine ------------------------------------------------------------------------------------------------

    def status(self) -> EngineStatus:
        now = self.clock()
        _mode, engine = self.mode(now)
        breakers = {link.name: link.breaker.state(now).value for link in self.links}
        return EngineStatus(engine, breakers[self.links[0].name], breakers, self.links[0].name)

    def primary_available(self) -> bool:
        return self.links[0].breaker.available(self.clock())

    def warmup(self) -> None:
        """Warm every engine at once (the fallback's processes start while Whisper warms up)."""
        errors: list[BaseException] = []

        def warm(engine: RunnerEngine) -> None:
            try:
                engine.warmup()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=warm, args=(link.engine,), daemon=True) for link in self.links[1:]]
        for t in threads:
            t.start()
        self.links[0].engine.warmup()
        for t in threads:
            t.join()
        for exc in errors:
            log.error("fallback engine failed to warm up: %s", exc)

    def close(self) -> None:
        for link in self.links:
            link.engine.close()
        super().close()

    # -- routing -----------------------------------------------------------------------------------------------------

    def mode(self, now: float) -> tuple[str, str]:
        """(primary | fallback | down, the engine new work goes to)."""
        if self.links[0].breaker.state(now) is BreakerState.CLOSED:
            return "primary", self.links[0].name
        for link in self.links[1:]:
            if link.breaker.state(now) is BreakerState.CLOSED:
                return "fallback", link.name
        return "down", "none"  # at most trial decodes go through until a breaker closes

    async def decode(self, request: DecodeRequest) -> JobResult[Decoded]:
        links = self.links[:1] if request.primary_only else self.links
        if request.language not in self.links[0].engine.capabilities.languages:
            raise UnsupportedLanguage(f"language {request.language!r} is not supported by {self.links[0].name}")
        tried: list[str] = []
        for link in links:
            if request.language not in link.engine.capabilities.languages:
                tried.append(f"{link.name}: no {request.language!r}")  # not a failure of that engine
                continue
            now = self.clock()
            trial = link.breaker.state(now) is BreakerState.HALF_OPEN
            allowed, transition = link.breaker.allow(now)
            self._changed(link, transition)
            if not allowed:
                tried.append(f"{link.name}: {link.breaker.state(now).value}")
                continue
            future = link.engine.runner.submit(request)
            try:
                result = await future
            except asyncio.CancelledError:
                future.cancel()
                if trial:
                    link.breaker.release()  # the trial never reported: the next request is the trial
                raise
            except Exception as exc:
                kind = failure_kind(exc)
                link.failures[kind] += 1
                link.last_failure = kind
                if self.metrics is not None:
                    self.metrics.engine_failures.labels(link.name, kind).inc()
                log.warning(
                    "engine %s: %s decode failed (%s: %s)",
                    link.name,
                    "final" if request.final else "partial",
                    kind,
                    type(exc).__name__,
                )
                self._changed(link, link.breaker.record_failure(self.clock()))
                tried.append(f"{link.name}: {kind}")
                continue
            self._changed(link, link.breaker.record_success(self.clock()))
            link.decodes += 1
            if self.metrics is not None:
                self.metrics.engine_decodes.labels(link.name).inc()
            value = result.value if result.value.engine else replace(result.value, engine=link.name)
            return JobResult(value, result.wait_s, result.compute_s)
        raise EnginesUnavailable(
            f"no engine could decode this item ({', '.join(tried)}); its audio is kept in the recording and is "
            "transcribed at finalization if an engine recovers"
        )

    def _changed(self, link: Link, transition: Transition | None) -> None:
        if transition is None:
            return
        if self.metrics is not None:
            self.metrics.breaker_state.labels(link.name).set(STATE_VALUE[transition.new])
        log.warning(
            "engine %s: circuit breaker %s -> %s (%d consecutive failures)",
            link.name,
            transition.old.value,
            transition.new.value,
            transition.failures,
        )
        now = transition.at
        mode = self.mode(now)
        if mode == self._mode:
            return
        old_mode, self._mode = self._mode, mode
        self._export_mode()
        notice = ChainNotice(mode[0], mode[1], self._reason(old_mode, mode, link, now), now)
        log.warning("engines: %s (%s)", notice.mode, notice.reason)
        for listener in list(self.listeners):
            try:
                listener(notice)
            except Exception:
                log.exception("chain listener failed")

    def _reason(self, old: tuple[str, str], new: tuple[str, str], link: Link, now: float) -> str:
        primary = self.links[0]
        if new[0] == "primary":
            return f"engine {primary.name} recovered (trial decode succeeded); it transcribes again"
        if new[0] == "fallback":
            if old[0] == "down":
                return f"engine {new[1]} recovered; it transcribes until {primary.name} does"
            retry = primary.breaker.retry_in(now)
            return (
                f"engine {primary.name} failed {primary.breaker.settings.failure_threshold} times in a row "
                f"(last: {primary.last_failure or 'error'}); fallback engine {new[1]} transcribes, "
                f"{primary.name} gets a trial in {retry:.0f} s"
            )
        return (
            f"every engine is failing (last: {link.name} {link.last_failure or 'error'}); audio is recorded and "
            "transcribed when an engine recovers"
        )
