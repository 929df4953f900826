// AudioWorklet: microphone samples in, 20 ms frames of PCM16 out.
//
// The page runs this in an AudioContext created at 16 kHz, so the browser
// has already resampled the microphone; here the floats become signed
// 16-bit little-endian integers (every platform a browser runs on is
// little-endian) in frames of 320 samples, each with its RMS level for the
// hands-free voice detector.

const FRAME = 320; // 20 ms at 16 kHz

class Pcm16Capture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.frame = new Int16Array(FRAME);
    this.filled = 0;
    this.energy = 0;
  }

  process(inputs) {
    const samples = inputs[0] && inputs[0][0];
    if (!samples) return true;
    for (let i = 0; i < samples.length; i++) {
      const s = Math.max(-1, Math.min(1, samples[i]));
      this.frame[this.filled++] = s < 0 ? s * 0x8000 : s * 0x7fff;
      this.energy += s * s;
      if (this.filled === FRAME) {
        const rms = Math.sqrt(this.energy / FRAME);
        this.port.postMessage({ pcm: this.frame.buffer, rms }, [this.frame.buffer]);
        this.frame = new Int16Array(FRAME);
        this.filled = 0;
        this.energy = 0;
      }
    }
    return true;
  }
}

registerProcessor("pcm16-capture", Pcm16Capture);
