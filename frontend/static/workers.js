// Workers: the runs page's panel of who is online, and the run page's hint
// when no online worker serves a queued run's queue.
//
// Worker names, hosts, devices and queues come from the workers themselves:
// they reach the page as text only, like every other user text.
import { api, el, formatAgo, formatTime } from "./common.js";

export const WORKER_REFRESH_MS = 5000;
const MAX_OFFLINE_LISTED = 8;
const START_HINT = "vsml-lab worker";

export function listWorkers({ onlineOnly = false } = {}) {
  return api(onlineOnly ? "/api/workers?online=true" : "/api/workers");
}

// Poll `load` every WORKER_REFRESH_MS while the tab is visible; `load` gets
// the workers, `fail` the error of a failed poll.
export function pollWorkers(load, fail, options = {}) {
  const tick = async () => {
    if (!document.hidden) {
      try {
        load(await listWorkers(options));
      } catch (err) {
        fail(err);
      }
    }
    setTimeout(tick, WORKER_REFRESH_MS);
  };
  tick();
}

// --- Runs page: the Workers panel.

function lines(items) {
  return (items || []).map((item) => el("div", {}, item));
}

function lastBeat(worker) {
  return el("span", { title: formatTime(worker.heartbeat_at) },
    formatAgo(worker.heartbeat_at));
}

function workerRow(worker) {
  const training = worker.run_id === null
    ? el("span", { className: "muted" }, "idle")
    : el("a", { href: `/runs/${worker.run_id}` }, `#${worker.run_id}`);
  return el("tr", { className: "worker" },
    el("td", { className: "worker-name" }, worker.name),
    el("td", {}, worker.hostname),
    el("td", { className: "devices" }, ...lines(worker.devices)),
    el("td", {}, ...lines(worker.queues)),
    el("td", { className: "training" }, training),
    el("td", {}, lastBeat(worker)),
  );
}

// "Offline: a (last beat 3 h ago), b (stopped 2 min ago) and 4 more."
function offlineLine(offline) {
  const listed = offline.slice(0, MAX_OFFLINE_LISTED).flatMap((worker, i) => [
    i ? ", " : "",
    el("span", { className: "worker-name" }, worker.name),
    ` (${worker.stopped ? "stopped" : "last beat"} ${formatAgo(worker.heartbeat_at)})`,
  ]);
  const rest = offline.length - MAX_OFFLINE_LISTED;
  return ["Offline: ", ...listed, rest > 0 ? ` and ${rest} more.` : "."];
}

function renderPanel(workers) {
  const online = workers.filter((worker) => worker.online);
  const offline = workers.filter((worker) => !worker.online);
  document.getElementById("workers-body").replaceChildren(...online.map(workerRow));
  document.getElementById("workers-table").hidden = online.length === 0;
  document.getElementById("workers-none").hidden = online.length > 0;
  const line = document.getElementById("workers-offline");
  line.replaceChildren(...(offline.length ? offlineLine(offline) : []));
  line.hidden = offline.length === 0;
  document.getElementById("workers-error").hidden = true;
}

export function watchWorkersPanel() {
  pollWorkers(renderPanel, (err) => {
    const note = document.getElementById("workers-error");
    note.textContent = `Could not list the workers: ${err.message}`;
    note.hidden = false;
  });
}

// --- Run page: why a queued run is still waiting.

// "" when an online worker serves `queue` (any online worker, for a run
// queued before runs recorded their queue).
export function placementHint(queue, online) {
  if (!online.length) {
    return `No worker is online: this run waits until one starts (${START_HINT}).`;
  }
  if (!queue || online.some((worker) => worker.queues.includes(queue))) return "";
  return `No online worker serves queue ${queue}: this run waits until one ` +
    "that does starts.";
}
