// The lambdaflow dashboard: reads /health and /api/v1 and draws plain SVG charts (no external assets, so it
// works offline). Every chart's <svg> carries data-points = the number of points drawn.
"use strict";

const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
const SVG = "http://www.w3.org/2000/svg";
const body = document.body;
const refreshMs = Number(body.dataset.refreshMs) || 5000;

const tokenRequired = body.dataset.tokenRequired === "true";
const loginForm = document.getElementById("login");
const logoutButton = document.getElementById("logout");

// The token lives only in the server's HttpOnly session cookie (set by POST /login), which fetch sends with
// every same-origin request: no script on the page can read it.
async function getJson(path) {
  const response = await fetch(path, { credentials: "same-origin" });
  if (response.status === 401) { showLogin(); throw new Error(path + ": login needed"); }
  if (!response.ok && response.status !== 503) throw new Error(path + ": HTTP " + response.status);
  return response.json();
}

function showLogin() {
  loginForm.hidden = false;
  logoutButton.hidden = true;
}

async function logIn(event) {
  event.preventDefault();
  const input = document.getElementById("token");
  const error = document.getElementById("login-error");
  const form = new URLSearchParams({ token: input.value.trim() });
  const response = await fetch("/login", { method: "POST", body: form, credentials: "same-origin" });
  if (!response.ok) {
    error.textContent = response.status === 401 ? "wrong token" : "login failed: HTTP " + response.status;
    return;
  }
  input.value = "";
  error.textContent = "";
  loginForm.hidden = true;
  refresh();
}

// A reload after logging out clears the charts: the next page's reads answer 401 and bring the form back.
async function logOut() {
  await fetch("/logout", { method: "POST", credentials: "same-origin" });
  location.reload();
}

loginForm.addEventListener("submit", logIn);
logoutButton.addEventListener("click", logOut);

function el(name, attrs, parent) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (parent) parent.appendChild(node);
  return node;
}

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

// series: [{name, points: [[Date, number], ...]}]; horizon: Date or null; bars: draw bars, not lines.
function drawChart(svg, series, horizon, bars) {
  const [, , width, height] = svg.getAttribute("viewBox").split(" ").map(Number);
  const pad = { left: 44, right: 10, top: 10, bottom: 22 };
  svg.replaceChildren();
  const all = series.flatMap((s) => s.points);
  svg.dataset.points = String(all.length);
  if (!all.length) {
    el("text", { x: width / 2, y: height / 2, "text-anchor": "middle" }, svg).textContent = "no data yet";
    return;
  }
  const times = all.map((p) => p[0].getTime());
  const values = all.map((p) => p[1]);
  let [t0, t1] = [Math.min(...times), Math.max(...times)];
  if (horizon && horizon.getTime() >= t0 - 86400000) { t0 = Math.min(t0, horizon.getTime()); t1 = Math.max(t1, horizon.getTime()); }
  if (t1 === t0) t1 = t0 + 300000;
  let [v0, v1] = [Math.min(...values, bars ? 0 : Infinity), Math.max(...values)];
  if (v1 === v0) v1 = v0 + 1;
  const x = (t) => pad.left + ((t - t0) / (t1 - t0)) * (width - pad.left - pad.right);
  const y = (v) => height - pad.bottom - ((v - v0) / (v1 - v0)) * (height - pad.top - pad.bottom);
  el("line", { class: "axis", x1: pad.left, y1: height - pad.bottom, x2: width - pad.right, y2: height - pad.bottom }, svg);
  el("line", { class: "axis", x1: pad.left, y1: pad.top, x2: pad.left, y2: height - pad.bottom }, svg);
  for (const v of [v0, (v0 + v1) / 2, v1]) {
    el("text", { x: pad.left - 4, y: y(v) + 3, "text-anchor": "end" }, svg).textContent = v.toFixed(v1 - v0 < 10 ? 1 : 0);
  }
  [[t0, "start"], [(t0 + t1) / 2, "middle"], [t1, "end"]].forEach(([t, anchor]) => {
    const label = new Date(t).toISOString().slice(5, 16).replace("T", " ");
    el("text", { x: x(t), y: height - 6, "text-anchor": anchor }, svg).textContent = label;
  });
  series.forEach((s, i) => {
    const color = COLORS[i % COLORS.length];
    const sorted = [...s.points].sort((a, b) => a[0] - b[0]);
    if (bars) {
      const w = Math.max(1, ((width - pad.left - pad.right) / Math.max(sorted.length, 1)) * 0.8);
      for (const [t, v] of sorted) el("rect", { x: x(t.getTime()) - w / 2, y: y(v), width: w, height: y(v0) - y(v), fill: color }, svg);
    } else {
      // a line does not bridge hours without data (e.g. the night between the demo's history and its live events)
      const steps = sorted.slice(1).map(([t], j) => t - sorted[j][0]).sort((a, b) => a - b);
      const gap = Math.max(1800000, 10 * (steps[Math.floor(steps.length / 2)] || 0));
      const d = sorted.map(([t, v], j) => (j && t - sorted[j - 1][0] <= gap ? "L" : "M") + x(t.getTime()).toFixed(1) + " " + y(v).toFixed(1)).join(" ");
      el("path", { d, fill: "none", stroke: color, "stroke-width": 1.5, "data-series": s.name }, svg);
    }
  });
  if (horizon && horizon.getTime() >= t0 && horizon.getTime() <= t1) {
    el("line", { class: "horizon", x1: x(horizon.getTime()), y1: pad.top, x2: x(horizon.getTime()), y2: height - pad.bottom }, svg);
    el("text", { x: x(horizon.getTime()) + 4, y: pad.top + 10 }, svg).textContent = "batch | speed";
  }
}

function legend(id, names) {
  const box = document.getElementById(id);
  box.replaceChildren();
  names.forEach((name, i) => {
    const span = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.style.background = COLORS[i % COLORS.length];
    span.append(swatch, name);
    box.appendChild(span);
  });
}

function range() {
  const to = new Date(Date.now() + 300000);
  const from = new Date(to.getTime() - 24 * 3600000);
  return "from=" + from.toISOString() + "&to=" + to.toISOString();
}

async function drawHealth() {
  const health = await getJson("/health");
  const badge = document.getElementById("status");
  badge.textContent = health.status;
  badge.className = "badge " + health.status;
  // every view is published with the day, so their horizons agree; the oldest one when a view lags
  const horizons = health.batch ? Object.values(health.batch.horizons).filter(Boolean).sort() : [];
  const horizon = horizons[0];
  document.getElementById("as-of").textContent = "batch as of " + (horizon || "— (nothing published yet)");
}

async function drawTemperature() {
  const { sensors } = await getJson("/api/v1/sensors");
  const locations = [...new Set(sensors.map((s) => s.location))].sort();
  const answers = await Promise.all(locations.map((l) => getJson("/api/v1/locations/" + encodeURIComponent(l) + "/metrics?" + range())));
  const series = answers.map((a) => ({ name: a.location, points: a.points.map((p) => [new Date(p.window_start), p.temperature_avg]) }));
  const horizon = answers.length && answers[0].batch_as_of ? new Date(answers[0].batch_as_of) : null;
  drawChart(document.getElementById("temperature-chart"), series, horizon, false);
  legend("temperature-legend", locations);
}

async function drawActivity() {
  const answer = await getJson("/api/v1/activity?" + range());
  const byType = new Map();
  const revenue = new Map();
  for (const p of answer.points) {
    const perWindow = byType.get(p.event_type) || new Map();
    perWindow.set(p.window_start, (perWindow.get(p.window_start) || 0) + p.events);
    byType.set(p.event_type, perWindow);
    revenue.set(p.window_start, (revenue.get(p.window_start) || 0) + p.revenue);
  }
  const types = [...byType.keys()].sort();
  const series = types.map((t) => ({ name: t, points: [...byType.get(t)].map(([w, n]) => [new Date(w), n]) }));
  const horizon = answer.batch_as_of ? new Date(answer.batch_as_of) : null;
  drawChart(document.getElementById("activity-chart"), series, horizon, false);
  legend("activity-legend", types);
  const revenuePoints = [...revenue].filter(([, r]) => r > 0).map(([w, r]) => [new Date(w), r]);
  drawChart(document.getElementById("revenue-chart"), [{ name: "revenue", points: revenuePoints }], horizon, true);
  const total = revenuePoints.reduce((sum, p) => sum + p[1], 0);
  document.getElementById("revenue-total").textContent = "total in the last 24 h: " + total.toFixed(2);
}

async function drawAlerts() {
  const { alerts } = await getJson("/api/v1/alerts?limit=15");
  const tbody = document.querySelector("#alerts tbody");
  tbody.replaceChildren();
  for (const a of alerts) {
    const row = tbody.insertRow();
    cell(row, a.ts.slice(0, 19).replace("T", " "));
    cell(row, a.rule);
    cell(row, a.subject);
    cell(row, a.value.toFixed(2));
    cell(row, String(a.threshold));
  }
  if (!alerts.length) cell(tbody.insertRow(), "no alerts yet");
}

async function drawQuality() {
  const { runs } = await getJson("/api/v1/quality?days=3");
  const tbody = document.querySelector("#quality tbody");
  tbody.replaceChildren();
  for (const r of runs) {
    const row = tbody.insertRow();
    cell(row, r.day);
    const suite = cell(row, "");
    if (r.link) {
      const a = document.createElement("a");
      a.href = r.link;
      a.textContent = r.suite;
      suite.appendChild(a);
    } else suite.textContent = r.suite;
    cell(row, r.success ? "pass" : "FAIL", r.success ? "pass" : "fail");
    cell(row, r.statistics.successful_expectations + "/" + r.statistics.evaluated_expectations);
  }
  if (!runs.length) cell(tbody.insertRow(), "no validation yet (the batch DAG writes them)");
}

async function refresh() {
  // While the login form is up only the public health badge is read: the API would answer 401.
  const parts = loginForm.hidden ? [drawHealth, drawTemperature, drawActivity, drawAlerts, drawQuality] : [drawHealth];
  const results = await Promise.allSettled(parts.map((draw) => draw()));
  results.filter((r) => r.status === "rejected").forEach((r) => console.warn(r.reason));
  logoutButton.hidden = !tokenRequired || !loginForm.hidden;
  body.dataset.refreshed = new Date().toISOString();
}

// Whether this session already has the cookie only the server knows: the first reads tell (401: the form).
refresh();
setInterval(refresh, refreshMs);
