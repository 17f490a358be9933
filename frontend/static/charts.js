// Plotly defaults shared by the run and compare pages.
/* global Plotly */

export const PALETTE = [
  "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e",
  "#17becf", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
];

// VSML is the learner under study; SGD and Adam are the reference lines.
export const LEARNER_STYLE = {
  vsml: { color: "#1f77b4", dash: "solid", width: 2.5 },
  sgd: { color: "#7f7f7f", dash: "dash", width: 1.5 },
  adam: { color: "#ff7f0e", dash: "dot", width: 1.5 },
};

export const CONFIG = {
  responsive: true,
  displaylogo: false,
  displayModeBar: "hover",
  // The cloud button would upload the chart to plotly.com: not from a lab.
  modeBarButtonsToRemove: ["sendChartToCloud", "lasso2d", "select2d"],
};

export function layout(xTitle, yTitle, extra = {}) {
  return {
    margin: { l: 56, r: 16, t: 28, b: 44 },
    height: 300,
    xaxis: { title: { text: xTitle }, zeroline: false },
    yaxis: { title: { text: yTitle }, zeroline: false },
    legend: { orientation: "h", x: 0, y: 1, yanchor: "bottom" },
    hovermode: "x unified",
    uirevision: "keep", // a redraw keeps the user's zoom
    ...extra,
  };
}

// Plotly renders a few HTML tags in trace names (<b>, <a href>, ...); names
// come from users, so escape them: Plotly shows entities as plain characters.
export function plotText(text) {
  return String(text).replace(/&/g, "&amp;").replace(/</g, "&lt;")
    .replace(/>/g, "&gt;");
}

export function learnerTrace(learner, x, y, extra = {}) {
  const style = LEARNER_STYLE[learner] || { color: "#444", dash: "solid" };
  return {
    type: "scatter",
    mode: "lines",
    name: plotText(learner),
    x,
    y,
    line: { color: style.color, dash: style.dash, width: style.width ?? 1.5 },
    ...extra,
  };
}

export function draw(node, traces, chartLayout) {
  return Plotly.react(node, traces, chartLayout, CONFIG);
}
