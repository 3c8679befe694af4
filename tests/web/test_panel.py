"""The live panel at ``/`` in real headless Chromium: fake microphone from real speech, real server, real model."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
from browser_support import CHROMIUM, FLAGS, launch, save_screenshot
from playwright.sync_api import Browser, Page, Playwright, expect

from echopanel.testing.proxy import ThreadedChaosProxy

from support import ServerProcess, free_port, run_server, wer

# Recorded in the page from the start: when each item first showed partial text, when it became final, and every
# connection state the page went through (so a state that lasts a moment is not missed).
OBSERVER = """
window.__ep = {partialAt: {}, finalAt: {}, states: []};
document.addEventListener('DOMContentLoaded', () => {
  const seen = () => {
    const now = performance.now();
    for (const el of document.querySelectorAll('#transcript .item')) {
      const key = el.dataset.itemId + '@' + (document.querySelector('#session-id').textContent);
      const hasText = el.querySelector('.text').textContent.trim().length > 0;
      if (el.classList.contains('partial') && hasText && !(key in __ep.partialAt)) __ep.partialAt[key] = now;
      if (el.classList.contains('final') && !(key in __ep.finalAt)) __ep.finalAt[key] = now;
    }
    const state = document.querySelector('#connection').dataset.state;
    if (__ep.states[__ep.states.length - 1] !== state) __ep.states.push(state);
  };
  new MutationObserver(seen).observe(document.body, {subtree: true, childList: true, characterData: true,
                                                     attributes: true});
  seen();
});
"""

FINALS = "#transcript .item.final"


def open_panel(browser: Browser, url: str, *, microphone: bool = True) -> Page:
    context = browser.new_context(
        permissions=["microphone"] if microphone else [], viewport={"width": 1280, "height": 900}
    )
    context.add_init_script(OBSERVER)
    page = context.new_page()
    page.goto(url)
    expect(page.get_by_role("button", name="Start")).to_be_enabled()
    return page


def state(page: Page) -> str:
    return str(page.locator("#connection").get_attribute("data-state"))


def final_texts(page: Page) -> list[str]:
    return [t.strip() for t in page.locator(f"{FINALS} .stable").all_inner_texts()]


def has_store(server: ServerProcess) -> bool:
    return httpx.get(server.http + "/v1/sessions").status_code == 200


def test_live_session_in_browser(
    browser: Browser, server: ServerProcess, speech: tuple[Path, str], screenshots: Path
) -> None:
    wav, reference = speech
    page = open_panel(browser, server.http + "/")
    log = page.get_by_role("log", name="Transcript")
    expect(log).to_be_visible()

    started = time.monotonic()
    page.get_by_role("button", name="Start").click()
    expect(page.locator("#connection")).to_have_attribute("data-state", "live", timeout=15_000)
    expect(page.get_by_role("button", name="Stop")).to_be_enabled()
    session_id = page.locator("#session-id").inner_text()
    assert session_id.startswith("sess_")

    # During the session: a final landed and the next utterance shows tentative text.
    expect(page.locator(FINALS).first).to_be_visible(timeout=30_000)
    try:
        page.wait_for_function(
            "document.querySelector('#transcript .item.partial .tentative:not(:empty)') !== null", timeout=10_000
        )
    except Exception:  # partials may be off under load: the screenshot is still taken
        pass
    during = save_screenshot(page, screenshots, "panel-during.png")

    # Indicators while live: audio level and freshness, what the server holds, latency from session.metrics.
    mic = page.locator("#source-rows tr[data-source='mic']")
    expect(mic.locator(".fresh")).to_have_text("now")
    expect(mic.locator(".received")).to_have_text(re.compile(r"^\d+\.\d s$"))
    expect(mic.locator(".latency")).to_contain_text("ms", timeout=10_000)

    # The view follows the newest text unless the user scrolled back: shrink the log so it scrolls, scroll to the
    # top, and the next final must not move it; "Jump to newest" brings it back.
    page.evaluate(
        "(() => { const t = document.querySelector('#transcript'); t.style.height = '2.5rem';"
        " t.style.minHeight = '0'; t.scrollTop = 0; t.dispatchEvent(new Event('scroll')); })()"
    )
    jump = page.get_by_role("button", name="Jump to newest")
    count = page.locator(FINALS).count()
    page.wait_for_function(f"document.querySelectorAll('{FINALS}').length > {count}", timeout=30_000)
    expect(jump).to_be_visible()
    assert page.evaluate("document.querySelector('#transcript').scrollTop") == 0
    jump.click()
    assert page.evaluate(
        "(() => { const t = document.querySelector('#transcript');"
        " return t.scrollTop > 0 && t.scrollTop + t.clientHeight >= t.scrollHeight - 30; })()"
    )
    page.evaluate(
        "(() => { const t = document.querySelector('#transcript'); t.style.height = ''; t.style.minHeight = ''; })()"
    )

    # Let the whole file play, then wait (bounded) for its five sentences to be final.
    duration_s = wav.stat().st_size / 32000
    time.sleep(max(0.0, duration_s - (time.monotonic() - started)))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (page.locator(FINALS).count() < 5 or page.locator(".item.partial").count()):
        time.sleep(0.25)

    page.get_by_role("button", name="Stop").click()
    expect(page.locator("#connection")).to_have_attribute("data-state", "ended", timeout=60_000)
    expect(page.locator("#summary-section")).to_be_visible()
    expect(page.locator("#summary")).to_contain_text("utterances")
    expect(page.get_by_role("button", name="Start")).to_be_enabled()
    after = save_screenshot(page, screenshots, "panel-after.png")

    texts = final_texts(page)
    error = wer(reference, " ".join(texts))
    print(f"browser session: {len(texts)} finals, WER {error:.3f}; screenshots {during} {after}")
    assert error <= 0.15, (error, texts)

    # Partials came before finals: the first partial text before the first final, and items showed text early.
    timeline = page.evaluate("window.__ep")
    partial_at, final_at = timeline["partialAt"], timeline["finalAt"]
    assert final_at, timeline
    assert min(partial_at.values()) < min(final_at.values()), timeline
    early = [k for k in final_at if k in partial_at and partial_at[k] < final_at[k]]
    assert len(early) >= len(final_at) // 2, timeline

    # Speaker and source on every final.
    finals = page.locator(FINALS)
    for i in range(finals.count()):
        item = finals.nth(i)
        assert item.get_attribute("data-source") == "mic"
        assert item.locator(".source").inner_text().lower() == "mic"
        assert item.get_attribute("data-speaker"), f"final {i} has no speaker label"
        assert item.locator(".speaker").inner_text().strip()

    # The page followed the newest text: the transcript is scrolled to the bottom.
    at_bottom = page.evaluate(
        "(() => { const t = document.querySelector('#transcript');"
        " return t.scrollTop + t.clientHeight >= t.scrollHeight - 30; })()"
    )
    assert at_bottom

    # Exports and the past-sessions list, from the server's session store.
    if has_store(server):
        expect(page.locator("#exports a")).to_have_count(4, timeout=10_000)
        href = page.locator("#exports a", has_text="MD").get_attribute("href")
        assert href is not None
        assert httpx.get(server.http + href).status_code == 200
        expect(page.locator("#sessions")).to_contain_text(session_id, timeout=10_000)
    page.context.close()


def test_denied_microphone_then_allowed(browser: Browser, server: ServerProcess) -> None:
    page = open_panel(browser, server.http + "/", microphone=False)
    page.get_by_role("button", name="Start").click()
    notice = page.get_by_role("alert")
    expect(notice).to_contain_text("Microphone permission was denied")
    expect(page.locator("#connection")).to_have_attribute("data-state", "failed")
    expect(page.get_by_role("button", name="Start")).to_be_enabled()
    expect(page.get_by_role("button", name="Stop")).to_be_disabled()

    # The user allows the microphone and presses Start again: no reload needed.
    page.context.grant_permissions(["microphone"])
    page.get_by_role("button", name="Start").click()
    expect(page.locator("#connection")).to_have_attribute("data-state", "live", timeout=15_000)
    expect(notice).to_be_hidden()
    expect(page.locator("#source-rows tr[data-source='mic'] .fresh")).to_have_text("now")
    page.get_by_role("button", name="Stop").click()
    expect(page.locator("#connection")).to_have_attribute("data-state", "ended", timeout=60_000)
    page.context.close()


def test_dropped_socket_and_server_restart(
    playwright: Playwright, speech: tuple[Path, str], tmp_path: Path, screenshots: Path
) -> None:
    port = free_port()
    args = ["--port", str(port)]
    env = {"ECHOPANEL_RESUME_GRACE_S": "30"}
    first = run_server(tmp_path / "a", env=env, args=args)  # stopped half-way: entered and left by hand
    first.__enter__()
    first_running = True
    browser = launch(playwright, speech[0], loop=True)
    try:
        with ThreadedChaosProxy("127.0.0.1", port) as proxy:
            page = open_panel(browser, f"http://127.0.0.1:{proxy.port}/")
            page.evaluate("window.__noReload = true")
            page.get_by_role("button", name="Start").click()
            expect(page.locator("#connection")).to_have_attribute("data-state", "live", timeout=15_000)
            expect(page.locator(FINALS).first).to_be_visible(timeout=30_000)
            session_id = page.locator("#session-id").inner_text()

            # 1. The socket closes mid-stream (the network drops it; the server keeps running): the page says so,
            #    reconnects, resumes the same session and goes on transcribing.
            finals_before = page.locator(FINALS).count()
            proxy.cut()
            page.wait_for_function("window.__ep.states.includes('reconnecting')", timeout=10_000)
            expect(page.locator("#connection")).to_have_attribute("data-state", "live", timeout=20_000)
            expect(page.locator("#session-id")).to_have_text(session_id)
            expect(page.get_by_role("alert")).to_contain_text("resumed")
            page.wait_for_function(f"document.querySelectorAll('{FINALS}').length > {finals_before}", timeout=30_000)

            # 2. The server restarts (the session is gone with it): the page shows the server unreachable while it
            #    is down, then continues in a new session on the restarted server, without a reload.
            first.__exit__(None, None, None)
            first_running = False
            expect(page.locator("#connection")).to_have_attribute("data-state", "reconnecting", timeout=10_000)
            expect(page.locator("#connection-text")).to_contain_text("Reconnecting in", timeout=10_000)
            save_screenshot(page, screenshots, "panel-reconnecting.png")
            with run_server(tmp_path / "b", env=env, args=args):
                expect(page.locator("#connection")).to_have_attribute("data-state", "live", timeout=60_000)
                expect(page.get_by_role("alert")).to_contain_text("no longer has this session")
                new_id = page.locator("#session-id").inner_text()
                assert new_id.startswith("sess_") and new_id != session_id
                expect(page.locator("#transcript .divider")).to_contain_text(new_id)
                page.wait_for_function(
                    "(() => { const d = document.querySelector('#transcript .divider');"
                    " let n = d && d.nextElementSibling; while (n) { if (n.classList.contains('final')) return true;"
                    " n = n.nextElementSibling; } return false; })()",
                    timeout=30_000,
                )
                assert page.evaluate("window.__noReload") is True
                page.get_by_role("button", name="Stop").click()
                expect(page.locator("#connection")).to_have_attribute("data-state", "ended", timeout=60_000)
                states = page.evaluate("window.__ep.states")
                print(f"connection states: {states}")
    finally:
        browser.close()
        if first_running:
            first.__exit__(None, None, None)


def test_system_audio_from_a_shared_tab(
    playwright: Playwright, server: ServerProcess, speech: tuple[Path, str]
) -> None:
    """Opting in adds the shared tab's or screen's audio as the second source ``system`` (Chromium's fake screen
    capture, accepted by its fake picker, carries the fake audio)."""
    browser = playwright.chromium.launch(
        executable_path=CHROMIUM,
        args=[*FLAGS, "--use-fake-ui-for-media-stream", f"--use-file-for-fake-audio-capture={speech[0]}%noloop"],
        headless=True,
    )
    try:
        page = open_panel(browser, server.http + "/")
        page.get_by_label("Also capture the audio of a tab or screen").check()
        page.get_by_role("button", name="Start").click()
        expect(page.locator("#connection")).to_have_attribute("data-state", "live", timeout=15_000)
        expect(page.locator("#source-rows tr")).to_have_count(2)
        expect(page.locator("#source-rows tr[data-source='system'] .fresh")).to_have_text("now")
        expect(page.locator(f"{FINALS}[data-source='system']").first).to_be_visible(timeout=30_000)
        expect(page.locator(f"{FINALS}[data-source='system'] .source").first).to_have_text("system")
        page.get_by_role("button", name="Stop").click()
        expect(page.locator("#connection")).to_have_attribute("data-state", "ended", timeout=60_000)
        expect(page.locator("#summary")).to_contain_text("system:")
    finally:
        browser.close()


def test_token_entry(browser: Browser, token_server: ServerProcess) -> None:
    """A server with a token: without it the page says so (close 1008), with it the session runs; no reload."""
    page = open_panel(browser, token_server.http + "/")
    expect(page.locator("#sessions")).to_contain_text("Enter the server's token")
    page.get_by_role("button", name="Start").click()
    expect(page.get_by_role("alert")).to_contain_text("This server requires a token", timeout=15_000)
    expect(page.locator("#connection")).to_have_attribute("data-state", "failed")
    page.get_by_label("Token").fill("wrong")
    page.get_by_role("button", name="Start").click()
    expect(page.get_by_role("alert")).to_contain_text("refused the token", timeout=15_000)
    page.get_by_label("Token").fill("s3cret")
    page.get_by_role("button", name="Start").click()
    expect(page.locator("#connection")).to_have_attribute("data-state", "live", timeout=15_000)
    page.get_by_role("button", name="Stop").click()
    expect(page.locator("#connection")).to_have_attribute("data-state", "ended", timeout=60_000)
    session_id = page.locator("#session-id").inner_text()
    expect(page.locator("#sessions")).to_contain_text(session_id, timeout=10_000)
    page.context.close()


def test_client_buffer_bound(browser: Browser, server: ServerProcess) -> None:
    """The page's resend buffer (echopanel/web/buffer.js) in the real browser: bound at N and N+1, ack, silence for
    audio dropped at the bound, rebase for a new session."""
    page = open_panel(browser, server.http + "/")
    result = page.evaluate(
        """async () => {
          const { SourceBuffer } = await import('/static/buffer.js');
          const b = new SourceBuffer(100);
          const chunk = (v) => new Int16Array(20).fill(v);
          for (let i = 0; i < 5; i++) b.push(chunk(i));
          const atBound = [b.start, b.end, b.lost];
          b.push(chunk(5));
          const past = [b.start, b.end, b.lost];
          b.ack(60);
          const acked = [b.start, b.lost];
          const middle = Array.from(b.read(70, 15));
          const gone = Array.from(b.read(40, 10));
          b.rebase();
          return {atBound, past, acked, middle, gone, rebased: [b.start, b.end, b.acked],
                  first: b.read(0, 1)[0]};
        }"""
    )
    assert result["atBound"] == [0, 100, 0]  # N: nothing dropped
    assert result["past"] == [20, 120, 20]  # N + 1: the oldest chunk went, unacknowledged: lost
    assert result["acked"] == [60, 20]
    assert result["middle"] == [3] * 10 + [4] * 5
    assert result["gone"] == [0] * 10  # dropped audio reads as silence, so times stay aligned
    assert result["rebased"] == [0, 60, 0]  # what the server never acknowledged, counted from 0
    assert result["first"] == 3
    page.context.close()


def test_reconnect_policy(browser: Browser, server: ServerProcess) -> None:
    """The page's reconnect policy (echopanel/web/buffer.js, the same as echopanel/client/reconnect.py) in the real
    browser: full jitter up to a doubling cap, 5 failures open the breaker for 60 s, one grace trial at 75 %."""
    page = open_panel(browser, server.http + "/")
    result = page.evaluate(
        """async () => {
          const { ReconnectPolicy } = await import('/static/buffer.js');
          const high = new ReconnectPolicy({ random: () => 1 });
          const caps = [0, 1, 2, 4, 5, 50].map((n) => { high.failures = n; return high.next(0).delayMs; });
          const p = new ReconnectPolicy({ random: () => 0 });
          p.outage(100000, 30000);  // dropped at 100 s; the server keeps the session for 30 s
          for (let i = 0; i < 5; i++) { p.next(100000 + 1000 * i); p.failed(100000 + 1000 * i); }
          const opened = p.state(104000);
          const grace = p.next(104000);
          p.failed(122500);
          const waiting = p.next(122500);
          const trial = p.next(164000);
          p.failed(164000);
          const reopened = p.next(164000);
          const last = p.next(224000);
          p.succeeded(224500);
          return {caps, opened, grace, waiting, trial, reopened, last, closed: p.state(224500), failures: p.failures};
        }"""
    )
    assert result["caps"] == [250, 500, 1000, 4000, 8000, 10000]
    assert result["opened"] == "open"
    assert result["grace"] == {"delayMs": 18500, "attempt": True, "graceTrial": True}  # at 122.5 s, not 164 s
    assert result["waiting"] == {"delayMs": 41500, "attempt": False, "graceTrial": False}  # once only
    assert result["trial"]["attempt"] and not result["trial"]["graceTrial"]  # the breaker's own trial at 60 s
    assert result["reopened"] == {"delayMs": 60000, "attempt": False, "graceTrial": False}
    assert result["last"]["attempt"]
    assert result["closed"] == "closed" and result["failures"] == 0
    page.context.close()
