// AdapterServe's built-in dashboard: serving basics and per-token expert routing, read from /metrics every 2 s.
// No dependencies and no network beyond this server.
"use strict";

const REFRESH_MS = 2000;
const HISTORY = 60;                         // refreshes kept for the share-over-time chart
const palette = ["#4aa3ff", "#f0883e", "#3fb950", "#d2a8ff", "#ff7b72", "#e3b341", "#79c0ff", "#56d364", "#ffa198", "#a5d6ff"];

const state = { previous: null, previousAt: 0, history: [], selected: { adapter: "", module: "" } };

/** Prometheus text format → [{name, labels, value}]. */
function parseMetrics(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels = {};
    if (m[3]) for (const l of m[3].matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2].replace(/\\"/g, '"').replace(/\\\\/g, "\\");
    samples.push({ name: m[1], labels, value: Number(m[4]) });
  }
  return samples;
}

const sum = (samples, name, filter = () => true) => samples.filter(s => s.name === name && filter(s.labels)).reduce((a, s) => a + s.value, 0);

function rate(now, before, seconds, name, filter) {
  if (!before || seconds <= 0) return null;
  return Math.max(0, sum(now, name, filter) - sum(before, name, filter)) / seconds;
}

/** Mean of a histogram over the last interval (Δsum / Δcount), null when nothing was observed. */
function intervalMean(now, before, name) {
  if (!before) return null;
  const dc = sum(now, name + "_count") - sum(before, name + "_count");
  return dc > 0 ? (sum(now, name + "_sum") - sum(before, name + "_sum")) / dc : null;
}

const fmt = (v, digits = 1, unit = "") => v === null || v === undefined || Number.isNaN(v) ? "–" : `${v.toFixed(digits)}${unit}`;

function card(label, value) {
  return `<div class="card"><div class="label">${label}</div><div class="value">${value}</div></div>`;
}

function renderServing(m, before, seconds) {
  const ttft = intervalMean(m, before, "adapterserve_time_to_first_token_seconds");
  const itl = intervalMean(m, before, "adapterserve_time_per_output_token_seconds");
  document.getElementById("serving").innerHTML = [
    card("running", fmt(sum(m, "adapterserve_num_requests_running"), 0)),
    card("waiting", fmt(sum(m, "adapterserve_num_requests_waiting"), 0)),
    card("KV cache in use", fmt(100 * sum(m, "adapterserve_kv_cache_usage_ratio"), 0, " %")),
    card("generated tokens/s", fmt(rate(m, before, seconds, "adapterserve_generation_tokens_total"), 1)),
    card("requests/s", fmt(rate(m, before, seconds, "adapterserve_requests_total"), 2)),
    card("TTFT (mean, last 2 s)", ttft === null ? "–" : fmt(1000 * ttft, 0, " ms")),
    card("ITL (mean, last 2 s)", itl === null ? "–" : fmt(1000 * itl, 1, " ms")),
    card("adapters on device", fmt(sum(m, "adapterserve_adapters_resident", l => l.tier === "device"), 0)),
    card("adapter loads", fmt(sum(m, "adapterserve_adapter_loads_total"), 0)),
    card("evictions", fmt(sum(m, "adapterserve_adapter_evictions_total"), 0)),
    card("step failures", fmt(sum(m, "adapterserve_engine_step_failures_total"), 0)),
  ].join("");
}

/** Expert counters of one adapter and module: {layers, experts, selections[layer][expert], routed[layer]}. */
function expertTable(m, adapter, module) {
  const rows = m.filter(s => s.name === "adapterserve_expert_selections_total" && s.labels.adapter === adapter && s.labels.module === module);
  const layers = [...new Set(rows.map(s => Number(s.labels.layer)))].sort((a, b) => a - b);
  const experts = [...new Set(rows.map(s => s.labels.expert))].sort(expertOrder);
  const selections = {}, routed = {};
  for (const l of layers) { selections[l] = {}; routed[l] = 0; }
  for (const s of rows) selections[Number(s.labels.layer)][s.labels.expert] = s.value;
  for (const s of m) if (s.name === "adapterserve_expert_routed_tokens_total" && s.labels.adapter === adapter && s.labels.module === module)
    routed[Number(s.labels.layer)] = s.value;
  return { layers, experts, selections, routed };
}

/** Expert labels in a natural order: indices numerically, "l<level>.<index>" by level then index, names alphabetically. */
function expertOrder(a, b) {
  const key = e => { const m = /^(?:l(\d+)\.)?(\d+)$/.exec(e); return m ? [Number(m[1] ?? 0), Number(m[2]), ""] : [Infinity, 0, e]; };
  const [x, y] = [key(a), key(b)];
  return x[0] - y[0] || x[1] - y[1] || x[2].localeCompare(y[2]);
}

function color(fraction) {
  const t = Math.max(0, Math.min(1, fraction));
  const r = Math.round(23 + t * (74 - 23)), g = Math.round(29 + t * (163 - 29)), b = Math.round(36 + t * (255 - 36));
  return `rgb(${r},${g},${b})`;
}

function renderHeatmap(table) {
  const el = document.getElementById("heatmap");
  el.style.gridTemplateColumns = `48px repeat(${table.experts.length}, minmax(36px, 1fr))`;
  let max = 0;
  for (const l of table.layers) for (const e of table.experts) max = Math.max(max, util(table, l, e));
  const parts = [`<div class="head">layer</div>`, ...table.experts.map(e => `<div class="head" title="${e}">${e}</div>`)];
  for (const l of table.layers) {
    parts.push(`<div class="head">${l}</div>`);
    for (const e of table.experts) {
      const u = util(table, l, e);
      parts.push(`<div class="cell" data-layer="${l}" data-expert="${e}" title="layer ${l}, expert ${e}: ${table.selections[l][e] ?? 0} selections of ${table.routed[l]} tokens" style="background:${color(max > 0 ? u / max : 0)}">${u.toFixed(2)}</div>`);
    }
  }
  el.innerHTML = parts.join("");
}

const util = (table, layer, expert) => table.routed[layer] > 0 ? (table.selections[layer][expert] ?? 0) / table.routed[layer] : 0;

function shares(table) {
  const totals = Object.fromEntries(table.experts.map(e => [e, table.layers.reduce((a, l) => a + (table.selections[l][e] ?? 0), 0)]));
  const all = Object.values(totals).reduce((a, v) => a + v, 0);
  return Object.fromEntries(table.experts.map(e => [e, all > 0 ? totals[e] / all : 0]));
}

/** Normalised entropy of shares: 1 = perfectly even over the experts, 0 = a single expert. */
function balance(values) {
  const total = values.reduce((a, v) => a + v, 0);
  if (values.length < 2 || total <= 0) return null;
  const h = values.filter(v => v > 0).reduce((a, v) => a - (v / total) * Math.log(v / total), 0);
  return h / Math.log(values.length);
}

function renderShares(table) {
  const s = shares(table);
  document.getElementById("shares").innerHTML = table.experts.map((e, i) =>
    `<div class="bar" data-expert="${e}"><span class="name" title="${e}">${e}</span><span class="track"><span class="fill" style="display:block;width:${(100 * s[e]).toFixed(1)}%;background:${palette[i % palette.length]}"></span></span><span class="share">${(100 * s[e]).toFixed(1)} %</span></div>`).join("");
  return s;
}

function renderHistory(experts) {
  const canvas = document.getElementById("history"), ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.strokeStyle = "#2d333b";
  ctx.strokeRect(0.5, 0.5, canvas.width - 1, canvas.height - 1);
  const points = state.history;
  if (points.length < 2) return;
  experts.forEach((e, i) => {
    ctx.strokeStyle = palette[i % palette.length];
    ctx.beginPath();
    points.forEach((p, k) => {
      const x = 4 + (k / (HISTORY - 1)) * (canvas.width - 8), y = canvas.height - 4 - (p[e] ?? 0) * (canvas.height - 8);
      k === 0 ? ctx.moveTo(x, y) : ctx.lineTo(x, y);
    });
    ctx.stroke();
  });
}

function renderBalance(m, adapter) {
  const gauges = m.filter(s => s.name === "adapterserve_expert_load_balance" && s.labels.adapter === adapter);
  const modules = [...new Set(m.filter(s => s.name === "adapterserve_expert_routed_tokens_total" && s.labels.adapter === adapter).map(s => `${s.labels.layer}|${s.labels.module}`))]
    .map(k => k.split("|")).sort((a, b) => Number(a[0]) - Number(b[0]) || a[1].localeCompare(b[1]));
  document.querySelector("#balance tbody").innerHTML = modules.map(([layer, module]) => {
    const t = expertTable(m, adapter, module);
    const g = gauges.find(s => s.labels.layer === layer && s.labels.module === module);
    const b = g ? g.value : balance(t.experts.map(e => t.selections[Number(layer)]?.[e] ?? 0));
    return `<tr><td>${layer}</td><td>${module}</td><td>${fmt(t.routed[Number(layer)], 0)}</td><td>${fmt(b, 3)}</td></tr>`;
  }).join("");
}

function fillSelect(id, values, key) {
  const select = document.getElementById(id);
  const current = state.selected[key] || select.value;
  if ([...select.options].map(o => o.value).join("\n") !== values.join("\n"))
    select.innerHTML = values.map(v => `<option value="${v}">${v}</option>`).join("");
  select.value = values.includes(current) ? current : (values[0] ?? "");
  state.selected[key] = select.value;
}

function renderExperts(m) {
  const series = m.filter(s => s.name === "adapterserve_expert_selections_total");
  const adapters = [...new Set(series.map(s => s.labels.adapter))].sort();
  document.getElementById("no-experts").style.display = adapters.length ? "none" : "block";
  fillSelect("adapter", adapters, "adapter");
  const adapter = state.selected.adapter;
  const modules = [...new Set(series.filter(s => s.labels.adapter === adapter).map(s => s.labels.module))].sort();
  fillSelect("module", modules, "module");
  if (!adapter) { document.getElementById("heatmap").innerHTML = ""; return; }
  const table = expertTable(m, adapter, state.selected.module);
  const routed = table.layers.reduce((a, l) => a + table.routed[l], 0);
  document.getElementById("routed").textContent = `${routed} routed token positions over ${table.layers.length} layers, ${table.experts.length} experts`;
  renderHeatmap(table);
  const s = renderShares(table);
  state.history.push(s);
  if (state.history.length > HISTORY) state.history.shift();
  renderHistory(table.experts);
  renderBalance(m, adapter);
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    const [metrics, health] = await Promise.all([
      fetch("/metrics", { cache: "no-store" }).then(r => { if (!r.ok) throw new Error(`/metrics ${r.status}`); return r.text(); }),
      fetch("/health", { cache: "no-store" }).then(r => r.json().then(body => ({ ok: r.ok, body }))),
    ]);
    const m = parseMetrics(metrics), now = performance.now();
    renderServing(m, state.previous, (now - state.previousAt) / 1000);
    renderExperts(m);
    state.previous = m;
    state.previousAt = now;
    document.getElementById("model").textContent = health.body?.model ?? "";
    status.textContent = health.ok ? "serving" : (health.body?.status ?? health.body?.error?.code ?? "unavailable");
    status.className = "pill " + (health.ok ? "ok" : "bad");
    document.getElementById("refreshed").textContent = new Date().toLocaleTimeString();
  } catch (e) {
    status.textContent = "unreachable";
    status.className = "pill bad";
  }
}

for (const [id, key] of [["adapter", "adapter"], ["module", "module"]])
  document.getElementById(id).addEventListener("change", e => { state.selected[key] = e.target.value; state.history = []; refresh(); });
refresh();
setInterval(refresh, REFRESH_MS);
