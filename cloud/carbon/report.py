"""Emissions reports from an ``Accounts``: CSV, JSON and PDF, in zh-CN and en, byte-identical per input.

* JSON: the canonical accounts (``accounts.accounts_to_json``) with the language and the title.
* CSV: one long table ``section, period, source, item, value, unit`` (localised headers and items), so a
  spreadsheet can filter it; numbers as exact decimals.
* PDF: fpdf2, with a CJK TrueType font embedded as a subset. The font is found offline, never downloaded:
  ``CARBONLINK_REPORT_FONT`` if set, else Debian's ``fonts-wqy-microhei`` (WenQuanYi Micro Hei, Apache-2.0
  or GPLv3 with the font exception; installed by ``.ci/run``), ``fonts-wqy-zenhei`` or ``fonts-noto-cjk``.
  The creation date is the accounts' ``as_of`` and the file id is derived from the content, so the same
  accounts give the same bytes.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import os
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

from .accounts import Accounts, PeriodAccount, accounts_to_dict
from .errors import CarbonInputError
from .i18n import LANGS, t
from .substitution import Coverage

__all__ = ["LANGS", "find_font", "render"]

FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
)


def find_font() -> Path:
    """The CJK font reports embed, or an error that says how to get one."""
    env = os.environ.get("CARBONLINK_REPORT_FONT")
    if env:
        if Path(env).is_file():
            return Path(env)
        raise CarbonInputError("CARBONLINK_REPORT_FONT", f"{env} is not a file", "point it at a .ttf/.ttc font")
    for c in FONT_CANDIDATES:
        if Path(c).is_file():
            return Path(c)
    raise CarbonInputError("report font", "no CJK font found", "install Debian's fonts-wqy-microhei "
                           "(apt-get install fonts-wqy-microhei) or set CARBONLINK_REPORT_FONT to a .ttf/.ttc")


def render(acc: Accounts, fmt: str, lang: str) -> bytes:
    if lang not in LANGS:
        raise CarbonInputError("lang", f"{lang!r}", f"use one of {', '.join(LANGS)}")
    if fmt == "json":
        doc = {"lang": lang, "title": title(acc, lang), "accounts": accounts_to_dict(acc)}
        return json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()
    if fmt == "csv":
        return render_csv(acc, lang)
    if fmt == "pdf":
        return render_pdf(acc, lang)
    raise CarbonInputError("format", f"{fmt!r}", "use csv, json or pdf")


def title(acc: Accounts, lang: str) -> str:
    kind = t("title_monthly" if acc.kind == "monthly" else "title_annual", lang)
    return f"{acc.organisation_name} {kind} {acc.title_period}"


def tonnes(x: Decimal | None, places: int = 3) -> str:
    return "—" if x is None else f"{x:,.{places}f}"


def short(x: Decimal) -> str:
    """A factor for people: at most 8 significant digits (the JSON and CSV keep every digit)."""
    return str(x) if len(x.as_tuple().digits) <= 8 else f"{x:.8g}"


def pct(c: Coverage) -> str:
    return "—" if c.hours == 0 else f"{Decimal(100 * c.valid) / Decimal(c.hours):.1f} %"


def summary_rows(p: PeriodAccount, lang: str) -> list[tuple[str, str, str]]:
    tt = t("t", lang)
    rows = [(t("scope1", lang), tonnes(p.scope1_t), tt), (t("scope2", lang), tonnes(p.scope2_t), tt),
            (t("sink", lang), tonnes(p.sinks_t, 6), tt)]
    band = [s for s in p.sources if s.category == "sink" and s.low_t is not None]
    if band:
        low = sum((s.low_t or Decimal(0) for s in band), Decimal(0))
        high = sum((s.high_t or Decimal(0) for s in band), Decimal(0))
        rows.append((t("sink_band", lang), f"{tonnes(low, 6)} – {tonnes(high, 6)}", tt))
    rows += [(t("avoided", lang), tonnes(p.avoided_t), tt), (t("net", lang), tonnes(p.net_t), tt),
             (t("allowance", lang), tonnes(p.allowance_t), tt),
             (t("balance", lang), tonnes(p.allowance_balance_t), tt),
             (t("mwh_generated", lang), tonnes(p.mwh_generated), t("mwh", lang)),
             (t("mwh_bought", lang), tonnes(p.mwh_bought), t("mwh", lang)),
             (t("certificates", lang), str(p.certificates), t("count", lang)),
             (t("carry", lang), tonnes(p.certificate_carry_mwh, 6), t("mwh", lang)),
             (t("coverage", lang), f"{p.coverage.valid} / {p.coverage.substituted} / {p.coverage.missing} "
                                   f"({pct(p.coverage)})", f"{t('valid', lang)}/{t('substituted', lang)}/"
                                                            f"{t('missing', lang)}")]
    return rows


def _csv_rows(acc: Accounts, lang: str) -> Iterator[list[str]]:
    tot = acc.total
    for item, key in (("scope1", "scope1_t"), ("scope2", "scope2_t"), ("sink", "sinks_t"), ("avoided", "avoided_t"),
                      ("net", "net_t"), ("allowance", "allowance_t"), ("balance", "allowance_balance_t")):
        for p in (*acc.periods, tot):
            v = getattr(p, key)
            yield [t("summary", lang) if p is tot else t("periods_daily" if acc.kind == "monthly"
                                                          else "periods_monthly", lang),
                   p.period, "", t(item, lang), "" if v is None else str(v), "t CO2e"]
    for p in (*acc.periods, tot):
        for s in p.sources:
            yield [t("sources", lang), p.period, s.source_id, t(s.category, lang), str(s.t_co2e), "t CO2e"]
            if s.coverage is not None:
                for st in ("valid", "substituted", "missing"):
                    yield [t("coverage", lang), p.period, s.source_id, t(st, lang), str(getattr(s.coverage, st)),
                           "h"]
            for k, v in sorted(s.detail.items()):
                yield [t("detail", lang), p.period, s.source_id, k, v, ""]
        for pol, kg in sorted(p.pollutants_kg.items()):
            yield [t("pollutants", lang), p.period, "", pol, str(kg), "kg"]
    for f in acc.factors:
        yield [t("factors", lang), "", f.table, f.key, str(f.value), f.unit]
    for m in acc.methods:
        yield [t("methods", lang), "", m.name, m.standard, m.description, ""]


def render_csv(acc: Accounts, lang: str) -> bytes:
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([t("category", lang), t("period", lang), t("source", lang), t("item", lang), t("value", lang),
                t("unit", lang)])
    for row in _csv_rows(acc, lang):
        w.writerow(row)
    return buf.getvalue().encode("utf-8")


def render_pdf(acc: Accounts, lang: str) -> bytes:
    from fpdf import FPDF
    from fpdf.fonts import FontFace

    font = find_font()
    content_id = hashlib.sha256(render(acc, "json", lang)).hexdigest()[:32].upper()

    class Report(FPDF):
        def footer(self) -> None:
            self.set_y(-12)
            self.set_font("cjk", size=8)
            self.cell(0, 6, t("page", lang).format(n=self.page_no(), total="{nb}"), align="C")

    pdf = Report(orientation="P", unit="mm", format="A4")
    pdf.set_creation_date(_as_of(acc))
    pdf.file_id = lambda: f"<{content_id}><{content_id}>"  # type: ignore[method-assign]
    pdf.set_title(title(acc, lang))
    pdf.set_author("CarbonLink")
    pdf.set_creator("CarbonLink")
    pdf.set_producer("CarbonLink")
    pdf.add_font("cjk", "", str(font), collection_font_number=0)
    pdf.set_auto_page_break(True, margin=16)
    pdf.add_page()
    head = FontFace(emphasis=None, fill_color=(226, 236, 228))

    def heading(text: str) -> None:
        pdf.ln(3)
        pdf.set_font("cjk", size=12)
        pdf.cell(0, 8, text, new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("cjk", size=8)

    def grid(rows: list[list[str]], widths: tuple[int, ...]) -> None:
        with pdf.table(col_widths=widths, headings_style=head, line_height=5, text_align="LEFT") as tb:
            for r in rows:
                row = tb.row()
                for cell in r:
                    row.cell(cell)

    pdf.set_font("cjk", size=16)
    pdf.multi_cell(0, 9, title(acc, lang), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("cjk", size=9)
    meta = [(t("organisation", lang), f"{acc.organisation_name} ({acc.organisation})"),
            (t("sites", lang), ", ".join(acc.sites)), (t("period", lang), acc.title_period),
            (t("as_of", lang), acc.as_of), (t("timezone", lang), f"UTC{acc.tz_offset_min / 60:+.0f}"),
            (t("versions", lang), f"{acc.formula_version} / "
                                  + ", ".join(f"{k} {v}" for k, v in sorted(acc.factor_versions.items())))]
    for k, v in meta:
        pdf.multi_cell(0, 5, f"{k}: {v}", new_x="LMARGIN", new_y="NEXT")

    heading(t("summary", lang))
    grid([[t("item", lang), t("value", lang), t("unit", lang)]] + [list(r) for r in summary_rows(acc.total, lang)],
         (80, 60, 40))

    heading(t("periods_daily" if acc.kind == "monthly" else "periods_monthly", lang))
    grid([[t("period", lang), t("scope1", lang), t("scope2", lang), t("sink", lang), t("avoided", lang),
           t("net", lang), t("coverage", lang)]]
         + [[p.period, tonnes(p.scope1_t), tonnes(p.scope2_t), tonnes(p.sinks_t), tonnes(p.avoided_t),
             tonnes(p.net_t), f"{p.coverage.valid}/{p.coverage.substituted}/{p.coverage.missing}"]
            for p in acc.periods], (22, 26, 24, 24, 24, 26, 34))

    heading(t("coverage", lang))
    grid([[t("source", lang), t("kind", lang), t("valid", lang), t("substituted", lang), t("missing", lang),
           t("coverage_pct", lang)]]
         + [[s.source_id, t(s.kind, lang), str(s.coverage.valid), str(s.coverage.substituted),
             str(s.coverage.missing), pct(s.coverage)] for s in acc.total.sources if s.coverage is not None],
         (50, 24, 24, 24, 24, 34))

    heading(t("sources", lang))
    grid([[t("source", lang), t("site", lang), t("category", lang), t("t", lang), t("detail", lang)]]
         + [[s.source_id, s.site, t(s.category, lang), tonnes(s.t_co2e, 6 if s.category == "sink" else 3),
             "; ".join(f"{k} {v}" for k, v in sorted(s.detail.items()))] for s in acc.total.sources],
         (34, 22, 34, 26, 64))

    if acc.total.pollutants_kg:
        heading(t("pollutants", lang))
        grid([[t("pollutant", lang), t("value", lang), t("unit", lang)]]
             + [[k.upper(), tonnes(v), t("kg", lang)] for k, v in sorted(acc.total.pollutants_kg.items())],
             (60, 60, 60))

    heading(t("methods", lang))
    grid([[t("method", lang), t("standard", lang), t("detail", lang)]]
         + [[m.name, m.standard, m.description] for m in acc.methods], (36, 60, 84))

    heading(t("factors", lang))
    grid([[t("factor", lang), t("value", lang), t("unit", lang), t("source", lang)]]
         + [[f.key + (" *" if f.status != "verified" else ""), short(f.value), f.unit, f.source]
            for f in acc.factors], (48, 22, 22, 88))
    pdf.set_font("cjk", size=8)
    pdf.ln(2)
    notes = [t("unverified_note", lang), t("rounding_note", lang), *acc.notes]
    for n in notes:
        pdf.multi_cell(0, 4.5, n, new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


def _as_of(acc: Accounts) -> dt.datetime:
    try:
        when = dt.datetime.fromisoformat(acc.as_of)
    except ValueError:
        raise CarbonInputError("accounts.as_of", f"{acc.as_of!r} is not ISO 8601",
                               "give the data cut-off as YYYY-MM-DDTHH:MM:SS+08:00") from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)

