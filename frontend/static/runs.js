// Runs page: the runs table (filtered, live), the workers (polled) and the
// experiments to launch.
import {
  accuracyText,
  api,
  el,
  formatNumber,
  parseLines,
  parseSeeds,
  progressBar,
  showError,
  statusBadge,
  tagList,
  watchStream,
} from "./common.js";
import { watchWorkersPanel } from "./workers.js";

const PAGE_SIZE = 100;
const body = document.getElementById("runs-body");
const form = document.getElementById("run-filters");
const compareButton = document.getElementById("compare-selected");
const selected = new Set();

function currentFilters() {
  const data = new FormData(form);
  return {
    status: data.get("status") || "",
    experiment_id: data.get("experiment_id") || "",
    tag: (data.get("tag") || "").trim(),
  };
}

function matches(run, filters) {
  return (
    (!filters.status || run.status === filters.status) &&
    (!filters.experiment_id || String(run.experiment_id) === filters.experiment_id) &&
    (!filters.tag || run.tags.includes(filters.tag))
  );
}

function runRow(run) {
  const pick = el("input", { type: "checkbox", checked: selected.has(run.id),
    title: "select for comparison" });
  pick.addEventListener("change", () => {
    if (pick.checked) selected.add(run.id);
    else selected.delete(run.id);
    compareButton.disabled = selected.size === 0;
  });
  const iteration = `${run.iteration} / ${run.total_iterations}`;
  return el("tr", { dataset: { runId: run.id, status: run.status } },
    el("td", {}, pick),
    el("td", {}, el("a", { href: `/runs/${run.id}` }, `#${run.id}`)),
    el("td", {}, run.experiment_name),
    el("td", {}, String(run.seed)),
    el("td", {}, statusBadge(run.status, run.cancel_requested)),
    el("td", { className: "progress-cell", title: `iteration ${iteration}` },
      progressBar(run.progress)),
    el("td", { className: "num" }, formatNumber(run.latest_loss)),
    el("td", {}, accuracyText(run.best_accuracy)),
    el("td", {}, tagList(run.tags)),
  );
}

// Keep the table sorted newest first, as the API lists it.
function upsertRun(run) {
  const old = body.querySelector(`tr[data-run-id="${run.id}"]`);
  if (run.deleted || !matches(run, currentFilters())) {
    old?.remove();
  } else if (old) {
    old.replaceWith(runRow(run));
  } else {
    const after = [...body.rows].find((row) => Number(row.dataset.runId) < run.id);
    body.insertBefore(runRow(run), after || null);
  }
  document.getElementById("runs-empty").hidden = body.rows.length > 0;
}

async function loadRuns() {
  const filters = currentFilters();
  const query = new URLSearchParams({ limit: PAGE_SIZE });
  for (const [name, value] of Object.entries(filters)) {
    if (value) query.set(name, value);
  }
  const page = await api(`/api/runs?${query}`);
  body.replaceChildren(...page.items.map(runRow));
  document.getElementById("runs-empty").hidden = page.items.length > 0;
  const more = document.getElementById("runs-more");
  more.hidden = page.total <= page.items.length;
  more.textContent = `Showing the newest ${page.items.length} of ${page.total} runs.`;
}

function countsText(counts) {
  const parts = Object.entries(counts || {}).map(([s, n]) => `${n} ${s}`);
  return parts.length ? parts.join(" · ") : "none";
}

function launchCell(experiment) {
  const seeds = el("input", { value: "0", size: 8, title: "seeds, e.g. 0,1,2",
    className: "seeds", "aria-label": `seeds for ${experiment.name}` });
  const overrides = el("textarea", { rows: 2, cols: 28, spellcheck: false,
    className: "overrides", placeholder: "training.num_iterations=500" });
  const button = el("button", { type: "button", className: "primary launch" },
    "Launch");
  const note = el("span", { className: "muted note", role: "status" });
  button.addEventListener("click", () =>
    launch(experiment, seeds.value, overrides.value, note));
  return el("td", { className: "launch-cell" },
    el("div", { className: "row" }, el("span", {}, "Seeds"), seeds, button),
    el("details", {}, el("summary", {}, "Overrides"), overrides), note);
}

async function launch(experiment, seedText, overrideText, note) {
  note.replaceChildren();
  try {
    const runs = await api(`/api/experiments/${experiment.id}/runs`, {
      method: "POST",
      body: { seeds: parseSeeds(seedText), overrides: parseLines(overrideText) },
    });
    note.append("Launched ", ...runs.flatMap((run, i) => [
      i ? ", " : "", el("a", { href: `/runs/${run.id}` }, `#${run.id}`)]));
    runs.forEach(upsertRun);
  } catch (err) {
    note.textContent = err.message;
    note.className = "error note";
  }
}

// The name shows this experiment's runs; Delete asks first (the API refuses
// while runs are active and says so).
function nameCell(experiment) {
  const show = el("a", { href: `/?experiment_id=${experiment.id}`,
    title: "show its runs" }, el("strong", {}, experiment.name));
  const remove = el("button", { type: "button", className: "link delete",
    title: "delete the experiment and its finished runs" }, "Delete");
  const note = el("span", { className: "error note", role: "status" });
  remove.addEventListener("click", () => deleteExperiment(experiment, note));
  return el("td", {}, show, el("div", {}, remove, note));
}

async function deleteExperiment(experiment, note) {
  const runs = Object.values(experiment.run_counts || {}).reduce((a, b) => a + b, 0);
  const question = `Delete experiment "${experiment.name}"` +
    (runs ? ` and its ${runs} run(s), with their checkpoints?` : "?");
  if (!window.confirm(question)) return;
  note.textContent = "";
  try {
    await api(`/api/experiments/${experiment.id}`, { method: "DELETE" });
    await loadExperiments();
    await loadRuns();
  } catch (err) {
    note.textContent = err.message;
  }
}

function experimentRow(experiment) {
  return el("tr", { dataset: { experimentId: experiment.id } },
    nameCell(experiment),
    el("td", { className: "description" }, experiment.description),
    el("td", {}, tagList(experiment.tags)),
    el("td", { className: "counts" }, countsText(experiment.run_counts)),
    launchCell(experiment),
  );
}

async function loadExperiments() {
  const { items } = await api("/api/experiments?limit=500");
  const select = document.getElementById("filter-experiment");
  const chosen = select.value || new URLSearchParams(location.search)
    .get("experiment_id") || "";
  select.replaceChildren(el("option", { value: "" }, "any"),
    ...items.map((e) => el("option", { value: String(e.id) }, e.name)));
  select.value = chosen;
  document.getElementById("experiments-body").replaceChildren(
    ...items.map(experimentRow));
  document.getElementById("experiments-empty").hidden = items.length > 0;
}

// Run counts change with every status event; refresh them (only them, so a
// half-typed launch form survives) at most every two seconds.
let countsTimer = null;
function refreshCountsSoon() {
  if (countsTimer) return;
  countsTimer = setTimeout(async () => {
    countsTimer = null;
    const { items } = await api("/api/experiments?limit=500");
    for (const experiment of items) {
      const row = document.querySelector(
        `tr[data-experiment-id="${experiment.id}"] td.counts`);
      if (row) row.textContent = countsText(experiment.run_counts);
    }
  }, 2000);
}

function readFiltersFromUrl() {
  const query = new URLSearchParams(location.search);
  document.getElementById("filter-status").value = query.get("status") || "";
  document.getElementById("filter-tag").value = query.get("tag") || "";
}

function writeFiltersToUrl() {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(currentFilters())) {
    if (value) query.set(name, value);
  }
  const search = query.toString();
  history.replaceState(null, "", search ? `/?${search}` : "/");
}

// Open the stream before listing, and hold its events until the list is in:
// nothing that changes in between is lost, and nothing old overwrites it.
function subscribe() {
  const source = new EventSource("/api/stream/runs");
  watchStream(source);
  const held = [];
  const lastStatus = new Map();
  let ready = false;
  source.addEventListener("run", (event) => {
    const run = JSON.parse(event.data);
    if (ready) upsertRun(run);
    else held.push(run);
    if (lastStatus.get(run.id) !== run.status) refreshCountsSoon();
    lastStatus.set(run.id, run.status);
  });
  return () => {
    ready = true;
    held.splice(0).forEach(upsertRun);
  };
}

async function main() {
  readFiltersFromUrl();
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    writeFiltersToUrl();
    loadRuns().catch((err) => showError(err.message));
  });
  compareButton.addEventListener("click", () => {
    const ids = [...selected].sort((a, b) => a - b).join(",");
    location.assign(`/compare?runs=${ids}`);
  });
  watchWorkersPanel();
  const release = subscribe();
  await loadExperiments();
  await loadRuns();
  release();
}

main().catch((err) => showError(err.message));
