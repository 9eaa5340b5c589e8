//! The live canary page (admin `/ui`): per weighted route, the configured against the observed
//! split over the audit's window as a chart that updates, and per destination the request
//! rate, error rate and p99; the config version and the last config rejection. One
//! self-contained HTML document (inline style and script, the chart drawn as SVG): nothing is
//! fetched but its own `/ui/data`.

use serde_json::json;

use super::status::Telemetry;

/// `/ui/data`: what the page draws.
pub fn data(telemetry: &Telemetry) -> serde_json::Value {
    let status = &telemetry.status;
    json!({
        "config": status.config().map(|c| serde_json::to_value(&*c).unwrap_or_default()),
        "config_rejections": status
            .config_rejections
            .load(std::sync::atomic::Ordering::Relaxed),
        "last_rejection": status.last_rejection().map(|(at, reason)| json!({
            "at": at,
            "reason": reason,
        })),
        "splits": telemetry.splits.canary_report(),
    })
}

/// `/ui`.
pub const PAGE: &str = r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>waypoint canary</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #1d2330; background: #f6f7f9; }
h1 { font-size: 20px; margin: 0 0 4px; }
#meta { color: #555; margin-bottom: 16px; }
#rejection.bad { color: #a11; }
.route { background: #fff; border: 1px solid #dde; border-radius: 6px; padding: 12px 16px; margin-bottom: 16px; }
.route h2 { font-size: 16px; margin: 0 0 8px; }
table { border-collapse: collapse; margin-top: 8px; }
td, th { padding: 3px 12px 3px 0; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.swatch { display: inline-block; width: 10px; height: 10px; margin-right: 6px; border-radius: 2px; }
svg text { font-size: 11px; fill: #666; }
</style>
</head>
<body>
<h1>waypoint canary</h1>
<div id="meta">config <span id="version">-</span> (<span id="source">-</span>), last rejection:
<span id="rejection">none</span>; updated <span id="updated">never</span></div>
<div id="routes"><p id="empty">no weighted route has served a request yet</p></div>
<script>
"use strict";
const COLORS = ["#2b6cb0", "#dd6b20", "#2f855a", "#b83280", "#6b46c1", "#c53030"];
const W = 640, H = 180, PAD = 28;
const pct = v => v == null ? "-" : (100 * v).toFixed(1) + "%";
const ms = v => v == null ? "-" : String(v);
function el(tag, attrs, text) {
  const ns = ["svg", "polyline", "line", "text", "rect"].includes(tag) ? "http://www.w3.org/2000/svg" : null;
  const e = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text != null) e.textContent = text;
  return e;
}
function chart(route) {
  const svg = el("svg", {width: W, height: H, viewBox: `0 0 ${W} ${H}`, "data-route": route.route});
  const y = v => H - PAD - v * (H - 2 * PAD);
  for (const t of [0, 0.5, 1]) {
    svg.append(el("line", {x1: PAD, x2: W - 8, y1: y(t), y2: y(t), stroke: "#e2e4ea"}));
    svg.append(el("text", {x: 2, y: y(t) + 4}, (100 * t) + "%"));
  }
  route.destinations.forEach((d, i) => {
    const color = COLORS[i % COLORS.length];
    svg.append(el("line", {x1: PAD, x2: W - 8, y1: y(d.configured_share), y2: y(d.configured_share),
      stroke: color, "stroke-dasharray": "5 4", "class": "configured", "data-destination": d.name}));
    const n = d.series.length, step = (W - 8 - PAD) / Math.max(1, n - 1);
    const points = d.series.map((s, k) => s == null ? null : `${(PAD + k * step).toFixed(1)},${y(s).toFixed(1)}`)
      .filter(p => p != null).join(" ");
    svg.append(el("polyline", {points, fill: "none", stroke: color, "stroke-width": 2,
      "class": "observed", "data-destination": d.name}));
  });
  return svg;
}
function table(route) {
  const t = el("table");
  const head = el("tr");
  for (const h of ["destination", "configured", "observed", "req/s", "errors", "p99 ms"]) head.append(el("th", {}, h));
  t.append(head);
  route.destinations.forEach((d, i) => {
    const tr = el("tr", {"data-destination": d.name});
    const name = el("td");
    name.append(el("span", {"class": "swatch", style: `background:${COLORS[i % COLORS.length]}`}));
    name.append(document.createTextNode(d.name));
    tr.append(name);
    for (const [k, v] of [["configured", pct(d.configured_share)], ["observed", pct(d.observed_share)],
        ["rate", d.rate.toFixed(1)], ["errors", pct(d.error_rate)], ["p99", ms(d.p99_ms)]]) {
      tr.append(el("td", {"class": k}, v));
    }
    t.append(tr);
  });
  return t;
}
function render(data) {
  const c = data.config;
  document.getElementById("version").textContent = c ? "version " + c.version : "-";
  document.getElementById("source").textContent = c ? c.source : "-";
  const rej = document.getElementById("rejection");
  rej.textContent = data.last_rejection ? data.last_rejection.reason : "none";
  rej.className = data.last_rejection ? "bad" : "";
  const routes = document.getElementById("routes");
  routes.replaceChildren();
  if (data.splits.routes.length === 0) {
    routes.append(el("p", {id: "empty"}, "no weighted route has served a request yet"));
  }
  for (const r of data.splits.routes) {
    const box = el("div", {"class": "route"});
    box.append(el("h2", {}, `${r.service} · ${r.route}`));
    box.append(chart(r));
    box.append(el("div", {}, `observed share per ${data.splits.bucket_seconds.toFixed(0)} s over the last ${data.splits.window_seconds.toFixed(0)} s (solid), configured weight (dashed)`));
    box.append(table(r));
    routes.append(box);
  }
  document.getElementById("updated").textContent = new Date().toISOString();
}
async function refresh() {
  try {
    const r = await fetch("/ui/data", {cache: "no-store"});
    if (r.ok) render(await r.json());
  } catch (e) {
    document.getElementById("updated").textContent = "unreachable: " + e;
  }
}
refresh();
setInterval(refresh, 2000);
</script>
</body>
</html>
"##;
