// Compare page: overlay chosen runs' meta-loss and meta-test accuracy, and a
// table of each run's final meta-test accuracy per dataset.
import { LEARNER_STYLE, PALETTE, draw, layout, plotText } from "./charts.js";
import {
  LEARNERS,
  api,
  el,
  formatPercent,
  parseTestKey,
  showError,
  statusBadge,
  testKey,
} from "./common.js";

const input = document.getElementById("compare-runs");
const accuracyNode = document.getElementById("compare-accuracy");

function chosenIds() {
  const text = new URLSearchParams(location.search).get("runs") || "";
  const ids = text.split(/[\s,]+/).filter((part) => /^\d+$/.test(part)).map(Number);
  return [...new Set(ids)];
}

async function loadRun(id) {
  const [run, metrics] = await Promise.all([
    api(`/api/runs/${id}`),
    api(`/api/runs/${id}/metrics?max_points=2000`),
  ]);
  return { run, metrics };
}

function label(run) {
  return `#${run.id} ${run.experiment_name} (seed ${run.seed})`;
}

function datasetsOf(entries) {
  const names = new Set();
  for (const { metrics } of entries) {
    for (const key of Object.keys(metrics)) {
      const test = parseTestKey(key);
      if (test?.stat === "mean_accuracy") names.add(test.dataset);
    }
  }
  return [...names].sort();
}

// The VSML mean accuracy at the run's latest meta-test (series are by step).
function finalAccuracy(metrics, dataset) {
  const series = metrics[testKey(dataset, "vsml")];
  if (!series?.values.length) return null;
  return { value: series.values.at(-1), step: series.steps.at(-1) };
}

function drawLoss(entries) {
  const traces = entries.map(({ run, metrics }, i) => ({
    type: "scatter", mode: "lines", name: plotText(label(run)),
    x: metrics.meta_loss?.steps || [], y: metrics.meta_loss?.values || [],
    line: { color: PALETTE[i % PALETTE.length], width: 1.5 },
  }));
  draw(document.getElementById("compare-loss"), traces,
    layout("meta-iteration", "meta-train loss", { hovermode: "closest" }));
}

// One chart per dataset: each run in its colour, VSML solid with its own
// SGD (dashed) and Adam (dotted) references, which depend on its meta-test
// settings; a legend click hides or shows a run's three lines together.
function runTraces(entry, index, dataset) {
  const color = PALETTE[index % PALETTE.length];
  return LEARNERS.filter((learner) => entry.metrics[testKey(dataset, learner)])
    .map((learner) => {
      const series = entry.metrics[testKey(dataset, learner)];
      const vsml = learner === "vsml";
      return {
        type: "scatter", mode: vsml ? "lines+markers" : "lines",
        name: plotText(vsml ? label(entry.run) : `${learner} #${entry.run.id}`),
        legendgroup: String(entry.run.id), showlegend: vsml,
        x: series.steps, y: series.values, opacity: vsml ? 1 : 0.6,
        line: { color, dash: LEARNER_STYLE[learner].dash, width: vsml ? 2 : 1 },
      };
    });
}

function drawAccuracy(entries, datasets) {
  const charts = datasets.map((dataset) => ({
    dataset,
    node: el("div", { className: "chart", dataset: { dataset } }),
    traces: entries.flatMap((entry, i) => runTraces(entry, i, dataset)),
  }));
  accuracyNode.replaceChildren(...charts.map(({ node, dataset }) =>
    el("div", {}, el("h3", {}, dataset), node)));
  for (const { node, traces } of charts) {
    draw(node, traces, layout("meta-iteration", "mean accuracy",
      { hovermode: "closest" }));
  }
}

function drawTable(entries, datasets) {
  document.getElementById("final-head").replaceChildren(
    ...["Run", "Experiment", "Seed", "Status", ...datasets].map((name) =>
      el("th", {}, name)));
  const best = datasets.map((dataset) => Math.max(...entries.map(({ metrics }) =>
    finalAccuracy(metrics, dataset)?.value ?? -Infinity)));
  const rows = entries.map(({ run, metrics }) => el("tr", { dataset: { runId: run.id } },
    el("td", {}, el("a", { href: `/runs/${run.id}` }, `#${run.id}`)),
    el("td", {}, run.experiment_name),
    el("td", {}, String(run.seed)),
    el("td", {}, statusBadge(run.status, run.cancel_requested)),
    ...datasets.map((dataset, j) => {
      const final = finalAccuracy(metrics, dataset);
      return el("td", {
        className: final && final.value === best[j] ? "num best" : "num",
        title: final ? `meta-iteration ${final.step}` : "no meta-test yet",
      }, formatPercent(final?.value));
    })));
  document.getElementById("final-body").replaceChildren(...rows);
}

async function loadPicker(ids) {
  const { items } = await api("/api/runs?limit=100");
  const boxes = items.map((run) => {
    const box = el("input", { type: "checkbox", value: String(run.id),
      checked: ids.includes(run.id) });
    box.addEventListener("change", () => {
      const picked = [...document.querySelectorAll("#run-picker input:checked")]
        .map((b) => b.value);
      input.value = picked.join(",");
    });
    return el("li", {}, el("label", {}, box, ` ${label(run)} `,
      statusBadge(run.status)));
  });
  document.getElementById("run-picker").replaceChildren(...boxes);
}

async function compare(ids) {
  const settled = await Promise.allSettled(ids.map(loadRun));
  const failed = settled.map((s, i) => [s, ids[i]]).filter(([s]) =>
    s.status === "rejected");
  showError(failed.map(([s, id]) => `run ${id}: ${s.reason.message}`).join("; "));
  const entries = settled.filter((s) => s.status === "fulfilled").map((s) => s.value);
  document.getElementById("compare-empty").hidden = entries.length > 0;
  if (!entries.length) return;
  const datasets = datasetsOf(entries);
  drawTable(entries, datasets);
  drawLoss(entries);
  drawAccuracy(entries, datasets);
}

async function main() {
  const ids = chosenIds();
  input.value = ids.join(",");
  document.getElementById("compare-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const ids = input.value.split(/[\s,]+/).filter((part) => /^\d+$/.test(part));
    location.assign(`/compare?runs=${ids.join(",")}`);
  });
  await Promise.all([loadPicker(ids), ids.length ? compare(ids) : null]);
}

main().catch((err) => showError(err.message));
