// AudioWorklet processor: any input rate, any channel count -> 16 kHz mono PCM16 chunks for the EchoPanel wire.
//
// Runs on the audio rendering thread. Channels are averaged to mono, low-pass filtered below the target Nyquist
// (windowed-sinc FIR, Blackman window, cutoff 0.9 x 8 kHz) and resampled at fractional positions, so 44.1 kHz and
// 48 kHz inputs both come out at exactly 16 kHz. Every `chunkMs` the processor posts one message to the page:
// {pcm: ArrayBuffer (Int16 LE), peak, rms}. A "flush" message posts what is left and answers {flushed: true}.

const ZERO_CROSSINGS = 8; // per side of the kernel: ~ -70 dB stop band with the Blackman window
const PHASES = 128; // kernel table resolution: 1/128 of an input sample, linearly interpolated

class Pcm16Downsampler extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const o = (options && options.processorOptions) || {};
    this.outRate = o.targetRate || 16000;
    this.ratio = sampleRate / this.outRate; // input samples per output sample
    this.chunk = Math.max(1, Math.round((this.outRate * (o.chunkMs || 20)) / 1000));
    this.out = new Int16Array(this.chunk);
    this.outLen = 0;
    this.peak = 0;
    this.sumSq = 0;
    this.passthrough = Math.abs(this.ratio - 1) < 1e-9;
    // Input history: buf[0] is absolute input sample `bufStart`; `t` is the next output's input position.
    this.buf = new Float32Array(8192);
    this.bufStart = 0;
    this.bufLen = 0;
    this.t = 0;
    if (!this.passthrough) {
      const cutoff = Math.min(0.5, 0.5 / this.ratio) * 0.9; // cycles per input sample
      this.half = Math.ceil(ZERO_CROSSINGS / (2 * cutoff)); // kernel half-width in input samples
      this.table = new Float32Array(this.half * PHASES + 2);
      for (let i = 0; i < this.table.length; i++) {
        const d = i / PHASES;
        const x = 2 * cutoff * d;
        const sinc = d === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
        const w = d >= this.half ? 0 : 0.42 + 0.5 * Math.cos((Math.PI * d) / this.half) + 0.08 * Math.cos((2 * Math.PI * d) / this.half);
        this.table[i] = 2 * cutoff * sinc * w;
      }
    }
    this.port.onmessage = (e) => {
      if (e.data === "flush") {
        this.emit();
        this.port.postMessage({ flushed: true });
      }
    };
  }

  kernel(d) {
    const p = Math.abs(d) * PHASES;
    const i = p | 0;
    if (i >= this.table.length - 1) return 0;
    const f = p - i;
    return this.table[i] * (1 - f) + this.table[i + 1] * f;
  }

  push(sample) {
    const v = sample > 1 ? 1 : sample < -1 ? -1 : sample;
    this.out[this.outLen++] = v < 0 ? Math.round(v * 32768) : Math.round(v * 32767);
    const a = Math.abs(v);
    if (a > this.peak) this.peak = a;
    this.sumSq += v * v;
    if (this.outLen === this.chunk) this.emit();
  }

  emit() {
    if (this.outLen === 0) return;
    const pcm = this.out.slice(0, this.outLen);
    this.port.postMessage({ pcm: pcm.buffer, peak: this.peak, rms: Math.sqrt(this.sumSq / this.outLen) }, [pcm.buffer]);
    this.outLen = 0;
    this.peak = 0;
    this.sumSq = 0;
  }

  append(mono, n) {
    if (this.bufLen + n > this.buf.length) {
      // Drop input that no future output needs, then grow if still short.
      const keepFrom = Math.max(0, Math.floor(this.t - this.half) - this.bufStart);
      this.buf.copyWithin(0, keepFrom, this.bufLen);
      this.bufLen -= keepFrom;
      this.bufStart += keepFrom;
      if (this.bufLen + n > this.buf.length) {
        const bigger = new Float32Array((this.bufLen + n) * 2);
        bigger.set(this.buf.subarray(0, this.bufLen));
        this.buf = bigger;
      }
    }
    this.buf.set(mono.subarray(0, n), this.bufLen);
    this.bufLen += n;
  }

  process(inputs) {
    const input = inputs[0];
    if (!input || input.length === 0 || input[0].length === 0) return true;
    const n = input[0].length;
    let mono = input[0];
    if (input.length > 1) {
      mono = new Float32Array(n);
      for (const ch of input) for (let i = 0; i < n; i++) mono[i] += ch[i];
      for (let i = 0; i < n; i++) mono[i] /= input.length;
    }
    if (this.passthrough) {
      for (let i = 0; i < n; i++) this.push(mono[i]);
      return true;
    }
    this.append(mono, n);
    const end = this.bufStart + this.bufLen; // one past the newest input sample
    while (this.t + this.half < end) {
      const lo = Math.max(this.bufStart, Math.ceil(this.t - this.half));
      const hi = Math.min(end - 1, Math.floor(this.t + this.half));
      let acc = 0;
      for (let k = lo; k <= hi; k++) acc += this.buf[k - this.bufStart] * this.kernel(this.t - k);
      this.push(acc);
      this.t += this.ratio;
    }
    return true;
  }
}

registerProcessor("pcm16-downsampler", Pcm16Downsampler);
