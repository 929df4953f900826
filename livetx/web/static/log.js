// The event log: every frame in both directions, as the OpenAI Realtime console shows them.
// Audio payloads are kept as their size and duration, never as Base64: a minute of
// speech would otherwise fill the page's memory and the exported file.

const MAX_ENTRIES = 5000;  // kept for export; the oldest go first
const MAX_ROWS = 400;      // drawn at once; the filter reaches the rest

// Bytes of a Base64 string, without decoding it.
function base64Bytes(text) {
  const padding = text.endsWith("==") ? 2 : text.endsWith("=") ? 1 : 0;
  return Math.floor((text.length * 3) / 4) - padding;
}

// Seconds of a WAV file from its header (rate, channels, bits), or null.
function wavSeconds(text) {
  try {
    const head = Uint8Array.from(atob(text.slice(0, 60)), (c) => c.charCodeAt(0));
    const view = new DataView(head.buffer);
    if (view.getUint32(0) !== 0x52494646) return null;  // "RIFF"
    const bytesPerSecond = view.getUint32(28, true);
    return bytesPerSecond ? (base64Bytes(text) - 44) / bytesPerSecond : null;
  } catch { return null; }
}

function audioSummary(text, pcm16k) {
  const bytes = base64Bytes(text);
  const seconds = pcm16k ? bytes / 32000 : wavSeconds(text);
  return { audio_bytes: bytes, audio_seconds: seconds === null ? null : Math.round(seconds * 1000) / 1000 };
}

// The frame as logged: audio replaced by its size and duration.
export function summarize(frame) {
  if (frame.t === "response" && typeof frame.data === "string") return { ...frame, data: audioSummary(frame.data, false) };
  if (frame.t === "speaking_part" && typeof frame.data === "string") return { ...frame, data: audioSummary(frame.data, true) };
  return frame;
}

function clock(ms) {
  const d = new Date(ms);
  return d.toTimeString().slice(0, 8) + "." + String(d.getMilliseconds()).padStart(3, "0");
}

export class EventLog {
  constructor(list, filter, types) {
    this.list = list;
    this.filterInput = filter;
    this.types = types;
    this.entries = [];
    this.seen = new Set();
    this.paused = false;
    this.drawn = 0;  // entries[0..drawn) have been considered for drawing
    filter.addEventListener("input", () => this.redraw());
  }

  // Record one frame; ``dir`` is "in" (server to page) or "out"; ``note`` marks e.g. replayed frames.
  add(dir, frame, note = "") {
    const entry = { time: Date.now(), dir, t: String(frame.t ?? frame.type ?? "?"), frame: summarize(frame) };
    if (note) entry.note = note;
    this.entries.push(entry);
    if (this.entries.length > MAX_ENTRIES) {
      this.entries.shift();
      this.drawn = Math.max(0, this.drawn - 1);
    }
    if (!this.seen.has(entry.t)) {
      this.seen.add(entry.t);
      const option = document.createElement("option");
      option.value = entry.t;
      this.types.append(option);
    }
    if (!this.paused) this.drawNew();
    return entry;
  }

  matches(entry) {
    const wanted = this.filterInput.value.split(",").map((s) => s.trim()).filter(Boolean);
    return wanted.length === 0 || wanted.some((w) => entry.t.includes(w));
  }

  row(entry) {
    const item = document.createElement("li");
    item.className = `entry ${entry.dir}`;
    item.dataset.t = entry.t;
    const details = document.createElement("details");
    const summary = document.createElement("summary");
    const arrow = entry.dir === "in" ? "↓" : "↑";
    const extra = [entry.frame.turn !== undefined ? `turn ${entry.frame.turn}` : "",
      entry.frame.seq !== undefined ? `seq ${entry.frame.seq}` : "", entry.note || ""].filter(Boolean).join(" · ");
    summary.textContent = `${clock(entry.time)} ${arrow} ${entry.t}${extra ? "  " + extra : ""}`;
    summary.setAttribute("aria-label", `${entry.dir === "in" ? "received" : "sent"} ${entry.t} ${extra}`);
    details.append(summary);
    details.addEventListener("toggle", () => {  // the JSON is drawn when first opened
      if (!details.open || details.querySelector("pre")) return;
      const pre = document.createElement("pre");
      pre.textContent = JSON.stringify(entry.frame, null, 2);
      const copy = document.createElement("button");
      copy.type = "button";
      copy.textContent = "Copy";
      copy.className = "copy";
      copy.addEventListener("click", () => copyText(JSON.stringify(entry.frame), copy));
      details.append(copy, pre);
    });
    item.append(details);
    return item;
  }

  drawNew() {
    const stick = this.list.scrollTop + this.list.clientHeight >= this.list.scrollHeight - 4;
    for (; this.drawn < this.entries.length; this.drawn++) {
      const entry = this.entries[this.drawn];
      if (this.matches(entry)) this.list.append(this.row(entry));
    }
    while (this.list.childElementCount > MAX_ROWS) this.list.firstElementChild.remove();
    if (stick) this.list.scrollTop = this.list.scrollHeight;
  }

  redraw() {
    this.list.replaceChildren();
    this.drawn = 0;
    if (!this.paused) this.drawNew();
  }

  setPaused(paused) {
    this.paused = paused;
    if (!paused) this.drawNew();
  }

  clear() {
    this.entries = [];
    this.redraw();
  }

  // The whole log as JSON Lines: one {"time", "dir", "frame"} object per line.
  jsonl() {
    return this.entries.map((e) => JSON.stringify({ time: new Date(e.time).toISOString(), dir: e.dir,
      ...(e.note ? { note: e.note } : {}), frame: e.frame })).join("\n") + (this.entries.length ? "\n" : "");
  }

  export() {
    const blob = new Blob([this.jsonl()], { type: "application/x-ndjson" });
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = `livetx-${new Date().toISOString().replace(/[:.]/g, "-")}.jsonl`;
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
  }
}

function copyText(text, button) {
  const done = () => { button.textContent = "Copied"; setTimeout(() => { button.textContent = "Copy"; }, 1500); };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(text).then(done, () => fallbackCopy(text, done));
  } else {
    fallbackCopy(text, done);
  }
}

function fallbackCopy(text, done) {  // plain http on another host: no Clipboard API there
  const area = document.createElement("textarea");
  area.value = text;
  document.body.append(area);
  area.select();
  document.execCommand("copy");
  area.remove();
  done();
}
