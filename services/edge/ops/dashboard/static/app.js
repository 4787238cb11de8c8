// Sluice dashboard: plain JS, no build step, nothing loaded from the internet.
// Reads /api/admin/* with the key typed in the page (kept in this tab's sessionStorage).
//
// Nothing here can freeze the page: every request has a timeout (REQUEST_MS), each kind of
// data is fetched on its own (a slow one never holds up another, or the switch of a tab),
// and the Live view is one stream (/api/admin/live/events) that closes when you leave it.
// Browsers open six connections to one host; the page keeps at most three busy.
"use strict";

const KEY_ITEM = "sluice-dashboard-key";
const REQUEST_MS = 8000;       // any request: given up after this, retried on the next tick
const STREAM_IDLE_MS = 10000;  // the live stream sends every second; silence this long: reopen
const DEAD_EVERY_MS = 5000;    // the dead letters come from the store: read them less often
const LINGER_MS = 10000;       // a task that stopped running stays on Live this long
const FIGURES_EVERY_MS = 10000;  // the figures cover minutes: read them every 10 s
const $ = (id) => document.getElementById(id);
let overview = null;
let figures = null;
let range = "1h";
let figuresAt = 0;
// What each state of the queue is, in the words the page uses.
const STATES = {
  queued: ["new", "not yet read by a coordinator"],
  waiting: ["waiting", "in the fair waiting room"],
  batched: ["batched", "flushed, waiting for a processor"],
  running: ["running", "on a processor"],
};

function key() { return sessionStorage.getItem(KEY_ITEM) || ""; }

// fetch with the key and a timeout (or the caller's own signal, for the live stream).
async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (key()) headers.Authorization = "Bearer " + key();
  const signal = options.signal || AbortSignal.timeout(REQUEST_MS);
  const r = await fetch(path, Object.assign({}, options, { headers, signal }));
  if (r.status === 401 || r.status === 403) {
    const body = await r.json().catch(() => ({}));
    showAuthError((body.error && body.error.message) || "refused");
    throw new Error("unauthorized");
  }
  return r;
}

function showAuthError(message) {
  const el = $("auth-error");
  el.textContent = "Access refused: " + message +
    ". Enter an admin key (EDGE_ADMIN_KEYS) or your API key above.";
  el.hidden = false;
  document.querySelector("main").hidden = true;  // nothing to show without a key
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function row(cells) {
  const tr = el("tr");
  for (const c of cells) {
    const td = el("td");
    if (c instanceof Node) td.appendChild(c); else td.textContent = c === null ? "" : String(c);
    tr.appendChild(td);
  }
  return tr;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function taskLink(id) {
  const a = el("a", id);
  a.href = "#task/" + id;
  return a;
}

// A view has shown data fetched for it: the time, for whoever watches (the browser tests).
function rendered(view) {
  const section = $("view-" + view);
  if (section) section.dataset.renderedAt = String(Date.now());
}

// --- charts: lines on a canvas ------------------------------------------------------------
function drawChart(canvas, times, series) {
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || canvas.width, h = canvas.clientHeight || canvas.height;
  canvas.width = w * ratio; canvas.height = h * ratio;
  const g = canvas.getContext("2d");
  g.scale(ratio, ratio);
  g.clearRect(0, 0, w, h);
  const left = 44, right = 8, top = 8, bottom = 22;
  let max = 0;
  for (const s of series) for (const v of s.values) if (v !== null && v > max) max = v;
  max = niceMax(max);
  g.strokeStyle = "#d7dce3"; g.fillStyle = "#667085"; g.font = "11px system-ui";
  for (let i = 0; i <= 4; i++) {
    const y = top + (h - top - bottom) * i / 4;
    g.beginPath(); g.moveTo(left, y); g.lineTo(w - right, y); g.stroke();
    const label = max * (4 - i) / 4;
    g.fillText(Number.isInteger(label) ? String(label) : label.toFixed(2), 2, y + 4);
  }
  const n = times.length;
  const x = (i) => left + (w - left - right) * (n <= 1 ? 0 : i / (n - 1));
  const y = (v) => top + (h - top - bottom) * (1 - v / max);
  for (let i = 0; i < n; i += 15) {
    const t = new Date(times[i]);
    g.fillText(t.toTimeString().slice(0, 5), x(i) - 12, h - 6);
  }
  let legend = left + 6;
  for (const s of series) {
    g.strokeStyle = s.color; g.lineWidth = 2; g.beginPath();
    let started = false;
    s.values.forEach((v, i) => {
      if (v === null) { started = false; return; }
      if (!started) { g.moveTo(x(i), y(v)); started = true; } else g.lineTo(x(i), y(v));
    });
    g.stroke();
    g.fillStyle = s.color;
    s.values.forEach((v, i) => {  // a dot on each minute with data: one minute is no line
      if (v !== null && v > 0) { g.beginPath(); g.arc(x(i), y(v), 2.5, 0, 7); g.fill(); }
    });
    g.fillStyle = s.color; g.fillText(s.name, legend, top + 10);
    legend += g.measureText(s.name).width + 14;
  }
}

// The axis top: 1, 2 or 5 times a power of ten, at or above the largest value (4 even steps).
function niceMax(max) {
  if (max <= 0) return 1;
  const step = Math.pow(10, Math.floor(Math.log10(max / 4)));
  for (const m of [1, 2, 2.5, 5, 10]) if (4 * m * step >= max) return 4 * m * step;
  return 40 * step;
}

// The figures' series: one point per minute (1 h) or per few minutes (6 h, 24 h).
function drawHistory(series) {
  if (!series) return;
  const times = series.map((m) => m.t);
  const v = (f) => series.map((m) => m[f]);
  drawChart($("chart-throughput"), times, [
    { name: "submitted", color: "#2563eb", values: v("submitted") },
    { name: "finished", color: "#15803d", values: v("finished") },
    { name: "failed", color: "#b42318", values: v("failed") }]);
  drawChart($("chart-depth"), times, [
    { name: "not yet running", color: "#b54708", values: v("depth") },
    { name: "window", color: "#7c3aed", values: v("window") },
    { name: "in flight", color: "#0891b2", values: v("in_flight") }]);
  drawChart($("chart-wait"), times, [
    { name: "queue wait", color: "#7c3aed", values: v("queue_wait_p95") },
    { name: "first token", color: "#0891b2", values: v("client_ttft_p95") },
    { name: "end", color: "#15803d", values: v("e2e_p95") }]);
  drawChart($("chart-ttft"), times, [
    { name: "tokens/s", color: "#0891b2", values: v("tokens_per_s") }]);
}

const pct = (x) => (x === null || x === undefined ? "-" : (100 * x).toFixed(1) + "%");
const num = (x) => (x === null || x === undefined ? "-" : String(x));

function renderFigures(f) {
  $("bottleneck").textContent = "Bottleneck now: " + f.bottleneck;
  document.querySelectorAll("[data-range]").forEach((a) =>
    a.classList.toggle("active", a.dataset.range === f.range));
  const names = { queue_wait: "queue wait", client_ttft: "first token (client)",
    ttft: "first token (provider call)", e2e: "end to end" };
  if (f.latency) {
    fill($("latency"), Object.entries(names).map(([k, label]) => {
      const l = f.latency[k];
      return row([label, num(l.p50), num(l.p95), num(l.p99), l.count]);
    }));
    const t = f.totals;
    $("rates").textContent = `${t.finished} finished, ${t.failed} failed ` +
      `(error rate ${pct(f.error_rate)}); 429s ${t.rate_limited} of ` +
      `${t.calls + t.call_errors} provider calls (${pct(f.rate_limited_rate)}); ` +
      `${f.tokens_per_s} tokens/s (${f.output_tokens_per_s} output)`;
    drawHistory(f.series);
    fill($("by-model"), f.models.map((m) =>
      row([m.model, m.finished, m.failed, m.tokens, num(m.e2e_mean_s)])));
  }
  fill($("by-tenant"), f.tenants.map((t) =>
    row([t.tenant, t.weight, t.unfinished, t.finished, t.failed, t.tokens,
      num(t.e2e_mean_s)])));
}

// --- views --------------------------------------------------------------------------------
function renderOverview(o) {
  const access = $("access");
  access.hidden = false;
  access.textContent = o.access === "open"
    ? "Open edge: no API keys are set, so this dashboard is open to anyone who can reach it."
    : o.access === "admin" ? "Admin key: every tenant is shown."
      : "Tenant key: only tenant " + o.tenant + "'s tasks are shown.";
  $("auth-error").hidden = true;
  document.querySelector("main").hidden = false;
  const cards = Object.entries(STATES).map(([state, [name, what]]) => {
    const c = el("div", null, "card");
    c.id = "card-" + state;
    c.title = what;
    c.append(el("b", o.depth[state] || 0), el("span", name), el("small", what));
    return c;
  });
  $("depth-cards").replaceChildren(...cards);
  $("why").replaceChildren(...o.why_waiting.map((w) => el("li", w)));
  const b = o.waiting_room;
  $("open-batch").textContent = `${Math.round(b.size)} task(s) waiting. They leave in fair ` +
    `order, in batches of up to ${b.batch_size}` +
    `${b.adaptive ? ", as soon as a processor and the provider have room, or" : ","} ` +
    `every ${b.timeout_ms} ms at the latest${b.flush_at ? " (next: " + b.flush_at + ")" : ""}.`;
  fill($("tenants"), Object.entries(o.waiting_by_tenant).map(([t, n]) => row([t, n])));
  fill($("processors"), o.processors.map((p) =>
    row([p.name, p.alive ? "yes" : "no", p.busy, p.free, p.heartbeat_expires_at])));
  fill($("coordinators"), o.coordinators.map((c) =>
    row([c.name, c.alive ? "yes" : "no", c.heartbeat_expires_at])));
  const p = o.provider;
  const items = [["model", p.model],
    ["streaming", p.streaming === null ? "not known yet" : p.streaming ? "yes" : "no (JSON)"],
    ["last success", p.last_success_at || "-"], ["last error", p.last_error || "-"],
    ["last error at", p.last_error_at || "-"],
    ["429s (last hour)", sum(o.history, "rate_limited")],
    ["pauses for Retry-After (last hour)", sum(o.history, "pauses")],
    ...Object.entries(p.breakers || {}).map(([name, b]) => ["provider " + name,
      `breaker ${b.status}` +
      `${b.failures_in_a_row ? ", " + b.failures_in_a_row + " failure(s) in a row" : ""}` +
      `${b.open_until ? ", open until " + b.open_until : ""}` +
      `${b.last_error ? "; last error " + b.last_error + " at " + b.last_error_at : ""}`]),
    ["pacing (governor)", p.pacing.length ? p.pacing.map((g) =>
      `${g.provider || g.model || g.id}: window ${g.window ?? g.limit}` +
      `${g.in_flight === null ? "" : ", in flight " + g.in_flight}` +
      `${g.paused_until ? ", paused until " + g.paused_until : ""}` +
      `${g.rate_limited_last_minute === null ? ""
        : ", 429s in the last minute " + g.rate_limited_last_minute}`).join("; ")
      : "no governor state"]];
  $("provider").replaceChildren(...items.flatMap(([k, v]) => [el("dt", k), el("dd", v)]));
  for (const view of ["overview", "queue", "processors", "provider"]) rendered(view);
}

function sum(history, field) {
  return history.reduce((n, m) => n + (m[field] || 0), 0);
}

function isShown(view) {
  const section = $("view-" + view);
  return section !== null && section.classList.contains("active");
}

// One loader per kind of data, each with its own "in flight" flag: a slow one waits for its
// own next turn, never holds up another.
function loader(load) {
  let busy = false;
  return async (...args) => {
    if (busy) return;
    busy = true;
    try {
      await load(...args);
    } catch (e) {
      if (e.message !== "unauthorized") console.warn("dashboard:", e.name, e.message);
    } finally {
      busy = false;
    }
  };
}

const refreshFigures = loader(async () => {
  const r = await api("/api/admin/figures?range=" + range);
  if (!r.ok) throw new Error("figures: " + r.status);
  figures = await r.json();
  figuresAt = Date.now();
  renderFigures(figures);
});

const refreshOverview = loader(async () => {
  const r = await api("/api/admin/overview");
  if (!r.ok) throw new Error("overview: " + r.status);
  overview = await r.json();
  renderOverview(overview);
});

let deadAt = 0;
const refreshDead = loader(async () => {
  const r = await api("/api/admin/dead-letters");
  if (!r.ok) throw new Error("dead letters: " + r.status);
  const { data } = await r.json();
  deadAt = Date.now();
  $("dead-count").textContent = data.length
    ? `${data.length} task(s) failed for good (newest first, from the store).`
    : "No dead letters.";
  fill($("dead"), data.map((t) => {
    const button = el("button", "Retry");
    button.id = "retry-" + t.id;
    button.disabled = t.status !== "failed";
    button.onclick = async () => {
      button.disabled = true;
      try {
        const res = await api(`/api/admin/tasks/${t.id}/retry`, { method: "POST" });
        if (res.ok) location.hash = "#task/" + t.id;
        else button.textContent = "Retry refused: " + res.status;
      } catch (e) {
        button.textContent = "Retry failed: " + e.message;
      }
    };
    const err = t.error ? `${t.error.code || ""} ${t.error.message || ""}` : "";
    return row([taskLink(t.id), t.tenant, t.status, t.attempts, err, t.failed_at, button]);
  }));
  rendered("dead");
});

const refreshTask = loader(async (id) => {
  const r = await api("/api/admin/tasks/" + id);
  if (!r.ok) {
    $("task-meta").replaceChildren(el("dt", "error"), el("dd", r.status));
    rendered("task");
    return;
  }
  const t = await r.json();
  $("task-id").textContent = t.id;
  const meta = [["status", t.status], ["tenant", t.tenant], ["model", t.model],
    ["attempts", t.attempt_count], ["batch", t.batch_id], ["processor", t.processor],
    ["created", t.created_at], ["started", t.started_at], ["completed", t.completed_at],
    ["metadata", JSON.stringify(t.metadata)],
    ["error", t.error ? JSON.stringify(t.error) : "-"]];
  if (t.request) meta.push(["request", JSON.stringify(t.request)]);
  $("task-meta").replaceChildren(...meta.flatMap(([k, v]) => {
    const dd = el("dd", v === null || v === undefined ? "-" : v);
    if (k === "status") dd.className = "status status-" + v;
    return [el("dt", k), dd];
  }));
  $("task-meta").dataset.status = t.status;
  // A failed task's error stands where its result would.
  const failed = t.status === "failed" || (t.status === "cancelled" && t.error);
  $("task-result-title").textContent = failed ? "Error" : "Result";
  $("task-result").textContent = failed
    ? `${(t.error && t.error.code) || ""}: ${(t.error && t.error.message) || ""}`
    : t.result ? (t.result.content || "") : waitingWords(t);
  fill($("task-timeline"), (t.timeline || []).map(timelineStep));
  fill($("task-attempts"), (t.attempts || []).map((a) => row([a.number, a.provider || "-",
    a.model || "-", a.started_at, num(a.latency_ms), num(a.first_token_ms), a.outcome,
    a.processor || "-", errorWords(a.error)])));
  $("task-events").replaceChildren(...t.events.map((e) =>
    el("li", `${e.at} ${e.type}: ${JSON.stringify(e.data)}`)));
  rendered("task");
});

function errorWords(e) {
  if (!e) return "";
  return `${e.code || "error"}${e.status ? " (" + e.status + ")" : ""}: ${e.message || ""}`;
}

// One step of a task's story: its time, what happened and, for a provider call, who was
// called for which model, where, how long it took and how it ended. A list, not a table: it
// wraps to a phone's width instead of running off the side.
function timelineStep(s) {
  const li = el("li", null, "step" + (s.status ? " step-" + s.status : ""));
  const when = el("div", null, "when");
  const time = el("time", s.at ? s.at.slice(11, 23) : "-");
  if (s.at) { time.dateTime = s.at; time.title = s.at; }
  when.append(time);
  if (s.since_submit_ms !== null && s.since_submit_ms !== undefined) {
    when.append(" ", el("span", `+${s.since_submit_ms} ms`, "hint"));
  }
  li.append(when, el("div", s.event, "what"));
  const detail = [];
  if (s.provider) detail.push("provider " + s.provider);
  if (s.model) detail.push("model " + s.model);
  if (s.processor) detail.push("processor " + s.processor);
  if (s.latency_ms !== null && s.latency_ms !== undefined) detail.push(s.latency_ms + " ms");
  if (s.first_token_ms !== null && s.first_token_ms !== undefined) {
    detail.push("first token " + s.first_token_ms + " ms");
  }
  if (s.batch_id) detail.push("batch " + s.batch_id);
  if (detail.length) li.append(el("div", detail.join(" · "), "detail"));
  if (s.error) li.append(el("div", errorWords(s.error), "error"));
  return li;
}

// Why a task not yet answered waits, and where it stands in line.
function waitingWords(t) {
  const w = t.waiting_for;
  if (!w && !t.queue_position) return "(no result yet)";
  const why = w ? `waiting for ${w.reason.replace(/_/g, " ")}` +
    (w.until ? ` until ${w.until}` : "") : "running";
  const place = t.queue_position ? `; number ${t.queue_position} in its tenant's line` : "";
  return `(no result yet: ${why}${place})`;
}

// --- Live: one stream for the running tasks ------------------------------------------------
const boxes = new Map();  // task id -> {box, status, reasoning, content, seenAt}
let live = null;          // the open stream: {controller}

function startLive() {
  if (live) return;
  const controller = new AbortController();
  live = { controller };
  readLive(controller).catch((e) => {
    if (e.message !== "unauthorized" && e.name !== "AbortError") {
      console.warn("dashboard: live stream", e.name, e.message);
    }
  }).finally(() => {
    if (live && live.controller === controller) live = null;  // the next tick reopens it
  });
}

function stopLive() {
  if (live) live.controller.abort();
  live = null;
}

async function readLive(controller) {
  let idle = setTimeout(() => controller.abort(), STREAM_IDLE_MS);
  try {
    const r = await api("/api/admin/live/events", { signal: controller.signal });
    if (!r.ok || !r.body) return;
    // A new stream replays each task from its start: boxes are drawn afresh from it.
    for (const b of boxes.values()) b.box.remove();
    boxes.clear();
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      clearTimeout(idle);
      idle = setTimeout(() => controller.abort(), STREAM_IDLE_MS);
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let type = "message"; const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event: ")) type = line.slice(7);
          else if (line.startsWith("data: ")) data.push(line.slice(6));
        }
        if (!data.length) continue;  // a comment: keep-alive
        const payload = JSON.parse(data.join("\n"));
        if (type === "tasks") showFollowing(payload); else onTaskEvent(type, payload);
      }
    }
  } finally {
    clearTimeout(idle);
  }
}

function showFollowing({ following, running, cap }) {
  const now = Date.now();
  for (const t of following) {
    const known = boxes.get(t.id) || follow(t);
    known.seenAt = now;
  }
  for (const [id, b] of boxes) {
    if (now - b.seenAt > LINGER_MS) { b.box.remove(); boxes.delete(id); }
  }
  $("live-count").textContent = running
    ? `${running} task(s) running; following ${following.length}` +
      `${running > following.length ? ` (at most ${cap} at once, the oldest first)` : ""}.`
    : "No task running.";
  rendered("live");
}

function follow(task) {
  const box = el("div", null, "live-task");
  box.id = "live-" + task.id;
  const head = el("div");
  const status = el("b", task.status, "status status-" + task.status);
  head.append(taskLink(task.id), " ", el("span", task.tenant, "hint"), " ", status);
  const reasoning = el("div", "", "tokens reasoning");
  const content = el("div", "", "tokens content");
  box.append(head, reasoning, content);
  $("live-list").prepend(box);
  const entry = { box, status, reasoning, content, seenAt: Date.now() };
  boxes.set(task.id, entry);
  return entry;
}

function onTaskEvent(type, { task, data }) {
  const b = boxes.get(task);
  if (!b) return;
  if (type === "content") b.content.textContent += data.delta;
  else if (type === "reasoning") b.reasoning.textContent += data.delta;
  else if (type === "reset") { b.content.textContent = ""; b.reasoning.textContent = ""; }
  else if (data && data.status) setStatus(b.status, data.status);
}

function setStatus(node, s) {
  node.textContent = s;
  node.className = "status status-" + s;
}

// --- routing and refresh ------------------------------------------------------------------
function route() {
  const hash = location.hash.slice(1) || "overview";
  const [view, arg] = hash.split("/");
  const section = $("view-" + view) || $("view-overview");
  document.querySelectorAll(".view").forEach((v) => v.classList.toggle("active", v === section));
  document.querySelectorAll("#tabs a").forEach((a) =>
    a.classList.toggle("active", a.getAttribute("href") === "#" + view));
  return { view: section.id.slice(5), arg };
}

function tick(entered = false) {
  const { view, arg } = route();
  if (view === "live") startLive(); else stopLive();
  refreshOverview();  // the access line and the overview's four views
  if (view === "overview" && (entered || Date.now() - figuresAt >= FIGURES_EVERY_MS)) {
    if (entered && figures) drawHistory(figures.series);
    refreshFigures();
  }
  if (view === "dead" && (entered || Date.now() - deadAt >= DEAD_EVERY_MS)) refreshDead();
  if (view === "task" && arg) refreshTask(arg);
}

$("key-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(KEY_ITEM, $("key").value.trim());
  $("key").value = "";
  stopLive();
  for (const b of boxes.values()) b.box.remove();
  boxes.clear();
  tick(true);
});
window.addEventListener("hashchange", () => tick(true));
document.querySelectorAll("[data-range]").forEach((a) => a.addEventListener("click", (ev) => {
  ev.preventDefault();
  range = a.dataset.range;
  figuresAt = 0;
  tick(true);
}));
tick(true);
setInterval(tick, 1000);
