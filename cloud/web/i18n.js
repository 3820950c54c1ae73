// Every visible string comes from a message catalogue (messages/<lang>.json); numbers, dates and
// units are formatted with Intl for the chosen locale.
export const LANGS = ["en", "zh-CN"];
const KEY = "carbonlink.lang";
let lang = "en";
let messages = {};
let fallback = {};

export function currentLang() { return lang; }

export async function loadLang(wanted) {
  const stored = localStorage.getItem(KEY);
  const want = LANGS.includes(wanted) ? wanted : LANGS.includes(stored) ? stored
    : (navigator.language || "en").toLowerCase().startsWith("zh") ? "zh-CN" : "en";
  const get = async (l) => (await fetch(`/console/messages/${l}.json`, {cache: "no-cache"})).json();
  if (!Object.keys(fallback).length) fallback = await get("en");
  messages = want === "en" ? fallback : await get(want);
  lang = want;
  localStorage.setItem(KEY, lang);
  document.documentElement.lang = lang;
  document.title = t("app.title");
}

// t("key", {n: 3}) → the message with {n} replaced; a missing key shows the key, so a test finds it.
export function t(key, params) {
  let s = messages[key] ?? fallback[key] ?? key;
  if (params) s = s.replace(/\{(\w+)\}/g, (_, k) => (params[k] ?? `{${k}}`));
  return s;
}

export function num(v, digits) {
  if (v === null || v === undefined || v === "" || Number.isNaN(Number(v))) return "–";
  const x = Number(v);
  const d = digits ?? (Math.abs(x) >= 1000 ? 0 : Math.abs(x) >= 10 ? 1 : Math.abs(x) >= 1 ? 2 : 3);
  return new Intl.NumberFormat(lang, {maximumFractionDigits: d, minimumFractionDigits: 0}).format(x);
}

export function pct(v) {
  if (v === null || v === undefined) return "–";
  return new Intl.NumberFormat(lang, {style: "percent", maximumFractionDigits: 1}).format(v);
}

export function dateTime(ms) {
  if (!ms) return "–";
  return new Intl.DateTimeFormat(lang, {dateStyle: "short", timeStyle: "medium"}).format(new Date(ms));
}

export function time(ms) {
  if (!ms) return "–";
  return new Intl.DateTimeFormat(lang, {timeStyle: "medium"}).format(new Date(ms));
}

export function ago(ms) {
  if (!ms) return "–";
  const s = Math.round((Date.now() - ms) / 1000);
  const rtf = new Intl.RelativeTimeFormat(lang, {numeric: "auto"});
  if (Math.abs(s) < 60) return rtf.format(-s, "second");
  if (Math.abs(s) < 3600) return rtf.format(-Math.round(s / 60), "minute");
  if (Math.abs(s) < 86400) return rtf.format(-Math.round(s / 3600), "hour");
  return rtf.format(-Math.round(s / 86400), "day");
}

// Units: the API's unit text, with the catalogue's name when it has one (t CO₂ → 吨二氧化碳).
export function unit(u) {
  if (!u) return "";
  const k = "unit." + u;
  const s = t(k);
  return s === k ? u.replace("m3", "m³").replace("CO2", "CO₂") : s;
}

export function period(label) {
  // "2026", "2026-03", "2026-03-05" → the locale's way of writing them
  const [y, m, d] = label.split("-").map(Number);
  if (d) return new Intl.DateTimeFormat(lang, {dateStyle: "medium"}).format(new Date(Date.UTC(y, m - 1, d)));
  if (m) return new Intl.DateTimeFormat(lang, {year: "numeric", month: "short", timeZone: "UTC"}).format(new Date(Date.UTC(y, m - 1, 1)));
  return new Intl.DateTimeFormat(lang, {year: "numeric", timeZone: "UTC"}).format(new Date(Date.UTC(y, 0, 1)));
}
