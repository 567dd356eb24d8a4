"""The CSV as a sortable, self-contained HTML table (works offline)."""
from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.reporting.runs import status_kind
from pipeline.reporting.text import STATUS_COLORS, WITHIN_PCT, fmt, missing

_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 12px; color: #111; }}
h1 {{ font-size: 17px; margin: 0 0 4px; }} p {{ margin: 2px 0; }} .profile {{ color: #8a4b00; }}
.wrap {{ overflow: auto; max-height: calc(100vh - 150px); border: 1px solid #ccc; margin: 8px 0; }}
table {{ border-collapse: collapse; font-size: 13px; }}
th, td {{ padding: 3px 8px; border-bottom: 1px solid #e5e5e5; white-space: nowrap; text-align: left; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
th {{ position: sticky; top: 0; background: #e8e8e8; cursor: pointer; user-select: none; z-index: 1; }}
th.paper, td.paper {{ color: #5a5a5a; }} th.paper {{ background: #efefef; }}
th:hover {{ background: #d5d5d5; }} th[data-dir="1"]::after {{ content: " \\25B2"; }}
th[data-dir="-1"]::after {{ content: " \\25BC"; }}
td.first, th.first {{ position: sticky; left: 0; background: #fff; }} th.first {{ background: #e8e8e8; z-index: 2; }}
tr:nth-child(even) td {{ background: #fafafa; }} td.good {{ color: #1a7f37; font-weight: 600; }}
{status_css}
.foot {{ font-size: 12px; color: #333; }}
</style></head><body>
<h1>{title}</h1>
{subtitle}
<p class="foot">Click a column heading to sort (again: reverse).  <code>paper_*</code> columns (grey) are the paper's;
the others ours.  <a download="{csv_name}" href="data:text/csv;base64,{csv_b64}">Download {csv_name}</a></p>
<div class="wrap"><table id="t"><thead><tr>{heads}</tr></thead><tbody>
{rows}
</tbody></table></div>
{foot}
<script>
(function () {{
  var table = document.getElementById("t"), body = table.tBodies[0];
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {{
    th.addEventListener("click", function () {{
      var dir = th.getAttribute("data-dir") === "1" ? -1 : 1;
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (o) {{ o.removeAttribute("data-dir"); }});
      th.setAttribute("data-dir", String(dir));
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {{
        var x = a.cells[col].getAttribute("data-v"), y = b.cells[col].getAttribute("data-v");
        if (x === "" && y === "") return 0;
        if (x === "") return 1;
        if (y === "") return -1;
        var nx = parseFloat(x), ny = parseFloat(y);
        var c = (!isNaN(nx) && !isNaN(ny) && String(nx) === x && String(ny) === y) ? nx - ny : x.localeCompare(y);
        return dir * c;
      }});
      rows.forEach(function (r) {{ body.appendChild(r); }});
    }});
  }});
}})();
</script>
</body></html>
"""


def render_html(df: pd.DataFrame, title: list[str], foot: list[str], csv_text: str, csv_name: str,
                path: str | Path) -> None:
    """Every column of the CSV as a sortable table in one self-contained HTML file (works offline)."""
    esc = html.escape
    cols = list(df.columns)

    def cell(col: str, v: Any, i: int) -> str:
        classes = ["first"] if i == 0 else []
        if col.startswith("paper_"):
            classes.append("paper")
        if missing(v) or v == "":
            return f'<td class="{" ".join(classes)}" data-v="">\u2013</td>'
        number = isinstance(v, (int, float)) and not isinstance(v, bool)
        text = fmt(v, "pct" if col.endswith("_pct") else "diff" if col.endswith("_diff") else
                   "epochs" if col in ("epochs", "paper_epochs") else "")
        if col.startswith("paper_") and isinstance(v, float):
            text = f"{v:g}"  # as the paper prints it
        if number:
            classes.append("num")
            if col.endswith("_diff_pct") and abs(v) <= WITHIN_PCT or col.endswith("_beyond_pct") and v == 0:
                classes.append("good")
        if col == "status":
            classes.append("s-" + status_kind(v).replace(" ", "-"))
        raw = repr(float(v)).removesuffix(".0") if number else str(v)
        return f'<td class="{" ".join(classes)}" data-v="{esc(raw)}" title="{esc(str(v))}">{esc(text)}</td>'

    heads = "".join(f'<th class="{"first " if i == 0 else ""}{"paper" if c.startswith("paper_") else ""}">'
                    f"{esc(c)}</th>" for i, c in enumerate(cols))
    rows = "\n".join("<tr>" + "".join(cell(c, v if not missing(v) else None, i) for i, (c, v) in
                                      enumerate(zip(cols, r))) + "</tr>" for r in df.itertuples(index=False))
    status_css = "\n".join(f"td.s-{k.replace(' ', '-')} {{ background: {c} !important; }}"
                           for k, c in STATUS_COLORS.items() if k != "measured")
    subtitle = "".join(f'<p{" class=profile" if i == len(title) - 1 else ""}>{esc(t)}</p>'
                       for i, t in enumerate(title[1:], 1))
    text = _HTML.format(title=esc(title[0]), subtitle=subtitle, heads=heads, rows=rows, status_css=status_css,
                        foot="".join(f'<p class="foot">{esc(f)}</p>' for f in foot), csv_name=esc(csv_name),
                        csv_b64=base64.b64encode(csv_text.encode()).decode())
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)


