"""A fleet for real: PostgreSQL and HAProxy from Debian's packages, three ``echopanel serve`` nodes sharing one data
directory, and the project's resilient client streaming at real-time pace through HAProxy (docs/deployment.md).

A node killed mid-speech (SIGKILL), connections cut at random with nothing sticky, a rolling restart (SIGTERM each
node in turn), a hung node (SIGSTOP, then SIGCONT after its session was taken over) and the fleet's session limit.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from echopanel.audio.wav import read_pcm16
from echopanel.client.stream import transcribe_resilient
from echopanel.storage.postgres import PostgresStore
from echopanel.testing.fleet import Fleet, fleet
from echopanel.testing.proxy import ChaosProxy

from support import LIBRIVOX, librivox_refs, normalize, wer

RATE = 16000
GAP = b"\x00\x00" * RATE  # 1 s between sentences
STEMS = [
    "sense_and_sensibility_01_austen_64kb-0870",
    "sense_and_sensibility_01_austen_64kb-0880",
    "sense_and_sensibility_01_austen_64kb-0890",
    "sense_and_sensibility_01_austen_64kb-0920",
    "sense_and_sensibility_01_austen_64kb-0930",
]


def speech() -> tuple[bytes, str]:
    refs = librivox_refs()
    pcm = GAP + b"".join(read_pcm16(LIBRIVOX / f"{s}.wav") + GAP for s in STEMS) + GAP
    return pcm, " ".join(refs[s] for s in STEMS)


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory, pg_url: str) -> Iterator[Fleet]:
    with fleet(3, tmp_path_factory.mktemp("fleet"), store=pg_url) as f:
        yield f


@pytest.fixture()
def fleet3(three: Fleet) -> Iterator[Fleet]:
    yield three
    for i, node in enumerate(three.nodes):  # a test that killed or stopped a node leaves the fleet whole again
        if node is None:
            three.restart(i)


async def stored(f: Fleet, session_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=f.http, timeout=10) as http:
        answer = await http.get(f"/v1/sessions/{session_id}", params={"words": "0"})
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def check_whole(f: Fleet, session_id: str, doc: dict[str, Any], sent: bytes, ref: str, bound: float) -> float:
    """Completed, no duplicated item, items in time order without overlap, WER within ``bound``, and the shared
    recording byte-identical to what the client sent."""
    assert doc["status"] == "completed", doc["status"]
    items = doc["items"]
    ids = [i["item_id"] for i in items]
    assert len(ids) == len(set(ids)), ids
    spans = sorted((i["start_ms"], i["end_ms"]) for i in items)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end - 300, spans  # no item transcribed twice (the pre-roll may overlap a little)
    text = " ".join(i["text"] for i in sorted(items, key=lambda i: i["start_ms"]))
    score = wer(normalize(ref), normalize(text))
    assert score <= bound, (score, text)
    recording = f.data_dir / "recordings" / session_id / "mic.pcm"
    assert recording.read_bytes() == sent, (recording.stat().st_size, len(sent))
    return score


async def test_a_session_goes_on_when_its_node_is_killed_mid_speech(fleet3: Fleet) -> None:
    f = fleet3
    pcm, ref = speech()

    uncut = f.client()
    await uncut.open()
    view = await transcribe_resilient(uncut, {"mic": pcm})
    assert view.summary is not None
    base = check_whole(f, uncut.session["id"], await stored(f, uncut.session["id"]), pcm, ref, 0.15)

    c = f.client()
    await c.open()
    sid = c.session["id"]
    killed: dict[str, Any] = {}

    def on_chunk(source: str, sample: int, now: float) -> None:
        if not killed and sample >= 14 * RATE:  # mid-speech: inside the third sentence
            killed["node"] = f.owner(sid)
            f.kill(killed["node"])
            killed["at"] = now

    view = await transcribe_resilient(c, {"mic": pcm}, on_chunk=on_chunk)
    assert killed and c.stats.resumes >= 1
    assert view.summary is not None and view.summary["status"] == "completed"
    assert not view.violations, view.violations
    assert f.owner(sid) != killed["node"]
    score = check_whole(f, sid, await stored(f, sid), pcm, ref, max(0.15, base + 0.05))
    print(f"node kill: resumed in {c.stats.resume_s} s, WER {score:.3f} (uncut {base:.3f})")


async def test_twenty_random_cuts_with_nothing_sticky(fleet3: Fleet) -> None:
    """Every cut lands the client on whichever node HAProxy picks; each takes the session over from the last."""
    f = fleet3
    pcm, ref = speech()
    proxy = ChaosProxy("127.0.0.1", f.front_port)
    await proxy.start()
    rng = random.Random(11)
    duration = len(pcm) / 2 / RATE
    cuts_at = sorted(rng.uniform(1.0, duration - 1.0) for _ in range(20))
    try:
        c = f.client(proxy.url(f.url))
        await c.open()
        sid = c.session["id"]
        owners: set[int] = set()

        async def cutter() -> None:
            t0 = time.monotonic()
            for at in cuts_at:
                await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
                owners.add(f.owner(sid))
                proxy.cut()

        task = asyncio.create_task(cutter())
        view = await transcribe_resilient(c, {"mic": pcm})
        await task
    finally:
        await proxy.stop()
    assert view.summary is not None and view.summary["status"] == "completed"
    assert c.stats.resumes >= 15, c.stats.resumes
    assert len(owners) >= 2, owners  # the session really moved between nodes
    score = check_whole(f, sid, await stored(f, sid), pcm, ref, 0.2)
    print(f"20 cuts: {c.stats.resumes} resumes over nodes {sorted(owners)}, WER {score:.3f}")


def test_the_fleet_config_is_what_haproxy_accepts(tmp_path: Path) -> None:
    import shutil
    import subprocess

    from echopanel.testing.fleet import haproxy_config

    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(haproxy_config(18080, [18081, 18082, 18083]))
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    done = subprocess.run([haproxy, "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    text = cfg.read_text()
    for needed in ("balance leastconn", "option httpchk GET /ready", "timeout tunnel", "option redispatch"):
        assert needed in text


async def test_a_rolling_restart_under_four_live_sessions_loses_nothing(fleet3: Fleet) -> None:
    """SIGTERM each node in turn while four sessions stream: each node hands its sessions off at a pause (1012), the
    clients resume on the others, every session completes with its whole recording."""
    f = fleet3
    pcm, ref = speech()
    clients = [f.client() for _ in range(4)]
    for c in clients:
        await c.open()
    took: list[float] = []

    async def roll() -> None:
        await asyncio.sleep(4.0)
        for i in range(3):
            took.append(await asyncio.to_thread(f.stop, i))
            await asyncio.to_thread(f.restart, i)

    restart = asyncio.create_task(roll())
    views = await asyncio.gather(*(transcribe_resilient(c, {"mic": pcm}) for c in clients))
    await restart
    for c, view in zip(clients, views, strict=True):
        assert view.summary is not None and view.summary["status"] == "completed"
        check_whole(f, c.session["id"], await stored(f, c.session["id"]), pcm, ref, 0.2)
    assert sum(c.stats.resumes for c in clients) >= 3
    assert all(t < 30 for t in took), took  # drain_timeout_s 20 s + flushing and exit
    resumes = [c.stats.resumes for c in clients]
    print(f"rolling restart: nodes stopped in {[round(t, 1) for t in took]} s, resumes {resumes}")


async def test_a_hung_node_cannot_write_to_the_session_it_lost(fleet3: Fleet) -> None:
    """SIGSTOP the session's node; the client is cut off and resumes elsewhere once the hung node's heartbeat is
    stale; SIGCONT: the old node's late writes are refused (fenced by the epoch), the transcript stays whole."""
    f = fleet3
    pcm, ref = speech()
    proxy = ChaosProxy("127.0.0.1", f.front_port)
    await proxy.start()
    try:
        c = f.client(proxy.url(f.url))
        await c.open()
        sid = c.session["id"]
        hung: dict[str, Any] = {}

        def on_chunk(source: str, sample: int, now: float) -> None:
            if not hung and sample >= 10 * RATE:
                hung["node"] = f.owner(sid)
                f.pause(hung["node"])
                proxy.cut()  # its client's connection is gone too (a partition)

        view = await transcribe_resilient(c, {"mic": pcm}, on_chunk=on_chunk)
    finally:
        await proxy.stop()
    assert hung
    store = PostgresStore(f.store)
    try:
        new_owner = store.owner(sid)
        before = [(i.item_id, i.text) for i in store.items(sid)]
        f.resume(hung["node"])
        await asyncio.sleep(3.0)  # the old node wakes up: its queued writes hit the fence
        after = [(i.item_id, i.text) for i in store.items(sid)]
        assert store.owner(sid) == new_owner and new_owner is not None and new_owner[0] != f"node{hung['node']}"
        assert new_owner[1] >= 2  # the epoch grew at the takeover
    finally:
        store.close()
    assert before == after
    assert view.summary is not None and view.summary["status"] == "completed"
    check_whole(f, sid, await stored(f, sid), pcm, ref, 0.2)
    log = "\n".join(f.node(hung["node"]).log)
    assert "Traceback" not in log.split("EchoPanel ready")[-1], log[-3000:]


async def test_the_fleet_refuses_session_n_plus_1_and_bare_sockets_hold_no_slot(tmp_path: Path, pg_url: str) -> None:
    """Two nodes of two sessions each behind HAProxy: four sessions are taken (bare sockets alongside hold none), the
    fifth is refused with 503 (HAProxy tried every node); a slot freed anywhere takes the next one."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    with fleet(2, tmp_path, store=pg_url, env={"ECHOPANEL_MAX_SESSIONS": "2"}) as f:
        bare = [await connect(f.url, open_timeout=5) for _ in range(6)]  # never send session.create
        live = [f.client() for _ in range(4)]
        for c in live:
            await c.open()
        with pytest.raises(InvalidStatus) as refused:
            await connect(f.url, open_timeout=10)
        assert refused.value.response.status_code == 503
        await live[0].close()
        extra = f.client()
        await extra.open()  # the freed slot takes it
        for c in [*live[1:], extra]:
            await c.close()
        for ws in bare:
            await ws.close()


async def test_a_fleet_wide_limit_below_the_nodes_limits_holds_across_nodes(tmp_path: Path, pg_url: str) -> None:
    """Two nodes of four sessions each, the fleet limited to three (held in PostgreSQL): the fourth session is
    refused (server_full, close 1013) wherever it lands; a session that ends frees its fleet slot for the next."""
    from echopanel.client.live import ServerError

    env = {"ECHOPANEL_MAX_SESSIONS": "4", "ECHOPANEL_FLEET_MAX_SESSIONS": "3"}
    with fleet(2, tmp_path, store=pg_url, env=env) as f:
        live = [f.client() for _ in range(3)]
        for c in live:
            await c.open()
        spread = {f.owner(c.session["id"]) for c in live}
        assert spread == {0, 1}  # leastconn put them on both nodes: the limit is the fleet's, not a node's
        with pytest.raises(ServerError) as refused:
            await f.client().open()
        assert refused.value.code == "server_full"
        await live[0].close()
        await asyncio.sleep(0.5)  # the slot is freed by a store write after the close
        extra = f.client()
        await extra.open()
        for c in [*live[1:], extra]:
            await c.close()


async def test_a_resume_elsewhere_while_the_session_runs_with_its_client_is_refused_as_busy(fleet3: Fleet) -> None:
    """The session's node is alive and its client still attached: another node does not take it over (that would
    split it in two) but answers session_busy and closes 1013; the session goes on where it was."""
    import json

    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    f = fleet3
    pcm, _ = speech()
    c = f.client()
    await c.open()
    sid, token = c.session["id"], c.session["resume_token"]
    await c.send_audio("mic", pcm[: 2 * RATE * 3])
    home = f.owner(sid)
    other = next(i for i in range(3) if i != home)
    started = time.monotonic()
    async with connect(f"ws://127.0.0.1:{f.ports[other]}/v1/live") as ws:
        await ws.send(json.dumps({"type": "session.create", "resume": {"session_id": sid, "resume_token": token}}))
        answer = json.loads(await ws.recv())
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    waited = time.monotonic() - started
    assert answer["type"] == "error" and answer["code"] == "session_busy", answer
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
    assert waited >= 2.5  # it waited for the owner to let go first (TAKEOVER_WAIT_S)
    assert f.owner(sid) == home
    await c.send_audio("mic", pcm[2 * RATE * 3 :])
    summary = await c.close()
    assert summary is not None and summary.get("status") == "completed"
