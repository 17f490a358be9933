// New experiment page: preset picker, YAML editor with line marks, create and
// launch.
import { api, el, parseLines, parseSeeds, showError } from "./common.js";

const textarea = document.getElementById("config");
const gutter = document.getElementById("gutter");
const backdrop = document.getElementById("backdrop");
const problemList = document.getElementById("problems");
const statusText = document.getElementById("form-status");
const nameInput = document.getElementById("name");
const presets = new Map();
let autoName = ""; // the name we filled in, replaced when the preset changes
let created = null; // {id, signature}: created but not yet launched

// --- Editor: line numbers in the gutter, faulty lines marked behind the text.

let marks = new Map(); // line -> [messages]

function lineCount() {
  return textarea.value.split("\n").length;
}

function renderGutter() {
  const rows = [];
  for (let line = 1; line <= lineCount(); line++) {
    const messages = marks.get(line);
    rows.push(el("div", {
      className: messages ? "line error" : "line",
      title: messages ? messages.join("\n") : undefined,
      dataset: { line },
    }, String(line)));
  }
  gutter.replaceChildren(...rows);
  syncScroll();
}

// Each mark is a band across its line with the message at the right end,
// drawn behind the (transparent) textarea so the text stays editable.
function renderBackdrop() {
  const lineHeight = parseFloat(getComputedStyle(textarea).lineHeight);
  const bands = [...marks].map(([line, messages]) => {
    const band = el("div", { className: "mark", dataset: { line } },
      el("span", { className: "mark-message" }, messages.join("; ")));
    band.style.top = `${(line - 1) * lineHeight}px`;
    band.style.height = `${lineHeight}px`;
    return band;
  });
  backdrop.replaceChildren(...bands);
}

function syncScroll() {
  gutter.scrollTop = textarea.scrollTop;
  backdrop.style.transform = `translateY(${-textarea.scrollTop}px)`;
}

function setMarks(problems) {
  marks = new Map();
  for (const problem of problems) {
    if (!problem.line) continue;
    const list = marks.get(problem.line) || [];
    list.push(problem.message);
    marks.set(problem.line, list);
  }
  renderGutter();
  renderBackdrop();
}

function scrollToLine(line) {
  const lineHeight = parseFloat(getComputedStyle(textarea).lineHeight);
  textarea.scrollTop = Math.max(0, (line - 3) * lineHeight);
  syncScroll();
}

function goToLine(line) {
  const lines = textarea.value.split("\n");
  const start = lines.slice(0, line - 1).reduce((n, text) => n + text.length + 1, 0);
  textarea.focus();
  textarea.setSelectionRange(start, start + (lines[line - 1] || "").length);
  scrollToLine(line);
}

// --- Problems: listed under the editor; those with a line also mark it.

function problemItem(problem, prefix) {
  let where = el("span", { className: "loc" }, problem.loc || prefix);
  if (problem.line) {
    where = el("a", { href: "#", className: "line-link" }, `line ${problem.line}`);
    where.addEventListener("click", (event) => {
      event.preventDefault();
      goToLine(problem.line);
    });
  }
  const hinted = !problem.suggestion || problem.message.includes(problem.suggestion);
  const hint = hinted
    ? null
    : el("span", { className: "muted" }, ` (did you mean ${problem.suggestion}?)`);
  return el("li", { dataset: { line: problem.line || "" } },
    where, ": ", problem.message, hint);
}

function showProblems(problems, prefix = "config") {
  setMarks(problems);
  if (marks.size) scrollToLine(Math.min(...marks.keys()));
  problemList.replaceChildren(...problems.map((p) => problemItem(p, prefix)));
  problemList.hidden = problems.length === 0;
}

function showFailure(err, prefix) {
  if (err.problems?.length) {
    showProblems(err.problems, prefix);
    statusText.textContent = `${prefix}: fix the problems listed below the editor`;
  } else {
    showProblems([]);
    statusText.textContent = `${prefix}: ${err.message}`;
  }
  statusText.className = "error";
}

// --- Presets.

async function loadPresets() {
  const picker = document.getElementById("preset");
  for (const preset of await api("/api/presets")) {
    presets.set(preset.name, preset);
    picker.append(el("option", { value: preset.name }, preset.name));
  }
  picker.addEventListener("change", () => choosePreset(picker.value));
  const wanted = new URLSearchParams(location.search).get("preset");
  if (wanted && presets.has(wanted)) {
    picker.value = wanted;
    choosePreset(wanted);
  }
}

function choosePreset(name) {
  const preset = presets.get(name);
  document.getElementById("preset-summary").textContent = preset?.summary || "";
  if (!preset) return;
  textarea.value = preset.yaml;
  textarea.scrollTop = 0;
  // Names are unique and presets are launched often: suggest a fresh one.
  if (!nameInput.value || nameInput.value === autoName) {
    const stamp = new Date().toISOString().slice(0, 19).replace(/[-:]/g, "")
      .replace("T", "-");
    autoName = `${name}-${stamp}`;
    nameInput.value = autoName;
  }
  showProblems([]);
}

// --- Create and launch.

function experimentBody() {
  return {
    name: nameInput.value.trim() || null,
    description: document.getElementById("description").value,
    tags: document.getElementById("tags").value.split(",").map((t) => t.trim())
      .filter(Boolean),
    config: textarea.value,
  };
}

async function create(body) {
  const signature = JSON.stringify(body);
  if (created?.signature === signature) return created.id;
  const experiment = await api("/api/experiments", { method: "POST", body });
  created = { id: experiment.id, signature };
  return experiment.id;
}

async function submit(launchToo) {
  statusText.className = "muted";
  statusText.textContent = "Saving…";
  let id;
  try {
    id = await create(experimentBody());
  } catch (err) {
    showFailure(err, "create");
    return;
  }
  showProblems([]);
  if (!launchToo) {
    location.assign(`/?experiment_id=${id}`);
    return;
  }
  try {
    const runs = await api(`/api/experiments/${id}/runs`, {
      method: "POST",
      body: {
        seeds: parseSeeds(document.getElementById("seeds").value),
        overrides: parseLines(document.getElementById("overrides").value),
      },
    });
    location.assign(runs.length === 1 ? `/runs/${runs[0].id}`
      : `/?experiment_id=${id}`);
  } catch (err) {
    showFailure(err, "experiment created, but launch failed");
  }
}

function main() {
  textarea.addEventListener("input", () => {
    if (marks.size) setMarks([]); // the marked lines may have moved
    else renderGutter();
  });
  textarea.addEventListener("scroll", syncScroll);
  document.getElementById("experiment-form").addEventListener("submit", (event) => {
    event.preventDefault();
    submit(false);
  });
  document.getElementById("create-launch").addEventListener("click", () =>
    submit(true));
  renderGutter();
  loadPresets().catch((err) => showError(err.message));
}

main();
