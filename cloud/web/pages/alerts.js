// Alerts (list, acknowledge, clear, silence) and rules (list, an editor that validates in place).
import {api, ApiError} from "../api.js";
import {t, num, dateTime} from "../i18n.js";
import {esc, data, table, message, problemText, on} from "../ui.js";

export async function alerts(ctx) {
  const {view, can} = ctx;
  view.innerHTML = `<h1>${esc(t("alerts.title"))}</h1><div class="kpis" id="counts"></div>
    <form class="inline card" id="filter"><label>${esc(t("alerts.state"))}<select id="f-state">
      ${["open", "raised", "acknowledged", "cleared", ""].map((s) => `<option value="${s}">${esc(t("alerts.filter." + (s || "all")))}</option>`).join("")}
    </select></label></form>
    <div id="msg"></div><div class="card" id="list"></div>
    <div class="card"><h2>${esc(t("silence.title"))}</h2><div id="sil-form"></div><div id="silences"></div></div>`;
  async function load() {
    const state = view.querySelector("#f-state").value;
    const r = await api("/api/alerts", {query: {state: state || undefined, limit: 200}});
    const c = r.counts || {};
    view.querySelector("#counts").innerHTML = ["raised", "acknowledged", "cleared"].map((s) =>
      `<div class="kpi"><div class="v" data-testid="count-${s}">${esc(num((c.by_state || c)[s] || 0, 0))}</div><div class="l">${esc(t("alert.state." + s))}</div></div>`).join("");
    view.querySelector("#list").innerHTML = table(["alerts.severity", "alerts.rule", "alerts.subject", "alerts.state", "alerts.since", "alerts.acked_by", ""],
      r.items.map((a) => `<tr data-alert="${esc(a.id)}"><td><span class="pill ${esc(a.severity)}">${esc(t("severity." + a.severity))}</span></td>
        <td>${data(a.rule)}</td><td>${data(a.subject)}</td><td><span class="pill ${esc(a.state)}">${esc(t("alert.state." + a.state))}</span>${a.silenced_by ? ` <span class="pill">${esc(t("alerts.silenced"))}</span>` : ""}</td>
        <td>${esc(dateTime(a.raised_ms || a.since_ms))}</td><td>${data(a.acked_by || "–")}</td>
        <td>${can("control") && a.state === "raised" ? `<button class="secondary" data-ack="${esc(a.id)}">${esc(t("alerts.ack"))}</button>` : ""}
            ${can("control") && a.state !== "cleared" ? `<button class="secondary" data-clear="${esc(a.id)}">${esc(t("alerts.clear"))}</button>` : ""}
            ${can("control") ? `<button class="secondary" data-silence="${esc(a.id)}" data-rule="${esc(a.rule)}" data-gateway="${esc(a.gateway || "")}">${esc(t("alerts.silence"))}</button>` : ""}</td></tr>`),
      {testid: "alerts", empty: "alerts.none"});
    const s = await api("/api/silences", {query: {limit: 50}});
    view.querySelector("#silences").innerHTML = table(["silence.scope", "silence.from", "silence.until", "silence.reason", "silence.by", ""],
      s.items.map((x) => `<tr><td>${data([x.rule, x.gateway, x.device, x.point].filter(Boolean).join(" · ") || "*")}</td>
        <td>${esc(dateTime(x.start_ms))}</td><td>${esc(dateTime(x.ended_ms || x.end_ms))}</td><td>${data(x.reason)}</td><td>${data(x.created_by)}</td>
        <td>${can("control") && x.active ? `<button class="secondary" data-end="${esc(x.id)}">${esc(t("silence.end"))}</button>` : ""}</td></tr>`), {testid: "silences"});
  }
  const act = async (fn) => {
    try { await fn(); view.querySelector("#msg").innerHTML = ""; } catch (e) { view.querySelector("#msg").innerHTML = message("error", problemText(e)); }
    await load();
  };
  on(view, "button[data-ack]", "click", (_, b) => act(() => api(`/api/alerts/${encodeURIComponent(b.dataset.ack)}/ack`, {method: "POST"})));
  on(view, "button[data-clear]", "click", (_, b) => act(() => api(`/api/alerts/${encodeURIComponent(b.dataset.clear)}/clear`, {method: "POST"})));
  on(view, "button[data-end]", "click", (_, b) => act(() => api(`/api/silences/${encodeURIComponent(b.dataset.end)}`, {method: "DELETE"})));
  on(view, "button[data-silence]", "click", (_, b) => {
    view.querySelector("#s-rule").value = b.dataset.rule; view.querySelector("#s-gw").value = b.dataset.gateway;
    view.querySelector("#s-reason").focus();
  });
  if (can("control")) {
    view.querySelector("#sil-form").innerHTML = `<form class="inline" id="sil">
      <label>${esc(t("silence.rule"))}<input id="s-rule"></label><label>${esc(t("silence.gateway"))}<input id="s-gw"></label>
      <label>${esc(t("silence.minutes"))}<input id="s-min" type="number" value="60" min="1" style="width:6em"></label>
      <label>${esc(t("silence.reason"))}<input id="s-reason" required></label><button type="submit">${esc(t("silence.create"))}</button></form>`;
    view.querySelector("#sil").onsubmit = (ev) => {
      ev.preventDefault();
      act(() => api("/api/silences", {method: "POST", body: {rule: view.querySelector("#s-rule").value.trim() || null,
        gateway: view.querySelector("#s-gw").value.trim() || null, duration_s: Math.max(60, 60 * Number(view.querySelector("#s-min").value)),
        reason: view.querySelector("#s-reason").value.trim()}}));
    };
  }
  view.querySelector("#f-state").onchange = load;
  await load();
  let last = null;
  return ctx.onLive("alerts", (a) => { const d = JSON.stringify(a.counts); if (last !== null && d !== last) load(); last = d; });
}

const SAMPLE = "SELECT avg(value) AS so2 FROM '+/so2' WHERE quality = 'N'\nGROUP BY device, TUMBLING(1m)\nRAISE WHEN so2 > 200 mg/m3 FOR 5m CLEAR WHEN so2 < 180 mg/m3";

export async function rules(ctx) {
  const {view, can} = ctx;
  view.innerHTML = `<h1>${esc(t("rules.title"))}</h1><div class="card" id="list"></div>
    <div class="card"><h2>${esc(t("rules.delivery"))}</h2><div id="delivery"></div>
      ${can("control") ? `<button class="secondary" id="r-push">${esc(t("rules.push"))}</button>` : ""}<div id="push-msg"></div></div>
    <div class="card"><h2>${esc(t("rules.editor"))}</h2>
    <form class="inline"><label>${esc(t("rules.id"))}<input id="r-id" value="so2-high" pattern="[a-z0-9][a-z0-9_.-]*"></label>
      <label>${esc(t("rules.severity"))}<select id="r-sev">${["info", "warning", "critical"].map((s) => `<option value="${s}">${esc(t("severity." + s))}</option>`).join("")}</select></label>
      <label>${esc(t("rules.placement"))}<select id="r-place">${["both", "edge", "cloud"].map((s) => `<option value="${s}">${esc(t("placement." + s))}</option>`).join("")}</select></label></form>
    <textarea id="r-text" rows="6" spellcheck="false" data-testid="rule-editor"></textarea>
    <div id="r-msg"></div>
    <button id="r-check" class="secondary">${esc(t("rules.validate"))}</button> ${can("control") ? `<button id="r-save">${esc(t("rules.save"))}</button>` : ""}</div>`;
  let base = null;
  async function load() {
    const r = await api("/api/rules");
    const items = r.items || r;
    view.querySelector("#list").innerHTML = table(["rules.id", "rules.version", "rules.severity", "rules.placement", "rules.enabled", "rules.changed", ""],
      items.map((x) => `<tr><td>${data(x.id)}</td><td class="num">${data(x.version)}</td><td>${esc(t("severity." + (x.severity || "warning")))}</td>
        <td>${esc(t("placement." + x.placement))}</td><td>${esc(t(x.enabled === false ? "common.no" : "common.yes"))}</td>
        <td>${esc(dateTime(x.created_ms))} ${data(x.created_by)}</td><td><button class="secondary" data-edit="${esc(x.id)}">${esc(t("rules.edit"))}</button></td></tr>`),
      {testid: "rules", empty: "rules.none"});
  }
  async function loadDelivery() {
    const st = await api("/api/rulesets/status");
    view.querySelector("#delivery").innerHTML = `<p class="muted">${esc(st.set ? t("rules.current_set", {v: st.set.version, n: st.set.rules}) : t("rules.no_set"))}</p>` +
      table(["big.gateway", "rules.asked", "rules.runs", "rules.sync"], st.gateways.map((g) =>
        `<tr><td>${data(g.gateway)}</td><td>${data(g.desired_version ?? "–")}</td><td>${data(g.reported_version ?? "–")}</td>
          <td class="${g.in_sync ? "ok" : "warn"}">${esc(t(g.in_sync ? "rules.in_sync" : "rules.pending"))}</td></tr>`), {testid: "rule-delivery"});
  }
  const pushBtn = view.querySelector("#r-push");
  if (pushBtn) pushBtn.onclick = async () => {
    try {
      const r = await api("/api/rulesets/push", {method: "POST", body: {}});
      view.querySelector("#push-msg").innerHTML = message("info", t("rules.pushed", {v: r.version, n: r.pushed.length}));
    } catch (e) { view.querySelector("#push-msg").innerHTML = message("error", problemText(e)); }
    await loadDelivery();
  };
  const ta = view.querySelector("#r-text");
  ta.value = SAMPLE;
  const body = () => ({id: view.querySelector("#r-id").value.trim(), text: ta.value, severity: view.querySelector("#r-sev").value,
                       placement: view.querySelector("#r-place").value});
  // Errors in place: the message names line and column, and the caret goes there in the editor.
  // The caret moves to the error only when the user asked (Check, Save), never on the check made while
  // typing: that would move it under the user's fingers.
  function showErrors(errors, moveCaret = false) {
    const box = view.querySelector("#r-msg");
    ta.classList.toggle("invalid", errors.length > 0);
    box.innerHTML = errors.map((e) => `<div data-testid="rule-error">${message("error", e.line ? t("rules.error_at", {line: e.line, column: e.column, detail: e.message}) : t("rules.error", {detail: e.message}))}</div>`).join("");
    const e = errors.find((x) => x.line);
    if (e && moveCaret) {
      const lines = ta.value.split("\n");
      const pos = lines.slice(0, e.line - 1).reduce((n, l) => n + l.length + 1, 0) + Math.max(0, (e.column || 1) - 1);
      ta.focus(); ta.setSelectionRange(pos, Math.min(ta.value.length, pos + 1));
    }
  }
  let checks = 0;  // only the newest check may write its answer: an old one never hides a save's message
  async function validate(moveCaret = false) {
    const mine = ++checks;
    try {
      const r = await api("/api/rulesets/validate", {method: "POST", body: body()});
      if (mine !== checks) return r.ok;
      showErrors(r.errors || [], moveCaret);
      if (r.ok) view.querySelector("#r-msg").innerHTML = message("info", t("rules.valid", {columns: (r.columns || []).join(", ")}));
      return r.ok;
    } catch (e) { view.querySelector("#r-msg").innerHTML = message("error", problemText(e)); return false; }
  }
  view.querySelector("#r-check").onclick = () => { clearTimeout(timer); validate(true); };
  let timer = null;
  ta.oninput = () => { clearTimeout(timer); timer = setTimeout(validate, 400); };
  on(view, "button[data-edit]", "click", async (_, b) => {
    const r = await api(`/api/rules/${encodeURIComponent(b.dataset.edit)}`);
    view.querySelector("#r-id").value = r.id; ta.value = r.text || ""; base = r.version;
    view.querySelector("#r-sev").value = r.severity || "warning"; view.querySelector("#r-place").value = r.placement;
    await validate();
  });
  const save = view.querySelector("#r-save");
  if (save) save.onclick = async () => {
    clearTimeout(timer);
    checks++;
    ta.classList.remove("invalid");
    view.querySelector("#r-msg").innerHTML = message("info", t("rules.saving"));
    try {
      const r = await api("/api/rules", {method: "POST", body: {...body(), base_version: base}});
      base = r.rule.version;
      await load();
      await loadDelivery();
      view.querySelector("#r-msg").innerHTML = message("info", t("rules.saved", {v: r.rule.version}));
    } catch (e) {
      if (e instanceof ApiError && e.status === 422 && e.body && e.body.errors) showErrors(e.body.errors, true);
      else if (e instanceof ApiError && e.status === 409) view.querySelector("#r-msg").innerHTML = message("error", t("rules.conflict"));
      else view.querySelector("#r-msg").innerHTML = message("error", problemText(e));
    }
  };
  await load();
  await loadDelivery();
}
