// The one way the console talks to the cloud: fetch with the session's credentials, problem+json
// errors as ApiError, and the live stream (server-sent events read with fetch, so the key travels in
// the Authorization header, never in a URL).
const AUTH = "carbonlink.auth";

export class ApiError extends Error {
  constructor(status, detail, body) { super(detail); this.status = status; this.detail = detail; this.body = body; }
}

export const session = {
  get token() { return sessionStorage.getItem(AUTH); },
  set(token) { sessionStorage.setItem(AUTH, token); },
  clear() { sessionStorage.removeItem(AUTH); },
  // A link with #key=... (as `carbonlink demo` prints) signs in once; the fragment never reaches the server.
  takeFromFragment() {
    const m = location.hash.match(/(?:^#|&)key=([^&]+)/);
    if (!m) return false;
    this.set(decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search + "#/fleet");
    return true;
  },
};

let onUnauthorized = () => {};
export function whenUnauthorized(fn) { onUnauthorized = fn; }

export async function api(path, {method = "GET", body, query, raw = false} = {}) {
  const url = query ? `${path}?${new URLSearchParams(Object.entries(query).filter(([, v]) => v !== undefined && v !== null && v !== ""))}` : path;
  const headers = {"Accept": "application/json"};
  if (session.token) headers["Authorization"] = "Bearer " + session.token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(url, {method, headers, cache: "no-store", body: body === undefined ? undefined : JSON.stringify(body)});
  if (raw && r.ok) return r;
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  if (!r.ok) {
    const err = new ApiError(r.status, (data && data.detail) || `${r.status}`, data);
    if (r.status === 401 && path !== "/api/auth/token") onUnauthorized(err);
    throw err;
  }
  return data;
}

export async function login(username, password) {
  const t = await api("/api/auth/token", {method: "POST", body: {username, password}});
  session.set(t.access_token);
}

// --- live updates -------------------------------------------------------------------------------
const listeners = new Map();  // event name -> Set of callbacks
const lastData = new Map();
let stream = null;

export function onLive(event, fn) {
  if (!listeners.has(event)) listeners.set(event, new Set());
  listeners.get(event).add(fn);
  if (lastData.has(event) && event !== "latest") fn(lastData.get(event));
  return () => listeners.get(event).delete(fn);
}

function emit(event, data) {
  lastData.set(event, data);
  for (const fn of listeners.get(event) || []) {
    try { fn(data); } catch (e) { console.warn(e); }
  }
}

export function startLive() {
  if (stream) return;
  const ctl = new AbortController();
  stream = ctl;
  let delay = 1000;
  (async () => {
    while (stream === ctl) {
      try {
        const r = await fetch("/api/live", {headers: {"Authorization": "Bearer " + session.token,
                                                     "Accept": "text/event-stream"}, signal: ctl.signal});
        if (r.status === 401) { onUnauthorized(new ApiError(401, "unauthorized")); return; }
        if (!r.ok) throw new Error(`live ${r.status}`);
        emit("state", "on");
        delay = 1000;
        const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = "";
        for (;;) {
          const {value, done} = await reader.read();
          if (done) break;
          buf += value;
          let i;
          while ((i = buf.indexOf("\n\n")) >= 0) {
            const block = buf.slice(0, i); buf = buf.slice(i + 2);
            let ev = "message"; const lines = [];
            for (const line of block.split("\n")) {
              if (line.startsWith("event:")) ev = line.slice(6).trim();
              else if (line.startsWith("data:")) lines.push(line.slice(5).trim());
            }
            if (lines.length) emit(ev, JSON.parse(lines.join("\n")));
          }
        }
      } catch (e) {
        if (ctl.signal.aborted) return;
      }
      emit("state", "off");
      await new Promise((res) => setTimeout(res, delay + Math.random() * 500));  // jittered, capped backoff
      delay = Math.min(delay * 2, 15000);
    }
  })();
}

export function stopLive() { if (stream) { stream.abort(); stream = null; } }

export function download(name, text, type = "application/json") {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([text], {type}));
  a.download = name;
  document.body.appendChild(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}
