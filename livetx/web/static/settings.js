// The session settings the page offers, checked as the server checks them
// (livetx/live/settings.py, docs/protocol-extensions.md). To offer a new
// setting, add one row here: a choice lists its values (strings or booleans,
// sent as they are typed here), an integer its range.

export const SETTINGS = [
  { name: "turn_detection", label: "Turn detection", choices: ["client", "server"], initial: "client",
    help: "server: the server's voice detector starts and ends each utterance (talk mode)" },
  { name: "vad", label: "Detector", choices: ["silero", "webrtc"], initial: "silero" },
  { name: "vad_aggressiveness", label: "WebRTC aggressiveness", min: 0, max: 3, initial: 2 },
  { name: "min_speech_ms", label: "Min speech (ms)", min: 30, max: 5000, initial: 200 },
  { name: "silence_ms", label: "Silence (ms)", min: 100, max: 10000, initial: 600 },
  { name: "end_of_turn", label: "End of turn", choices: ["silence", "transcript", "semantic"], initial: "transcript",
    help: "transcript: a finished sentence ends sooner, one ending on \"and\" or \"for\" waits longer; semantic: and the server's end-of-turn model (its turn extra) decides the rest" },
  { name: "eagerness", label: "Eagerness (transcript, semantic)", choices: ["low", "medium", "high"], initial: "medium" },
  { name: "preroll_ms", label: "Pre-roll (ms)", min: 0, max: 2000, initial: 300 },
  { name: "continue_ms", label: "Continue within (ms)", min: 0, max: 5000, initial: 1200,
    help: "speech resumed this soon after a pause continues the request, even over the reply's first audio" },
  { name: "speculative", label: "Speculative reply", choices: [false, true], initial: false,
    help: "start the reply's model call at the first short pause and send it only once the turn ends (pays with a slow hosted model)" },
];

// Fields for every setting, inside ``container``, and the voice picker first.
export function renderSettings(container) {
  container.replaceChildren(voicePicker());
  for (const setting of SETTINGS) {
    const label = document.createElement("label");
    label.textContent = setting.label + " ";
    let input;
    if (setting.choices) {
      input = document.createElement("select");
      for (const value of setting.choices) input.add(new Option(String(value), String(value)));
    } else {
      input = document.createElement("input");
      input.type = "number";
      input.min = setting.min;
      input.max = setting.max;
      input.step = 1;
      input.inputMode = "numeric";
    }
    input.id = `setting-${setting.name}`;
    input.name = setting.name;
    input.value = String(setting.initial);
    if (setting.help) input.title = setting.help;
    label.append(input);
    container.append(label);
  }
}

// Show what the server says is in force.
export function showApplied(container, data) {
  for (const setting of SETTINGS) {
    const input = container.querySelector(`#setting-${setting.name}`);
    if (input && data[setting.name] !== undefined) input.value = String(data[setting.name]);
  }
  if (data.voice !== undefined) {
    const [name, variant] = data.voice === null ? ["", ""] : splitVoice(data.voice);
    choose(container.querySelector("#setting-voice"), name);
    choose(container.querySelector("#setting-variant"), variant);
  }
}

// -- the voice: one the server's speech engine lists (GET /api/v1/voices), or the server's own --

function voicePicker() {
  const box = document.createElement("div");
  box.className = "voice";
  const voice = document.createElement("select");
  voice.id = "setting-voice";
  voice.name = "voice";
  voice.add(new Option("the server's", ""));
  voice.title = "the replies' voice, from the next reply on (session_update's voice)";
  const variant = document.createElement("select");
  variant.id = "setting-variant";
  variant.add(new Option("none", ""));
  variant.title = "eSpeak NG: a variant of the voice (voice+variant)";
  const voiceLabel = document.createElement("label");
  voiceLabel.append("Voice ", voice);
  const variantLabel = document.createElement("label");
  variantLabel.id = "variant-label";
  variantLabel.append("Variant ", variant);
  variantLabel.hidden = true;
  box.append(voiceLabel, variantLabel);
  return box;
}

// Fill the picker from the server's list; resolves to that list ({engine, default, voices, variants}).
export async function loadVoices(container) {
  const reply = await fetch("/api/v1/voices");
  const listed = await reply.json();
  const voice = container.querySelector("#setting-voice");
  const variant = container.querySelector("#setting-variant");
  voice.options[0].text = listed.default ? `the server's (${listed.default})` : "none: the server speaks no audio";
  voice.disabled = listed.voices.length === 0;
  for (const name of listed.voices) if (!has(voice, name)) voice.add(new Option(name, name));
  for (const name of listed.variants) if (!has(variant, name)) variant.add(new Option(name, name));
  container.querySelector("#variant-label").hidden = listed.variants.length === 0;
  return listed;
}

function has(select, value) {
  return [...select.options].some((option) => option.value === value);
}

// Select ``value``, adding it if the list has not come yet (a voice the server applied is one it has).
function choose(select, value) {
  if (!select) return;
  if (!has(select, value)) select.add(new Option(value, value));
  select.value = value;
}

function splitVoice(voice) {
  const plus = voice.indexOf("+");
  return plus < 0 ? [voice, ""] : [voice.slice(0, plus), voice.slice(plus + 1)];
}

// The voice the picker names: null for the server's own.
function pickedVoice(container) {
  const name = container.querySelector("#setting-voice").value;
  const variant = container.querySelector("#setting-variant").value;
  if (!name) return variant ? { error: "voice: pick a voice for the variant" } : { voice: null };
  return { voice: variant ? `${name}+${variant}` : name };
}

// The ``session_update`` frame for the form's values, or {error} naming the first bad one
// in the server's words.
export function settingsFrame(container) {
  const { voice, error } = pickedVoice(container);
  if (error) return { error };
  const frame = { t: "session_update", voice };
  for (const setting of SETTINGS) {
    const raw = container.querySelector(`#setting-${setting.name}`).value.trim();
    if (setting.choices) {
      const at = setting.choices.map(String).indexOf(raw);
      if (at < 0) return { error: `${setting.name} must be one of ${setting.choices.join(", ")}` };
      frame[setting.name] = setting.choices[at];
    } else {
      const value = Number(raw);
      if (raw === "" || !Number.isInteger(value) || value < setting.min || value > setting.max) {
        return { error: `${setting.name} must be an integer from ${setting.min} to ${setting.max}` };
      }
      frame[setting.name] = value;
    }
  }
  return { frame };
}
