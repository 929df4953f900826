// A latency waterfall per turn, from the end of speech (or the send of a text turn):
// each stage's bar runs from the stage before it to the moment the page saw it,
// labelled in milliseconds by the browser's clock; the server's own figures
// (its turn's ``metrics``) are shown beside them. The last 20 turns are kept.

const KEEP = 20;
export const STAGES = [
  ["endpoint", "endpoint"],            // speech_stopped (talk mode) or end_speaking sent
  ["transcript", "transcript"],        // user_msg
  ["delta", "first model delta"],      // first bot_delta_chunk
  ["caption", "first caption"],        // first bot_text_chunk
  ["audio", "first audio"],            // first response
  ["end", "end"],                      // end or stop_play
];
const SERVER = [  // metrics keys worth a glance beside the bars: [key, label, milliseconds already?]
  ["endpoint_ms", "endpoint", true], ["transcript_ms", "transcript", true],
  ["first_token_ms", "first token", true], ["first_audio_ms", "first audio", true],
  ["voice_to_voice_ms", "voice to voice", true],
  ["wav_assemble_time", "wav"], ["llm_ttft", "model first text"],
  ["tts_first_frame_time", "speech first audio"], ["speak_to_first_frame", "to first audio"],
  ["wav_to_tts_total_time", "total"],
];

export class Timeline {
  constructor(container) {
    this.container = container;
    this.turns = [];     // newest last
    this.current = null;
  }

  // A turn starts now (text sent, or speech ended): ``kind`` is "text" or "voice".
  start(kind, at = performance.now()) {
    this.current = { kind, t0: at, marks: {}, metrics: {}, turn: null };
    this.turns.push(this.current);
    if (this.turns.length > KEEP) this.turns.shift();
    if (kind === "text") this.current.marks.endpoint = at;
    this.draw();
  }

  // A stage was seen; only its first sighting counts.
  mark(stage, turn) {
    const current = this.current;
    if (!current) return;
    if (turn !== undefined && current.turn === null) current.turn = turn;
    if (current.marks[stage] === undefined) {
      current.marks[stage] = performance.now();
      this.draw();
    }
  }

  metrics(data) {  // the turn's last metrics come right after its end
    const turn = this.current || this.turns[this.turns.length - 1];
    if (!turn) return;
    Object.assign(turn.metrics, data);
    // Talk mode: the server measured from the last voiced frame to speech_stopped, so the
    // turn's clock starts that long before the page saw speech_stopped.
    if (typeof data.endpoint_ms === "number" && turn.kind === "voice" && turn.marks.endpoint !== undefined) {
      turn.t0 = turn.marks.endpoint - data.endpoint_ms;
    }
    this.draw();
  }

  finish() {
    this.mark("end");
    this.current = null;
  }

  // Milliseconds from the start of the turn to each stage seen, for tests and the labels.
  static offsets(turn) {
    const out = {};
    for (const [stage] of STAGES) {
      if (turn.marks[stage] !== undefined) out[stage] = Math.round(turn.marks[stage] - turn.t0);
    }
    return out;
  }

  draw() {
    const scale = Math.max(1, ...this.turns.map((t) => Math.max(0, ...Object.values(Timeline.offsets(t)))));
    const blocks = [];
    for (const turn of [...this.turns].reverse()) {
      const offsets = Timeline.offsets(turn);
      const block = document.createElement("figure");
      block.className = "turn-timeline";
      const title = document.createElement("figcaption");
      title.textContent = `turn ${turn.turn ?? "…"} (${turn.kind})`;
      block.append(title);
      let previous = 0;
      for (const [stage, label] of STAGES) {
        if (offsets[stage] === undefined) continue;
        const at = offsets[stage];
        const row = document.createElement("div");
        row.className = "bar-row";
        row.dataset.stage = stage;
        row.dataset.ms = String(at);
        const name = document.createElement("span");
        name.className = "bar-name";
        name.textContent = label;
        const track = document.createElement("span");
        track.className = "bar-track";
        const bar = document.createElement("span");
        bar.className = `bar ${stage}`;
        bar.style.marginLeft = `${(previous / scale) * 100}%`;
        bar.style.width = `${Math.max(0.5, ((at - previous) / scale) * 100)}%`;
        track.append(bar);
        const value = document.createElement("span");
        value.className = "bar-ms";
        value.textContent = `${at} ms`;
        row.setAttribute("aria-label", `${label} at ${at} milliseconds`);
        row.append(name, track, value);
        block.append(row);
        previous = Math.max(previous, at);
      }
      const server = SERVER.filter(([key]) => typeof turn.metrics[key] === "number")
        .map(([key, label, ms]) => `${label} ${Math.round(turn.metrics[key] * (ms ? 1 : 1000))} ms`);
      if (server.length) {
        const note = document.createElement("p");
        note.className = "server-metrics";
        note.textContent = `server: ${server.join(" · ")}`;
        block.append(note);
      }
      blocks.push(block);
    }
    this.container.replaceChildren(...blocks);
  }
}
