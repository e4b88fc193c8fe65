// The Gauss dashboard (SPEC section 8): pickers, chart, quote ticker, topics
// table and health. The view lives in the URL hash: /#ohlc.1m/EURUSD.

import { AuthRequired, getJSON, getText, setToken, token, topicCounters, topicPath, wsURL } from "./api.js";
import { CandleChart, MAX_DIGITS, priceDigits } from "./chart.js";
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
  quotePushes: 0, // quotes received over /ws: a re-read of the newest quote started before one is stale
  loading: false, // the view's history is on its way (the empty message waits for it)
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
  priceFormat: () => chart.priceFormat(),
  formatPrice: (price) => chart.formatPrice(price),
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

/** "No candles yet" over the chart while the view has no bar (and its history is not on its way). */
function renderEmpty() {
  $("chart-empty").hidden = state.loading || chart.size > 0;
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
    if (state.authNeeded) return; // the prompt is up already (another request of the same round)
    const refused = Boolean(token());
    setToken(""); // a refused token is not kept, not even in this tab
    askForToken(refused ? "That token was refused." : "");
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
  state.loading = Boolean(topic && key);
  renderEmpty();
  if (!topic || !key) return;

  let answer;
  try {
    answer = await getJSON(topicPath(topic, "", { key, limit: HISTORY_LIMIT }));
  } catch (exc) {
    if (view === state.view) {
      state.loading = false;
      renderEmpty();
    }
    throw exc;
  }
  if (view !== state.view) return;
  state.loading = false;
  chart.setHistory(answer.records.map((r) => r.data));
  renderEmpty();
  state.loads += 1;
  const lastSeq = answer.records.reduce((m, r) => Math.max(m, r.seq ?? 0), 0);
  state.candleSub = live.subscribe({
    topic,
    key,
    resume: true,
    sinceSeq: lastSeq,
    onRecords: (records) => {
      for (const r of records) chart.apply(r.data);
      renderEmpty();
    },
    onReset: () => {
      chart.clear(); // the replay that follows brings back every bar the server holds
      renderEmpty(); // and while it holds none, the page says so
    },
    onGap: () => {
      // Candle versions this page missed: reload the history rather than guess.
      if (view === state.view) loadView().catch(handleFailure);
    },
    onError: (text) => showError(`${topic}: ${text}`),
  });
  if (state.topics.some((t) => t.name === QUOTES_TOPIC)) {
    // The newest quote from REST, then every change over /ws (conflated: a ticker needs only the last).
    // After a reconnect the server's newest quote replaces the one shown, even an older one or none
    // (a restarted memory topic no longer holds it), unless a push came meanwhile: that one is newer.
    const latestQuote = async () => {
      const pushes = state.quotePushes;
      const latest = await getJSON(topicPath(QUOTES_TOPIC, "/latest", { key }));
      if (view !== state.view) return;
      const q = latest.records.length ? latest.records[0].data : null;
      if (state.quotePushes === pushes || (q && (!state.quote || q.ts_ms >= state.quote.ts_ms))) {
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
        state.quotePushes += 1;
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
  // The instrument's digits from its own price (1.08501, 201.502, 0.000012340), as on the chart's axis.
  const digits = q ? priceDigits((q.bid + q.ask) / 2 || q.bid || q.ask) : 5;
  $("ticker-bid").textContent = fmt(q?.bid, digits);
  $("ticker-ask").textContent = fmt(q?.ask, digits);
  const spread = q ? q.ask - q.bid : NaN;
  // A spread finer than the price's digits (0.0002 on a 200.000 symbol) keeps two significant digits.
  const spreadDigits =
    spread > 0 && spread < 10 ** -digits ? Math.min(MAX_DIGITS + 2, Math.ceil(-Math.log10(spread)) + 1) : digits;
  $("ticker-spread").textContent = fmt(spread, spreadDigits);
  $("ticker-time").textContent = q ? new Date(q.ts_ms).toISOString().slice(11, 23) + " UTC" : "";
}

async function symbols(topic) {
  const keys = topic ? await getJSON(topicPath(topic, "/keys")) : [];
  return keys.map((k) => k.key).sort();
}

/** The symbol picker lists the server's symbols and the chosen one, held yet or not (a link to it, a reset). */
function fillPickers(topics, names) {
  fillSelect($("timeframe"), topics, state.topic, (t) => t.replace(/^ohlc\./, ""));
  const listed = state.key && !names.includes(state.key) ? [...names, state.key].sort() : names;
  fillSelect($("symbol"), listed, state.key);
}

/**
 * Show `topic` / `key`. A key given (by a link, the URL or the picker) is kept even when the server
 * holds none of its candles yet: the view waits for its first one. Only what is missing is chosen
 * here (no key: the first symbol; a timeframe the server has not: ohlc.1m, else the shortest), and
 * the hash then says what is shown.
 */
async function chooseView(topic, key) {
  const topics = candleTopics();
  state.topic = topics.includes(topic) ? topic : topics.includes("ohlc.1m") ? "ohlc.1m" : topics[0] || null;
  const names = await symbols(state.topic);
  state.key = key || names[0] || null;
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
  // The server says in the page when its API takes a token: with none kept, ask first, so that no
  // request is refused (the browser logs a 401 as a console error).
  if (!token() && document.querySelector('meta[name="gauss-auth"]')?.content === "token") {
    askForToken("");
    return;
  }
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
