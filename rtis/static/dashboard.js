// The rtis dashboard: topics with live rates, a live tail, a windowed-query
// chart, dead letters, and the connection state. Uses rtis.js for everything
// live and the REST API for the rest. No build step, no dependencies.

import { connect } from "/rtis.js";
import { PALETTE, drawLineChart, drawSparkline } from "/static/chart.js";

const TAIL_ROWS = 200; // rows kept in the tail
const TAIL_CONTEXT = 20; // history shown when a tail starts
const CHART_WINDOWS = 60; // windows kept per chart
const TOPICS_EVERY = 2000;
const ERRORS_EVERY = 5000;
const RATE_SAMPLES = 30;
// Not metrics: row identity, window bounds, and the correction counter of late updates.
const WINDOW_COLUMNS = new Set(["offset", "time", "window_start", "window_end", "revision"]);

const $ = (sel) => document.querySelector(sel);
const params = new URLSearchParams(location.search);
let token = params.get("token") || sessionStorage.getItem("rtis.token") || null;
if (params.has("token")) {
  // Keep the token out of the address bar, history and screenshots.
  sessionStorage.setItem("rtis.token", token);
  params.delete("token");
  history.replaceState(null, "", `${location.pathname}${params.size ? `?${params}` : ""}`);
}

// -- REST ------------------------------------------------------------------------

async function api(path) {
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const resp = await fetch(path, { headers });
  if (resp.status === 401 || resp.status === 403) showTokenForm();
  if (!resp.ok) {
    let message = `${resp.status} ${resp.statusText}`;
    try {
      message = (await resp.json()).error.message;
    } catch {
      /* not our error shape */
    }
    throw new Error(message);
  }
  return resp.json();
}

function text(tag, content, attrs = {}) {
  const node = document.createElement(tag);
  node.textContent = content;
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

// -- connection indicator -----------------------------------------------------------

const LABELS = {
  connecting: () => "Connecting…",
  open: () => "Live",
  reconnecting: (info) => `Reconnecting in ${(info.delay / 1000).toFixed(1)} s (attempt ${info.attempt})`,
  closed: (info) => `Disconnected${info.reason ? `: ${info.reason}` : ""}`,
};

function showConnection(state, info) {
  const box = $("#conn");
  box.dataset.state = state;
  $("#conn-label").textContent = LABELS[state](info);
  if (state === "closed" && info.code === 4401) showTokenForm();
}

const client = connect({ token: () => token, onState: showConnection });

function showTokenForm() {
  $("#auth").hidden = false;
}

$("#auth").addEventListener("submit", (e) => {
  e.preventDefault();
  token = $("#auth-token").value.trim() || null;
  if (token) sessionStorage.setItem("rtis.token", token);
  else sessionStorage.removeItem("rtis.token");
  $("#auth").hidden = true;
  client.reconnect();
  refreshTopics();
  refreshErrors();
});

// -- topics -------------------------------------------------------------------------

let topics = []; // latest GET /api/topics
const rateHistory = new Map(); // topic -> recent rates

async function refreshTopics() {
  try {
    topics = (await api("/api/topics")).topics;
  } catch (e) {
    $("#topics-status").textContent = `Could not load topics: ${e.message}`;
    return;
  }
  $("#topics-status").textContent = "";
  const body = $("#topics-body");
  const rows = [];
  for (const t of topics) {
    const history = rateHistory.get(t.name) ?? [];
    history.push(t.rate);
    if (history.length > RATE_SAMPLES) history.shift();
    rateHistory.set(t.name, history);

    const tr = document.createElement("tr");
    tr.dataset.topic = t.name;
    const name = document.createElement("th");
    name.scope = "row";
    const button = text("button", t.name, { type: "button", class: "link", "aria-label": `Tail ${t.name}` });
    button.addEventListener("click", () => {
      $("#tail-topic").value = t.name;
      startTail();
      $("#tail-h").scrollIntoView({ behavior: "smooth", block: "start" });
    });
    name.append(button);
    const rate = document.createElement("td");
    rate.className = "num rate";
    const spark = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    spark.setAttribute("class", "spark");
    spark.setAttribute("aria-hidden", "true");
    drawSparkline(spark, history);
    rate.append(spark, text("span", `${formatRate(t.rate)}/s`));
    tr.append(
      name,
      text("td", t.kind, { class: "kind" }),
      text("td", String(t.last_offset), { class: "num" }),
      rate,
      text("td", String(t.subscribers), { class: "num subs" }),
    );
    rows.push(tr);
  }
  body.replaceChildren(...rows);
  syncTopicChoices();
}

function formatRate(r) {
  return r >= 100 ? r.toFixed(0) : r >= 10 ? r.toFixed(1) : r.toFixed(2);
}

function syncTopicChoices() {
  const select = $("#tail-topic");
  const names = topics.map((t) => t.name);
  const current = [...select.options].map((o) => o.value);
  if (names.join("\n") !== current.join("\n")) {
    const chosen = select.value || params.get("tail") || names[0];
    select.replaceChildren(...names.map((n) => text("option", n, { value: n })));
    if (names.includes(chosen)) select.value = chosen;
  }
  if (!tail.sub && !tail.paused && select.value) startTail();
  syncChartChoices();
}

// -- live tail ----------------------------------------------------------------------

const tail = { sub: null, topic: null, where: "", paused: false, shown: 0 };

function headOf(topic) {
  return topics.find((t) => t.name === topic)?.last_offset ?? 0;
}

function startTail({ since } = {}) {
  const topic = $("#tail-topic").value;
  if (!topic) return;
  const where = $("#tail-where").value.trim();
  tail.sub?.unsubscribe();
  if (topic !== tail.topic || where !== tail.where) {
    $("#tail-list").replaceChildren();
    tail.shown = 0;
  }
  tail.topic = topic;
  tail.where = where;
  tail.paused = false;
  setPaused(false);
  $("#tail-where").removeAttribute("aria-invalid");
  setTailStatus(`Tailing ${topic}${where ? ` where ${where}` : ""}`);
  tail.sub = client.subscribe(topic, {
    since: since ?? Math.max(0, headOf(topic) - TAIL_CONTEXT),
    where: where || undefined,
    onEvents: (events) => addTailRows(events),
    onSubscribed: (reply) => {
      $("#tail").dataset.subscribed = topic;
      if (reply.recovered === false) setTailStatus(`Tailing ${topic}: older messages are no longer retained`);
    },
    onError: (err) => {
      tail.sub = null;
      if (err.code === "bad_where") $("#tail-where").setAttribute("aria-invalid", "true");
      setTailStatus(`Cannot tail ${topic}: ${err.message}`);
    },
  });
}

function setTailStatus(message) {
  $("#tail-status").textContent = message;
}

function addTailRows(events) {
  const list = $("#tail-list");
  const frag = document.createDocumentFragment();
  for (let i = events.length - 1; i >= 0; i--) {
    const e = events[i];
    const li = document.createElement("li");
    li.dataset.offset = e.offset;
    li.append(
      text("span", `#${e.offset}`, { class: "offset" }),
      text("time", e.time.slice(11, 23), { datetime: e.time }),
      text("code", JSON.stringify(e.data)),
    );
    frag.append(li);
  }
  list.prepend(frag);
  while (list.childElementCount > TAIL_ROWS) list.lastElementChild.remove();
  tail.shown = Math.max(tail.shown, events[events.length - 1].offset);
}

function setPaused(paused) {
  const button = $("#tail-pause");
  button.setAttribute("aria-pressed", String(paused));
  button.textContent = paused ? "Resume" : "Pause";
  $("#tail").dataset.paused = String(paused);
}

$("#tail-form").addEventListener("submit", (e) => {
  e.preventDefault();
  startTail();
});
$("#tail-topic").addEventListener("change", () => startTail());

$("#tail-pause").addEventListener("click", () => {
  if (!tail.paused) {
    // Paused: stop the subscription, so a paused tab costs the server nothing.
    tail.paused = true;
    tail.sub?.unsubscribe();
    tail.sub = null;
    setPaused(true);
    setTailStatus(`Paused at #${tail.shown}`);
    return;
  }
  // Resume from the last row shown: replayed exactly, unless so much was
  // missed that it would not fit in the tail anyway.
  const head = headOf(tail.topic);
  let since = tail.shown;
  if (head - since > TAIL_ROWS) {
    const skipped = head - TAIL_ROWS - since;
    const li = text("li", `… ${skipped} messages skipped while paused`, { class: "gap" });
    $("#tail-list").prepend(li);
    since = head - TAIL_ROWS;
  }
  startTail({ since });
});

// -- windowed-query chart ---------------------------------------------------------

const chart = {
  query: null,
  metric: null,
  sub: null,
  rows: new Map(), // group + window_start -> row (a late correction replaces its row)
  groups: [], // group column names
  metrics: [], // metric column names
  colors: new Map(),
  userChose: false,
  kinds: new Map(), // query -> "windowed" | "plain" | "empty"
};

let choosing = false;

async function syncChartChoices() {
  if (choosing) return;
  choosing = true;
  try {
    await chooseChart();
  } finally {
    choosing = false;
  }
}

async function chooseChart() {
  const queries = topics.filter((t) => t.kind === "query").map((t) => t.name);
  const select = $("#chart-query");
  if ([...select.options].map((o) => o.value).join("\n") !== queries.join("\n")) {
    select.replaceChildren(...queries.map((n) => text("option", n, { value: n })));
    if (chart.query) select.value = chart.query;
  }
  if (queries.length === 0) {
    setChartStatus("No queries are configured.");
    return;
  }
  if (chart.userChose || chart.kinds.get(chart.query) === "windowed") return;
  // Find a windowed query: the first whose rows carry window_start; while
  // none has rows yet, pick one without rows (its first window is still open).
  const wanted = params.get("chart");
  for (const q of queries) {
    const kind = chart.kinds.get(q);
    if (kind !== "windowed" && kind !== "plain") chart.kinds.set(q, await classify(q));
  }
  const choice =
    (queries.includes(wanted) && wanted) ||
    queries.find((q) => chart.kinds.get(q) === "windowed") ||
    queries.find((q) => chart.kinds.get(q) === "empty") ||
    queries[0];
  if (choice !== chart.query) await startChart(choice);
}

async function classify(query) {
  try {
    const { rows } = await api(`/api/queries/${encodeURIComponent(query)}/rows?limit=1`);
    if (rows.length === 0) return "empty";
    return "window_start" in rows[0] ? "windowed" : "plain";
  } catch {
    return "empty";
  }
}

async function startChart(query) {
  chart.sub?.unsubscribe();
  chart.sub = null;
  chart.query = query;
  chart.rows.clear();
  chart.groups = [];
  chart.metrics = [];
  $("#chart-query").value = query;
  let rows = [];
  try {
    rows = (await api(`/api/queries/${encodeURIComponent(query)}/rows?limit=1000`)).rows;
  } catch (e) {
    setChartStatus(`Could not load ${query}: ${e.message}`);
  }
  if (chart.query !== query) return;
  for (const row of rows) addChartRow(row);
  const since = rows.length ? rows[rows.length - 1].offset : headOf(query);
  chart.sub = client.subscribe(query, {
    since,
    onEvents: (events) => {
      for (const e of events) addChartRow({ offset: e.offset, time: e.time, ...e.data });
      renderChart();
    },
    onError: (err) => setChartStatus(`Cannot follow ${query}: ${err.message}`),
  });
  renderChart();
}

function addChartRow(row) {
  if (!("window_start" in row)) return;
  chart.kinds.set(chart.query, "windowed");
  if (chart.groups.length === 0 && chart.metrics.length === 0) {
    for (const [k, v] of Object.entries(row)) {
      if (WINDOW_COLUMNS.has(k)) continue;
      (typeof v === "number" ? chart.metrics : chart.groups).push(k);
    }
    syncMetricChoices();
  }
  const group = chart.groups.map((g) => row[g] ?? "∅").join(" / ") || "all";
  chart.rows.set(`${group}\u0000${row.window_start}`, { group, row });
}

function syncMetricChoices() {
  const select = $("#chart-metric");
  select.replaceChildren(...chart.metrics.map((m) => text("option", m, { value: m })));
  chart.metric = chart.metrics.includes(chart.metric) ? chart.metric : chart.metrics[0] ?? null;
  if (chart.metric) select.value = chart.metric;
}

function renderChart() {
  const svg = $("#chart-svg");
  const windows = [...new Set([...chart.rows.values()].map((r) => r.row.window_start))].sort();
  const keep = new Set(windows.slice(-CHART_WINDOWS));
  const series = new Map();
  for (const { group, row } of chart.rows.values()) {
    if (!keep.has(row.window_start)) continue;
    if (!series.has(group)) series.set(group, []);
    series.get(group).push([Date.parse(row.window_start), Number(row[chart.metric] ?? 0)]);
  }
  const list = [...series.entries()].sort().map(([name, points]) => {
    if (!chart.colors.has(name)) chart.colors.set(name, PALETTE[chart.colors.size % PALETTE.length]);
    return { name, color: chart.colors.get(name), points };
  });
  // Drawn at the size it is shown, so that its text stays legible on a phone.
  const width = Math.max(280, Math.round(svg.clientWidth || 640));
  drawLineChart(svg, list, { width, height: Math.round(Math.min(300, Math.max(200, width * 0.45))) });
  svg.dataset.windows = String(keep.size);
  svg.dataset.points = String(list.reduce((n, s) => n + s.points.length, 0));
  $("#chart-legend").replaceChildren(
    ...list.map((s) => {
      const li = text("li", s.name);
      const swatch = text("span", "", { class: "swatch", "aria-hidden": "true" });
      swatch.style.background = s.color;
      li.prepend(swatch);
      return li;
    }),
  );
  const label = chart.metric ? `${chart.metric} per window of ${chart.query}` : chart.query;
  $("#chart-title").textContent = label;
  if (chart.rows.size === 0) {
    setChartStatus(`${chart.query}: no windows have closed yet.`);
  } else if (chart.metrics.length === 0) {
    setChartStatus(`${chart.query} has no numeric columns to draw.`);
  } else {
    const last = windows[windows.length - 1];
    setChartStatus(`${list.length} group${list.length === 1 ? "" : "s"}, ${keep.size} windows; latest from ${last} (UTC)`);
  }
}

function setChartStatus(message) {
  $("#chart-status").textContent = message;
}

$("#chart-query").addEventListener("change", (e) => {
  chart.userChose = true;
  startChart(e.target.value);
});
$("#chart-metric").addEventListener("change", (e) => {
  chart.metric = e.target.value;
  renderChart();
});
$("#chart-form").addEventListener("submit", (e) => e.preventDefault());
let lastChartWidth = 0;
new ResizeObserver(() => {
  const width = $("#chart-svg").clientWidth;
  if (chart.query && Math.abs(width - lastChartWidth) > 8) {
    lastChartWidth = width;
    renderChart();
  }
}).observe($("#chart-svg"));

// -- dead letters ---------------------------------------------------------------------

async function refreshErrors() {
  let letters;
  try {
    letters = (await api("/api/dead-letters?limit=10")).dead_letters;
  } catch (e) {
    $("#errors-status").textContent = `Could not load dead letters: ${e.message}`;
    return;
  }
  $("#errors-status").textContent = letters.length ? "" : "None: every event so far was valid.";
  $("#errors-body").replaceChildren(
    ...letters.map((d) => {
      const tr = document.createElement("tr");
      const where = d.query ? `query ${d.query}` : `ingest ${d.stream}`;
      tr.append(
        text("td", d.time.replace("T", " ").slice(0, 19), { class: "nowrap" }),
        text("td", where, { class: d.query ? "query" : "ingest" }),
        text("td", `${d.reason}${d.path ? ` (${d.path})` : ""}`, { class: "reason" }),
        text("td", "", { class: "data" }),
      );
      const json = JSON.stringify(d.data);
      tr.lastChild.append(text("code", json, { title: json }));
      return tr;
    }),
  );
}

// -- start ---------------------------------------------------------------------------

refreshTopics();
refreshErrors();
setInterval(refreshTopics, TOPICS_EVERY);
setInterval(refreshErrors, ERRORS_EVERY);
