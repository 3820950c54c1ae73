// Dashboards: emissions with coverage next to every figure, pollutants against limits, sinks and
// solar, net balance against the allowance with the year-end forecast, and a big-screen view.
import {api, download} from "../api.js";
import {t, num, period, dateTime, unit, currentLang} from "../i18n.js";
import {esc, data, table, message, problemText, coverage} from "../ui.js";
import {barChart} from "../charts.js";

const thisYear = () => new Date().getFullYear();
const POLLUTANT_POINTS = {so2: "so2", nox: "nox", dust: "dust"};

function toCsv(rows) {
  const head = ["site", "stack", "period", "scope1_t", "so2_kg", "nox_kg", "dust_kg", "valid_h", "substituted_h", "missing_h"];
  return [head.join(",")].concat(rows.map((r) => [r.site, r.stack || "", r.period, r.scope1_t, r.pollutants_kg.so2, r.pollutants_kg.nox,
    r.pollutants_kg.dust, r.coverage.valid, r.coverage.substituted, r.coverage.missing].join(","))).join("\n") + "\n";
}

export async function emissions(ctx) {
  const {view} = ctx;
  view.innerHTML = `<h1>${esc(t("emis.title"))}</h1>
    <form class="inline card" id="f"><label>${esc(t("emis.year"))}<input id="e-year" type="number" min="2000" max="2100" value="${thisYear()}" style="width:6em"></label>
      <label>${esc(t("emis.granularity"))}<select id="e-gran">${["day", "month", "year"].map((g) => `<option value="${g}" ${g === "month" ? "selected" : ""}>${esc(t("gran." + g))}</option>`).join("")}</select></label>
      <label>${esc(t("emis.by"))}<select id="e-by"><option value="site">${esc(t("emis.by_site_opt"))}</option><option value="stack">${esc(t("emis.by_stack_opt"))}</option></select></label>
      <button type="button" class="secondary" id="csv">${esc(t("emis.download_csv"))}</button>
      <button type="button" class="secondary" id="json">${esc(t("emis.download_json"))}</button></form>
    <div class="kpis" id="kpis"></div><div class="card" id="chart"></div>
    <div class="card"><h2>${esc(t("emis.org"))}</h2><div id="org"></div></div>
    <div class="card"><h2 id="sites-title">${esc(t("emis.by_site"))}</h2><div id="sites"></div></div>
    <div class="card"><h2>${esc(t("report.title"))}</h2><p class="muted">${esc(t("emis.reports_hint"))}</p>
      <form class="inline" id="rep"><label>${esc(t("report.month"))}<select id="r-month"><option value="">${esc(t("report.whole_year"))}</option>
        ${Array.from({length: 12}, (_, i) => `<option value="${i + 1}">${esc(new Intl.DateTimeFormat(currentLang(), {month: "long", timeZone: "UTC"}).format(Date.UTC(2000, i, 1)))}</option>`).join("")}</select></label>
      <label>${esc(t("report.format"))}<select id="r-format"><option value="pdf">PDF</option><option value="csv">CSV</option></select></label>
      <button type="button" id="r-download" data-testid="report-download">${esc(t("report.download"))}</button></form><div id="r-msg"></div></div>`;
  let last = null;
  async function load() {
    const year = Number(view.querySelector("#e-year").value), granularity = view.querySelector("#e-gran").value;
    const by = view.querySelector("#e-by").value;
    const tz = -new Date().getTimezoneOffset();
    const r = await api("/api/carbon/dashboard", {query: {year, granularity, by, tz_offset_min: Math.round(tz / 15) * 15}});
    last = r;
    const total = r.totals.reduce((a, x) => a + Number(x.scope1_t), 0);
    const cov = r.totals.reduce((a, x) => ({valid: a.valid + x.coverage.valid, substituted: a.substituted + x.coverage.substituted, missing: a.missing + x.coverage.missing}), {valid: 0, substituted: 0, missing: 0});
    view.querySelector("#kpis").innerHTML = `<div class="kpi"><div class="v" data-testid="scope1-total">${esc(num(total))}</div><div class="l">${esc(t("emis.scope1_year", {unit: unit("t CO2")}))}</div><div>${coverage(cov)}</div></div>
      <div class="kpi"><div class="v">${esc(num(new Set(r.items.map((x) => x.site)).size, 0))}</div><div class="l">${esc(t("emis.sites"))}</div></div>`;
    const c = view.querySelector("#chart");
    c.innerHTML = `<h2>${esc(t("emis.chart", {unit: unit("t CO2")}))}</h2>`;
    c.appendChild(barChart(r.totals.map((x) => ({label: period(x.period), value: Number(x.scope1_t)})), {format: (v) => num(v)}));
    view.querySelector("#org").innerHTML = table(["emis.period", "emis.scope1", "emis.coverage"],
      r.totals.map((x) => `<tr><td>${esc(period(x.period))}</td><td class="num">${esc(num(x.scope1_t, 3))}</td><td>${coverage(x.coverage)}</td></tr>`),
      {testid: "emissions-org", empty: "emis.none"});
    view.querySelector("#sites-title").textContent = t(by === "stack" ? "emis.by_stack" : "emis.by_site");
    view.querySelector("#sites").innerHTML = table(["emis.site", ...(by === "stack" ? ["emis.stack"] : []), "emis.period", "emis.scope1", "emis.so2", "emis.nox", "emis.dust", "emis.coverage"],
      r.items.map((x) => `<tr><td>${data(x.site)}</td>${by === "stack" ? `<td>${data(x.stack)}</td>` : ""}<td>${esc(period(x.period))}</td><td class="num">${esc(num(x.scope1_t, 3))}</td>
        <td class="num">${esc(num(x.pollutants_kg.so2))}</td><td class="num">${esc(num(x.pollutants_kg.nox))}</td><td class="num">${esc(num(x.pollutants_kg.dust))}</td>
        <td>${coverage(x.coverage)}</td></tr>`), {testid: "emissions-sites", empty: "emis.none"});
  }
  view.querySelector("#f").onchange = load;
  view.querySelector("#csv").onclick = () => last && download(`emissions-${last.year}-${last.granularity}.csv`, toCsv(last.items), "text/csv");
  view.querySelector("#json").onclick = () => last && download(`emissions-${last.year}-${last.granularity}.json`, JSON.stringify(last, null, 2));
  view.querySelector("#r-download").onclick = () => downloadReport(view);
  await load();
}

// The report of the year chosen above (a month of it, or the whole year) in the language shown, as the
// server renders it; the file keeps the name the server gives it.
async function downloadReport(view) {
  const box = view.querySelector("#r-msg"), button = view.querySelector("#r-download");
  const query = {year: Number(view.querySelector("#e-year").value), month: view.querySelector("#r-month").value,
    format: view.querySelector("#r-format").value, lang: currentLang(),
    tz_offset_min: Math.round(-new Date().getTimezoneOffset() / 15) * 15};
  button.disabled = true;
  box.innerHTML = message("info", t("report.rendering"));
  try {
    const r = await api("/api/carbon/report", {query, raw: true});
    const name = (/filename="([^"]+)"/.exec(r.headers.get("Content-Disposition") || "") || [])[1] || `emissions-${query.year}.${query.format}`;
    download(name, await r.blob(), r.headers.get("Content-Type") || "application/octet-stream");
    box.innerHTML = message("info", t("report.saved"));
  } catch (e) {
    box.innerHTML = message("error", problemText(e));
  } finally {
    button.disabled = false;
  }
}

async function limitsByPollutant() {
  const r = await api("/api/carbon/limits");
  const out = {};
  for (const l of r.items) if (l.source_type === "coal_boiler" && !(l.pollutant in out)) out[l.pollutant] = l;
  return out;
}

export async function pollutants(ctx) {
  const {view} = ctx;
  view.innerHTML = `<h1>${esc(t("poll.title"))}</h1><p class="muted">${esc(t("poll.help"))}</p><div class="grid2" id="cards"></div>
    <div class="card"><h2>${esc(t("poll.stacks"))}</h2><p class="muted">${esc(t("poll.stacks_help"))}</p><div id="stacks"></div></div>`;
  // Registered stacks: hourly concentrations corrected to reference O2, hours above the limit (the store's figures).
  const end24 = Math.floor(Date.now() / 3600_000) * 3600_000;
  const sources = (await api("/api/carbon/sources")).items.filter((x) => x.kind === "stack");
  const rowsOut = [];
  for (const src of sources) {
    const c = await api(`/api/carbon/sources/${encodeURIComponent(src.source_id)}/concentrations`, {query: {start: end24 - 24 * 3600_000, end: end24}});
    for (const p of ["so2", "nox", "dust"]) {
      const last = [...c.items].reverse().find((h) => h[p] && h[p].corrected !== null);
      rowsOut.push(`<tr><td>${data(src.source_id)}</td><td>${esc(t("pollutant." + p))}</td>
        <td class="num ${last && last[p].above ? "bad" : ""}">${last ? `${esc(num(last[p].corrected))} ${data(unit("mg/m3"))}` : "–"}</td>
        <td class="num">${c.limits[p] ? esc(num(c.limits[p].value)) : "–"}</td>
        <td class="num ${c.hours_above[p] ? "bad" : ""}" data-testid="above-${esc(src.source_id)}-${p}">${esc(num(c.hours_above[p], 0))} / ${esc(num(c.hours_judged[p], 0))}</td></tr>`);
    }
  }
  view.querySelector("#stacks").innerHTML = table(["emis.stack", "big.pollutant", "poll.corrected", "big.limit", "poll.hours_above"], rowsOut, {empty: "poll.no_stacks"});
  const limits = await limitsByPollutant();
  const latest = await api("/api/latest");
  const boxes = view.querySelector("#cards");
  const rows = latest.filter((r) => POLLUTANT_POINTS[r.point]);
  if (!rows.length) { boxes.innerHTML = message("info", t("poll.none")); return; }
  const end = Date.now(), start = end - 24 * 3600_000;
  for (const r of rows) {
    const lim = limits[r.point];
    const card = document.createElement("div");
    card.className = "card";
    const over = lim && r.value > Number(lim.value);
    card.innerHTML = `<h2>${esc(t("pollutant." + r.point))} · ${data(r.device)}</h2>
      <div class="kpi"><div class="v ${over ? "bad" : "ok"}" data-testid="conc-${esc(r.device)}-${esc(r.point)}">${esc(num(r.value))} ${data(unit(r.unit))}</div>
      <div class="l">${lim ? `${esc(t("poll.limit", {limit: num(lim.value), unit: unit(lim.unit)}))} · ${data(lim.source)}` : esc(t("poll.no_limit"))}</div></div>`;
    boxes.appendChild(card);
    try {
      const h = await api("/api/rollups", {query: {device: r.device, gateway: r.gateway, point: r.point, start, end, granularity: "hour"}});
      card.appendChild(barChart(h.items.map((x) => ({label: new Intl.DateTimeFormat(currentLang(), {hour: "2-digit"}).format(new Date(x.start_ms ?? Date.parse(x.start))),
        value: x.mean ?? 0, color: lim && x.mean > Number(lim.value) ? "#b3261e" : "#1f7a4d"})),
        {height: 160, limit: lim ? Number(lim.value) : undefined, limitLabel: lim ? t("poll.limit_short", {limit: num(lim.value)}) : "", format: (v) => num(v)}));
    } catch (e) { card.insertAdjacentHTML("beforeend", message("error", problemText(e))); }
  }
  return ctx.onLive("latest", (msg) => {
    for (const r of msg.items) {
      const el = view.querySelector(`[data-testid="conc-${CSS.escape(r.device)}-${CSS.escape(r.point)}"]`);
      if (el) el.innerHTML = `${esc(num(r.value))} ${data(unit(r.unit))}`;
    }
  });
}

const SOLAR = new Set(["W", "WH", "ac_power_w", "energy_wh", "power", "energy"]);
const FOREST = /^(tree-|dendro|soil|air)/;

export async function sinks(ctx) {
  const {view} = ctx;
  view.innerHTML = `<h1>${esc(t("sinks.title"))}</h1>
    <div class="grid2"><div class="card"><h2>${esc(t("sinks.solar"))}</h2><div id="solar"></div></div>
    <div class="card"><h2>${esc(t("sinks.forest"))}</h2><div id="forest"></div></div></div>
    <div class="card"><h2>${esc(t("sinks.accounted"))}</h2><div id="acc"></div><div id="trees"></div></div>
    <p class="muted">${esc(t("sinks.accounting_hint"))}</p>`;
  // The stored figures (hours kept by the accounting, with coverage): this year per asset and per tree.
  const y = thisYear(), start = Date.UTC(y, 0, 1) - 8 * 3600_000, end = Date.UTC(y + 1, 0, 1) - 8 * 3600_000;
  const acc = await api("/api/carbon/assets", {query: {start, end, granularity: "year"}});
  view.querySelector("#acc").innerHTML = table(["sinks.asset", "sinks.kind", "sinks.mwh", "sinks.tco2", "emis.coverage"],
    acc.items.map((x) => `<tr><td>${data(x.source_id)}</td><td>${data(x.kind)}</td><td class="num">${x.kind === "inverter" ? esc(num(x.mwh_generated, 3)) : "–"}</td>
      <td class="num" data-testid="asset-${esc(x.source_id)}">${esc(num(x.kind === "inverter" ? x.avoided_t : x.sinks_t, 3))}</td><td>${coverage(x.kind === "inverter" ? x.coverage_solar : x.coverage_forest)}</td></tr>`),
    {testid: "assets", empty: "sinks.none"});
  view.querySelector("#trees").innerHTML = table(["sinks.asset", "sinks.tree", "sinks.tco2", "emis.coverage"],
    acc.trees.map((x) => `<tr><td>${data(x.plot)}</td><td>${data(x.tree)}</td><td class="num">${esc(num(x.sinks_t, 6))}</td><td>${coverage(x.coverage)}</td></tr>`),
    {testid: "trees", empty: "sinks.none"});
  const latest = await api("/api/latest");
  const solar = latest.filter((r) => /inverter|solar|pv/i.test(r.device));
  const forest = latest.filter((r) => /forest|tree/i.test(r.device) || FOREST.test(r.point));
  const row = (r) => `<tr><td>${data(r.device)}</td><td>${data(r.point)}</td><td class="num" data-testid="sink-${esc(r.device)}-${esc(r.point)}">${esc(num(r.value))}</td><td>${data(unit(r.unit))}</td><td>${esc(dateTime(r.ts_ms))}</td></tr>`;
  view.querySelector("#solar").innerHTML = table(["fleet.device", "fleet.point", "fleet.value", "fleet.unit", "fleet.time"], solar.map(row), {testid: "solar", empty: "sinks.none"});
  view.querySelector("#forest").innerHTML = table(["fleet.device", "fleet.point", "fleet.value", "fleet.unit", "fleet.time"], forest.map(row), {testid: "forest", empty: "sinks.none"});
  void SOLAR;
  return ctx.onLive("latest", (msg) => {
    for (const r of msg.items) {
      const el = view.querySelector(`[data-testid="sink-${CSS.escape(r.device)}-${CSS.escape(r.point)}"]`);
      if (el) el.textContent = num(r.value);
    }
  });
}

export async function balance(ctx) {
  const {view} = ctx;
  const y = thisYear(), today = new Date();
  const asOf = `${y}-${String(today.getMonth() + 1).padStart(2, "0")}-${String(today.getDate()).padStart(2, "0")}`;
  view.innerHTML = `<h1>${esc(t("bal.title"))}</h1><div class="kpis" id="ytd"></div><div id="fc"></div><div class="card"><h2>${esc(t("bal.warnings"))}</h2><div id="warn"></div></div>`;
  try {
    const b = await api("/api/carbon/balance", {query: {year: y, as_of: asOf}});
    view.querySelector("#ytd").innerHTML = ["scope1_t", "avoided_t", "sinks_t", "net_t"].map((k) =>
      `<div class="kpi"><div class="v" data-testid="ytd-${k}">${esc(num(b[k] ?? 0))}</div><div class="l">${esc(t("bal." + k, {unit: unit("t CO2")}))}</div></div>`).join("");
    if (!b.forecast) { view.querySelector("#fc").innerHTML = b.allowance_t === null ? message("info", t("bal.no_allowance", {year: y}))
      : `<div class="msg info" role="status">${esc(t("bal.no_forecast"))} ${data(b.hint)}</div>`; }
    else {
    const f = b.forecast;
    const ratio = Number(f.ratio);
    view.querySelector("#fc").innerHTML = `<div class="kpis">
      <div class="kpi"><div class="v">${esc(num(f.ytd_t))}</div><div class="l">${esc(t("bal.ytd", {unit: unit("t CO2")}))}</div></div>
      <div class="kpi"><div class="v" data-testid="forecast">${esc(num(f.forecast_t))}</div><div class="l">${esc(t("bal.forecast", {unit: unit("t CO2")}))}</div></div>
      <div class="kpi"><div class="v">${esc(num(f.allowance_t))}</div><div class="l">${esc(t("bal.allowance", {unit: unit("t CO2")}))}</div></div>
      <div class="kpi"><div class="v ${ratio >= 1 ? "bad" : ratio >= 0.8 ? "warn" : "ok"}">${esc(num(ratio * 100, 1))} %</div><div class="l">${esc(t("bal.ratio"))}</div></div></div>`;
    const c = document.createElement("div"); c.className = "card";
    c.innerHTML = `<h2>${esc(t("bal.chart"))}</h2>`;
    c.appendChild(barChart([{label: t("bal.ytd_short"), value: Number(f.ytd_t)}, {label: t("bal.forecast_short"), value: Number(f.forecast_t), color: ratio >= 1 ? "#b3261e" : "#e0a800"}],
      {height: 180, limit: Number(f.allowance_t), limitLabel: t("bal.allowance_short"), format: (v) => num(v)}));
    view.querySelector("#fc").appendChild(c);
    }
  } catch (e) {
    view.querySelector("#fc").innerHTML = message("error", problemText(e));
  }
  const w = await api("/api/carbon/warnings", {query: {year: y}});
  view.querySelector("#warn").innerHTML = table(["bal.level", "bal.at", "bal.ratio"],
    w.items.map((x) => `<tr><td>${data(x.level)}</td><td>${esc(dateTime(x.at_ms))}</td><td class="num">${esc(num(Number(x.ratio) * 100, 1))} %</td></tr>`), {empty: "bal.no_warnings"});
}

// A control room view: big figures, readable at a distance, refreshing by itself.
export async function bigscreen(ctx) {
  const {view} = ctx;
  view.innerHTML = `<h1>${esc(t("big.title"))} · ${data(ctx.me.tenant)}</h1><div class="kpis" id="k"></div><div class="grid2"><div id="conc"></div><div id="gws"></div></div>
    <p class="muted" id="upd"></p>`;
  let limits = {};
  try { limits = await limitsByPollutant(); } catch (e) { /* shown as no limit */ }
  let latest = [], presence = [], alertCounts = {open: 0};
  let yearT = null;
  async function refresh() {
    try {
      const r = await api("/api/carbon/dashboard", {query: {year: thisYear(), granularity: "year"}});
      yearT = r.totals.reduce((a, x) => a + Number(x.scope1_t), 0);
    } catch (e) { yearT = null; }
    latest = await api("/api/latest");
    draw();
  }
  function draw() {
    const online = presence.filter((g) => g.status === "online" && !g.revoked).length;
    view.querySelector("#k").innerHTML = `<div class="kpi"><div class="v" data-testid="big-online">${esc(num(online, 0))} / ${esc(num(presence.length, 0))}</div><div class="l">${esc(t("big.online"))}</div></div>
      <div class="kpi"><div class="v ${alertCounts.open ? "bad" : ""}" data-testid="big-alerts">${esc(num(alertCounts.open || 0, 0))}</div><div class="l">${esc(t("big.alerts"))}</div></div>
      <div class="kpi"><div class="v">${esc(yearT === null ? "–" : num(yearT))}</div><div class="l">${esc(t("big.year_t", {unit: unit("t CO2")}))}</div></div>`;
    const conc = latest.filter((r) => POLLUTANT_POINTS[r.point]);
    view.querySelector("#conc").innerHTML = table(["big.pollutant", "big.now", "big.limit"], conc.map((r) => {
      const lim = limits[r.point];
      return `<tr><td>${esc(t("pollutant." + r.point))}</td><td class="num ${lim && r.value > Number(lim.value) ? "bad" : ""}">${esc(num(r.value))} ${data(unit(r.unit))}</td><td class="num">${lim ? esc(num(lim.value)) : "–"}</td></tr>`;
    }), {empty: "poll.none"});
    view.querySelector("#gws").innerHTML = table(["big.gateway", "big.status"], presence.map((g) =>
      `<tr><td>${data(g.id)}</td><td class="${g.status === "online" ? "online" : "offline"}">${esc(t("status." + (g.status === "online" ? "online" : "offline")))}</td></tr>`));
    view.querySelector("#upd").textContent = t("big.updated", {when: dateTime(Date.now())});
  }
  const offs = [
    ctx.onLive("presence", (p) => { presence = p; draw(); }),
    ctx.onLive("alerts", (a) => { alertCounts = a.counts; draw(); }),
    ctx.onLive("latest", (m) => {
      for (const r of m.items) { const i = latest.findIndex((x) => x.device === r.device && x.point === r.point && x.gateway === r.gateway); if (i >= 0) latest[i] = r; else latest.push(r); }
      draw();
    }),
  ];
  await refresh();
  const timer = setInterval(refresh, 60_000);
  return () => { clearInterval(timer); offs.forEach((f) => f()); };
}
