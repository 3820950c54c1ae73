// Operator pages: the fleet tree, a gateway (shadow and commands), dead letters, provisioning, anchoring.
import {api, download, ApiError} from "../api.js";
import {t, num, pct, dateTime, ago, unit} from "../i18n.js";
import {esc, data, table, message, problemText, on} from "../ui.js";
import {lineChart} from "../charts.js";

const HOUR = 3600_000;

function presence(g) {
  if (g.revoked) return `<span class="bad">${esc(t("status.revoked"))}</span>`;
  const s = g.status === "online" ? "online" : "offline";
  return `<span class="${s}" data-testid="presence-${esc(g.id)}">${esc(t("status." + s))}</span>`;
}

// --- fleet: tenant → site → gateway → device → point ------------------------------------------
export async function fleet(ctx) {
  const {view} = ctx;
  view.innerHTML = `<h1>${esc(t("fleet.title"))}</h1>
    <div class="grid2"><div class="card tree" id="tree"></div>
    <div><div class="card" id="detail"><p class="muted">${esc(t("fleet.pick"))}</p></div></div></div>`;
  const treeEl = view.querySelector("#tree");
  let selected = null;
  const tree = await api("/api/console/tree");

  function draw() {
    treeEl.innerHTML = `<ul><li><div class="row"><span class="kind">${esc(t("kind.tenant"))}</span><b>${data(tree.tenant)}</b></div><ul>` +
      tree.sites.map((s) => `<li><div class="row"><span class="kind">${esc(t("kind.site"))}</span><b>${data(s.name)}</b></div><ul>` +
        s.gateways.map((g) => `<li><div class="row"><span class="kind">${esc(t("kind.gateway"))}</span>
          <a href="#/gateway/${encodeURIComponent(g.id)}">${data(g.id)}</a> ${presence(g)}
          <span class="muted">${esc(t("fleet.last_seen", {when: ago(g.last_seen_ms)}))}</span></div><ul>` +
          g.devices.map((d) => `<li><div class="row"><span class="kind">${esc(t("kind.device"))}</span>
            <a href="#" data-device="${esc(d.id)}" data-gateway="${esc(g.id)}">${data(d.id)}</a>
            <span class="muted">${esc(t("fleet.last_data", {when: ago(d.last_ts_ms)}))}</span></div><ul>` +
            d.points.map((p) => `<li><div class="row"><span class="kind">${esc(t("kind.point"))}</span>${data(p.point)}
              <span class="num" data-testid="value-${esc(d.id)}-${esc(p.point)}" data-raw>${esc(num(p.value))}</span>
              ${data(unit(p.unit))} ${p.quality !== "N" ? `<span class="pill warning" data-raw>${esc(p.quality)}</span>` : ""}</div></li>`).join("") +
            `</ul></li>`).join("") + `</ul></li>`).join("") + `</ul></li>`).join("") + `</ul></li></ul>` +
      (tree.sites.length ? "" : message("info", t("fleet.empty")));
  }
  draw();

  async function showDevice(gw, dev) {
    selected = {gw, dev};
    const box = view.querySelector("#detail");
    box.innerHTML = `<h2>${data(dev)}</h2><div id="avail"></div><div id="chart"></div><div id="points"></div>`;
    const end = Math.ceil(Date.now() / HOUR) * HOUR, start = end - 24 * HOUR;
    try {
      const av = await api("/api/availability", {query: {device: dev, gateway: gw, start, end}});
      box.querySelector("#avail").innerHTML = `<h2>${esc(t("fleet.completeness"))}</h2>` + table(["fleet.point", "fleet.per_hour", "fleet.availability"],
        av.items.map((s) => `<tr><td>${data(s.point)}</td><td><span class="hours">${s.hours.map((h) =>
          `<span title="${esc(dateTime(h.start_ms))}: ${esc(num(h.received, 0))}/${esc(num(h.expected, 0))}" style="background:${h.availability === null ? "#d0d5d2" : h.availability >= 0.75 ? "#1f7a4d" : h.availability > 0 ? "#e0a800" : "#f28b82"}"></span>`).join("")}</span></td>
          <td class="num">${esc(pct(s.availability))}</td></tr>`), {testid: "completeness"});
    } catch (e) { box.querySelector("#avail").innerHTML = message("error", problemText(e)); }
    const node = tree.sites.flatMap((s) => s.gateways).find((g) => g.id === gw)?.devices.find((d) => d.id === dev);
    const pts = node ? node.points : [];
    box.querySelector("#points").innerHTML = `<h2>${esc(t("fleet.latest"))}</h2>` + table(["fleet.point", "fleet.value", "fleet.time", ""],
      pts.map((p) => `<tr><td>${data(p.point)}</td><td class="num">${data(num(p.value))} ${data(unit(p.unit))}</td><td>${esc(dateTime(p.ts_ms))}</td>
        <td><button class="secondary" data-proof="${esc(p.point)}" data-ts="${p.ts_ms}">${esc(t("proof.download"))}</button>
        <button class="secondary" data-chart="${esc(p.point)}">${esc(t("fleet.chart"))}</button></td></tr>`));
    box.querySelector("#points").insertAdjacentHTML("beforeend", `<div id="proof-msg"></div>`);
  }

  on(treeEl, "a[data-device]", "click", (ev, a) => { ev.preventDefault(); showDevice(a.dataset.gateway, a.dataset.device); });
  on(view.querySelector("#detail"), "button[data-proof]", "click", async (_, b) => {
    await proofDownload(selected.gw, selected.dev, b.dataset.proof, Number(b.dataset.ts), view.querySelector("#proof-msg"));
  });
  on(view.querySelector("#detail"), "button[data-chart]", "click", async (_, b) => {
    const page = await api("/api/readings", {query: {device: selected.dev, gateway: selected.gw, point: b.dataset.chart, start: Date.now() - 15 * 60_000, limit: 5000}});
    const c = view.querySelector("#chart");
    c.innerHTML = `<h2>${data(b.dataset.chart)} · ${esc(t("fleet.last_15"))}</h2>`;
    c.appendChild(lineChart(page.items.map((r) => ({x: Date.parse(r.ts), y: r.value})), {format: (v) => num(v), timeFormat: (x) => new Intl.DateTimeFormat(document.documentElement.lang, {timeStyle: "medium"}).format(x)}));
  });

  // Live: presence and latest values change in place.
  const offP = ctx.onLive("presence", (rows) => {
    for (const g of rows) {
      const node = tree.sites.flatMap((s) => s.gateways).find((x) => x.id === g.id);
      if (node) Object.assign(node, {status: g.status, last_seen_ms: g.last_seen_ms, revoked: g.revoked});
      const el = treeEl.querySelector(`[data-testid="presence-${CSS.escape(g.id)}"]`);
      if (el) el.outerHTML = presence(g);
    }
  });
  const offL = ctx.onLive("latest", (msg) => {
    for (const r of msg.items) {
      const el = treeEl.querySelector(`[data-testid="value-${CSS.escape(r.device)}-${CSS.escape(r.point)}"]`);
      if (el) el.textContent = num(r.value);
      const dev = tree.sites.flatMap((s) => s.gateways).find((g) => g.id === r.gateway)?.devices.find((d) => d.id === r.device);
      const p = dev?.points.find((x) => x.point === r.point);
      if (p) Object.assign(p, {value: r.value, ts_ms: r.ts_ms, quality: r.quality});
      if (!el && !dev) { api("/api/console/tree").then((x) => { Object.assign(tree, x); draw(); }); break; }
    }
  });
  return () => { offP(); offL(); };
}

export async function proofDownload(gateway, device, point, ts, box) {
  try {
    const bundle = await api("/api/proof", {query: {gateway, device, point, ts}});
    download(`proof-${gateway}-${device}-${point}-${ts}.json`, JSON.stringify(bundle, null, 2));
    if (box) box.innerHTML = message("info", t("proof.saved"));
  } catch (e) {
    if (box) box.innerHTML = message(e instanceof ApiError && e.status === 409 ? "warn" : "error",
      e instanceof ApiError && e.status === 409 ? t("proof.not_yet") : problemText(e));
  }
}

// --- one gateway: shadow desired vs reported, the editor, commands ------------------------------

// What the cloud checks about desired (cloud/shadows.py DesiredState), checked here first so a mistake
// shows before anything is sent; the API stays the judge (its 422 is shown as well).
const LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"];
function desiredProblems(d) {
  const out = [];
  const num = (path, v, lo, hi, int) => {
    if (v === null || v === undefined) return;
    if (typeof v !== "number" || (int && !Number.isInteger(v)) || !(v > lo || (int && v >= lo)) || v > hi) out.push({key: path, expected: t(int ? "shadow.expect_int" : "shadow.expect_number", {lo, hi})});
  };
  if (d.log_level !== undefined && d.log_level !== null && !LEVELS.includes(d.log_level)) out.push({key: "log_level", expected: LEVELS.join(" | ")});
  if (d.batch !== undefined && d.batch !== null) {
    if (typeof d.batch !== "object" || Array.isArray(d.batch)) out.push({key: "batch", expected: t("shadow.expect_object")});
    else { num("batch.max_readings", d.batch.max_readings, 1, 10000, true); num("batch.max_age_s", d.batch.max_age_s, 0, 3600, false); }
  }
  if (d.devices !== undefined && d.devices !== null) {
    if (typeof d.devices !== "object" || Array.isArray(d.devices)) out.push({key: "devices", expected: t("shadow.expect_object")});
    else for (const [id, dev] of Object.entries(d.devices)) {
      if (!dev || typeof dev !== "object" || Array.isArray(dev)) { out.push({key: `devices.${id}`, expected: t("shadow.expect_object")}); continue; }
      if (dev.enabled !== undefined && dev.enabled !== null && typeof dev.enabled !== "boolean") out.push({key: `devices.${id}.enabled`, expected: "true | false"});
      num(`devices.${id}.poll_interval_s`, dev.poll_interval_s, 0, 86400, false);
      if (dev.points !== undefined && dev.points !== null && !(Array.isArray(dev.points) && dev.points.every((x) => typeof x === "string"))) out.push({key: `devices.${id}.points`, expected: t("shadow.expect_list")});
    }
  }
  return out;
}
export async function gateway(ctx) {
  const {view, args, can} = ctx;
  const gw = args[0];
  view.innerHTML = `<h1>${esc(t("gateway.title"))} ${data(gw)} <small id="gw-presence"></small></h1>
    <div class="grid2"><div class="card"><h2>${esc(t("shadow.title"))}</h2><div id="shadow"></div></div>
    <div class="card"><h2>${esc(t("shadow.edit"))}</h2><div id="editor"></div></div></div>
    <div class="card"><h2>${esc(t("commands.title"))}</h2><div id="cmd-form"></div><div id="cmd-msg"></div><div id="cmds"></div></div>`;
  let shadow;
  const flat = (o, prefix = "") => Object.entries(o || {}).flatMap(([k, v]) =>
    v && typeof v === "object" && !Array.isArray(v) ? flat(v, prefix + k + ".") : [[prefix + k, v]]);
  async function loadShadow() {
    try { shadow = await api(`/api/gateways/${encodeURIComponent(gw)}/shadow`); }
    catch (e) { view.querySelector("#shadow").innerHTML = message("error", problemText(e)); return false; }
    const d = Object.fromEntries(flat(shadow.state.desired)), r = Object.fromEntries(flat(shadow.state.reported));
    const delta = new Set(flat(shadow.state.delta).map(([k]) => k));
    const keys = [...new Set([...Object.keys(d), ...Object.keys(r)])].sort();
    view.querySelector("#shadow").innerHTML = `<p class="muted">${esc(t("shadow.version", {v: shadow.version}))}</p>` +
      table(["shadow.key", "shadow.desired", "shadow.reported"], keys.map((k) =>
        `<tr class="${[...delta].some((x) => x === k || x.startsWith(k + ".") || k.startsWith(x + ".")) ? "delta" : ""}" data-key="${esc(k)}">
          <td>${data(k)}</td><td>${data(k in d ? JSON.stringify(d[k]) : "–")}</td><td>${data(k in r ? JSON.stringify(r[k]) : "–")}</td></tr>`), {testid: "shadow-table"}) +
      (delta.size ? message("warn", t("shadow.delta", {n: delta.size})) : message("info", t("shadow.in_sync")));
    return true;
  }
  if (!(await loadShadow())) return;

  const ed = view.querySelector("#editor");
  if (!can("control")) {
    ed.innerHTML = message("info", t("shadow.read_only", {role: t("role." + ctx.me.role)}));
  } else {
    ed.innerHTML = `<p class="muted">${esc(t("shadow.editor_help"))}</p>
      <textarea id="desired" rows="10" spellcheck="false" data-testid="shadow-editor"></textarea>
      <div id="ed-msg"></div>
      <button id="save">${esc(t("shadow.save"))}</button> <button class="secondary" id="reload">${esc(t("shadow.reload"))}</button>`;
    const ta = ed.querySelector("#desired");
    let base = shadow.version;
    const fill = () => { ta.value = JSON.stringify(shadow.state.desired, null, 2); base = shadow.version; };
    fill();
    const check = () => {
      let v;
      try {
        v = JSON.parse(ta.value);
        if (!v || typeof v !== "object" || Array.isArray(v)) throw new Error(t("shadow.must_be_object"));
      } catch (e) {
        ta.classList.add("invalid"); ed.querySelector("#ed-msg").innerHTML = message("error", t("shadow.invalid_json", {detail: e.message})); return null;
      }
      const problems = desiredProblems(v);
      ta.classList.toggle("invalid", problems.length > 0);
      ed.querySelector("#ed-msg").innerHTML = problems.map((p) => `<div data-testid="shadow-problem">${message("error", t("shadow.bad_value", p))}</div>`).join("");
      return problems.length ? null : v;
    };
    ta.oninput = check;
    ed.querySelector("#reload").onclick = async () => { await loadShadow(); fill(); check(); };
    ed.querySelector("#save").onclick = async () => {
      const desired = check();
      if (!desired) return;
      // A merge patch: keys removed in the editor become null (deleted), the rest is sent as edited.
      const patch = {...desired};
      for (const k of Object.keys(shadow.state.desired)) if (!(k in desired)) patch[k] = null;
      try {
        shadow = await api(`/api/gateways/${encodeURIComponent(gw)}/shadow`, {method: "PATCH", body: {state: {desired: patch}, version: base}});
        base = shadow.version;
        await loadShadow();
        ed.querySelector("#ed-msg").innerHTML = message("info", t("shadow.saved", {v: shadow.version}));
      } catch (e) {
        ed.querySelector("#ed-msg").innerHTML = e instanceof ApiError && e.status === 409
          ? `<div data-testid="conflict">${message("error", t("shadow.conflict"))}</div>` : message("error", problemText(e));
      }
    };
  }

  async function loadCommands() {
    try {
      const rows = await api(`/api/gateways/${encodeURIComponent(gw)}/commands`, {query: {limit: 20}});
      view.querySelector("#cmds").innerHTML = table(["commands.id", "commands.name", "commands.status", "commands.sent", "commands.result"],
        rows.map((c) => `<tr><td>${data(c.id)}</td><td>${data(c.name)}</td><td><span class="pill ${c.status === "ok" || c.status === "done" ? "" : "warning"}">${esc(t("cmdstatus." + c.status))}</span></td>
          <td>${esc(dateTime(c.created_ms || c.sent_ms))}</td><td>${data(c.result ? JSON.stringify(c.result).slice(0, 160) : c.error || "")}</td></tr>`), {testid: "commands"});
    } catch (e) { view.querySelector("#cmds").innerHTML = message("error", problemText(e)); }
  }
  if (can("control")) {
    view.querySelector("#cmd-form").innerHTML = `<form class="inline" id="cmd"><label>${esc(t("commands.name"))}
      <select id="c-name">${["read_now", "restart_driver", "reload_config"].map((n) => `<option value="${n}">${esc(t("command." + n))}</option>`).join("")}</select></label>
      <label>${esc(t("commands.device"))}<input id="c-dev" placeholder="cems-stack-1"></label>
      <label>${esc(t("commands.timeout"))}<input id="c-timeout" type="number" value="10" min="1" max="300" style="width:5em"></label>
      <button type="submit">${esc(t("commands.send"))}</button></form>`;
    view.querySelector("#cmd").onsubmit = async (ev) => {
      ev.preventDefault();
      const name = view.querySelector("#c-name").value, dev = view.querySelector("#c-dev").value.trim();
      const box = view.querySelector("#cmd-msg");
      box.innerHTML = message("info", t("commands.waiting"));
      try {
        const out = await api(`/api/gateways/${encodeURIComponent(gw)}/commands`, {method: "POST", query: {timeout: view.querySelector("#c-timeout").value},
          body: {name, args: dev ? {device: dev} : {}}});
        box.innerHTML = `<div data-testid="command-result">${message("info", t("commands.done", {status: t("cmdstatus." + out.status)}))}</div>`;
      } catch (e) {
        box.innerHTML = e instanceof ApiError && e.status === 504 ? message("warn", t("commands.timed_out")) : message("error", problemText(e));
      }
      await loadCommands();
    };
  }
  await loadCommands();
  return ctx.onLive("presence", (rows) => {
    const g = rows.find((x) => x.id === gw);
    const el = view.querySelector("#gw-presence");
    if (g && el) el.innerHTML = `${presence(g)} <span class="muted">${esc(t("fleet.last_seen", {when: ago(g.last_seen_ms)}))}</span>`;
  });
}

// --- dead letters ---------------------------------------------------------------------------------
export async function deadLetters(ctx) {
  const {view, can} = ctx;
  view.innerHTML = `<h1>${esc(t("dead.title"))}</h1><div id="msg"></div><div class="card" id="list"></div>`;
  async function load() {
    const rows = await api("/api/dead-letters", {query: {limit: 200}});
    view.querySelector("#list").innerHTML = table(["dead.id", "dead.received", "dead.gateway", "dead.reason", "dead.size", "dead.state", ""],
      rows.map((d) => `<tr><td>${data(d.id)}</td><td>${esc(dateTime(d.received_ms))}</td><td>${data(d.gateway || "–")}</td>
        <td>${data(d.reason)}</td><td class="num">${esc(num(d.size, 0))}</td>
        <td>${d.resolved_ms ? `${esc(t("dead.resolved"))} ${data(d.resolution || "")}` : esc(t("dead.open"))}</td>
        <td>${can("control") && !d.resolved_ms ? `<button class="secondary" data-replay="${d.id}">${esc(t("dead.replay"))}</button>` : ""}</td></tr>`), {testid: "dead-letters"});
  }
  on(view, "button[data-replay]", "click", async (_, b) => {
    try {
      const r = await api(`/api/dead-letters/${b.dataset.replay}/replay`, {method: "POST"});
      view.querySelector("#msg").innerHTML = message(r.outcome === "still-refused" ? "warn" : "info",
        t("dead.outcome." + r.outcome, {id: r.letter, detail: r.detail}));
    } catch (e) { view.querySelector("#msg").innerHTML = message("error", problemText(e)); }
    await load();
  });
  await load();
}

// --- provisioning: claim tokens, gateways' registration --------------------------------------------
export async function provisioning(ctx) {
  const {view} = ctx;
  view.innerHTML = `<h1>${esc(t("prov.title"))}</h1>
    <div class="card"><h2>${esc(t("prov.new_token"))}</h2><form class="inline" id="tok">
      <label>${esc(t("prov.site"))}<input id="t-site" required></label>
      <label>${esc(t("prov.ttl"))}<input id="t-ttl" type="number" value="3600" min="60" style="width:7em"></label>
      <button type="submit">${esc(t("prov.issue"))}</button></form><div id="tok-msg"></div></div>
    <div class="card"><h2>${esc(t("prov.tokens"))}</h2><div id="tokens"></div></div>
    <div class="card"><h2>${esc(t("prov.gateways"))}</h2><div id="gws"></div></div>`;
  async function load() {
    const toks = await api("/api/provision/claim-tokens");
    view.querySelector("#tokens").innerHTML = table(["prov.token_id", "prov.site", "prov.created", "prov.expires", "prov.state", "prov.gateway"],
      toks.items.map((x) => `<tr><td>${data(x.id + "…")}</td><td>${data(x.site)}</td><td>${esc(dateTime(x.created_ms))}</td>
        <td>${esc(dateTime(x.expires_ms))}</td><td>${esc(t("prov.state." + x.state))}</td><td>${data(x.gateway || "–")}</td></tr>`), {testid: "claim-tokens"});
    const gws = await api("/api/gateways");
    view.querySelector("#gws").innerHTML = table(["prov.gateway", "prov.site", "prov.alg", "prov.presence", "prov.batches"],
      gws.map((g) => `<tr><td>${data(g.id)}</td><td>${data(g.site)}</td><td>${data(g.alg)}</td><td>${presence(g)}</td><td class="num">${esc(num(g.batches, 0))}</td></tr>`));
  }
  view.querySelector("#tok").onsubmit = async (ev) => {
    ev.preventDefault();
    try {
      const r = await api("/api/provision/claim-tokens", {method: "POST", body: {tenant: ctx.me.tenant, site: view.querySelector("#t-site").value.trim(), ttl_s: Number(view.querySelector("#t-ttl").value)}});
      view.querySelector("#tok-msg").innerHTML = message("info", t("prov.issued", {expires: dateTime(r.expires_ms)})) + `<p><code data-raw>${esc(r.token)}</code></p>
        <p class="muted">${esc(t("prov.claim_hint"))}</p>`;
      await load();
    } catch (e) { view.querySelector("#tok-msg").innerHTML = message("error", problemText(e)); }
  };
  await load();
}

// --- anchoring: jobs, states, a proof for any reading ---------------------------------------------
export async function anchoring(ctx) {
  const {view} = ctx;
  view.innerHTML = `<h1>${esc(t("anchor.title"))}</h1><div class="kpis" id="states"></div>
    <div class="card"><h2>${esc(t("proof.title"))}</h2><form class="inline" id="pf">
      <label>${esc(t("proof.gateway"))}<input id="p-gw" required></label><label>${esc(t("proof.device"))}<input id="p-dev" required></label>
      <label>${esc(t("proof.point"))}<input id="p-pt" required></label><label>${esc(t("proof.ts"))}<input id="p-ts" required placeholder="2026-01-01T00:00:00.000Z"></label>
      <button type="submit">${esc(t("proof.download"))}</button></form><div id="p-msg"></div></div>
    <div class="card"><h2>${esc(t("anchor.jobs"))}</h2><div id="jobs"></div></div>`;
  const r = await api("/api/anchors", {query: {limit: 100}});
  view.querySelector("#states").innerHTML = Object.entries(r.states).map(([s, v]) =>
    `<div class="kpi"><div class="v">${esc(num(v.windows, 0))}</div><div class="l">${esc(t("anchor.state." + s))} · ${esc(t("anchor.readings", {n: num(v.readings, 0)}))}</div></div>`).join("")
    || message("info", t("anchor.none"));
  view.querySelector("#jobs").innerHTML = table(["anchor.window", "anchor.site", "anchor.count", "anchor.state_h", "anchor.tx", "anchor.block"],
    r.items.map((j) => `<tr><td>${esc(dateTime(j.start_ms))} – ${esc(dateTime(j.end_ms))}</td><td>${data(j.site)}</td><td class="num">${esc(num(j.count, 0))}</td>
      <td>${esc(t("anchor.state." + j.state))}</td><td>${data(j.tx_hash ? j.tx_hash.slice(0, 18) + "…" : "–")}</td><td class="num">${data(j.block ?? "–")}</td></tr>`), {testid: "anchor-jobs"});
  view.querySelector("#pf").onsubmit = async (ev) => {
    ev.preventDefault();
    await proofDownload(view.querySelector("#p-gw").value.trim(), view.querySelector("#p-dev").value.trim(), view.querySelector("#p-pt").value.trim(),
      view.querySelector("#p-ts").value.trim(), view.querySelector("#p-msg"));
  };
}
