// What the page keeps for a reconnect: one source's audio until the server acknowledges it (docs/behaviour.md, "Client
// audio kept until acknowledged"): bounded; at the bound the oldest audio goes, and what the server had not
// acknowledged counts as lost. And when to reconnect: the reconnect policy (docs/protocol.md, "Reconnect policy").

/** One source's PCM16 samples from `start` to `end` (sample offsets in the session's clock), bounded. */
export class SourceBuffer {
  constructor(maxSamples) {
    this.max = maxSamples;
    this.chunks = []; // Int16Array, contiguous
    this.start = 0; // offset of chunks[0][0]
    this.end = 0; // offset after the last sample
    this.acked = 0; // the server holds everything before this
    this.lost = 0; // samples dropped at the bound before the server acknowledged them
  }

  get size() {
    return this.end - this.start;
  }

  push(pcm) {
    this.chunks.push(pcm);
    this.end += pcm.length;
    while (this.size > this.max && this.chunks.length > 1) {
      const c = this.chunks.shift();
      const unacked = Math.min(this.start + c.length, this.end) - Math.max(this.start, this.acked);
      if (unacked > 0) this.lost += unacked;
      this.start += c.length;
    }
  }

  /** The server holds everything before `offset`: forget it. */
  ack(offset) {
    this.acked = Math.max(this.acked, Math.min(offset, this.end));
    while (this.chunks.length && this.start + this.chunks[0].length <= this.acked) {
      this.start += this.chunks.shift().length;
    }
  }

  /** Up to `max` samples from `from`; silence stands in for audio already dropped at the bound. */
  read(from, max) {
    const n = Math.min(max, this.end - from);
    if (n <= 0) return null;
    if (from < this.start) return new Int16Array(Math.min(n, this.start - from));
    let offset = this.start;
    for (let i = 0; i < this.chunks.length; i++) {
      const c = this.chunks[i];
      if (from < offset + c.length) {
        const out = new Int16Array(n);
        let filled = 0;
        let pos = from - offset;
        for (let j = i; j < this.chunks.length && filled < n; j++) {
          const part = this.chunks[j].subarray(j === i ? pos : 0);
          const take = Math.min(part.length, n - filled);
          out.set(part.subarray(0, take), filled);
          filled += take;
        }
        return out;
      }
      offset += c.length;
    }
    return null;
  }

  /** A new session starts: keep only what the old one never acknowledged, counted from 0 again. */
  rebase() {
    const from = Math.max(this.acked, this.start);
    while (this.chunks.length && this.start + this.chunks[0].length <= from) this.start += this.chunks.shift().length;
    if (this.chunks.length && this.start < from) {
      this.chunks[0] = this.chunks[0].subarray(from - this.start);
      this.start = from;
    }
    this.end -= this.start;
    this.start = 0;
    this.acked = 0;
  }
}

// ---- the reconnect policy -----------------------------------------------------------------------------------------
// The same policy and numbers as the Python client (echopanel/client/reconnect.py): full-jitter backoff, a circuit
// breaker around connection attempts, and one attempt at 75 % of the server's resume grace while the breaker is open.

export const BACKOFF_BASE_MS = 250; // the n-th failed attempt waits uniform(0, min(max, base * 2^n))
export const BACKOFF_MAX_MS = 10000;
export const BREAKER_FAILURES = 5; // failed attempts in a row that open the breaker
export const BREAKER_OPEN_MS = 60000; // then no attempt for this long, then one trial
export const GRACE_TRIAL_AT = 0.75; // with the breaker open, one attempt at this fraction of resume_grace_ms
// Closes worth a reconnect (the server keeps the session for a resume; 1013: full); any other close ends the page's
// session (1000: it ended; 1008 "unauthorized": the token; 4000: resumed elsewhere; 1008/1009: a broken rule).
export const RETRY_CLOSE_CODES = new Set([1001, 1005, 1006, 1011, 1012, 1013, 1014]);

/** When to attempt the next connection. Pure: the clock is passed in, the randomness injected. */
export class ReconnectPolicy {
  constructor({
    baseMs = BACKOFF_BASE_MS,
    maxMs = BACKOFF_MAX_MS,
    failuresToOpen = BREAKER_FAILURES,
    openMs = BREAKER_OPEN_MS,
    graceTrialAt = GRACE_TRIAL_AT,
    random = Math.random,
  } = {}) {
    Object.assign(this, { baseMs, maxMs, failuresToOpen, openMs, graceTrialAt, random });
    this.breaker = "closed"; // closed | open | half_open (as the Python breaker, echopanel/flow/breaker.py)
    this.consecutive = 0; // failed attempts in a row (the breaker's count)
    this.openedAt = null;
    this.trialOut = false; // half open: the one trial is on its way
    this.failures = 0; // failed attempts in the current outage (the backoff's exponent)
    this.lastChance = null; // when the grace trial is due
  }

  /** The breaker's state at `now` (an open breaker whose time is up reads as half open). */
  state(now) {
    if (this.breaker === "open" && now - this.openedAt >= this.openMs) return "half_open";
    return this.breaker;
  }

  /** The connection was lost at `now` (or the first one is being made: `resumeGraceMs` null, no grace trial). */
  outage(now, resumeGraceMs) {
    this.failures = 0;
    this.lastChance = resumeGraceMs == null ? null : now + this.graceTrialAt * resumeGraceMs;
  }

  /** The next step: wait `delayMs`, then connect if `attempt` (else ask again). Report attempts with failed/succeeded. */
  next(now) {
    if (this.state(now) === "half_open" && this.breaker === "open") this.breaker = "half_open";
    let allowed = this.breaker === "closed";
    if (this.breaker === "half_open" && !this.trialOut) {
      this.trialOut = true;
      allowed = true;
    }
    if (allowed) {
      const cap = Math.min(this.maxMs, this.baseMs * 2 ** this.failures);
      return { delayMs: this.random() * cap, attempt: true, graceTrial: false }; // full jitter
    }
    const retryIn = this.breaker === "open" ? Math.max(0, this.openedAt + this.openMs - now) : 0;
    const last = this.lastChance;
    if (last !== null && now < last && last - now < retryIn) {
      this.lastChance = null; // once: while the server still holds the session
      return { delayMs: last - now, attempt: true, graceTrial: true };
    }
    return { delayMs: retryIn, attempt: false, graceTrial: false };
  }

  failed(now) {
    this.failures += 1;
    if (this.breaker === "open") return;
    this.trialOut = false;
    this.consecutive += 1;
    if (this.breaker === "half_open" || this.consecutive >= this.failuresToOpen) {
      this.breaker = "open";
      this.openedAt = now;
    }
  }

  succeeded() {
    // A success closes the breaker, the grace trial's too (it got through while the breaker was open).
    this.failures = 0;
    this.consecutive = 0;
    this.trialOut = false;
    this.breaker = "closed";
  }
}
