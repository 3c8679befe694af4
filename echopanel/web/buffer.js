// One source's audio kept until the server acknowledges it (docs/behaviour.md, "Client audio kept until
// acknowledged"): bounded; at the bound the oldest audio goes, and what the server had not acknowledged counts as lost.

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
