// The session settings the page offers, checked as the server checks them
// (livetx/live/settings.py, docs/protocol-extensions.md). To offer a new
// setting, add one row here: a choice lists its values, an integer its range.

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
];

// Fields for every setting, inside ``container``.
export function renderSettings(container) {
  container.replaceChildren();
  for (const setting of SETTINGS) {
    const label = document.createElement("label");
    label.textContent = setting.label + " ";
    let input;
    if (setting.choices) {
      input = document.createElement("select");
      for (const value of setting.choices) input.add(new Option(value, value));
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
}

// The ``session_update`` frame for the form's values, or {error} naming the first bad one
// in the server's words.
export function settingsFrame(container) {
  const frame = { t: "session_update" };
  for (const setting of SETTINGS) {
    const raw = container.querySelector(`#setting-${setting.name}`).value.trim();
    if (setting.choices) {
      if (!setting.choices.includes(raw)) return { error: `${setting.name} must be one of ${setting.choices.join(", ")}` };
      frame[setting.name] = raw;
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
