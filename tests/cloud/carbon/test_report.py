"""Reports in CSV, JSON and PDF, zh-CN and en: rendered, looked at (PDF → PNG pages) and read back."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from carbonlink.cloud.carbon.accounts import Accounts
from carbonlink.cloud.carbon.errors import CarbonInputError
from carbonlink.cloud.carbon.report import find_font, render
from tests.services import require

LABELS = {"zh-CN": ["碳排放月度报告", "范围一（直接排放）", "数据覆盖（小时）", "核算方法", "排放因子与参数", "补遗"],
          "en": ["Monthly emissions report", "Scope 1 (direct)", "Data coverage (hours)", "Methods",
                 "Factors and parameters", "Substituted"]}


def tools() -> None:
    require(all(shutil.which(t) for t in ("pdftoppm", "pdftotext", "pdfinfo")), "poppler-utils",
            "apt-get install poppler-utils")
    try:
        find_font()
    except CarbonInputError as exc:
        require(False, "a CJK font for reports", exc.fix)


@pytest.fixture(scope="module")
def pdfs(march: Accounts, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tools()
    out = {}
    for lang in ("zh-CN", "en"):
        path = tmp_path_factory.mktemp("report") / f"march-{lang}.pdf"
        path.write_bytes(render(march, "pdf", lang))
        out[lang] = path
    return out


@pytest.mark.parametrize("lang", ["zh-CN", "en"])
def test_pdf_pages_render_are_not_blank_and_carry_the_figures(pdfs: dict[str, Path], march: Accounts,
                                                              lang: str) -> None:
    pdf = pdfs[lang]
    info = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, check=True).stdout
    pages = int(next(line.split()[-1] for line in info.splitlines() if line.startswith("Pages:")))
    assert 2 <= pages <= 6
    subprocess.run(["pdftoppm", "-r", "50", "-png", str(pdf), str(pdf.with_suffix(""))], check=True)
    pngs = sorted(pdf.parent.glob(pdf.stem + "-*.png"))
    assert len(pngs) == pages
    for png in pngs:
        gray = Image.open(png).convert("L")
        dark = sum(gray.histogram()[:128])
        assert dark > 0.01 * gray.width * gray.height, f"{png.name} is (nearly) blank"
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True,
                          check=True).stdout
    for label in LABELS[lang]:
        assert label in text, label
    tot = march.total
    for figure in (tot.scope1_t, tot.scope2_t, tot.avoided_t, tot.net_t, tot.allowance_balance_t):
        assert f"{figure:,.3f}" in text
    assert f"{tot.sinks_t:,.6f}" in text
    assert "741 / 3 / 0" in text and "stack-1" in text and "CN/average/2023" in text
    assert "2023-03-31" in text  # the last day's row


def test_pdf_is_byte_identical_for_the_same_accounts(pdfs: dict[str, Path], march: Accounts) -> None:
    assert render(march, "pdf", "en") == pdfs["en"].read_bytes()
    assert pdfs["zh-CN"].read_bytes() != pdfs["en"].read_bytes()


@pytest.mark.parametrize("lang, header", [("zh-CN", "类别"), ("en", "Category")])
def test_csv_is_one_long_table_with_every_section(march: Accounts, lang: str, header: str) -> None:
    data = render(march, "csv", lang)
    assert data == render(march, "csv", lang)
    rows = list(csv.reader(io.StringIO(data.decode("utf-8"))))
    assert rows[0][0] == header and all(len(r) == 6 for r in rows)
    sections = {r[0] for r in rows[1:]}
    assert len(sections) >= 7  # summary, by day, sources, coverage, detail, pollutants, factors, methods
    total_s1 = [r for r in rows if r[1] == "2023-03" and r[2] == "" and r[3].startswith(("范围一", "Scope 1"))]
    assert total_s1 and total_s1[0][4] == str(march.total.scope1_t)


def test_json_report_is_canonical_and_titled(march: Accounts) -> None:
    doc = json.loads(render(march, "json", "zh-CN"))
    assert doc["lang"] == "zh-CN" and doc["title"] == "Acme 电力 碳排放月度报告 2023-03"
    assert doc["accounts"]["total"]["scope1_t"] == str(march.total.scope1_t)
    with pytest.raises(CarbonInputError, match="lang"):
        render(march, "json", "fr")
    with pytest.raises(CarbonInputError, match="format"):
        render(march, "xlsx", "en")
