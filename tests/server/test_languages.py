"""Languages through the native protocol against a real server (issue 14): ``language`` selects the decode language,
``"auto"`` detects it per utterance, every final says which; the multilingual model (the ``multilingual`` extra,
installed for the tests) is loaded only when a session asks for another language than English.

The non-English speech is synthetic (espeak-ng, tests/fixtures/audio/languages): no registry package ships real
non-English speech with a reference.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from echopanel.client import LiveClient
from echopanel.client.live import ServerError
from echopanel.client.stream import transcribe

from support import LANGUAGES, LIBRIVOX, ServerProcess, clips, languages_refs, librivox_refs, run_server, wer

LOADED = "multilingual model loaded"


@pytest.fixture(scope="module")
def lang_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server of this module's own: whether the multilingual model is loaded is the process's state."""
    with run_server(tmp_path_factory.mktemp("languages")) as srv:
        yield srv


async def finals(server: ServerProcess, pcm: bytes, **session: Any) -> list[dict[str, Any]]:
    done: list[dict[str, Any]] = []

    def keep(ev: dict[str, Any], _view: Any) -> None:
        if ev.get("type") == "response.done":
            done.append(ev)

    async with LiveClient(server.url, sources=["mic"], session={"overflow": "block", **session}) as client:
        view = await transcribe(client, {"mic": pcm}, realtime=False, on_event=keep)
    assert not view.errors, view.errors
    assert view.violations == []
    return done


async def test_english_sessions_never_load_the_multilingual_model(lang_server: ServerProcess) -> None:
    refs = librivox_refs()
    stems = sorted(refs)[:2]
    done = await finals(lang_server, clips(LIBRIVOX, stems))
    assert done and {ev["language"] for ev in done} == {"en"}
    assert wer(" ".join(refs[s] for s in stems), " ".join(ev["text"] for ev in done)) <= 0.10
    assert not [line for line in lang_server.log if LOADED in line]


async def test_auto_detects_each_utterances_language_and_every_final_says_it(lang_server: ServerProcess) -> None:
    refs = languages_refs()
    english = "sense_and_sensibility_01_austen_64kb-0870"
    pcm = clips(LANGUAGES, ["de", "es"]) + clips(LIBRIVOX, [english])
    done = await finals(lang_server, pcm, language="auto")
    assert [ev["language"] for ev in done] == ["de", "es", "en"], [(ev["language"], ev["text"]) for ev in done]
    assert wer(refs["de"], done[0]["text"]) <= 0.4, done[0]["text"]
    assert wer(refs["es"], done[1]["text"]) <= 0.4, done[1]["text"]
    assert wer(librivox_refs()[english], done[2]["text"]) <= 0.15, done[2]["text"]
    assert [line for line in lang_server.log if LOADED in line]


async def test_a_language_given_is_the_language_decoded(lang_server: ServerProcess) -> None:
    done = await finals(lang_server, clips(LANGUAGES, ["fr"]), language="fr")
    assert [ev["language"] for ev in done] == ["fr"]
    assert wer(languages_refs()["fr"], done[0]["text"]) <= 0.4, done[0]["text"]


async def test_session_update_changes_the_language_from_the_next_utterance(lang_server: ServerProcess) -> None:
    async with LiveClient(lang_server.url, sources=["mic"], session={"overflow": "block"}) as client:
        await client.send({"type": "session.update", "session": {"language": "de"}})
        ev = await client.recv()
        while ev["type"] != "session.updated":
            ev = await client.recv()
        assert ev["session"]["language"] == "de"
        view = await transcribe(client, {"mic": clips(LANGUAGES, ["de"])}, realtime=False)
    assert wer(languages_refs()["de"], view.text()) <= 0.4, view.text()


async def test_a_language_no_engine_can_do_is_refused_with_a_typed_error(lang_server: ServerProcess) -> None:
    client = LiveClient(lang_server.url, sources=["mic"], session={"language": "tlh"})
    with pytest.raises(ServerError) as err:
        await client.open()
    assert err.value.code == "unsupported_language"
    await client.disconnect()
