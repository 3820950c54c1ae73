// The console: one layout (header, navigation by role, a view), one API client (api.js), a page per
// route (pages/*.js), live updates from /api/live, and the message catalogue (i18n.js).
import {api, session, whenUnauthorized, startLive, stopLive, onLive, login, ApiError} from "./api.js";
import {t, loadLang, currentLang} from "./i18n.js";
import {esc, message} from "./ui.js";
import {PAGES} from "./pages/index.js";

const state = {me: null, page: null, cleanup: null};

function can(perm) { return !!state.me && state.me.permissions.includes(perm); }

function shell() {
  document.getElementById("logout").textContent = t("auth.logout");
  document.getElementById("lang").value = currentLang();
  const dot = document.getElementById("live-dot");
  dot.title = t(dot.classList.contains("on") ? "live.on" : "live.off");
  document.getElementById("who").textContent = state.me ? `${state.me.subject} · ${t("role." + state.me.role)} · ${state.me.tenant}` : "";
  const nav = document.getElementById("nav");
  const groups = {};
  for (const p of PAGES.filter((p) => p.nav && (!p.permission || can(p.permission)))) (groups[p.group] ||= []).push(p);
  nav.innerHTML = Object.entries(groups).map(([g, ps]) => `<h3>${esc(t("nav.group." + g))}</h3>` +
    ps.map((p) => `<a href="#/${p.route}" data-route="${p.route}">${esc(t("nav." + p.route))}</a>`).join("")).join("");
  const route = location.hash.slice(2).split("/")[0];
  for (const a of nav.querySelectorAll("a")) a.classList.toggle("active", a.dataset.route === route);
}

function showLogin(note) {
  stopLive();
  state.me = null;
  document.getElementById("nav").hidden = true;
  document.getElementById("logout").hidden = true;
  shell();
  const view = document.getElementById("view");
  view.innerHTML = `<form id="login" class="card" data-testid="login">
    <h1>${esc(t("auth.title"))}</h1>
    ${note ? message("info", note) : ""}
    <label>${esc(t("auth.username"))}<input id="l-user" autocomplete="username"></label>
    <label>${esc(t("auth.password"))}<input id="l-pass" type="password" autocomplete="current-password"></label>
    <p class="muted">${esc(t("auth.or_key"))}</p>
    <label>${esc(t("auth.key"))}<input id="l-key" autocomplete="off" placeholder="clk_…"></label>
    <div id="l-err"></div>
    <button type="submit">${esc(t("auth.submit"))}</button>
    <p class="muted">${esc(t("auth.demo_hint"))}</p>
    <p class="muted">${esc(t("auth.first_admin"))}</p>
  </form>`;
  view.querySelector("#login").onsubmit = async (ev) => {
    ev.preventDefault();
    const key = view.querySelector("#l-key").value.trim();
    try {
      if (key) session.set(key);
      else await login(view.querySelector("#l-user").value, view.querySelector("#l-pass").value);
      await start();
    } catch (e) {
      session.clear();
      view.querySelector("#l-err").innerHTML = message("error", e instanceof ApiError ? e.detail : String(e));
    }
  };
}

async function render() {
  if (!state.me) return;
  const [route, ...args] = location.hash.slice(2).split("/").map(decodeURIComponent);
  const page = PAGES.find((p) => p.route === route) || PAGES[0];
  if (!route || page.route !== route) { location.replace("#/" + page.route); return; }
  if (state.cleanup) { try { state.cleanup(); } catch (e) { console.warn(e); } state.cleanup = null; }
  document.getElementById("shell").classList.toggle("bare", !!page.bare);
  document.getElementById("nav").hidden = !!page.bare;
  shell();
  const view = document.getElementById("view");
  view.className = page.bare ? "big" : "";
  view.dataset.page = page.route;
  view.dataset.ready = "";
  if (page.permission && !can(page.permission)) {
    view.innerHTML = message("error", t("auth.forbidden", {role: t("role." + state.me.role)}));
    return;
  }
  // Each render gets its own element: a page's late callbacks after navigating away touch a detached
  // element, never the next page.
  view.innerHTML = "";
  const own = document.createElement("div");
  view.appendChild(own);
  const ctx = {view: own, args, me: state.me, can, api, onLive, rerender: render};
  try {
    state.cleanup = (await page.render(ctx)) || null;
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 401)) own.insertAdjacentHTML("beforeend", message("error", String(e.detail || e)));
  }
  view.dataset.ready = "1";
  if (!window.__firstPaint) { window.__firstPaint = performance.now(); performance.mark("console-ready"); }
}

async function start() {
  try {
    state.me = await api("/api/auth/me");
  } catch (e) {
    session.clear();
    showLogin(e instanceof ApiError && e.status === 401 ? t("auth.expired") : "");
    return;
  }
  document.getElementById("nav").hidden = false;
  document.getElementById("logout").hidden = false;
  startLive();
  if (!location.hash.startsWith("#/")) location.replace("#/fleet");
  await render();
}

whenUnauthorized(() => { session.clear(); showLogin(t("auth.expired")); });
window.addEventListener("hashchange", () => { if (!location.hash.includes("key=")) render(); });
document.getElementById("logout").onclick = () => { session.clear(); showLogin(t("auth.logged_out")); };
document.getElementById("lang").onchange = async (ev) => {
  await loadLang(ev.target.value);
  if (state.me) await render(); else showLogin();
};
onLive("state", (s) => {
  const d = document.getElementById("live-dot");
  d.className = "dot " + s;
  d.title = t(s === "on" ? "live.on" : "live.off");
});

(async () => {
  session.takeFromFragment();
  await loadLang();
  if (session.token) await start(); else showLogin();
})();
