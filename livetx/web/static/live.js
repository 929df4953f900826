// The livetx page: one Live API socket, text and voice in, text and audio out.
// No build step: a plain ES module. Frame types are in docs/protocol.md.

const $ = (id) => document.getElementById(id);

// Counters the browser tests read (and a curious user can, in the console).
const stats = {
  framesIn: 0, partsSent: 0, segments: 0, chunksScheduled: 0, secondsScheduled: 0, turnsEnded: 0,
  loudFrames: 0, quietFrames: 0,  // microphone frames above the speech level; quiet ones since
};
window.livetx = { stats };

let socket = null;

function setStatus(text, open = false) {
  $("status").textContent = text;
  $("status").classList.toggle("open", open);
}

function connected() {
  return socket !== null && socket.readyState === WebSocket.OPEN;
}

function send(frame, quiet = false) {
  if (!connected()) {
    if (!quiet) addMessage("error", "not connected");
    return false;
  }
  socket.send(JSON.stringify(frame));
  return true;
}

function socketUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const base = `${scheme}//${location.host}`;
  const token = $("token").value.trim();
  if (token) return `${base}/api/live_chat/ws?token=${encodeURIComponent(token)}`;
  const key = encodeURIComponent($("api-key").value.trim());
  const user = encodeURIComponent($("username").value.trim());
  // A browser cannot set headers on a WebSocket, so the key rides in the query
  // (the server's access log drops query strings).
  return `${base}/api/v1/live/ws?api_key=${key}&username=${user}`;
}

function connect() {
  if (socket) socket.close(1000);
  player.unlock();
  setStatus("connecting…");
  const ws = new WebSocket(socketUrl());
  socket = ws;
  ws.onopen = () => setStatus("connected", true);
  ws.onclose = (event) => {
    if (socket !== ws) return;  // an older socket, replaced by connecting again
    socket = null;
    micUp();
    setStatus(`closed (${event.code}${event.reason ? ": " + event.reason : ""})`);
  };
  ws.onmessage = (event) => {
    stats.framesIn++;
    let frame;
    try { frame = JSON.parse(event.data); } catch { return; }
    handle(frame);
  };
}

// -- what the server says ------------------------------------------------------

let botMessage = null;
let turnMetrics = {};
let turnRunning = false;

function addMessage(kind, text) {
  const div = document.createElement("div");
  div.className = `msg ${kind}`;
  div.textContent = text;
  $("transcript").append(div);
  $("transcript").scrollTop = $("transcript").scrollHeight;
  return div;
}

function handle(frame) {
  const data = frame.data;
  switch (frame.t) {
    case "user_msg":
      addMessage("user", data.text);
      break;
    case "bot_delta_chunk":  // the streaming transcript
      if (!botMessage) botMessage = addMessage("bot", "");
      botMessage.textContent += data.text;
      $("transcript").scrollTop = $("transcript").scrollHeight;
      break;
    case "bot_text_chunk":  // the caption of the audio chunk that follows
      $("caption").textContent = data.text;
      break;
    case "bot_msg":  // a reply without speech: the deltas already showed it
      if (!botMessage) addMessage("bot", data.text);
      break;
    case "response":
      player.enqueue(data);
      break;
    case "metrics":
      if ("input_type" in data) { turnMetrics = {}; turnRunning = true; }
      Object.assign(turnMetrics, data);
      showMetrics();
      break;
    case "stop_play":
      player.stop();
      endTurn(true);
      break;
    case "end":
      endTurn(false);
      break;
    case "error":
      addMessage("error", `${frame.code || "ERROR"}: ${data}`);
      break;
  }
}

function endTurn(interrupted) {
  turnRunning = false;
  if (botMessage && interrupted) botMessage.classList.add("interrupted");
  botMessage = null;
  stats.turnsEnded++;
}

function showMetrics() {
  const body = $("metrics").tBodies[0];
  body.replaceChildren();
  for (const [name, value] of Object.entries(turnMetrics)) {
    const row = body.insertRow();
    row.insertCell().textContent = name;
    row.insertCell().textContent = typeof value === "number" ? `${Math.round(value * 1000)} ms` : value;
  }
}

// -- playback: every chunk decoded as it arrives, scheduled back to back in order --

class Player {
  constructor() {
    this.ctx = null;
    this.next = 0;             // when the scheduled audio runs out, in context time
    this.sources = new Set();
    this.chain = Promise.resolve();
    this.generation = 0;       // bumped by stop(): drops chunks still decoding
  }

  unlock() {  // called from a click, so that the browser lets the page play sound
    if (!this.ctx) this.ctx = new AudioContext();
    if (this.ctx.state === "suspended") this.ctx.resume();
  }

  enqueue(base64) {
    this.unlock();
    const ctx = this.ctx;
    const generation = this.generation;
    const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
    const decoded = ctx.decodeAudioData(bytes.buffer);  // decodes in parallel...
    this.chain = this.chain
      .then(() => decoded)                                // ...but plays in order
      .then((buffer) => {
        if (generation !== this.generation) return;
        const source = ctx.createBufferSource();
        source.buffer = buffer;
        source.connect(ctx.destination);
        const at = Math.max(ctx.currentTime + 0.02, this.next);
        source.start(at);
        this.next = at + buffer.duration;
        this.sources.add(source);
        source.onended = () => this.sources.delete(source);
        stats.chunksScheduled++;
        stats.secondsScheduled += buffer.duration;
      })
      .catch((error) => addMessage("error", `cannot play an audio chunk: ${error}`));
  }

  get playing() {
    return this.ctx !== null && this.next > this.ctx.currentTime;
  }

  stop() {
    this.generation++;
    for (const source of this.sources) {
      try { source.stop(); } catch { /* already stopped */ }
    }
    this.sources.clear();
    this.next = 0;
    this.chain = Promise.resolve();
  }
}

const player = new Player();
window.livetx.player = player;

// -- the microphone: 16 kHz PCM16 from an AudioWorklet, 20 ms per speaking_part --

const SPEECH_LEVEL = 0.02;   // RMS above which hands-free hears speech
const SILENCE_FRAMES = 40;   // 800 ms of quiet ends a hands-free segment
const PREROLL_FRAMES = 15;   // 300 ms kept from before speech began

class Microphone {
  constructor(onFrame) {
    this.onFrame = onFrame;
    this.stream = null;
    this.ctx = null;
  }

  async open(handsFree) {
    // Hands-free listens while the reply plays, so it needs the browser's echo
    // cancellation. Push-to-talk gets the plain microphone: the recognizer does
    // best with it (the processing blurs words), and automatic gain never helps.
    const processing = Boolean(handsFree);
    this.stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: processing, noiseSuppression: processing, autoGainControl: false },
    });
    this.ctx = new AudioContext({ sampleRate: 16000 });
    await this.ctx.audioWorklet.addModule("/static/capture.js");
    const node = new AudioWorkletNode(this.ctx, "pcm16-capture", { numberOfOutputs: 0 });
    node.port.onmessage = (event) => this.onFrame(event.data.pcm, event.data.rms);
    this.ctx.createMediaStreamSource(this.stream).connect(node);
  }

  close() {
    if (this.stream) this.stream.getTracks().forEach((track) => track.stop());
    if (this.ctx) this.ctx.close();
    this.stream = null;
    this.ctx = null;
  }
}

function base64(buffer) {
  return btoa(String.fromCharCode(...new Uint8Array(buffer)));
}

let segment = null;       // the stamp of the open voice segment
let quietFrames = 0;
const preroll = [];

function startSegment() {
  if (turnRunning || player.playing) {  // barge-in: the user talks over the reply
    if (turnRunning) send({ t: "interrupt" });
    player.stop();
  }
  segment = `seg-${Date.now()}`;
  if (send({ t: "start_speaking", stamp: segment })) stats.segments++;
}

function sendPart(pcm) {
  if (send({ t: "speaking_part", data: base64(pcm) }, true)) stats.partsSent++;
}

function endSegment() {
  if (segment === null) return;
  send({ t: "end_speaking", stamp: segment }, true);
  segment = null;
}

function onFrame(pcm, rms) {
  if (rms >= SPEECH_LEVEL) {
    stats.loudFrames++;
    stats.quietFrames = 0;
  } else {
    stats.quietFrames++;
  }
  if (!$("hands-free").checked) {
    if (segment !== null) sendPart(pcm);
    return;
  }
  if (segment === null) {
    preroll.push(pcm);
    if (preroll.length > PREROLL_FRAMES) preroll.shift();
    if (rms < SPEECH_LEVEL) return;
    startSegment();
    preroll.splice(0).forEach(sendPart);
    quietFrames = 0;
    return;
  }
  sendPart(pcm);
  quietFrames = rms < SPEECH_LEVEL ? quietFrames + 1 : 0;
  if (quietFrames >= SILENCE_FRAMES) endSegment();
}

const microphone = new Microphone(onFrame);
let micOpen = false;

function setMic(on) {
  micOpen = on;
  $("mic").setAttribute("aria-pressed", String(on));
}

async function micDown() {
  if (micOpen) return;
  if (!connected()) {
    addMessage("error", "not connected");
    return;
  }
  setMic(true);
  player.unlock();
  try {
    await microphone.open($("hands-free").checked);
  } catch (error) {
    setMic(false);
    addMessage("error", `microphone: ${error.message || error}`);
    return;
  }
  if (!micOpen) { microphone.close(); return; }  // released while opening
  if (!$("hands-free").checked) startSegment();
}

function micUp() {
  if (!micOpen) return;
  setMic(false);
  endSegment();
  microphone.close();
}

// Push-to-talk: hold the button. Hands-free: click to listen, click to stop.
$("mic").addEventListener("pointerdown", () => { if (!$("hands-free").checked) micDown(); });
$("mic").addEventListener("pointerup", () => { if (!$("hands-free").checked) micUp(); });
$("mic").addEventListener("pointerleave", () => { if (!$("hands-free").checked) micUp(); });
$("mic").addEventListener("click", () => {
  if ($("hands-free").checked) (micOpen ? micUp : micDown)();
});
$("mic").addEventListener("keydown", (event) => {  // Space held: push-to-talk from the keyboard
  if (event.code === "Space" && !event.repeat && !$("hands-free").checked) {
    event.preventDefault();
    micDown();
  }
});
$("mic").addEventListener("keyup", (event) => {
  if (event.code === "Space" && !$("hands-free").checked) {
    event.preventDefault();
    micUp();
  }
});
$("hands-free").addEventListener("change", () => {
  micUp();
  $("mic").textContent = $("hands-free").checked ? "Listen" : "Hold to talk";
});

$("interrupt").addEventListener("click", () => {
  player.stop();
  send({ t: "interrupt" });
});

$("connect").addEventListener("submit", (event) => {
  event.preventDefault();
  connect();
});

$("say").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("text").value.trim();
  if (!text) return;
  player.unlock();
  if (turnRunning) send({ t: "interrupt" });  // a new question replaces the running reply
  player.stop();
  if (send({ t: "text_input", text })) $("text").value = "";
});
