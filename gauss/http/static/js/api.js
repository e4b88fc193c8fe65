// REST calls and the API token (SPEC sections 4 and 8).
//
// The token is kept in sessionStorage (this tab only), sent as
// "Authorization: Bearer <token>" on REST and as ?token= on /ws, which a
// browser's WebSocket cannot give headers.

const TOKEN_KEY = "gauss.token";

/** A 401 from the API: the page asks for the token again. */
export class AuthRequired extends Error {}

/** Any other error answer ({"error": ...}) or an unreachable server. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

function headers(accept) {
  const out = { Accept: accept };
  const t = token();
  if (t) out.Authorization = `Bearer ${t}`;
  return out;
}

async function request(path, accept) {
  let resp;
  try {
    resp = await fetch(path, { headers: headers(accept), cache: "no-store" });
  } catch (exc) {
    throw new ApiError(0, `server unreachable (${exc.message})`);
  }
  if (resp.status === 401) throw new AuthRequired("the API refused the token");
  if (!resp.ok) {
    let message = resp.statusText;
    try {
      message = (await resp.json()).error || message;
    } catch {
      // not a JSON error body: keep the status text
    }
    throw new ApiError(resp.status, `${path}: ${resp.status} ${message}`);
  }
  return resp;
}

export async function getJSON(path) {
  return (await request(path, "application/json")).json();
}

export async function getText(path) {
  return (await request(path, "text/plain")).text();
}

/** /api/topics/{name}... with the name and parameters encoded. */
export function topicPath(name, suffix = "", params = {}) {
  const query = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null) query.set(k, String(v));
  const qs = query.toString();
  return `/api/topics/${encodeURIComponent(name)}${suffix}${qs ? "?" + qs : ""}`;
}

/** The /ws URL of this page's own origin, with the token as ?token=. */
export function wsURL() {
  const url = new URL("/ws", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  const t = token();
  if (t) url.searchParams.set("token", t);
  return url.href;
}

/** Per-topic counters of a Prometheus text exposition: {topic: value}. */
export function topicCounters(exposition, metric) {
  const out = {};
  const prefix = metric + "{";
  for (const line of exposition.split("\n")) {
    if (!line.startsWith(prefix)) continue;
    const close = line.lastIndexOf("}");
    const match = /(?:^|,)topic="((?:[^"\\]|\\.)*)"/.exec(line.slice(prefix.length, close));
    if (!match) continue;
    const value = Number(line.slice(close + 1).trim().split(" ")[0]);
    if (Number.isFinite(value)) out[match[1].replace(/\\(.)/g, "$1")] = value;
  }
  return out;
}
