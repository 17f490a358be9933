// Helpers every page shares: the JSON API, building DOM safely, formatting.
//
// User text (names, tags, YAML, logs, errors) only ever reaches the page as
// text nodes or textContent; nothing here parses HTML.

export const ACTIVE = new Set(["queued", "running"]);
export const LEARNERS = ["vsml", "sgd", "adam"];

export class ApiError extends Error {
  constructor(status, body) {
    super(describeError(status, body));
    this.status = status;
    this.body = body;
    this.problems = Array.isArray(body?.problems) ? body.problems : [];
  }
}

// FastAPI answers {"detail": str} or {"detail": [{loc, msg}]} for bad input.
function describeError(status, body) {
  const detail = body?.detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
  }
  return `request failed with status ${status}`;
}

// On 401 the page goes to /login, except for the login call itself.
export async function api(
  path,
  { method = "GET", body, text = false, login = true } = {},
) {
  const init = { method, headers: {}, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 401 && login) goToLogin();
  if (!response.ok) {
    const parsed = await response.json().catch(() => null);
    throw new ApiError(response.status, parsed);
  }
  if (response.status === 204) return null;
  return text ? response.text() : response.json();
}

export function goToLogin() {
  const next = location.pathname + location.search;
  location.assign(`/login?next=${encodeURIComponent(next)}`);
}

// el("a", {href: "/runs/1", className: "x"}, "text", child) -> element.
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null) continue;
    if (name === "dataset") Object.assign(node.dataset, value);
    else if (name in node) node[name] = value;
    else node.setAttribute(name, value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

export function showError(message) {
  const banner = document.getElementById("page-error");
  banner.textContent = message;
  banner.hidden = !message;
}

export function setLive(state) {
  const badge = document.getElementById("live-indicator");
  const labels = { live: "live", reconnecting: "reconnecting…", off: "" };
  badge.textContent = labels[state] ?? "";
  badge.className = `live state-${state}`;
  badge.hidden = state === "off";
}

// EventSource retries by itself (resuming from Last-Event-ID); the indicator
// tells the user whether the page is current.
export function watchStream(source) {
  // Close on leaving: a page kept in the back-forward cache would otherwise
  // hold its stream (and the server's shutdown) open.
  addEventListener("pagehide", () => source.close());
  addEventListener("pageshow", (event) => {
    if (event.persisted) location.reload(); // back from that cache: catch up
  });
  source.addEventListener("open", () => setLive("live"));
  source.addEventListener("error", () =>
    setLive(source.readyState === EventSource.CLOSED ? "off" : "reconnecting"),
  );
}

export function statusBadge(status, cancelRequested = false) {
  const label = cancelRequested && ACTIVE.has(status) ? "cancelling" : status;
  return el("span", { className: `status ${label}` }, label);
}

export function progressBar(fraction) {
  const percent = Math.round(100 * Math.max(0, Math.min(1, fraction || 0)));
  const bar = el("div", { className: "progress" }, el("div"));
  bar.firstChild.style.width = `${percent}%`;
  return el("span", { className: "progress-label" }, bar,
    el("span", { className: "muted" }, `${percent}%`));
}

export function formatNumber(value, digits = 4) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  const magnitude = Math.abs(value);
  if (magnitude !== 0 && (magnitude >= 1e5 || magnitude < 1e-3)) {
    return value.toExponential(2);
  }
  return Number(value.toPrecision(digits)).toString();
}

export function formatPercent(value) {
  return value === null || value === undefined ? "–" : `${(100 * value).toFixed(1)}%`;
}

export function formatTime(iso) {
  return iso ? new Date(iso).toLocaleString() : "–";
}

// "just now", "12 s ago", "3 min ago", "5 h ago", "2 d ago", by this
// browser's clock (a stamp slightly ahead of it reads "just now").
export function formatAgo(iso) {
  if (!iso) return "–";
  const s = Math.round((Date.now() - new Date(iso).getTime()) / 1000);
  if (s < 2) return "just now";
  if (s < 90) return `${s} s ago`;
  if (s < 90 * 60) return `${Math.round(s / 60)} min ago`;
  if (s < 36 * 3600) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

export function formatDuration(seconds) {
  if (!seconds && seconds !== 0) return "–";
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return h ? `${h}h ${m}m` : m ? `${m}m ${s % 60}s` : `${s}s`;
}

// {mnist: 0.91, digits: 0.5} -> "digits 50.0% · mnist 91.0%"
export function accuracyText(best) {
  return Object.keys(best || {})
    .sort()
    .map((dataset) => `${dataset} ${formatPercent(best[dataset])}`)
    .join(" · ");
}

export function tagList(tags) {
  return el("span", { className: "tags" },
    ...(tags || []).map((tag) => el("span", { className: "tag" }, tag)));
}

// "test/<dataset>/<learner>/<stat>" -> {dataset, learner, stat}; the dataset
// name may itself contain slashes, so it is whatever lies between.
export function parseTestKey(key) {
  if (!key.startsWith("test/")) return null;
  const parts = key.split("/");
  if (parts.length < 4) return null;
  return {
    dataset: parts.slice(1, -2).join("/"),
    learner: parts[parts.length - 2],
    stat: parts[parts.length - 1],
  };
}

export function testKey(dataset, learner, stat = "mean_accuracy") {
  return `test/${dataset}/${learner}/${stat}`;
}

// "0, 1,2" -> [0, 1, 2]; throws on anything that is not a list of integers.
export function parseSeeds(text) {
  const parts = text.split(/[\s,]+/).filter(Boolean);
  if (!parts.length) return null;
  return parts.map((part) => {
    if (!/^-?\d+$/.test(part)) {
      throw new Error(`seed ${JSON.stringify(part)} is not an integer`);
    }
    return Number(part);
  });
}

export function parseLines(text) {
  return text.split("\n").map((line) => line.trim()).filter(Boolean);
}

// Run `fn` at most once per animation frame, however often it is asked for.
export function everyFrame(fn) {
  let pending = false;
  return () => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      fn();
    });
  };
}
