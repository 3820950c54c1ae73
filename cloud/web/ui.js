// Helpers every page shares: escaping, data spans (text that is data, not a message: ids, values),
// tables, messages and the coverage bar.
import {t, num} from "./i18n.js";

export const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\"": "&quot;", "'": "&#39;"}[c]));

// A piece of data (an id, a name, a unit the API gave): marked so the language check skips it.
export const data = (v, attrs = "") => `<span data-raw ${attrs}>${esc(v)}</span>`;

export function table(headKeys, rows, {testid = "", empty = "common.empty"} = {}) {
  const head = headKeys.map((k) => `<th>${k ? esc(t(k)) : ""}</th>`).join("");
  const body = rows.length ? rows.join("") : `<tr><td colspan="${headKeys.length}" class="muted">${esc(t(empty))}</td></tr>`;
  return `<table ${testid ? `data-testid="${testid}"` : ""}><thead><tr>${head}</tr></thead><tbody>${body}</tbody></table>`;
}

export function message(kind, text) { return `<div class="msg ${kind}" role="${kind === "error" ? "alert" : "status"}">${esc(text)}</div>`; }

export function problemText(e) {
  if (e && e.status) return t("error.status", {status: e.status, detail: e.detail});
  return t("error.network", {detail: String(e && e.message || e)});
}

// Valid, substituted and missing hours side by side, with their numbers in the tooltip.
export function coverage(c) {
  const total = (c.valid || 0) + (c.substituted || 0) + (c.missing || 0);
  if (!total) return `<span class="muted">${esc(t("coverage.none"))}</span>`;
  const w = (n) => `${(100 * n / total).toFixed(1)}%`;
  const title = t("coverage.title", {valid: num(c.valid, 0), substituted: num(c.substituted, 0), missing: num(c.missing, 0)});
  return `<span class="cov" title="${esc(title)}"><span class="valid" style="width:${w(c.valid)}"></span>` +
    `<span class="substituted" style="width:${w(c.substituted)}"></span><span class="missing" style="width:${w(c.missing)}"></span></span> ` +
    `<span class="muted">${esc(t("coverage.short", {valid: num(c.valid, 0), substituted: num(c.substituted, 0), missing: num(c.missing, 0)}))}</span>`;
}

export function on(root, selector, event, fn) {
  root.addEventListener(event, (ev) => {
    const target = ev.target.closest(selector);
    if (target && root.contains(target)) fn(ev, target);
  });
}
