"use strict";
// The matchmaker dashboard: reads /v1, follows /v1/events, no build step, no dependencies.
const $ = (s) => document.querySelector(s);
let token = localStorage.getItem("mm-token") || "";
let filters = {};
let cursor = null;

function esc(v) {
  return String(v ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}
function when(t) { return t ? new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) : "-"; }
function headers() { return token ? {Authorization: "Bearer " + token} : {}; }
function say(text, bad) {
  const m = $("#message");
  m.textContent = text || ""; m.className = bad ? "bad" : "";
  if (text && !bad) setTimeout(() => { if (m.textContent === text) m.textContent = ""; }, 4000);
}

async function get(path) {
  const r = await fetch(path, {headers: headers()});
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}
async function post(path, body) {
  const r = await fetch(path, {method: "POST", headers: {...headers(), "Content-Type": "application/json"},
    body: JSON.stringify(body || {})});
  const answer = await r.json();
  if (!r.ok) throw new Error(answer.error || r.statusText);
  return answer;
}

function card(label, value) { return `<div class="card"><b>${esc(value)}</b><span>${esc(label)}</span></div>`; }
function renderCards(s) {
  const c = s.counters || {};
  const slots = (s.workers || []).filter((w) => w.status === "alive").reduce((a, w) => a + w.slots, 0);
  $("#cards").innerHTML = [card("workers", (s.workers || []).length), card("slots", slots),
    card("pending", s.pending), card("in flight", s.in_flight), card("running", s.running),
    card("submitted", c.submitted || 0), card("succeeded", c.succeeded || 0), card("dead", c.dead || 0),
    card("retries", c.retries || 0)].join("");
}

function renderWorkers(workers) {
  $("#workers tbody").innerHTML = workers.map((w) => {
    const load = w.slots ? Math.min(100, Math.round(100 * w.running / w.slots)) : 0;
    const attrs = Object.entries(w.attributes || {}).filter(([k]) => k !== "site" && k !== "speed")
      .map(([k, v]) => `${esc(k)}=${esc(v)}`).join(" ");
    const action = w.status === "drained"
      ? `<button data-undrain="${esc(w.name)}">undrain</button>`
      : `<button class="danger" data-drain="${esc(w.name)}">drain</button>`;
    return `<tr data-worker="${esc(w.name)}"><td>${esc(w.name)}</td><td class="state state-${esc(w.status)}">${esc(w.status)}</td>
      <td>${esc((w.capabilities || []).join(", "))}</td><td class="num">${w.slots}</td><td class="num">${w.running}</td>
      <td><div class="bar" title="${load}%"><i style="width:${load}%"></i></div></td>
      <td>${esc(w.site ?? "-")}</td><td>${esc(w.speed ?? "-")}</td><td class="muted">${attrs}</td><td>${action}</td></tr>`;
  }).join("") || `<tr><td colspan="10" class="muted">no live workers</td></tr>`;
}

function taskRow(t) {
  const open = ["pending", "assigned", "running"].includes(t.state);
  const action = open ? `<button class="danger" data-cancel="${esc(t.id)}">cancel</button>`
    : ["dead", "cancelled"].includes(t.state) ? `<button data-retry="${esc(t.id)}">retry</button>` : "";
  return `<tr data-task="${esc(t.id)}"><td><a href="#/task/${encodeURIComponent(t.id)}">${esc(t.id)}</a></td>
    <td>${esc(t.type)}</td><td class="state state-${esc(t.state)}">${esc(t.state)}</td>
    <td class="num">${t.attempt}/${t.max_attempts}</td><td>${esc(t.worker || "-")}</td><td>${when(t.submitted_at)}</td>
    <td class="muted">${t.state === "pending" ? esc(t.reason || "not yet considered by a round") : ""}</td><td>${action}</td></tr>`;
}

async function loadTasks(append) {
  const q = new URLSearchParams({limit: "50"});
  for (const [k, v] of Object.entries(filters)) if (v) q.set(k, v);
  if (append && cursor) q.set("cursor", cursor);
  const page = await get("/v1/tasks?" + q);
  const html = page.tasks.map(taskRow).join("");
  const body = $("#tasks tbody");
  body.innerHTML = append ? body.innerHTML + html : (html || `<tr><td colspan="8" class="muted">no tasks</td></tr>`);
  cursor = page.next_cursor;
  $("#more").hidden = !cursor;
}

function chart(svg, series, colors) {
  const el = $(svg), w = el.clientWidth || 320, h = 120, pad = 4;
  const all = series.flat().filter((v) => Number.isFinite(v));
  const top = Math.max(0, ...all);
  const max = top > 0 ? top : 1;  // an all-zero chart is scaled to 1
  const n = Math.max(2, ...series.map((s) => s.length));
  const lines = series.map((s, i) => {
    const pts = s.map((v, j) => `${(pad + (w - 2 * pad) * j / (n - 1)).toFixed(1)},${(h - pad - (h - 2 * pad) * v / max).toFixed(1)}`);
    return `<polyline fill="none" stroke="${colors[i]}" stroke-width="1.6" points="${pts.join(" ")}"/>`;
  });
  el.setAttribute("viewBox", `0 0 ${w} ${h}`);
  const grid = `<line x1="0" x2="${w}" y1="${h - pad}" y2="${h - pad}" stroke="#dde1e8"/>` +
    `<line x1="0" x2="${w}" y1="${pad}" y2="${pad}" stroke="#eef1f5" stroke-dasharray="3 3"/>`;
  el.innerHTML = grid + lines.join("") +
    `<text x="4" y="14" font-size="10" fill="#6b7385">${+max.toPrecision(3)}</text>` +
    `<text x="4" y="${h - 8}" font-size="10" fill="#6b7385">0</text>`;
}

async function loadRounds() {
  const r = await get("/v1/rounds?limit=240");
  const s = r.samples;
  chart("#chart-backlog", [s.map((x) => x.pending), s.map((x) => x.in_flight)], ["#b7791f", "#2b6cb0"]);
  chart("#chart-throughput", [s.map((x) => x.placed / x.seconds), s.map((x) => x.succeeded / x.seconds)], ["#2b6cb0", "#1f8a4c"]);
  chart("#chart-rounds", [s.map((x) => x.round_ms)], ["#6b46c1"]);
  chart("#chart-waits", [r.waits.map((x) => x.wait)], ["#c53030"]);
  const span = s.length ? Math.round(s[s.length - 1].at - s[0].at + s[0].seconds) : 0;
  document.querySelectorAll("figcaption .span").forEach((e) => { e.textContent = `last ${span} s`; });
  $("figcaption .span-waits").textContent = `${r.waits.length} tasks`;
  $("#reasons tbody").innerHTML = r.unplaced_by_reason.map((x) =>
    `<tr><td class="num">${x.tasks}</td><td>${esc(x.reason)}</td></tr>`).join("") ||
    `<tr><td colspan="2" class="muted">nothing is waiting</td></tr>`;
}

async function showTask(id) {
  const t = await get("/v1/tasks/" + encodeURIComponent(id));
  $("#task").hidden = false;
  $("#task-id").textContent = t.id;
  const t0 = t.history.length ? t.history[0].at : 0;
  const steps = t.history.map((h) => `<li><b class="state state-${esc(h.state)}">${esc(h.state)}</b> ${when(h.at)}
    <span class="muted">+${((h.at - t0) * 1000).toFixed(0)} ms</span> attempt ${h.attempt}${h.worker ? " on " + esc(h.worker) : ""}${h.note ? ` <span class="muted">(${esc(h.note)})</span>` : ""}</li>`);
  $("#task-body").innerHTML = `<p><b class="state state-${esc(t.state)}">${esc(t.state)}</b> ${esc(t.type)},
    attempt ${t.attempt} of ${t.max_attempts}, priority ${t.priority}, worker ${esc(t.worker || "-")}</p>
    <p class="explain">${esc(t.explanation)}</p><h3>history</h3><ul class="timeline">${steps.join("")}</ul>
    ${t.error ? `<h3>error</h3><pre>${esc(t.error)}</pre>` : ""}
    <h3>output</h3><pre>${esc(JSON.stringify(t.output, null, 2))}</pre>
    ${(t.logs || []).map((l) => `<h3>logs, attempt ${l.attempt}${l.worker ? " on " + esc(l.worker) : ""}</h3>
    <pre class="logs">${esc(l.text)}</pre>`).join("")}
    <h3>payload</h3><pre>${esc(JSON.stringify(t.payload, null, 2))}</pre>`;
}

async function act(fn, done) {
  try { await fn(); say(done); await refresh(); } catch (e) { say(e.message, true); }
}

document.addEventListener("click", (ev) => {
  const b = ev.target.closest("button");
  if (!b) return;
  if (b.dataset.cancel) act(() => post(`/v1/tasks/${encodeURIComponent(b.dataset.cancel)}/cancel`), "cancel requested");
  if (b.dataset.retry) act(() => post(`/v1/tasks/${encodeURIComponent(b.dataset.retry)}/retry`), "retry requested");
  if (b.dataset.drain) act(() => post(`/v1/workers/${encodeURIComponent(b.dataset.drain)}/drain`), "drain requested");
  if (b.dataset.undrain) act(() => post(`/v1/workers/${encodeURIComponent(b.dataset.undrain)}/drain`, {on: false}), "undrain requested");
});
$("#more").addEventListener("click", () => loadTasks(true).catch((e) => say(e.message, true)));
$("#task-close").addEventListener("click", () => { location.hash = ""; $("#task").hidden = true; });
$("#filters").addEventListener("submit", (ev) => {
  ev.preventDefault();
  filters = Object.fromEntries(new FormData(ev.target));
  loadTasks(false).catch((e) => say(e.message, true));
});
$("#login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  token = $("#token").value.trim();
  localStorage.setItem("mm-token", token);
  $("#token").value = "";
  start();
});
window.addEventListener("hashchange", route);
function route() {
  const m = location.hash.match(/^#\/task\/(.+)$/);
  if (m) showTask(decodeURIComponent(m[1])).catch((e) => say(e.message, true));
}

let lastSnapshot = null;
async function refresh() {
  await Promise.all([loadTasks(false), loadRounds()]);
  const m = location.hash.match(/^#\/task\/(.+)$/);
  if (m) await showTask(decodeURIComponent(m[1]));
}
function onSnapshot(s) {
  $("#status").textContent = "live"; $("#status").className = "pill ok";
  $("#updated").textContent = "updated " + when(s.at);
  renderCards(s); renderWorkers(s.workers);
  const changed = !lastSnapshot || JSON.stringify(lastSnapshot.counters) !== JSON.stringify(s.counters)
    || lastSnapshot.pending !== s.pending || lastSnapshot.in_flight !== s.in_flight;
  lastSnapshot = s;
  if (changed || !window.lastRefresh || Date.now() - window.lastRefresh > 5000) {
    window.lastRefresh = Date.now();
    refresh().catch((e) => say(e.message, true));
  }
}

let stream = null;
async function follow() {
  // fetch, not EventSource: the token travels in a header, not in the URL
  if (stream) stream.abort();
  stream = new AbortController();
  try {
    const r = await fetch("/v1/events", {headers: headers(), signal: stream.signal});
    if (!r.ok) { const b = await r.json(); throw new Error(b.error); }
    const reader = r.body.getReader(), dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buf += dec.decode(value, {stream: true});
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, i); buf = buf.slice(i + 2);
        const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
        if (data) onSnapshot(JSON.parse(data));
      }
    }
  } catch (e) {
    if (e.name === "AbortError") return;
    $("#status").textContent = "disconnected"; $("#status").className = "pill bad"; say(e.message, true);
  }
  setTimeout(follow, 2000);
}
async function start() {
  say("");
  $("#role").textContent = token ? "token set" : "no token (read-only on loopback)";
  try {
    const w = await get("/v1/workers");
    renderWorkers(w.workers);
    await refresh();
  } catch (e) { say(e.message, true); }
  follow();
  route();
}
start();
