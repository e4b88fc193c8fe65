// The Gauss dashboard (SPEC section 8): pickers, chart, quote ticker, topics
// table and health. The view lives in the URL hash: /#ohlc.1m/EURUSD.

import { AuthRequired, getJSON, getText, setToken, token, topicCounters, topicPath, wsURL } from "./api.js";
import { CandleChart } from "./chart.js";
import { Live } from "./live.js";

const REFRESH_MS = 3000;
const HISTORY_LIMIT = 5000;
const QUOTES_TOPIC = "quotes.raw";
const PUBLISHED_METRIC = "gauss_topic_records_published_total";
const UNITS = { s: 1, m: 60, h: 3600, d: 86400, w: 604800 };

const $ = (id) => document.getElementById(id);

const state = {
  topics: [],
  topic: null,
  key: null,
  view: 0, // bumped on every view change: answers for an older view are ignored
  candleSub: null,
  quoteSub: null,
  quote: null,
  loads: 0,
  ws: "closed",
  rates: new Map(),
  previous: null, // {at, counts} of the last refresh, for rates
  authNeeded: false,
};

const chart = new CandleChart($("chart"));
const live = new Live(wsURL, (ws) => {
  state.ws = ws;
  const badge = $("ws-status");
  badge.textContent = `live: ${ws}`;
  badge.className = "badge " + (ws === "open" ? "ok" : ws === "closed" ? "bad" : "");
});

// --- read-only hook for tests and the curious ------------------------------------------------

window.gaussDashboard = Object.freeze({
  bars: () => chart.bars(),
  volumes: () => chart.volumes(),
  view: () => ({ topic: state.topic, key: state.key }),
  quote: () => (state.quote ? { ...state.quote } : null),
  status: () => ({
    ws: state.ws,
    connects: live.connects,
    loads: state.loads,
    epoch: state.candleSub?.epoch ?? null,
    lastSeq: state.candleSub?.lastSeq ?? null,
    authNeeded: state.authNeeded,
  }),
});

// --- helpers -------------------------------------------------------------------------------

function timeframeSeconds(name) {
  const m = /(\d+)([smhdw])$/.exec(name);
  return m ? Number(m[1]) * UNITS[m[2]] : Number.MAX_SAFE_INTEGER;
}

function candleTopics() {
  return state.topics
    .filter((t) => t.format === "candle")
    .map((t) => t.name)
    .sort((a, b) => timeframeSeconds(a) - timeframeSeconds(b) || a.localeCompare(b));
}

function parseHash() {
  const [topic, ...rest] = location.hash.replace(/^#/, "").split("/");
  const decode = (s) => {
    try {
      return decodeURIComponent(s);
    } catch {
      return "";
    }
  };
  return { topic: topic ? decode(topic) : null, key: rest.length ? decode(rest.join("/")) : null };
}

function writeHash() {
  const hash = `#${encodeURIComponent(state.topic)}` + (state.key ? `/${encodeURIComponent(state.key)}` : "");
  if (location.hash !== hash) history.replaceState(null, "", hash);
}

function fillSelect(select, values, selected, label = (v) => v) {
  const current = [...select.options].map((o) => o.value).join("\n");
  if (current !== values.join("\n")) {
    select.replaceChildren(
      ...values.map((v) => {
        const option = document.createElement("option");
        option.value = v;
        option.textContent = label(v);
        return option;
      }),
    );
  }
  select.value = selected ?? "";
}

function showError(text) {
  const el = $("error");
  el.textContent = text || "";
  el.hidden = !text;
}

function fmt(value, digits) {
  return typeof value === "number" && Number.isFinite(value) ? value.toFixed(digits) : "–";
}

// --- the token prompt -------------------------------------------------------------------------

function askForToken(message) {
  state.authNeeded = true;
  live.stop();
  const note = $("token-message");
  note.textContent = message || "";
  note.hidden = !message;
  const dialog = $("token-dialog");
  if (!dialog.open) dialog.showModal();
  $("token-input").focus();
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  setToken($("token-input").value.trim());
  $("token-input").value = "";
  $("token-dialog").close();
  state.authNeeded = false;
  start();
});

$("token-dialog").addEventListener("cancel", (event) => event.preventDefault()); // Esc: nothing works without it

function handleFailure(exc) {
  if (exc instanceof AuthRequired) {
    askForToken(token() ? "That token was refused." : "");
    return;
  }
  showError(exc.message);
}

// --- the view: chart + live candles + ticker --------------------------------------------------

async function loadView() {
  const view = ++state.view;
  const { topic, key } = state;
  if (state.candleSub) live.unsubscribe(state.candleSub);
  if (state.quoteSub) live.unsubscribe(state.quoteSub);
  state.candleSub = state.quoteSub = null;
  state.quote = null;
  renderQuote();
  chart.clear();
  $("chart-title").textContent = key ? `${key} · ${topic}` : topic || "";
  $("chart-empty").hidden = Boolean(key);
  if (!topic || !key) return;

  const answer = await getJSON(topicPath(topic, "", { key, limit: HISTORY_LIMIT }));
  if (view !== state.view) return;
  chart.setHistory(answer.records.map((r) => r.data));
  state.loads += 1;
  const lastSeq = answer.records.reduce((m, r) => Math.max(m, r.seq ?? 0), 0);
  state.candleSub = live.subscribe({
    topic,
    key,
    resume: true,
    sinceSeq: lastSeq,
    onRecords: (records) => {
      for (const r of records) chart.apply(r.data);
      $("chart-empty").hidden = true;
    },
    onReset: () => chart.clear(), // the replay that follows brings every bar back
    onGap: () => {
      // Candle versions this page missed: reload the history rather than guess.
      if (view === state.view) loadView().catch(handleFailure);
    },
    onError: (text) => showError(`${topic}: ${text}`),
  });
  if (state.topics.some((t) => t.name === QUOTES_TOPIC)) {
    // The newest quote from REST, then every change over /ws (conflated: a ticker needs only the last).
    const latestQuote = async () => {
      const latest = await getJSON(topicPath(QUOTES_TOPIC, "/latest", { key }));
      if (view !== state.view || !latest.records.length) return;
      const q = latest.records[0].data;
      if (!state.quote || q.ts_ms >= state.quote.ts_ms) {
        state.quote = q;
        renderQuote();
      }
    };
    await latestQuote();
    if (view !== state.view) return;
    state.quoteSub = live.subscribe({
      topic: QUOTES_TOPIC,
      key,
      policy: "conflate",
      onRecords: (records) => {
        state.quote = records[records.length - 1].data;
        renderQuote();
      },
      onReconnect: () => latestQuote().catch(handleFailure), // quotes sent while the socket was down
      onError: (text) => showError(`${QUOTES_TOPIC}: ${text}`),
    });
  }
}

function renderQuote() {
  const q = state.quote;
  $("ticker-symbol").textContent = state.key || "–";
  const digits = q ? Math.max(chart.precision ?? 5, 2) : 5;
  $("ticker-bid").textContent = fmt(q?.bid, digits);
  $("ticker-ask").textContent = fmt(q?.ask, digits);
  const spread = q ? q.ask - q.bid : NaN;
  // A spread finer than the price's digits (0.0002 on a 200.000 symbol) keeps two significant digits.
  const spreadDigits = spread > 0 && spread < 10 ** -digits ? Math.min(10, Math.ceil(-Math.log10(spread)) + 1) : digits;
  $("ticker-spread").textContent = fmt(spread, spreadDigits);
  $("ticker-time").textContent = q ? new Date(q.ts_ms).toISOString().slice(11, 23) + " UTC" : "";
}

async function symbols(topic) {
  const keys = topic ? await getJSON(topicPath(topic, "/keys")) : [];
  return keys.map((k) => k.key).sort();
}

function fillPickers(topics, names) {
  fillSelect($("timeframe"), topics, state.topic, (t) => t.replace(/^ohlc\./, ""));
  fillSelect($("symbol"), names, state.key);
}

async function chooseView(topic, key) {
  const topics = candleTopics();
  state.topic = topics.includes(topic) ? topic : topics.includes("ohlc.1m") ? "ohlc.1m" : topics[0] || null;
  const names = await symbols(state.topic);
  state.key = names.includes(key) ? key : names[0] || null;
  fillPickers(topics, names);
  if (state.topic) writeHash();
  await loadView();
}

$("timeframe").addEventListener("change", (e) => chooseView(e.target.value, state.key).catch(handleFailure));
$("symbol").addEventListener("change", (e) => chooseView(state.topic, e.target.value).catch(handleFailure));
window.addEventListener("hashchange", () => {
  const { topic, key } = parseHash();
  if (topic !== state.topic || key !== state.key) chooseView(topic, key).catch(handleFailure);
});

// --- topics table + health, every few seconds ------------------------------------------------

async function refreshHealth() {
  const badge = $("health");
  try {
    const health = await getJSON("/api/health");
    badge.textContent = `health: ${health.status}`;
    badge.className = "badge " + (health.status === "ok" ? "ok" : "bad");
  } catch {
    badge.textContent = "health: unreachable";
    badge.className = "badge bad";
  }
}

async function refreshTopics() {
  state.topics = await getJSON("/api/topics");
  let counts = null;
  try {
    counts = topicCounters(await getText("/metrics"), PUBLISHED_METRIC);
  } catch (exc) {
    if (exc instanceof AuthRequired) throw exc;
  }
  const now = performance.now();
  if (!counts) counts = Object.fromEntries(state.topics.map((t) => [t.name, t.records ?? 0]));
  const prev = state.previous;
  if (prev) {
    const seconds = (now - prev.at) / 1000;
    for (const [name, n] of Object.entries(counts)) {
      if (name in prev.counts && seconds > 0) state.rates.set(name, Math.max(0, (n - prev.counts[name]) / seconds));
    }
  }
  state.previous = { at: now, counts };
  renderTopics();
}

function renderTopics() {
  const rows = state.topics.map((t) => {
    const tr = document.createElement("tr");
    if (t.name === state.topic || (t.name === QUOTES_TOPIC && state.quoteSub)) tr.className = "selected";
    const rate = state.rates.get(t.name);
    const cells = [
      [t.name, ""],
      [t.storage, ""],
      [t.format, ""],
      [t.records === null ? (t.error ? "error" : "–") : t.records.toLocaleString("en-US"), "num"],
      [rate === undefined ? "–" : rate.toFixed(rate < 10 ? 1 : 0), "num"],
    ];
    for (const [text, cls] of cells) {
      const td = document.createElement("td");
      td.textContent = text;
      if (cls) td.className = cls;
      tr.append(td);
    }
    if (t.error) tr.title = t.error;
    return tr;
  });
  $("topics").tBodies[0].replaceChildren(...rows);
  $("refreshed").textContent = `refreshed ${new Date().toLocaleTimeString("en-GB")}`;
}

let refreshing = false;
async function refresh() {
  if (refreshing || state.authNeeded) return;
  refreshing = true;
  try {
    await refreshHealth();
    await refreshTopics();
    showError("");
    if (!state.key && candleTopics().length) {
      await chooseView(state.topic, null); // the first symbol may just have arrived
    } else if (state.topic) {
      const view = state.view;
      const names = await symbols(state.topic); // symbols that arrived since are added to the picker
      if (view === state.view) fillPickers(candleTopics(), names);
    }
  } catch (exc) {
    handleFailure(exc);
  } finally {
    refreshing = false;
  }
}

// --- start ----------------------------------------------------------------------------------------

let timer = null;
async function start() {
  try {
    await refreshHealth();
    await refreshTopics();
    live.start(); // after the first REST answer: a refused token asks for a new one first
    const { topic, key } = parseHash();
    await chooseView(topic, key);
  } catch (exc) {
    handleFailure(exc);
    return;
  }
  if (timer === null) timer = setInterval(refresh, REFRESH_MS);
}

start();
