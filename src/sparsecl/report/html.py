"""A self-contained HTML page: inline CSS, figures as base64 PNG, no network, one small inline script that
checks every figure decoded (and says so on the console if one did not)."""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;color:#222;
padding:0 1rem;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.25rem;margin-top:2.2rem;border-bottom:1px solid #ddd;
padding-bottom:.2rem}h3{font-size:1.02rem;margin-top:1.4rem}
table{border-collapse:collapse;margin:.6rem 0 1rem;font-size:.85rem}
th,td{border:1px solid #d8d8d8;padding:.25rem .5rem;text-align:left;vertical-align:top}
td.n{text-align:right;white-space:nowrap}
th{background:#f3f5f8;text-align:center}td:first-child,th:first-child{text-align:left}
tr:nth-child(even) td{background:#fafafa}
.note{color:#555;font-size:.85rem}.bad{color:#b00020}.ok{color:#0a6b2b}
figure{margin:1rem 0}figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.8rem;color:#555}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:1rem}
code{background:#f3f3f3;padding:0 .2rem}
.tw{overflow-x:auto;max-width:100%}
"""

CHECK = """
window.addEventListener('load', function () {
  var imgs = document.querySelectorAll('img'); var bad = 0;
  imgs.forEach(function (im) { if (!im.complete || im.naturalWidth === 0) { bad++;
    console.error('figure failed to load: ' + im.getAttribute('alt')); } });
  document.body.setAttribute('data-figures-ok', bad === 0 ? String(imgs.length) : 'no');
});
"""


def esc(x: Any) -> str:
    return html.escape(str(x))


def num(x: Any, nd: int = 3, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "none" if x > 0 else "-inf"
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return f"{x:+.{nd}f}" if signed else f"{x:.{nd}f}"
    return esc(x)


def pval(p: Any) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "-"
    return f"{p:.3g}" if p >= 1e-4 else f"{p:.1e}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], raw: bool = False) -> str:
    """Cells are escaped unless ``raw`` (then the caller already escaped them)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td{_cls(c)}>{c if raw else esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<div class='tw'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


NUMERIC = re.compile(r"^[-+]?(\d[\d,]*\.?\d*(e[-+]?\d+)?|-|none)( \[.*\])?$")


def _cls(cell: str) -> str:
    """Numbers (and intervals after them) right-aligned; text left-aligned."""
    text = str(cell).replace("<br>", " ")
    return ' class="n"' if NUMERIC.match(text) or text.startswith("[") else ""


def figure(png: Path, caption: str) -> str:
    data = base64.b64encode(png.read_bytes()).decode()
    return (f'<figure><img alt="{esc(png.stem)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{esc(caption)} (also <code>figures/{esc(png.stem)}.pdf</code>)</figcaption></figure>")


def page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>'
            f"<body>{body}<script>{CHECK}</script></body></html>")
