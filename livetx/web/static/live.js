// The livetx console: one Live API socket, text and voice in, text and audio out,
// with every frame in a log, each turn's latency, the microphone, the session's
// settings, tool calls, and a socket that comes back after a drop (resume).
// No build step: plain ES modules. Frame types are in docs/protocol.md and
// docs/protocol-extensions.md.

import { EventLog } from "/static/log.js";
import { SETTINGS, loadVoices, renderSettings, settingsFrame, showApplied } from "/static/settings.js";
import { Timeline } from "/static/timeline.js";

const $ = (id) => document.getElementById(id);

// Counters the browser tests read (and a curious user can, in the console).
const stats = {
  framesIn: 0, partsSent: 0, segments: 0, chunksScheduled: 0, secondsScheduled: 0, turnsEnded: 0,
  loudFrames: 0, quietFrames: 0,  // microphone frames above the speech level; quiet ones since
  reconnects: 0, replayed: 0, bargeIns: 0, resumesExpired: 0,
};
const log = new EventLog($("log"), $("log-filter"), $("log-types"));
const timeline = new Timeline($("timeline"));
window.livetx = { stats, log, timeline };

// -- credentials: a one-time login link, or a pasted key or token, kept for the tab's session --

const CREDENTIAL = "livetx.credential";

function credential() {
  try { return JSON.parse(sessionStorage.getItem(CREDENTIAL)); } catch { return null; }
}

function signedIn(saved) {
  sessionStorage.setItem(CREDENTIAL, JSON.stringify(saved));
  showSignedIn();
}

function showSignedIn() {
  const saved = credential();
  $("connect").hidden = saved !== null;
  $("sign-out").hidden = saved === null;
  $("who").textContent = saved ? `signed in as ${saved.username}` : "";
}

function signOut() {
  sessionStorage.removeItem(CREDENTIAL);
  resumePoint = null;
  disconnect();
  setStatus("signed out");
  showSignedIn();
  $("token").value = "";
  $("api-key").value = "";
}

// ``?login=CODE``: exchanged once for a token; the code leaves the address bar and the history.
async function signInWithLink() {
  const params = new URLSearchParams(location.search);
  const code = params.get("login");
  if (!code) return false;
  params.delete("login");
  const rest = params.toString();
  history.replaceState(null, "", location.pathname + (rest ? `?${rest}` : "") + location.hash);
  setStatus("signing in…");
  let reply, body = {};
  try {
    reply = await fetch("/api/v1/login", {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ login: code }),
    });
    body = await reply.json();
  } catch (error) {
    setStatus(`cannot sign in: ${error.message || error}`);
    return false;
  }
  if (!reply.ok) {
    setStatus(`login link refused: ${body.message || reply.status} (run livetx open for a new one)`);
    $("status").classList.add("refused");
    return false;
  }
  signedIn({ token: body.token, username: body.username });
  return true;
}

// -- the socket: opened with resume on, and reopened after a drop --------------

let socket = null;
let resumePoint = null;    // {sessionId, seq}: where the session's numbered frames got to
let replay = null;         // while a resumed socket replays: {from, count, notice}
let retry = { attempt: 0, timer: null };
const BACKOFF_MS = [250, 500, 1000, 2000, 4000, 8000];

function setStatus(text, open = false) {
  $("status").textContent = text;
  $("status").classList.toggle("open", open);
  $("status").classList.remove("refused");
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
  log.add("out", frame);
  if (replay && frame.t !== "resume" && frame.t !== "session_update") replayOver();
  return true;
}

function socketUrl(resuming) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const base = `${scheme}//${location.host}`;
  const saved = credential() || {};
  const opt = resuming ? "" : "&resume=1";  // a resumed socket carries the old session on
  if (saved.token) return `${base}/api/live_chat/ws?token=${encodeURIComponent(saved.token)}${opt}`;
  // A browser cannot set headers on a WebSocket, so the key rides in the query
  // (the server's access log drops query strings).
  return `${base}/api/v1/live/ws?api_key=${encodeURIComponent(saved.apiKey || "")}` +
    `&username=${encodeURIComponent(saved.username || "")}${opt}`;
}

function disconnect() {
  clearTimeout(retry.timer);
  retry = { attempt: 0, timer: null };
  if (socket) {
    socket.intentional = true;
    socket.close(1000);
  }
  socket = null;
  micUp();
}

function connect() {
  disconnect();
  player.unlock();
  open(false);
}

function open(resuming) {
  setStatus(resuming ? "reconnecting…" : "connecting…");
  const ws = new WebSocket(socketUrl(resuming && resumePoint !== null));
  socket = ws;
  ws.onopen = () => {
    ws.opened = true;
    retry.attempt = 0;
    setStatus("connected", true);
    if (resuming && resumePoint !== null) {
      stats.reconnects++;
      replay = { from: resumePoint.seq + 1, count: 0, notice: addMessage("notice", "") };
      showReplay();
      send({ t: "resume", session_id: resumePoint.sessionId, seq: resumePoint.seq });
      setTimeout(reapply, 300);  // once the server has taken the resume
      setTimeout(() => { if (replay && replay.count === 0) replayOver(); }, 1000);  // dropped between turns
    }
  };
  ws.onclose = (event) => {
    if (socket !== ws || ws.intentional) return;  // replaced, or closed on purpose
    socket = null;
    micUp();
    const why = `${event.code}${event.reason ? ": " + event.reason : ""}`;
    if (!ws.opened && !resuming || event.code === 1008) {  // refused: retrying would not help
      // The credential itself refused (tokens.py, admission.py, a revoked key): sign in again.
      if (/^(Missing authentication token|Token expired|Invalid token|Missing API key|Invalid API key|API key revoked)$/
        .test(event.reason || "")) {
        sessionStorage.removeItem(CREDENTIAL);
        showSignedIn();
      }
      setStatus(`closed (${why})`);
      return;
    }
    const wait = BACKOFF_MS[Math.min(retry.attempt, BACKOFF_MS.length - 1)] * (0.8 + Math.random() * 0.4);
    retry.attempt++;
    setStatus(`connection lost (${why}); reconnecting in ${(wait / 1000).toFixed(1)} s`);
    retry.timer = setTimeout(() => open(true), wait);
  };
  ws.onmessage = (event) => {
    stats.framesIn++;
    let frame;
    try { frame = JSON.parse(event.data); } catch { return; }
    if (typeof frame.seq === "number" && resumePoint !== null) resumePoint.seq = frame.seq;
    let note = "";
    if (replay && frame.code === "RESUME_EXPIRED") {
      note = "resume refused";  // an answer to the resume, not a frame of the session
    } else if (replay) {
      replay.count++;
      stats.replayed++;
      note = "replayed";
      showReplay();
    }
    log.add("in", frame, note);
    handle(frame);
  };
}

function showReplay() {
  const { from, count, notice } = replay;
  notice.textContent = count
    ? `Reconnected and resumed the session: ${count} frame${count === 1 ? "" : "s"} replayed (seq ${from}–${from + count - 1})`
    : "Reconnected; resuming the session…";
}

// The server no longer keeps the dropped session's frames (the socket was gone longer than its
// [cluster] resume_seconds, or past its budget): say so where the reconnect was announced, leave
// the cut-off reply marked as such, and go on in a new session with the settings in force.
function resumeExpired() {
  stats.resumesExpired++;
  const text = "Reconnected, but the session could not be resumed: the server no longer keeps its frames. " +
    "What was missed is in the server's history; a new session starts.";
  const notice = replay ? replay.notice : addMessage("notice", "");
  notice.textContent = text;
  notice.dataset.state = "resume-expired";
  $("status").textContent = "connected: new session (could not resume)";
  replay = null;
  resumePoint = null;
  if (turnRunning || botMessage) endTurn(true);
  send({ t: "session_update", ...wantedSettings(), resume: true });
}

function replayOver() {
  if (replay && replay.count === 0) replay.notice.textContent = "Reconnected and resumed the session: nothing was missed";
  replay = null;
}

// -- what the server says ------------------------------------------------------

let botMessage = null;
let lastUser = null;     // the last user line, to be replaced by a second user_msg of its turn
let caption = "";        // the last bot_text_chunk: its response is next
let partial = null;
let turnRunning = false;
let serverDetection = false;
const toolCards = new Map();

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
    case "session_updated":
      applied(frame, data);
      break;
    case "speech_started":
      setVad("speech");
      if (turnRunning || player.playing) bargeIn("you spoke over the reply");
      break;
    case "speech_stopped":  // the turn's metrics move its start back to where speech ended
      setVad("silence");
      timeline.start("voice");
      timeline.mark("endpoint");
      break;
    case "user_partial":
      if (!partial) partial = addMessage("user partial", "");
      partial.textContent = data.text;
      break;
    case "user_msg":
      if (partial) { partial.remove(); partial = null; }
      if (lastUser && frame.turn !== undefined && lastUser.dataset.turn === String(frame.turn)) {
        // The same turn again: the user went on after a pause, and this text replaces the
        // first; the reply starts again (docs/protocol-extensions.md, "A request in two breaths").
        lastUser.textContent = data.text;
        for (const said of document.querySelectorAll(`#transcript .msg.bot[data-turn="${frame.turn}"]`)) said.remove();
        botMessage = null;
      } else {
        lastUser = addMessage("user", data.text);
        lastUser.dataset.turn = String(frame.turn);
      }
      timeline.mark("transcript", frame.turn);
      break;
    case "bot_delta_chunk":  // the streaming transcript
      if (!botMessage) {
        botMessage = addMessage("bot", "");
        botMessage.dataset.turn = String(frame.turn);
      }
      botMessage.textContent += data.text;
      $("transcript").scrollTop = $("transcript").scrollHeight;
      timeline.mark("delta", frame.turn);
      break;
    case "bot_text_chunk":  // the caption of the audio chunk that follows, shown as that chunk plays
      caption = data.text;
      timeline.mark("caption", frame.turn);
      break;
    case "bot_msg":  // a reply without speech: the deltas already showed it
      if (!botMessage) addMessage("bot", data.text);
      break;
    case "response":
      timeline.mark("audio", frame.turn);
      player.enqueue(data, frame.turn, caption);
      break;
    case "tool_call":
      toolCall(data);
      break;
    case "tool_result":
      toolResult(data);
      break;
    case "metrics":
      if ("input_type" in data) { turnRunning = true; clearBargeIn(); }
      timeline.metrics(data);
      break;
    case "stop_play":  // tell the server how much of the reply was heard; it keeps only that
      stopPlayback();
      endTurn(true);
      if (cut && cut.turn === frame.turn && send({ t: "truncate", turn: cut.turn, audio_end_ms: cut.ms }, true)) {
        truncating = cut.turn;
      }
      cut = null;
      break;
    case "end":
      endTurn(false);
      break;
    case "truncated":
      truncating = null;
      addMessage("notice", `kept what was heard: ${data.text || "(nothing)"}`);
      break;
    case "error":
      if (frame.code === "RESUME_EXPIRED") {  // the journal is gone: start a new session
        resumeExpired();
        break;
      }
      if (frame.code === "UNKNOWN_TURN" && truncating !== null) {
        // The answer to the page's own truncate: in talk mode the stop_play may have been the
        // user going on with the request (its turn withdrawn, nothing stored to cut). Nothing to show.
        truncating = null;
        break;
      }
      if (frame.code === "INVALID_SETTING" || frame.code === "UNKNOWN_SETTING") $("settings-error").textContent = data;
      addMessage("error", `${frame.code || "ERROR"}: ${typeof data === "string" ? data : JSON.stringify(data)}`);
      break;
  }
}

// A resumed socket starts with the server's default settings: ask again for the ones in force before.
let inForce = null;
function reapply() {
  if (!inForce || !connected()) return;
  const wanted = wantedSettings();
  if (wanted.voice || SETTINGS.some((s) => wanted[s.name] !== s.initial)) send({ t: "session_update", ...wanted, resume: true });
}

// The page's settings of the session now in force, as a session_update carries them.
function wantedSettings() {
  if (!inForce) return {};
  const wanted = Object.fromEntries(SETTINGS.map((s) => [s.name, inForce[s.name]]).filter(([, v]) => v !== undefined));
  if (inForce.voice) wanted.voice = inForce.voice;
  return wanted;
}

function applied(frame, data) {
  inForce = data;
  if (frame.session_id) resumePoint = { sessionId: frame.session_id, seq: frame.seq ?? 0 };
  serverDetection = data.turn_detection === "server";
  $("applied").textContent = JSON.stringify(data, null, 1);
  showApplied($("settings-fields"), data);
  $("settings-error").textContent = "";
  micLabel();
}

function endTurn(interrupted) {
  turnRunning = false;
  if (botMessage && interrupted) botMessage.classList.add("interrupted");
  botMessage = null;
  stats.turnsEnded++;
  timeline.finish();
  if (replay) replayOver();
}

function bargeIn(why) {
  stats.bargeIns++;
  $("barge-in").dataset.state = "barged-in";
  $("barge-in").textContent = `barge-in: ${why}`;
}

function clearBargeIn() {
  $("barge-in").dataset.state = "none";
  $("barge-in").textContent = "";
}

function toolCall(data) {
  const card = document.createElement("div");
  card.className = "msg tool";
  card.dataset.status = "running";
  card.setAttribute("role", "group");
  card.setAttribute("aria-label", `tool call ${data.name}`);
  const head = document.createElement("div");
  head.className = "tool-head";
  head.textContent = `${data.name} · running`;
  const args = document.createElement("pre");
  args.className = "tool-args";
  args.textContent = JSON.stringify(data.arguments, null, 1);
  card.append(head, args);
  $("transcript").append(card);
  toolCards.set(data.id, { card, head, started: performance.now(), name: data.name });
  botMessage = null;  // the text after the call goes below its card
}

function toolResult(data) {
  const entry = toolCards.get(data.id);
  if (!entry) return;
  toolCards.delete(data.id);
  const ms = Math.round(performance.now() - entry.started);
  const status = data.ok ? "ok" : (data.result === "cancelled" ? "cancelled" : "failed");
  entry.card.dataset.status = status;
  entry.head.textContent = `${entry.name} · ${status} · ${ms} ms`;
  const result = document.createElement("pre");
  result.className = "tool-result";
  result.textContent = typeof data.result === "string" ? data.result : JSON.stringify(data.result, null, 1);
  entry.card.append(result);
  $("transcript").scrollTop = $("transcript").scrollHeight;
}

// -- playback: every chunk decoded as it arrives, scheduled back to back in order --

class Player {
  constructor() {
    this.ctx = null;
    this.next = 0;             // when the scheduled audio runs out, in context time
    this.started = 0;          // when the reply's first chunk began, in context time
    this.sources = new Set();
    this.chain = Promise.resolve();
    this.generation = 0;       // bumped by stop(): drops chunks still decoding
    this.heard = [];           // the latest turn's scheduled chunks: {turn, at, duration}
    this.captions = new Set(); // timers that show each chunk's caption as it starts
  }

  unlock() {  // called from a click, so that the browser lets the page play sound
    if (!this.ctx) this.ctx = new AudioContext();
    if (this.ctx.state === "suspended") this.ctx.resume();
  }

  enqueue(base64, turn, caption) {
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
        if (this.next <= ctx.currentTime) this.started = at;
        source.start(at);
        if (this.heard.length && this.heard[0].turn !== turn) this.heard = [];
        this.heard.push({ turn, at, duration: buffer.duration });
        const timer = setTimeout(() => {
          this.captions.delete(timer);
          $("caption").textContent = caption;
        }, (at - ctx.currentTime) * 1000);
        this.captions.add(timer);
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

  // How much of the latest turn's audio has played: {turn, ms}, or null.
  cut() {
    if (!this.heard.length) return null;
    const now = this.ctx.currentTime;
    const seconds = this.heard.reduce((sum, c) => sum + Math.min(c.duration, Math.max(0, now - c.at)), 0);
    return { turn: this.heard[0].turn, ms: Math.round(seconds * 1000) };
  }

  stop() {  // returns what was heard of the turn it stops
    const heard = this.cut();
    this.heard = [];
    this.captions.forEach(clearTimeout);
    this.captions.clear();
    this.generation++;
    for (const source of this.sources) {
      try { source.stop(); } catch { /* already stopped */ }
    }
    this.sources.clear();
    this.next = 0;
    this.chain = Promise.resolve();
    return heard;
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

  async open(processing) {
    // Hands-free and talk mode listen while the reply plays, so they need the
    // browser's echo cancellation. Push-to-talk gets the plain microphone: the
    // recognizer does best with it (the processing blurs words), and automatic
    // gain never helps.
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
let level = 0;            // the last frame's RMS, drawn once per animation frame
const preroll = [];

function handsFree() {
  return $("hands-free").checked && !serverDetection;
}

function startSegment() {
  if (turnRunning || player.playing) {  // barge-in: the user talks over the reply
    bargeIn("you started talking");
    if (turnRunning) send({ t: "interrupt" });
    stopPlayback();
  }
  segment = `seg-${Date.now()}`;
  if (send({ t: "start_speaking", stamp: segment })) stats.segments++;
  setVad(handsFree() ? "speech" : "recording");
}

function sendPart(pcm) {
  if (send({ t: "speaking_part", data: base64(pcm) }, true)) stats.partsSent++;
}

function endSegment() {
  if (segment === null) return;
  if (send({ t: "end_speaking", stamp: segment }, true)) {
    timeline.start("voice");
    timeline.mark("endpoint");
  }
  segment = null;
  setVad(micOpen ? "silence" : "off");
}

function onFrame(pcm, rms) {
  level = rms;
  if (rms >= SPEECH_LEVEL) {
    stats.loudFrames++;
    stats.quietFrames = 0;
  } else {
    stats.quietFrames++;
  }
  if (serverDetection) {  // talk mode: everything goes, the server's detector decides
    sendPart(pcm);
    return;
  }
  if (!handsFree()) {
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

function setVad(state) {
  const words = { off: "mic off", recording: "recording", listening: "listening", speech: "speech", silence: "silence" };
  $("vad").dataset.state = state;
  $("vad").textContent = words[state];
}

function micLabel() {
  const toggles = handsFree() || serverDetection;
  $("mic").textContent = serverDetection ? "Talk mode" : toggles ? "Listen" : "Hold to talk";
  $("mic").setAttribute("aria-label", toggles ? `${$("mic").textContent}: click to start or stop`
    : "Hold to talk (or hold Space)");
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
    await microphone.open(handsFree() || serverDetection);
  } catch (error) {
    setMic(false);
    addMessage("error", `microphone: ${error.message || error}`);
    return;
  }
  if (!micOpen) { microphone.close(); return; }  // released while opening
  setVad(serverDetection ? "listening" : "silence");
  if (!handsFree() && !serverDetection) startSegment();
}

function micUp() {
  if (!micOpen) return;
  setMic(false);
  endSegment();
  microphone.close();
  level = 0;
  setVad("off");
}

// What the user heard of a reply stopped here, kept until its stop_play (for truncate).
let cut = null;
let truncating = null;  // the turn of a truncate sent, until the server answers it
function stopPlayback() {
  const heard = player.stop();
  if (heard) cut = heard;
}

function interrupt() {
  stopPlayback();
  if (turnRunning) bargeIn("interrupted");
  send({ t: "interrupt" }, true);
}

// Meter and playback, drawn once per animation frame rather than per audio frame.
function draw() {
  $("level").value = Math.min(1, Math.sqrt(level));
  const ctx = player.ctx;
  if (ctx && player.playing) {
    $("playback").dataset.state = "playing";
    const played = Math.max(0, ctx.currentTime - player.started);  // the first chunk starts 20 ms ahead
    $("playback").textContent = `playing ${played.toFixed(1)} / ${(player.next - player.started).toFixed(1)} s`;
  } else if ($("playback").dataset.state !== "idle") {
    $("playback").dataset.state = "idle";
    $("playback").textContent = "not playing";
  }
  requestAnimationFrame(draw);
}
requestAnimationFrame(draw);

// -- controls ---------------------------------------------------------------

// Push-to-talk: hold the button (or Space). Hands-free and talk mode: click to listen, click to stop.
const toggling = () => handsFree() || serverDetection;
// The pointer is captured while held, so the conversation growing and moving the button
// does not let go of it; losing the capture (released, cancelled) does.
$("mic").addEventListener("pointerdown", (event) => {
  if (toggling()) return;
  $("mic").setPointerCapture(event.pointerId);
  micDown();
});
$("mic").addEventListener("pointerup", () => { if (!toggling()) micUp(); });
$("mic").addEventListener("lostpointercapture", () => { if (!toggling()) micUp(); });
$("mic").addEventListener("click", () => { if (toggling()) (micOpen ? micUp : micDown)(); });

function typing(target) {  // Space belongs to what has the focus there
  return target.closest("input, textarea, select, summary, [contenteditable]")
    || (target.closest("button") && target.id !== "mic");
}
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape") {
    interrupt();
    return;
  }
  if (event.code === "Space" && !typing(event.target) && !toggling()) {
    event.preventDefault();
    if (!event.repeat) micDown();
  }
});
document.addEventListener("keyup", (event) => {
  if (event.code === "Space" && !typing(event.target) && !toggling()) {
    event.preventDefault();
    micUp();
  }
});
$("hands-free").addEventListener("change", () => { micUp(); micLabel(); });
$("interrupt").addEventListener("click", interrupt);
$("sign-out").addEventListener("click", signOut);

function tokenUser(token) {  // for "signed in as": the server checks the token, not this
  try {
    return JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/"))).username || "token";
  } catch { return "token"; }
}

$("connect").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = $("token").value.trim();
  const saved = token ? { token, username: tokenUser(token) }
    : { apiKey: $("api-key").value.trim(), username: $("username").value.trim() };
  signedIn(saved);
  connect();
});

$("say").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("text").value.trim();
  if (!text) return;
  player.unlock();
  if (turnRunning) send({ t: "interrupt" });  // a new question replaces the running reply
  stopPlayback();
  if (send({ t: "text_input", text })) {
    $("text").value = "";
    timeline.start("text");
  }
});

renderSettings($("settings-fields"));
loadVoices($("settings-fields")).catch((error) => { $("settings-error").textContent = `no voices: ${error.message || error}`; });
$("settings").addEventListener("submit", (event) => {
  event.preventDefault();
  const { frame, error } = settingsFrame($("settings-fields"));
  $("settings-error").textContent = error || "";
  if (frame) send({ ...frame, resume: true });
});

$("log-pause").addEventListener("click", () => {
  log.setPaused(!log.paused);
  $("log-pause").setAttribute("aria-pressed", String(log.paused));
  $("log-pause").textContent = log.paused ? "Resume" : "Pause";
});
$("log-clear").addEventListener("click", () => log.clear());
$("log-export").addEventListener("click", () => log.export());

// Signed in already in this tab, or by the link in the address: connect at once.
showSignedIn();
signInWithLink().then(() => { if (credential()) connect(); });
