"""The console's message catalogues: the same keys in every language, and every key the pages name
exists (keys built at run time, like ``"role." + role``, are checked by the zh-CN test in Chromium)."""

from __future__ import annotations

import json
import re
from pathlib import Path

WEB = Path(__file__).resolve().parents[2] / "cloud" / "web"
KEY = r"[a-z][a-z0-9_]*(?:\.[a-z0-9_-]+)+"


def _catalogues() -> dict[str, dict[str, str]]:
    return {p.stem: json.loads(p.read_text("utf-8")) for p in sorted((WEB / "messages").glob("*.json"))}


def test_every_language_has_every_key_and_the_same_placeholders() -> None:
    cats = _catalogues()
    assert set(cats) == {"en", "zh-CN"}
    assert set(cats["en"]) == set(cats["zh-CN"])
    for k, en in cats["en"].items():
        assert set(re.findall(r"\{(\w+)\}", en)) == set(re.findall(r"\{(\w+)\}", cats["zh-CN"][k])), k
        assert cats["zh-CN"][k].strip(), k


def test_every_key_the_pages_name_exists() -> None:
    en = _catalogues()["en"]
    used: set[str] = set()
    for js in [*WEB.glob("*.js"), *(WEB / "pages").glob("*.js")]:
        text = js.read_text("utf-8")
        used |= set(re.findall(rf'\bt\("({KEY})"', text))
        for head in re.findall(r"table\(\[([^\]]*)\]", text):  # table headers are keys
            used |= set(re.findall(rf'"({KEY})"', head))
        used |= set(re.findall(rf'empty: "({KEY})"', text))
    missing = sorted(k for k in used if k not in en)
    assert not missing, missing
    assert len(used) > 150
