// EchoPanel live panel: capture (microphone, optionally a tab or screen), stream to /v1/live, render the transcript.
// Plain ES module, no build step. Protocol: docs/protocol.md; reconnect and resume: docs/protocol.md ("Resume",
// "Reconnect policy"); the bounds: docs/behaviour.md.

import { RETRY_CLOSE_CODES, ReconnectPolicy, SourceBuffer } from "./buffer.js";

const SAMPLE_RATE = 16000; // what the worklet sends: PCM16 LE mono
const SAMPLES_PER_MS = SAMPLE_RATE / 1000;
const CHUNK_MS = 20; // one worklet message
const MAX_BUFFER_MS = 60000; // per source: audio kept until the server acknowledges it (received_ms)
const CATCHUP_THRESHOLD_MS = 1000; // more unsent audio than this: resend paced, not all at once
const CATCHUP_SPEED = 4; // resend pace while catching up, in multiples of real time
const MAX_FRAME_MS = 250; // audio per binary frame while catching up
const MAX_SOCKET_BYTES = 256 * 1024; // do not queue more than this in the browser's socket buffer
const PUMP_INTERVAL_MS = 50;
const PING_INTERVAL_MS = 5000; // browsers cannot send WebSocket pings: a JSON ping keeps the link checked
const STALL_MS = 12000; // no server message for this long (metrics come every second): presume the socket dead
const FRESH_MS = 1000; // input older than this is shown as stale
const EXPORT_FORMATS = ["json", "md", "srt", "vtt"];

const $ = (sel) => document.querySelector(sel);
const ui = {
  start: $("#start"),
  stop: $("#stop"),
  useSystem: $("#use-system"),
  token: $("#token"),
  connection: $("#connection"),
  connectionText: $("#connection-text"),
  notice: $("#notice"),
  sessionId: $("#session-id"),
  degrade: $("#degrade"),
  clientBuffer: $("#client-buffer"),
  rows: $("#source-rows"),
  transcript: $("#transcript"),
  jump: $("#jump"),
  summarySection: $("#summary-section"),
  summary: $("#summary"),
  exports: $("#exports"),
  sessions: $("#sessions"),
  refreshSessions: $("#refresh-sessions"),
  version: $("#version"),
};

// ---- state --------------------------------------------------------------------------------------------------------

const S = {
  phase: "idle", // idle | starting | connecting | live | reconnecting | finishing | ended | failed
  ws: null,
  sessionReady: false, // this socket has a session (created or resumed)
  session: null, // session.created.session
  resumeToken: null,
  resumeSent: false,
  sources: [], // {name, index, buf, sent, node, stream, level, lastAudioAt, ended, backpressure, metrics, flushed}
  ctx: null,
  policy: new ReconnectPolicy(), // backoff, breaker, grace trial (buffer.js)
  attempt: 0,
  breakerOpen: false, // the breaker holds attempts back (or the next one is the grace trial)
  lastCloseCode: null,
  retryAt: 0,
  retryTimer: null,
  timers: [],
  lastMessageAt: 0,
  closeSent: false,
  summary: null,
  items: new Map(), // "session_id/item_id" -> {el, stable, tentative, final, startMs}
  follow: true,
  eventIds: 0,
};

function setPhase(phase, text) {
  S.phase = phase;
  ui.connection.dataset.state = phase;
  ui.connectionText.textContent = text;
  const running = ["starting", "connecting", "live", "reconnecting", "finishing"].includes(phase);
  ui.start.disabled = running;
  ui.stop.disabled = !running || phase === "starting";
  ui.useSystem.disabled = running;
  ui.token.disabled = running;
}

function notify(message, kind = "error") {
  ui.notice.hidden = !message;
  ui.notice.dataset.kind = kind;
  ui.notice.textContent = message || "";
}

function authHeaders() {
  const token = ui.token.value.trim();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function wsUrl() {
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/live`;
}

const fmtS = (ms) => `${(ms / 1000).toFixed(1)} s`;

function clock(ms) {
  const s = Math.floor((ms || 0) / 1000);
  return `${String(Math.floor(s / 60)).padStart(2, "0")}:${String(s % 60).padStart(2, "0")}`;
}

// ---- capture ------------------------------------------------------------------------------------------------------

function captureError(err, what) {
  const name = err && err.name;
  if (name === "NotAllowedError" || name === "SecurityError") {
    return what === "microphone"
      ? "Microphone permission was denied. Allow the microphone for this page (the icon in the address bar), then press Start again."
      : "Sharing a tab or screen was cancelled or denied.";
  }
  if (name === "NotFoundError" || name === "OverconstrainedError") return `No ${what} was found.`;
  if (name === "NotReadableError" || name === "AbortError") {
    return `The ${what} could not be opened (another program may be using it).`;
  }
  if (name === "TypeError" && !window.isSecureContext) {
    return "Capture needs a secure page: open EchoPanel at http://localhost or over https.";
  }
  return `Could not open the ${what}: ${(err && err.message) || err}`;
}

async function openSource(name, stream) {
  const source = {
    name,
    index: S.sources.length,
    buf: new SourceBuffer(MAX_BUFFER_MS * SAMPLES_PER_MS),
    sent: 0,
    stream,
    node: null,
    level: 0,
    lastAudioAt: 0,
    ended: false,
    flushed: false,
    backpressure: "normal",
    metrics: null,
    credit: 0,
    creditAt: performance.now(),
    lastSendAt: 0,
  };
  const input = S.ctx.createMediaStreamSource(stream);
  const node = new AudioWorkletNode(S.ctx, "pcm16-downsampler", {
    numberOfInputs: 1,
    numberOfOutputs: 1,
    outputChannelCount: [1],
    processorOptions: { targetRate: SAMPLE_RATE, chunkMs: CHUNK_MS },
  });
  node.port.onmessage = (e) => {
    if (e.data.flushed) {
      source.flushed = true;
      pump();
      return;
    }
    if (source.flushed) return;
    source.buf.push(new Int16Array(e.data.pcm));
    source.level = e.data.peak;
    source.lastAudioAt = performance.now();
    pump();
  };
  // A worklet runs only while its output is pulled: route it to the destination through a muted gain.
  const mute = S.ctx.createGain();
  mute.gain.value = 0;
  input.connect(node).connect(mute).connect(S.ctx.destination);
  source.node = node;
  for (const track of stream.getAudioTracks()) {
    track.addEventListener("ended", () => {
      source.ended = true;
      if (S.phase !== "finishing" && S.phase !== "ended") {
        notify(`The ${name} input ended (device removed or sharing stopped). Other sources go on.`, "warning");
      }
    });
  }
  S.sources.push(source);
  return source;
}

async function startCapture() {
  S.ctx = new AudioContext({ latencyHint: "interactive" });
  const media = navigator.mediaDevices;
  if (!media) throw new Error(captureError(Object.assign(new Error("no mediaDevices"), { name: "TypeError" }), "microphone"));
  // Both requests start here, inside the click: screen sharing is refused without a fresh user gesture.
  const displayPromise = ui.useSystem.checked
    ? media.getDisplayMedia({ video: true, audio: true, systemAudio: "include" })
    : null;
  if (displayPromise) displayPromise.catch(() => {}); // handled below
  let mic;
  try {
    mic = await media.getUserMedia({
      audio: { channelCount: 1, echoCancellation: ui.useSystem.checked, noiseSuppression: false, autoGainControl: false },
    });
  } catch (err) {
    if (displayPromise) displayPromise.then((d) => d.getTracks().forEach((t) => t.stop())).catch(() => {});
    throw new Error(captureError(err, "microphone"));
  }
  await S.ctx.audioWorklet.addModule("/static/pcm-worklet.js");
  await openSource("mic", mic);
  if (displayPromise) {
    try {
      const display = await displayPromise;
      display.getVideoTracks().forEach((t) => t.stop());
      if (display.getAudioTracks().length === 0) {
        notify("The shared tab or screen has no audio (tick “Share audio” when choosing it). Continuing with the microphone only.", "warning");
      } else {
        await openSource("system", new MediaStream(display.getAudioTracks()));
      }
    } catch (err) {
      notify(`${captureError(err, "tab or screen audio")} Continuing with the microphone only.`, "warning");
    }
  }
  await S.ctx.resume();
  renderSourceRows();
}

function stopCapture() {
  for (const s of S.sources) {
    s.stream.getTracks().forEach((t) => t.stop());
    if (s.node) s.node.port.onmessage = null;
  }
  if (S.ctx) S.ctx.close().catch(() => {});
  S.ctx = null;
}

// ---- connection ---------------------------------------------------------------------------------------------------

function nextId() {
  S.eventIds += 1;
  return `web_${S.eventIds}`;
}

function send(event) {
  if (!S.ws || S.ws.readyState !== WebSocket.OPEN) return null;
  event.event_id = event.event_id || nextId();
  S.ws.send(JSON.stringify(event));
  return event.event_id;
}

function connect() {
  clearTimeout(S.retryTimer);
  S.retryTimer = null;
  const token = ui.token.value.trim();
  const protocols = ["echopanel.v1"];
  if (token) protocols.push(`echopanel.token.${token}`);
  let ws;
  try {
    ws = new WebSocket(wsUrl(), protocols);
  } catch (err) {
    fail(`Cannot connect with this token (it may contain characters a browser cannot send): ${err.message}`);
    return;
  }
  ws.binaryType = "arraybuffer";
  S.ws = ws;
  S.sessionReady = false;
  S.closeSent = false;
  S.resumeSent = false;
  if (S.phase === "starting" || S.phase === "connecting") setPhase("connecting", "Connecting…");
  ws.onopen = () => {
    S.lastMessageAt = performance.now();
    if (S.session) {
      setPhase(S.phase === "finishing" ? "finishing" : "reconnecting", "Connected again: resuming the session…");
      S.resumeSent = true;
      send({ type: "session.create", resume: { session_id: S.session.id, resume_token: S.resumeToken } });
    } else {
      createSession();
    }
  };
  ws.onmessage = (m) => {
    if (ws !== S.ws) return;
    S.lastMessageAt = performance.now();
    if (typeof m.data !== "string") return;
    let ev;
    try {
      ev = JSON.parse(m.data);
    } catch {
      return;
    }
    onEvent(ev);
  };
  ws.onclose = (ev) => {
    if (ws === S.ws) onSocketClosed(ev);
  };
}

function createSession() {
  send({
    type: "session.create",
    session: { sources: S.sources.map((s) => s.name), sample_rate: SAMPLE_RATE, format: "pcm16" },
  });
}

function onSocketClosed(ev) {
  const hadSession = S.sessionReady;
  S.ws = null;
  S.sessionReady = false;
  if (S.phase === "ended" || S.phase === "failed" || S.phase === "idle") return;
  if (ev.code === 1000 && S.summary) return endSession();
  if (ev.code === 1000) {
    // The server ended the session by itself (idle timeout); nothing to resume.
    return endSession("The server ended the session.");
  }
  if (ev.code === 1008 && ev.reason === "unauthorized") {
    return fail(
      ui.token.value.trim()
        ? "The server refused the token (close 1008). Check it and press Start again."
        : "This server requires a token: enter it and press Start again.",
    );
  }
  if (ev.code === 4000) {
    // The server gave this session to another connection that resumed it: do not fight over it.
    return fail("This session was resumed by another connection (another tab or client); this page stopped.");
  }
  if (!RETRY_CLOSE_CODES.has(ev.code)) {
    return fail(`The server closed the connection (close ${ev.code}${ev.reason ? `: ${ev.reason}` : ""}); this page stopped. Press Start for a new session.`);
  }
  lost(hadSession);
  scheduleReconnect(ev.code);
}

/** A socket ended: after a session, a new outage starts; before one, it was a failed attempt. */
function lost(hadSession) {
  const now = performance.now();
  if (hadSession) S.policy.outage(now, S.session && S.session.limits ? S.session.limits.resume_grace_ms : null);
  else S.policy.failed(now);
}

function scheduleReconnect(code) {
  if (ui.notice.dataset.kind === "info") notify(""); // an old "resumed" note would contradict the state now
  clearTimeout(S.retryTimer);
  const now = performance.now();
  // The reconnect policy (docs/protocol.md, "Reconnect policy"): full jitter, the breaker, the grace trial.
  const step = S.policy.next(now);
  S.attempt = S.policy.failures + 1;
  S.breakerOpen = !step.attempt || step.graceTrial;
  S.retryAt = now + step.delayMs;
  S.lastCloseCode = code;
  const finishing = S.phase === "finishing";
  setPhase(finishing ? "finishing" : "reconnecting", reconnectText());
  S.retryTimer = setTimeout(step.attempt ? connect : () => scheduleReconnect(code), step.delayMs);
}

function reconnectText() {
  const wait = Math.max(0, S.retryAt - performance.now());
  const what = !S.session ? "Cannot reach the server (down, or full)" : S.attempt > 1 ? "Server unreachable" : "Connection lost";
  const code = S.lastCloseCode ? ` (close ${S.lastCloseCode})` : "";
  const paused = S.breakerOpen ? `, ${S.attempt - 1} attempts failed: waiting` : "";
  return `${what}${code}. Reconnecting in ${fmtS(wait)} (attempt ${S.attempt}${paused}); audio is kept meanwhile.`;
}

function dropStalledSocket() {
  const ws = S.ws;
  if (!ws) return;
  const hadSession = S.sessionReady;
  S.ws = null;
  S.sessionReady = false;
  ws.onclose = null;
  ws.onmessage = null;
  try {
    ws.close(4000, "stalled");
  } catch {
    /* already closing */
  }
  lost(hadSession);
  scheduleReconnect(null);
}

function fail(message) {
  notify(message);
  const ws = S.ws;
  S.ws = null;
  if (ws) {
    ws.onclose = null;
    ws.close();
  }
  stopTimers();
  stopCapture();
  setPhase("failed", "Stopped: see the message above");
}

function endSession(message) {
  stopTimers();
  stopCapture();
  for (const src of S.sources) {
    src.ended = true;
    src.level = 0;
  }
  if (message) notify(message, "info");
  setPhase("ended", S.summary ? "Session ended: summary below" : "Session ended");
  renderIndicators();
  loadSessions();
}

function stopTimers() {
  clearTimeout(S.retryTimer);
  S.retryTimer = null;
  for (const t of S.timers) clearInterval(t);
  S.timers = [];
}

// ---- sending ------------------------------------------------------------------------------------------------------

function frame(index, pcm) {
  const out = new Uint8Array(4 + pcm.byteLength);
  out[0] = 0x45; // E
  out[1] = 0x50; // P
  out[2] = 1; // version
  out[3] = index;
  out.set(new Uint8Array(pcm.buffer, pcm.byteOffset, pcm.byteLength), 4);
  return out;
}

function pump() {
  const ws = S.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN || !S.sessionReady) return;
  const now = performance.now();
  for (const src of S.sources) {
    const credit = src.credit + ((now - src.creditAt) * SAMPLES_PER_MS * CATCHUP_SPEED);
    src.credit = Math.min(credit, MAX_FRAME_MS * SAMPLES_PER_MS * CATCHUP_SPEED);
    src.creditAt = now;
    while (src.sent < src.buf.end && ws.bufferedAmount < MAX_SOCKET_BYTES) {
      const backlog = src.buf.end - src.sent;
      let max = backlog;
      if (backlog > CATCHUP_THRESHOLD_MS * SAMPLES_PER_MS) {
        // Catching up after a reconnect: paced, and paused while the server says its queue is high.
        if (src.backpressure !== "normal" && now - src.lastSendAt < 250) break;
        max = Math.min(Math.floor(src.credit), MAX_FRAME_MS * SAMPLES_PER_MS);
        if (max < CHUNK_MS * SAMPLES_PER_MS) break;
      }
      const pcm = src.buf.read(src.sent, Math.min(max, MAX_FRAME_MS * SAMPLES_PER_MS));
      if (!pcm) break;
      ws.send(frame(src.index, pcm));
      src.sent += pcm.length;
      src.lastSendAt = now;
      if (backlog > CATCHUP_THRESHOLD_MS * SAMPLES_PER_MS) src.credit -= pcm.length;
    }
  }
  if (S.phase === "finishing" && !S.closeSent && S.sources.every((s) => s.flushed && s.sent >= s.buf.end)) {
    S.closeSent = true;
    send({ type: "session.close" });
  }
}

// ---- events -------------------------------------------------------------------------------------------------------

function onEvent(ev) {
  switch (ev.type) {
    case "session.created":
      return onCreated(ev);
    case "input_audio_buffer.speech_started":
      return onSpeechStarted(ev);
    case "response.text.delta":
      return onDelta(ev);
    case "response.done":
      return onDone(ev);
    case "speaker.updated":
      return onSpeakerUpdated(ev);
    case "session.metrics":
      return onMetrics(ev);
    case "input_audio_buffer.backpressure":
      return onBackpressure(ev);
    case "session.degraded":
      return showDegrade(ev.level, ev.name, ev.reason);
    case "session.summary":
      return onSummary(ev);
    case "error":
      return onError(ev);
    default:
      return undefined;
  }
}

function onCreated(ev) {
  const session = ev.session || {};
  const wasLost = S.session && !ev.resumed && S.session.id !== session.id;
  if (ev.resumed) {
    const received = ev.received_ms || {};
    let resend = 0;
    for (const src of S.sources) {
      const from = Math.round((received[src.name] || 0) * SAMPLES_PER_MS);
      src.buf.ack(from);
      resend += Math.max(0, src.buf.end - from);
      src.sent = from;
    }
    if (ev.partials_reset) dropPartials(); // resumed on another node: open items are transcribed again
    notify(`Reconnected and resumed the session: resending ${fmtS(resend / SAMPLES_PER_MS)} of audio the server did not get.`, "info");
  } else {
    if (wasLost) addDivider(session.id);
    for (const src of S.sources) {
      src.buf.rebase();
      src.sent = 0;
    }
  }
  S.session = session;
  S.resumeToken = session.resume_token || S.resumeToken;
  S.sessionReady = true;
  S.policy.succeeded(performance.now());
  S.attempt = 0;
  S.breakerOpen = false;
  S.lastCloseCode = null;
  ui.sessionId.textContent = session.id || "?";
  if (S.phase === "finishing") setPhase("finishing", "Finishing: sending the last audio…");
  else setPhase("live", ev.resumed ? "Live (resumed)" : "Live");
  pump();
}

function onError(ev) {
  if (ev.code === "session_not_found" && S.resumeSent && !S.sessionReady) {
    // The server restarted, or the resume grace passed: the old session is gone. Keep the page and go on.
    notify("The server no longer has this session (it restarted, or the reconnect took too long). Continuing in a new session: unacknowledged audio is sent to it.", "warning");
    S.resumeSent = false;
    createSession();
    return;
  }
  if (!S.sessionReady && ["unsupported_sample_rate", "unsupported_format", "unsupported_language", "invalid_event"].includes(ev.code)) {
    fail(`The server refused the session: ${ev.message}`);
    return;
  }
  if (ev.code === "idle_timeout") {
    notify("The server ended the session after a long silence on the connection.", "warning");
    return;
  }
  notify(`Server error ${ev.code}: ${ev.message}`, ev.code === "transcription_failed" ? "warning" : "error");
}

// ---- transcript ---------------------------------------------------------------------------------------------------

function key(ev) {
  return `${S.session ? S.session.id : ""}/${ev.item_id}`;
}

function itemFor(ev) {
  const k = key(ev);
  let item = S.items.get(k);
  if (!item) {
    const el = document.createElement("div");
    el.className = "item partial";
    el.dataset.source = ev.source;
    el.dataset.itemId = ev.item_id;
    el.setAttribute("aria-busy", "true");
    el.innerHTML =
      '<span class="meta"><span class="time"></span> <span class="source"></span> <span class="speaker"></span>' +
      ' <span class="flags"></span></span> <span class="text"><span class="stable"></span><span class="tentative"></span></span>';
    item = { el, stable: "", tentative: "", final: null, startMs: ev.start_ms || ev.audio_start_ms || 0, source: ev.source };
    el.querySelector(".source").textContent = ev.source;
    el.querySelector(".time").textContent = clock(item.startMs);
    S.items.set(k, item);
    insertByTime(item);
  }
  return item;
}

function insertByTime(item) {
  // Items mostly arrive in time order; repaired ones arrive at the end and go back to their place.
  const log = ui.transcript;
  let before = null;
  for (let node = log.lastElementChild; node; node = node.previousElementSibling) {
    if (node.classList.contains("item") && Number(node.dataset.startMs) > item.startMs) before = node;
    else break;
  }
  item.el.dataset.startMs = String(item.startMs);
  log.insertBefore(item.el, before);
  follow();
}

function addDivider(sessionId) {
  const el = document.createElement("p");
  el.className = "divider";
  el.textContent = `New session ${sessionId || ""}: the previous one could not be resumed.`;
  ui.transcript.appendChild(el);
  follow();
}

function renderItem(item) {
  item.el.querySelector(".stable").textContent = item.final !== null ? item.final : item.stable;
  const tentative = item.final !== null ? "" : item.tentative;
  const t = item.el.querySelector(".tentative");
  t.textContent = tentative ? (item.stable && !/\s$/.test(item.stable) && !/^\s/.test(tentative) ? " " : "") + tentative : "";
  follow();
}

function dropPartials() {
  // Items without a final: their partial text is void, their utterances come again (docs/protocol.md "Resume").
  for (const [k, item] of S.items) {
    if (item.final !== null) continue;
    item.el.remove();
    S.items.delete(k);
  }
}

function onSpeechStarted(ev) {
  if (S.items.has(key(ev))) return;
  const item = itemFor({ ...ev, start_ms: ev.audio_start_ms });
  item.el.classList.add("listening");
}

function onDelta(ev) {
  const item = itemFor(ev);
  if (item.final !== null) return;
  item.el.classList.remove("listening");
  item.stable += ev.delta || "";
  item.tentative = ev.tentative || "";
  if (ev.speaker) setSpeaker(item, ev.speaker);
  renderItem(item);
}

function onDone(ev) {
  const k = key(ev);
  const existing = S.items.get(k);
  if (existing && existing.final !== null) return; // already have it (a resumed session resends finals)
  if (!ev.text || !ev.text.trim()) {
    if (existing) {
      existing.el.remove();
      S.items.delete(k);
    }
    return;
  }
  const item = itemFor(ev);
  item.final = ev.text;
  item.el.classList.remove("partial", "listening");
  item.el.classList.add("final");
  item.el.removeAttribute("aria-busy");
  item.el.querySelector(".time").textContent = clock(ev.start_ms);
  const flags = [];
  if (ev.repaired) flags.push("repaired");
  if (ev.superseded) flags.push("cut: the full text comes at the end");
  item.el.querySelector(".flags").textContent = flags.length ? `(${flags.join(", ")})` : "";
  if (ev.superseded) item.el.classList.add("superseded");
  setSpeaker(item, ev.speaker);
  const voices = Array.isArray(ev.speaker_turns) ? [...new Set(ev.speaker_turns.map((t) => t.speaker).filter(Boolean))] : [];
  if (voices.length > 1) item.el.querySelector(".speaker").textContent = voices.map(speakerName).join(" / ");
  renderItem(item);
  // A repaired item that re-decodes fallback or failed items replaces them.
  for (const old of Array.isArray(ev.replaces) ? ev.replaces : []) {
    const gone = S.items.get(key({ item_id: old }));
    if (gone && gone !== item) {
      gone.el.remove();
      S.items.delete(key({ item_id: old }));
    }
  }
}

function setSpeaker(item, speaker) {
  const el = item.el.querySelector(".speaker");
  el.textContent = speaker ? speakerName(speaker) : "";
  item.el.dataset.speaker = speaker || "";
}

function speakerName(speaker) {
  if (typeof speaker === "object") return speaker.label || speaker.name || speaker.id || "";
  return /^\d+$/.test(String(speaker)) ? `Speaker ${speaker}` : String(speaker);
}

function onSpeakerUpdated(ev) {
  const item = S.items.get(key(ev));
  if (item) setSpeaker(item, ev.speaker);
}

function follow() {
  if (S.follow) ui.transcript.scrollTop = ui.transcript.scrollHeight;
  else ui.jump.hidden = false;
}

ui.transcript.addEventListener("scroll", () => {
  const t = ui.transcript;
  S.follow = t.scrollTop + t.clientHeight >= t.scrollHeight - 24;
  if (S.follow) ui.jump.hidden = true;
});

ui.jump.addEventListener("click", () => {
  S.follow = true;
  ui.jump.hidden = true;
  ui.transcript.scrollTop = ui.transcript.scrollHeight;
  ui.transcript.focus();
});

// ---- indicators ---------------------------------------------------------------------------------------------------

function renderSourceRows() {
  ui.rows.replaceChildren();
  for (const src of S.sources) {
    const tr = document.createElement("tr");
    tr.dataset.source = src.name;
    tr.innerHTML =
      '<th scope="row"></th><td><meter class="level" min="0" max="1" low="0.05" high="0.9" optimum="0.3" value="0"></meter> <span class="db"></span></td>' +
      '<td class="fresh"></td><td class="received"></td><td class="backpressure"></td><td class="latency"></td>';
    tr.querySelector("th").textContent = src.name;
    tr.querySelector("meter").setAttribute("aria-label", `${src.name} input level`);
    ui.rows.appendChild(tr);
    src.row = tr;
  }
}

function renderIndicators() {
  const now = performance.now();
  let unsent = 0;
  let lost = 0;
  for (const src of S.sources) {
    if (!src.row) continue;
    const row = src.row;
    row.querySelector("meter").value = src.level;
    row.querySelector(".db").textContent = src.level > 0 ? `${(20 * Math.log10(src.level)).toFixed(0)} dBFS` : "silent";
    const fresh = row.querySelector(".fresh");
    const age = src.lastAudioAt ? now - src.lastAudioAt : Infinity;
    if (src.ended) fresh.textContent = S.phase === "ended" || S.phase === "failed" ? "stopped" : "input ended";
    else if (!src.lastAudioAt) fresh.textContent = "waiting for audio";
    else fresh.textContent = age < FRESH_MS ? "now" : `${fmtS(age)} ago`;
    fresh.dataset.stale = String(S.phase !== "ended" && (src.ended || age >= FRESH_MS));
    const m = src.metrics;
    row.querySelector(".received").textContent = m ? fmtS(m.received_ms) : "–";
    const bp = row.querySelector(".backpressure");
    bp.textContent = src.backpressure + (m && m.dropped_ms ? `, ${fmtS(m.dropped_ms)} shed` : "");
    bp.dataset.level = src.backpressure;
    const p50 = (x) => (x && x.p50 != null ? `${Math.round(x.p50)} ms` : "–");
    row.querySelector(".latency").textContent = m ? `${p50(m.first_partial_latency_ms)} / ${p50(m.final_latency_ms)}` : "–";
    unsent += src.buf.end - src.sent;
    lost += src.buf.lost;
  }
  const buffered = S.sources.reduce((n, s) => n + s.buf.size, 0);
  let text = S.sources.length ? `${fmtS(buffered / SAMPLES_PER_MS)} kept (bound ${MAX_BUFFER_MS / 1000} s per source)` : "empty";
  if (unsent > SAMPLE_RATE / 10) text += `, ${fmtS(unsent / SAMPLES_PER_MS)} not yet sent`;
  if (lost) text += `, ${fmtS(lost / SAMPLES_PER_MS)} lost at the bound`;
  ui.clientBuffer.textContent = text;
  ui.clientBuffer.dataset.lost = String(lost > 0);
  if (S.phase === "reconnecting" || (S.phase === "finishing" && S.retryTimer)) {
    ui.connectionText.textContent = reconnectText();
  }
}

function onMetrics(ev) {
  for (const src of S.sources) {
    const m = ev.sources && ev.sources[src.name];
    if (!m) continue;
    src.metrics = m;
    if (typeof m.received_ms === "number") src.buf.ack(Math.round(m.received_ms * SAMPLES_PER_MS));
    if (m.backpressure) src.backpressure = typeof m.backpressure === "string" ? m.backpressure : m.backpressure.level || src.backpressure;
  }
  if (typeof ev.degrade_level === "number") showDegrade(ev.degrade_level, ev.degrade && (ev.degrade.name || ev.degrade));
}

function onBackpressure(ev) {
  const src = S.sources.find((s) => s.name === ev.source);
  if (!src) return;
  src.backpressure = ev.level;
  if (ev.level === "shedding") {
    notify(`The server is overloaded and is skipping live ${ev.source} audio (${fmtS(ev.dropped_ms)} so far); it is recorded and transcribed at the end.`, "warning");
  }
}

function showDegrade(level, name, reason) {
  if (reason === undefined && ui.degrade.dataset.level === String(level)) return; // keep the last reason shown
  ui.degrade.dataset.level = String(level);
  ui.degrade.textContent = `${level} ${typeof name === "string" ? name : ""}`.trim() + (reason ? ` (${reason})` : "");
}

// ---- summary, exports, past sessions ------------------------------------------------------------------------------

function onSummary(ev) {
  S.summary = ev;
  ui.summarySection.hidden = false;
  const parts = [];
  const add = (tag, text, cls) => {
    const el = document.createElement(tag);
    el.textContent = text;
    if (cls) el.className = cls;
    parts.push(el);
    return el;
  };
  const list = (title, values, render) => {
    if (!Array.isArray(values) || values.length === 0) return;
    add("h3", title);
    const ul = document.createElement("ul");
    for (const v of values) {
      const li = document.createElement("li");
      li.textContent = render(v);
      ul.appendChild(li);
    }
    parts.push(ul);
  };
  const at = (v) => (v && typeof v === "object" && v.start_ms != null ? `${clock(v.start_ms)} ` : "");
  const who = (v) => (v && typeof v === "object" && v.speaker ? `${speakerName(v.speaker)}: ` : "");
  const text = (v) => (typeof v === "string" ? v : (v && (v.text || v.title || v.name)) || JSON.stringify(v));
  // The summary: extractive sentences (a list) or, from other servers, one text.
  if (typeof ev.summary === "string") add("p", ev.summary, "abstract");
  else list("Key sentences", ev.summary, (v) => `${at(v)}${who(v)}${text(v)}`);
  list("Action items", ev.action_items, (v) => {
    const extra = [v.owner && `owner: ${v.owner}`, v.due && `due: ${v.due}`].filter(Boolean).join(", ");
    return `${at(v)}${text(v)}${extra ? ` (${extra})` : ""}`;
  });
  list("Decisions", ev.decisions, (v) => `${at(v)}${who(v)}${text(v)}`);
  list("Risks", ev.risks, (v) => `${at(v)}${who(v)}${text(v)}`);
  list("Open questions", ev.open_questions, (v) => `${at(v)}${who(v)}${text(v)}`);
  list("Speakers", ev.speakers, (v) =>
    typeof v === "object"
      ? `${speakerName(v.speaker || v.label || v.id)}: ${fmtS(v.talk_ms || 0)} of talk` +
        (v.share != null ? ` (${Math.round(v.share * 100)} %)` : "") +
        (v.items != null ? `, ${v.items} utterances` : "")
      : String(v),
  );
  const named = (vals) =>
    (Array.isArray(vals) ? vals : []).map((v) => (typeof v === "string" ? v : `${v.text}${v.type ? ` (${v.type})` : ""}`));
  if (Array.isArray(ev.entities) && ev.entities.length) add("p", `Names: ${named(ev.entities).join(", ")}`, "names");
  if (Array.isArray(ev.topics) && ev.topics.length) add("p", `Topics: ${named(ev.topics).join(", ")}`, "names");
  const transcript = Array.isArray(ev.transcript) ? ev.transcript : [];
  const words = transcript.reduce((n, t) => n + (t.text ? t.text.trim().split(/\s+/).length : 0), 0);
  const stats = (ev.stats && ev.stats.sources) || {};
  const srcText = Object.entries(stats)
    .map(([name, st]) => `${name}: ${fmtS(st.received_ms || 0)} of audio${st.dropped_ms ? `, ${fmtS(st.dropped_ms)} shed and repaired` : ""}`)
    .join("; ");
  const speakers = Array.isArray(ev.speakers) ? ev.speakers.length : 0;
  add(
    "p",
    `${transcript.length} utterances, ${words} words` +
      (speakers ? `, ${speakers} speaker${speakers > 1 ? "s" : ""}` : "") +
      (srcText ? `. ${srcText}.` : "."),
    "facts",
  );
  ui.summary.replaceChildren(...parts);
  showExports(ev.session_id || (S.session && S.session.id));
  if (S.phase === "finishing") setPhase("finishing", "Finishing: summary received…");
}

async function showExports(sessionId) {
  ui.exports.replaceChildren();
  if (!sessionId) return;
  try {
    const r = await fetch(`/v1/sessions/${encodeURIComponent(sessionId)}`, { headers: authHeaders() });
    if (!r.ok) return; // this server keeps no session store: no exports to offer
  } catch {
    return;
  }
  ui.exports.append("Export: ");
  EXPORT_FORMATS.forEach((fmt, i) => {
    if (i) ui.exports.append(" · ");
    ui.exports.appendChild(exportLink(sessionId, fmt));
  });
}

function exportLink(sessionId, fmt) {
  const a = document.createElement("a");
  a.href = `/v1/sessions/${encodeURIComponent(sessionId)}/export?format=${fmt}`;
  a.textContent = fmt.toUpperCase();
  a.setAttribute("download", `${sessionId}.${fmt}`);
  a.addEventListener("click", async (e) => {
    if (!ui.token.value.trim()) return; // a plain link works without a token
    e.preventDefault(); // links cannot carry the Authorization header: fetch, then save
    const r = await fetch(a.href, { headers: authHeaders() });
    if (!r.ok) return notify(`Export failed: HTTP ${r.status}`);
    const url = URL.createObjectURL(await r.blob());
    const tmp = document.createElement("a");
    tmp.href = url;
    tmp.download = `${sessionId}.${fmt}`;
    tmp.click();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  });
  return a;
}

async function loadSessions() {
  let r;
  try {
    r = await fetch("/v1/sessions", { headers: authHeaders() });
  } catch {
    ui.sessions.innerHTML = "<p>The server is unreachable.</p>";
    return;
  }
  if (r.status === 404) {
    ui.sessions.innerHTML = "<p>This server does not keep a list of sessions.</p>";
    return;
  }
  if (r.status === 401 || r.status === 403) {
    ui.sessions.innerHTML = "<p>Enter the server's token to see past sessions, then press Refresh.</p>";
    return;
  }
  if (!r.ok) {
    const body = await r.json().catch(() => ({}));
    const p = document.createElement("p");
    p.textContent = `Past sessions are not available: ${(body.error && body.error.message) || `HTTP ${r.status}`}.`;
    ui.sessions.replaceChildren(p);
    return;
  }
  const body = await r.json();
  const list = Array.isArray(body) ? body : body.sessions || body.items || [];
  if (list.length === 0) {
    ui.sessions.innerHTML = "<p>No sessions yet.</p>";
    return;
  }
  const table = document.createElement("table");
  table.className = "sessions";
  table.innerHTML =
    '<caption class="sr-only">Past sessions</caption><thead><tr><th scope="col">Session</th><th scope="col">Started</th>' +
    '<th scope="col">Length</th><th scope="col">Utterances</th><th scope="col">Status</th><th scope="col">Export</th>' +
    "</tr></thead><tbody></tbody>";
  const tbody = table.querySelector("tbody");
  for (const s of list) {
    const id = s.id || s.session_id;
    const tr = document.createElement("tr");
    const started = s.created_at || s.started_at || s.created;
    const when = typeof started === "number" ? new Date(started * (started < 1e12 ? 1000 : 1)) : started ? new Date(started) : null;
    const length = s.duration_ms != null ? s.duration_ms : s.audio_ms;
    const cells = [
      id,
      when && !isNaN(when) ? when.toLocaleString() : "–",
      length != null ? fmtS(length) : "–",
      s.items != null ? String(s.items) : "–",
      s.status || "–",
    ];
    for (const c of cells) {
      const td = document.createElement("td");
      td.textContent = c;
      tr.appendChild(td);
    }
    const td = document.createElement("td");
    EXPORT_FORMATS.forEach((fmt, i) => {
      if (i) td.append(" ");
      td.appendChild(exportLink(id, fmt));
    });
    tr.appendChild(td);
    tbody.appendChild(tr);
  }
  ui.sessions.replaceChildren(table);
}

// ---- start / stop -------------------------------------------------------------------------------------------------

async function start() {
  notify("");
  S.sources = [];
  S.session = null;
  S.resumeToken = null;
  S.summary = null;
  S.policy = new ReconnectPolicy();
  S.policy.outage(performance.now(), null); // the first connection: retried by the same policy, no grace trial
  S.attempt = 0;
  S.breakerOpen = false;
  S.lastCloseCode = null;
  ui.summarySection.hidden = true;
  ui.exports.replaceChildren();
  ui.sessionId.textContent = "none";
  showDegrade(0, "normal");
  setPhase("starting", "Asking for the microphone…");
  try {
    await startCapture();
  } catch (err) {
    stopCapture();
    S.sources = [];
    notify(err.message);
    setPhase("failed", "Not started: see the message above");
    return;
  }
  if (S.items.size) addDividerText("New recording");
  connect();
  S.timers.push(setInterval(pump, PUMP_INTERVAL_MS));
  S.timers.push(setInterval(renderIndicators, 250));
  S.timers.push(
    setInterval(() => {
      if (!S.ws || S.ws.readyState !== WebSocket.OPEN) return;
      if (performance.now() - S.lastMessageAt > STALL_MS) return dropStalledSocket();
      send({ type: "ping" });
    }, PING_INTERVAL_MS),
  );
}

function addDividerText(text) {
  const el = document.createElement("p");
  el.className = "divider";
  el.textContent = text;
  ui.transcript.appendChild(el);
}

function stop() {
  if (S.phase === "finishing") {
    // Second press while finishing: give up waiting for the summary.
    const ws = S.ws;
    S.ws = null;
    if (ws) {
      ws.onclose = null;
      ws.close();
    }
    endSession("Stopped before the summary arrived.");
    return;
  }
  setPhase("finishing", "Finishing: sending the last audio, waiting for the last results and the summary…");
  ui.stop.disabled = false;
  for (const s of S.sources) {
    s.level = 0;
    if (s.node && !s.flushed) s.node.port.postMessage("flush");
    s.stream.getTracks().forEach((t) => t.stop());
  }
  // If a worklet never answers (context already closed), do not wait for it forever.
  setTimeout(() => {
    for (const s of S.sources) s.flushed = true;
    pump();
  }, 1000);
  pump();
}

ui.start.addEventListener("click", start);
ui.stop.addEventListener("click", stop);
ui.refreshSessions.addEventListener("click", loadSessions);

fetch("/health")
  .then((r) => r.json())
  .then((h) => {
    ui.version.textContent = h.version || "";
  })
  .catch(() => {});
loadSessions();
