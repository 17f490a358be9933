// Run page: a snapshot of everything, then live events from its cursor.
//
// The snapshot's series are downsampled on the server, so a run with 100,000
// points per curve loads as a few thousand; live points are appended with
// Plotly.extendTraces once per animation frame, never by redrawing.
/* global Plotly */
import { CONFIG, draw, layout, learnerTrace } from "./charts.js";
import {
  ACTIVE,
  LEARNERS,
  accuracyText,
  api,
  el,
  everyFrame,
  formatDuration,
  formatNumber,
  formatPercent,
  formatTime,
  parseTestKey,
  showError,
  statusBadge,
  watchStream,
} from "./common.js";
import { WORKER_REFRESH_MS, listWorkers, placementHint } from "./workers.js";

const page = document.getElementById("run-page");
const runId = Number(page.dataset.runId);
const MAX_LOG_LINES = 5000; // older lines leave the page (all stay in the API)
const CHECKPOINT_REFRESH_MS = 5000;
const STREAM_GRACE_MS = 10000; // a finished run's last writes may trail it

const lossNode = document.getElementById("loss-chart");
const logNode = document.getElementById("run-logs");
const metaTestNode = document.getElementById("meta-test");

const state = {
  run: null,
  loss: { pending: { x: [], y: [] }, drawn: false, chain: null, count: 0 },
  accuracy: new Map(), // dataset -> learner -> {x, y}
  curves: { metaStep: null, rows: [] },
  panels: new Map(), // dataset -> {accuracyNode, curveNode}
  source: null,
};

// --- Meta-train loss: drawn once, then extended.

function lossLayout() {
  return layout("meta-iteration", "meta-train loss", { hovermode: "closest" });
}

function addLossPoints(steps, values) {
  state.loss.pending.x.push(...steps);
  state.loss.pending.y.push(...values);
  flushLoss();
}

const flushLoss = everyFrame(() => {
  const { loss } = state;
  if (!loss.pending.x.length) return;
  const { x, y } = loss.pending;
  loss.pending = { x: [], y: [] };
  // Plotly calls return promises: chain them so an extension never races the
  // first draw.
  if (!loss.drawn) {
    loss.drawn = true;
    document.getElementById("loss-empty").hidden = true;
    loss.chain = Plotly.newPlot(lossNode, [{ type: "scatter", mode: "lines",
      name: "meta_loss", x, y, line: { color: "#1f77b4", width: 1.5 } }],
    lossLayout(), CONFIG);
  } else {
    loss.chain = loss.chain.then(() =>
      Plotly.extendTraces(lossNode, { x: [x], y: [y] }, [0]));
  }
  loss.count += x.length;
  loss.chain.then(() => { lossNode.dataset.points = String(loss.count); });
});

// --- Meta-test: per dataset, accuracy against meta-iteration and the latest
// learning curves, VSML drawn over its SGD and Adam references.

function panelFor(dataset) {
  if (state.panels.has(dataset)) return state.panels.get(dataset);
  const accuracyNode = el("div", { className: "chart accuracy-chart" });
  const curveNode = el("div", { className: "chart curve-chart" });
  const curveCaption = el("h4", { className: "caption" }, "learning curves");
  const panel = el("div", { className: "dataset-panel", dataset: { dataset } },
    el("h3", {}, dataset),
    el("div", { className: "columns" },
      el("div", {}, el("h4", { className: "caption" },
        "mean accuracy at each meta-test"), accuracyNode),
      el("div", {}, curveCaption, curveNode)));
  const after = [...metaTestNode.children]
    .find((node) => node.dataset.dataset > dataset);
  metaTestNode.insertBefore(panel, after || null);
  document.getElementById("meta-test-empty").hidden = true;
  const nodes = { accuracyNode, curveNode, curveCaption };
  state.panels.set(dataset, nodes);
  return nodes;
}

function addAccuracyPoint(dataset, learner, step, value) {
  if (!state.accuracy.has(dataset)) state.accuracy.set(dataset, new Map());
  const byLearner = state.accuracy.get(dataset);
  if (!byLearner.has(learner)) byLearner.set(learner, { x: [], y: [] });
  const series = byLearner.get(learner);
  series.x.push(step);
  series.y.push(value);
  dirtyAccuracy.add(dataset);
  redrawMetaTest();
}

const dirtyAccuracy = new Set();
let dirtyCurves = false;

function drawAccuracy(dataset) {
  const byLearner = state.accuracy.get(dataset);
  const traces = orderedLearners(byLearner).map((learner) => {
    // Copies: Plotly.react only notices new arrays, not pushes into old ones.
    const { x, y } = byLearner.get(learner);
    return learnerTrace(learner, [...x], [...y], { mode: "lines+markers" });
  });
  draw(panelFor(dataset).accuracyNode, traces, layout("meta-iteration",
    "mean accuracy", { yaxis: { title: { text: "mean accuracy" },
      rangemode: "tozero" } }));
}

function orderedLearners(byLearner) {
  const known = LEARNERS.filter((l) => byLearner.has(l));
  return [...known, ...[...byLearner.keys()].filter((l) => !known.includes(l))];
}

// [meta_step, dataset, learner, inner_step, accuracy, loss] rows; a newer
// meta-step replaces the curves shown.
function addCurveRows(rows) {
  for (const row of rows) {
    const metaStep = row[0];
    if (state.curves.metaStep === null || metaStep > state.curves.metaStep) {
      state.curves = { metaStep, rows: [] };
    }
    if (metaStep === state.curves.metaStep) state.curves.rows.push(row);
  }
  dirtyCurves = true;
  redrawMetaTest();
}

function drawCurves() {
  const grouped = new Map(); // dataset -> learner -> rows
  for (const row of state.curves.rows) {
    const [, dataset, learner] = row;
    if (!grouped.has(dataset)) grouped.set(dataset, new Map());
    const byLearner = grouped.get(dataset);
    if (!byLearner.has(learner)) byLearner.set(learner, []);
    byLearner.get(learner).push(row);
  }
  const span = Number(document.getElementById("smoothing").value);
  for (const [dataset, byLearner] of grouped) {
    const traces = orderedLearners(byLearner).map((learner) => {
      const rows = byLearner.get(learner).sort((a, b) => a[3] - b[3]);
      const accuracy = runningMean(rows.map((r) => r[4]), span);
      return learnerTrace(learner, rows.map((r) => r[3]), accuracy);
    });
    const panel = panelFor(dataset);
    panel.curveCaption.textContent =
      `learning curves at meta-iteration ${state.curves.metaStep}`;
    draw(panel.curveNode, traces, layout("inner step", "accuracy"));
  }
}

// Per-step accuracy is a mean over a few episodes, so raw curves are noisy;
// a trailing mean over `span` steps shows the trend.
function runningMean(values, span) {
  if (span <= 1) return values;
  return values.map((_, i) => {
    const recent = values.slice(Math.max(0, i - span + 1), i + 1)
      .filter((v) => v !== null);
    return recent.length ? recent.reduce((a, b) => a + b, 0) / recent.length : null;
  });
}

const redrawMetaTest = everyFrame(() => {
  for (const dataset of dirtyAccuracy) drawAccuracy(dataset);
  dirtyAccuracy.clear();
  if (dirtyCurves) drawCurves();
  dirtyCurves = false;
});

// --- Metrics from the snapshot and the stream.

function addSeries(key, steps, values) {
  if (key === "meta_loss") {
    addLossPoints(steps, values);
    return;
  }
  const test = parseTestKey(key);
  if (!test) return;
  steps.forEach((step, i) => addTableValue(test, step, values[i]));
  if (test.stat !== "mean_accuracy") return;
  steps.forEach((step, i) => addAccuracyPoint(test.dataset, test.learner, step,
    values[i]));
}

// --- The meta-test table: mean accuracy before meta-training and at the
// latest meta-test, and the latest last-100-step accuracy, as the CLI prints.

const table = new Map(); // "dataset\tlearner" -> stat -> Map(step -> value)

function addTableValue({ dataset, learner, stat }, step, value) {
  const name = `${dataset}\t${learner}`;
  if (!table.has(name)) table.set(name, new Map());
  const byStat = table.get(name);
  if (!byStat.has(stat)) byStat.set(stat, new Map());
  byStat.get(stat).set(step, value);
  redrawTable();
}

function firstAndLast(byStep) {
  const steps = [...byStep.keys()].sort((a, b) => a - b);
  return [steps[0], steps[steps.length - 1]];
}

const redrawTable = everyFrame(() => {
  const body = document.querySelector("#meta-test-table tbody");
  const rows = [];
  let first = null;
  let last = null;
  const names = [...table.keys()].sort((a, b) => {
    const [da, la] = a.split("\t");
    const [db, lb] = b.split("\t");
    return da.localeCompare(db) || LEARNERS.indexOf(la) - LEARNERS.indexOf(lb);
  });
  for (const name of names) {
    const [dataset, learner] = name.split("\t");
    const means = table.get(name).get("mean_accuracy");
    if (!means) continue;
    [first, last] = firstAndLast(means);
    const last100 = table.get(name).get("last100_accuracy")?.get(last);
    rows.push(el("tr", {}, el("td", {}, dataset), el("td", {}, learner),
      el("td", {}, formatPercent(means.get(first))),
      el("td", {}, formatPercent(means.get(last))),
      el("td", {}, formatPercent(last100))));
  }
  body.replaceChildren(...rows);
  document.getElementById("meta-test-table").hidden = rows.length === 0;
  if (last !== null) {
    // One meta-test so far: one mean column, not the same one twice.
    const firstHead = document.getElementById("first-step-head");
    firstHead.hidden = first === last;
    for (const row of rows) row.children[2].hidden = first === last;
    firstHead.textContent = `Mean, iteration ${first}`;
    document.getElementById("last-step-head").textContent =
      `Mean, iteration ${last}`;
  }
});

function addPoints(points) {
  const byKey = new Map();
  for (const [key, step, value] of points) {
    if (!byKey.has(key)) byKey.set(key, { steps: [], values: [] });
    byKey.get(key).steps.push(step);
    byKey.get(key).values.push(value);
  }
  for (const [key, { steps, values }] of byKey) addSeries(key, steps, values);
}

// --- Run status, info, error.

function infoRows(run) {
  const limit = run.time_limit_s ? ` of ${formatDuration(run.time_limit_s)}` : "";
  return [
    ["Experiment", el("a", { href: `/?experiment_id=${run.experiment_id}` },
      run.experiment_name)],
    ["Seed", String(run.seed)],
    ["Status", statusBadge(run.status, run.cancel_requested)],
    ["Iteration", `${run.iteration} / ${run.total_iterations}`],
    ["Elapsed", formatDuration(run.elapsed_s) + limit],
    ["Meta-train loss", formatNumber(run.latest_loss)],
    ["Best meta-test accuracy", accuracyText(run.best_accuracy) || "–"],
    ["Queued", formatTime(run.queued_at)],
    ["Started", formatTime(run.started_at)],
    ["Finished", formatTime(run.finished_at)],
    ["Worker", run.worker || "–"],
    ["Queue", run.queue || "–"],
    ["Devices", deviceLines(run.devices)],
    ["Attempts", String(run.attempts)],
    ["Overrides", run.overrides.length ? run.overrides.join("\n") : "none"],
    ["Version", run.version],
    ["Tags", run.tags.join(", ") || "none"],
  ];
}

// One line per training process: "rank 0: host-a cuda:0".
function deviceLines(devices) {
  if (!devices.length) return "–";
  return devices.map((device, rank) => `rank ${rank}: ${device}`).join("\n");
}

function renderRun(run) {
  state.run = run;
  document.getElementById("run-title").textContent =
    `${run.experiment_name} · seed ${run.seed}`;
  document.getElementById("run-status").replaceChildren(
    statusBadge(run.status, run.cancel_requested));
  const percent = Math.round(100 * (run.progress || 0));
  document.getElementById("run-progress").style.width = `${percent}%`;
  document.getElementById("run-progress-text").textContent =
    `${percent}% · iteration ${run.iteration}`;
  document.getElementById("cancel-run").hidden =
    !ACTIVE.has(run.status) || run.cancel_requested;
  document.getElementById("run-info").replaceChildren(
    ...infoRows(run).flatMap(([name, value]) => [el("dt", {}, name),
      el("dd", {}, value)]));
  page.dataset.status = run.status;
  renderError(run);
  watchPlacement(run);
}

// --- While queued: say so when no online worker serves the run's queue.

const placement = { timer: null };

function watchPlacement(run) {
  if (run.status !== "queued") {
    clearTimeout(placement.timer);
    placement.timer = null;
    document.getElementById("run-hint").hidden = true;
  } else if (placement.timer === null) {
    placement.timer = setTimeout(checkPlacement, 0);
  }
}

async function checkPlacement() {
  const hint = document.getElementById("run-hint");
  try {
    const online = await listWorkers({ onlineOnly: true });
    hint.textContent = placementHint(state.run.queue, online);
  } catch (err) {
    hint.textContent = `Could not list the workers: ${err.message}`;
  }
  // The run may have started meanwhile: then the stream already hid the hint.
  const queued = state.run.status === "queued";
  hint.hidden = !queued || !hint.textContent;
  placement.timer = queued ? setTimeout(checkPlacement, WORKER_REFRESH_MS) : null;
}

function renderError(run) {
  const box = document.getElementById("run-error");
  box.hidden = !run.error && !run.traceback;
  document.getElementById("run-error-text").textContent = run.error || "";
  document.getElementById("run-traceback").textContent = run.traceback || "";
}

async function cancelRun() {
  const button = document.getElementById("cancel-run");
  button.disabled = true;
  try {
    renderRun(await api(`/api/runs/${runId}/cancel`, { method: "POST" }));
  } catch (err) {
    showError(`cancel failed: ${err.message}`);
  } finally {
    button.disabled = false;
  }
}

// --- Logs, config, checkpoints.

function addLogLines(lines) {
  const atBottom =
    logNode.scrollHeight - logNode.scrollTop - logNode.clientHeight < 24;
  const rows = lines.map(([seq, time, text]) =>
    el("div", { className: "log-line", dataset: { seq },
      title: new Date(time * 1000).toLocaleString() }, text));
  logNode.append(...rows);
  const excess = logNode.childElementCount - MAX_LOG_LINES;
  for (let i = 0; i < excess; i++) logNode.firstElementChild.remove();
  if (atBottom) logNode.scrollTop = logNode.scrollHeight;
}

async function loadConfig() {
  const text = await api(`/api/runs/${runId}/config`, { text: true });
  document.getElementById("run-config").textContent = text;
}

async function loadCheckpoints() {
  const checkpoints = await api(`/api/runs/${runId}/checkpoints`);
  document.getElementById("checkpoints").replaceChildren(...checkpoints.map((c) =>
    el("li", {}, el("a", { href: c.download_url, download: "" },
      `iteration ${c.iteration}`),
    el("span", { className: "muted" }, ` · ${(c.size_bytes / 1024).toFixed(1)} KiB`,
      ` · ${formatTime(c.created_at)}`))));
  document.getElementById("checkpoints-empty").hidden = checkpoints.length > 0;
}

let lastCheckpointLoad = 0;
let checkpointTimer = null;

// Checkpoints have no event of their own: look again as the run progresses,
// at most every few seconds, and once more when it ends.
function refreshCheckpoints(force = false) {
  if (checkpointTimer) return;
  const wait = force ? 0 : Math.max(0, lastCheckpointLoad + CHECKPOINT_REFRESH_MS
    - Date.now());
  checkpointTimer = setTimeout(() => {
    checkpointTimer = null;
    lastCheckpointLoad = Date.now();
    loadCheckpoints().catch((err) => showError(err.message));
  }, wait);
}

// --- Snapshot, then the stream from its cursor.

function applySnapshot(snapshot) {
  renderRun(snapshot.run);
  for (const [key, { steps, values }] of Object.entries(snapshot.metrics)) {
    addSeries(key, steps, values);
  }
  addCurveRows(snapshot.curves.rows);
  addLogLines(snapshot.logs);
}

function subscribe(cursor) {
  const source = new EventSource(`/api/runs/${runId}/stream?cursor=${cursor}`);
  state.source = source;
  watchStream(source);
  const on = (name, handle) => source.addEventListener(name, (event) =>
    handle(JSON.parse(event.data)));
  on("metrics", (data) => addPoints(data.points));
  on("curves", (data) => addCurveRows(data.rows));
  on("logs", (data) => addLogLines(data.lines));
  on("run", (run) => {
    renderRun(run);
    refreshCheckpoints(!ACTIVE.has(run.status));
    if (!ACTIVE.has(run.status)) setTimeout(() => closeStream(), STREAM_GRACE_MS);
  });
}

function closeStream() {
  state.source?.close();
  state.source = null;
  document.getElementById("live-indicator").hidden = true;
}

async function main() {
  document.getElementById("cancel-run").addEventListener("click", cancelRun);
  document.getElementById("smoothing").addEventListener("change", () => {
    dirtyCurves = true;
    redrawMetaTest();
  });
  const snapshot = await api(page.dataset.snapshotUrl);
  applySnapshot(snapshot);
  if (ACTIVE.has(snapshot.run.status)) subscribe(snapshot.cursor);
  await Promise.all([loadConfig(), loadCheckpoints()]);
}

main().catch((err) => showError(err.message));
