"""The fallback chain's routing and breakers, with engines that subclass the interface and an injected clock."""

from __future__ import annotations

import asyncio
from collections import deque

import numpy as np
import pytest

from echopanel.engines.base import DecodePolicy, EngineCapabilities
from echopanel.engines.chain import ChainEngine, ChainNotice, EnginesUnavailable
from echopanel.flow.breaker import BreakerSettings
from echopanel.inference.jobs import Decoded, DecodeRequest, UnsupportedLanguage, WorkerDied
from echopanel.inference.scheduler import DecodeTimeout, JobResult

AUDIO = np.zeros(1600, np.float32)


class ScriptedRunner:
    """Answers each decode as scripted: "ok", "error", "timeout", "died" (then "ok" once the script runs out)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.script: deque[str] = deque()
        self.calls: list[DecodeRequest] = []

    def submit(self, request: DecodeRequest) -> asyncio.Future[JobResult[Decoded]]:
        self.calls.append(request)
        future: asyncio.Future[JobResult[Decoded]] = asyncio.get_running_loop().create_future()
        outcome = self.script.popleft() if self.script else "ok"
        if outcome == "ok":
            future.set_result(JobResult(Decoded(f" from {self.name}", ()), 0.0, 0.01))
        elif outcome == "error":
            future.set_exception(RuntimeError("boom"))
        elif outcome == "timeout":
            future.set_exception(DecodeTimeout("abandoned"))
        elif outcome == "died":
            future.set_exception(WorkerDied("gone"))
        # "pending": never answers (cancellation tests)
        return future


class ScriptedEngine:
    def __init__(self, name: str, languages: tuple[str, ...] = ("en",)) -> None:
        self.capabilities = EngineCapabilities(name=name, model=f"{name}-model", languages=languages)
        self.policy = DecodePolicy()
        self.runner = ScriptedRunner(name)

    def warmup(self) -> None:
        pass

    def close(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_chain(reset_s: float = 60.0) -> tuple[ChainEngine, ScriptedEngine, ScriptedEngine, Clock, list[ChainNotice]]:
    primary, fallback, clock = ScriptedEngine("whisper"), ScriptedEngine("pocketsphinx"), Clock()
    chain = ChainEngine([primary, fallback], breaker=BreakerSettings(5, reset_s), clock=clock)
    notices: list[ChainNotice] = []
    chain.listeners.append(notices.append)
    return chain, primary, fallback, clock, notices


def req(final: bool = True, primary_only: bool = False) -> DecodeRequest:
    return DecodeRequest(AUDIO, final, key="s:1", primary_only=primary_only)


async def test_each_failure_goes_on_to_the_fallback_and_five_open_the_breaker() -> None:
    chain, primary, _fallback, _clock, notices = make_chain()
    primary.runner.script.extend(["error", "timeout", "died", "error"])
    for _ in range(4):
        result = await chain.runner.submit(req())
        assert result.value.engine == "pocketsphinx"  # the failed request itself is not lost
    assert chain.status().breaker == "closed" and chain.status().engine == "whisper" and not notices
    primary.runner.script.append("error")
    await chain.runner.submit(req())
    status = chain.status()
    assert (status.engine, status.breaker, status.breakers) == (
        "pocketsphinx",
        "open",
        {"whisper": "open", "pocketsphinx": "closed"},
    )
    assert [n.mode for n in notices] == ["fallback"] and "5 times in a row" in notices[0].reason
    assert chain.links[0].failures == {"error": 3, "timeout": 1, "died": 1}
    calls = len(primary.runner.calls)
    for _ in range(3):  # while open, the primary gets nothing
        assert (await chain.runner.submit(req(final=False))).value.engine == "pocketsphinx"
    assert len(primary.runner.calls) == calls


async def test_half_open_sends_one_trial_and_success_hands_back_to_the_primary() -> None:
    chain, primary, _fallback, clock, notices = make_chain(reset_s=60.0)
    primary.runner.script.extend(["error"] * 5)
    for _ in range(5):
        await chain.runner.submit(req())
    clock.now += 59.9
    assert (await chain.runner.submit(req())).value.engine == "pocketsphinx"
    clock.now += 0.1
    assert chain.status().breaker == "half_open" and chain.primary_available()
    primary.runner.script.append("pending")  # the trial is in flight...
    trial = chain.runner.submit(req())
    await asyncio.sleep(0)
    others = [await chain.runner.submit(req()) for _ in range(2)]  # ...so the others go to the fallback
    assert all(r.value.engine == "pocketsphinx" for r in others)
    assert not chain.primary_available()
    trial.cancel()  # a cancelled trial proves nothing; the next request is the trial
    await asyncio.gather(trial, return_exceptions=True)
    result = await chain.runner.submit(req())
    assert result.value.engine == "whisper" and chain.status().breaker == "closed"
    assert [n.mode for n in notices] == ["fallback", "primary"] and "recovered" in notices[1].reason


async def test_failed_trial_reopens_for_another_period() -> None:
    chain, primary, _fallback, clock, _notices = make_chain(reset_s=10.0)
    primary.runner.script.extend(["error"] * 6)
    for _ in range(5):
        await chain.runner.submit(req())
    clock.now += 10
    assert (await chain.runner.submit(req())).value.engine == "pocketsphinx"  # trial failed, fallback answered
    assert chain.status().breaker == "open"
    clock.now += 9.9
    await chain.runner.submit(req())
    assert len(primary.runner.calls) == 6
    clock.now += 0.1
    assert (await chain.runner.submit(req())).value.engine == "whisper"


async def test_every_engine_down_fails_the_request_with_engine_unavailable() -> None:
    chain, primary, fallback, _clock, notices = make_chain()
    primary.runner.script.extend(["error"] * 5)
    fallback.runner.script.extend(["error"] * 5)
    for _ in range(5):
        with pytest.raises(EnginesUnavailable) as info:
            await chain.runner.submit(req())
    assert info.value.code == "engine_unavailable" and "kept in the recording" in str(info.value)
    assert chain.status().engine == "none"
    assert [n.mode for n in notices] == ["fallback", "down"]  # the primary opened a moment before the fallback
    with pytest.raises(EnginesUnavailable):  # both open: refused at once, nobody is called
        await chain.runner.submit(req())
    assert len(primary.runner.calls) == 5 and len(fallback.runner.calls) == 5


async def test_primary_only_requests_never_use_the_fallback() -> None:
    chain, primary, fallback, _clock, _ = make_chain()
    primary.runner.script.append("error")
    with pytest.raises(EnginesUnavailable):
        await chain.runner.submit(req(primary_only=True))
    assert fallback.runner.calls == []
    assert (await chain.runner.submit(req(primary_only=True))).value.engine == "whisper"


async def test_an_engine_without_the_language_is_skipped_and_not_blamed() -> None:
    primary, fallback = ScriptedEngine("whisper", ("en", "de")), ScriptedEngine("pocketsphinx")
    chain = ChainEngine([primary, fallback], breaker=BreakerSettings(5, 60.0))
    german = DecodeRequest(AUDIO, True, key="s:1", language="de")
    assert (await chain.runner.submit(german)).value.engine == "whisper"
    assert primary.runner.calls[-1].language == "de"  # the request reaches the engine's runner as it was made
    primary.runner.script.append("error")
    with pytest.raises(EnginesUnavailable):  # the fallback speaks no German: nobody else may decode it
        await chain.runner.submit(german)
    assert fallback.runner.calls == [] and chain.status().breakers == {"whisper": "closed", "pocketsphinx": "closed"}
    with pytest.raises(UnsupportedLanguage):  # not even the primary's: refused before any engine is asked
        await chain.runner.submit(DecodeRequest(AUDIO, True, key="s:2", language="fr"))
    assert len(primary.runner.calls) == 2
