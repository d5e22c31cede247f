"""report.html: the tables, the plots and heatmap overlays side by side, in one offline file.

Every image is inlined as a base64 data URI (no CDN, no external CSS/JS, nothing to lose when the
page is copied alone). A tiny inline script counts the images that decoded and writes the count into
the page, so a headless browser (and a reader) can see that everything rendered.
"""

from __future__ import annotations

import base64
import html as _html
from pathlib import Path
from typing import Any

from hamedge.bench.report import all_tables, header_lines

_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
th { background: #f0f0f0; }
tr.over-budget td { background: #fde2e2; color: #900; font-weight: bold; }
div.scroll { overflow-x: auto; max-width: 100%; }
p.note { font-size: 0.8em; color: #555; max-width: 70em; }
img.plot { max-width: 100%; border: 1px solid #ddd; margin: 0.4em 0; }
.overlays td { vertical-align: top; text-align: center; }
.overlays img { width: 220px; height: 220px; image-rendering: auto; border: 1px solid #ddd; }
.caption { font-size: 0.75em; color: #444; max-width: 220px; white-space: normal; }
#render-status { font-size: 0.75em; color: #777; }
"""

_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (im) { return im.complete && im.naturalWidth > 0; }).length;
  var el = document.getElementById('render-status');
  el.setAttribute('data-images', String(imgs.length));
  el.setAttribute('data-rendered', String(ok));
  el.setAttribute('data-tables', String(document.querySelectorAll('table.results tbody tr').length));
  el.textContent = ok + ' of ' + imgs.length + ' images rendered';
});
"""


def _e(text: Any) -> str:
    return _html.escape(str(text), quote=True)


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def render_html(results: dict[str, Any], out_dir: Path, plots: dict[str, str]) -> str:
    """The page as a string; ``plots`` and results["overlays"] name PNG files under ``out_dir``."""
    parts = ["<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
             "<meta name='viewport' content='width=device-width, initial-scale=1'>",
             f"<title>hamedge bench: {_e(results.get('model', {}).get('name', 'model'))}</title>",
             f"<style>{_CSS}</style></head><body>", "<h1>hamedge bench</h1><ul>"]
    parts += [f"<li>{_e(line)}</li>" for line in header_lines(results)]
    parts.append("</ul>")
    for t in all_tables(results):
        parts.append(f"<h2>{_e(t.title)}</h2><div class='scroll'><table class='results'><thead><tr>")
        parts += [f"<th>{_e(c)}</th>" for c in t.columns]
        parts.append("</tr></thead><tbody>")
        for row, bad in zip(t.rows, t.flagged):
            parts.append("<tr class='over-budget'>" if bad else "<tr>")
            parts += [f"<td>{_e(c)}</td>" for c in row]
            parts.append("</tr>")
        parts.append("</tbody></table></div>")
        if t.note:
            parts.append(f"<p class='note'>{_e(t.note)}</p>")
    titles = {"latency": "Latency distribution", "throughput": "Throughput against batch size",
              "accuracy": "Accuracy change against speed-up"}
    if plots:
        parts.append("<h2>Plots</h2>")
    for key, name in plots.items():
        parts.append(f"<h3>{_e(titles.get(key, key))}</h3>"
                     f"<img class='plot' alt='{_e(titles.get(key, key))}' src='{data_uri(out_dir / name)}'>")
    overlays = results.get("overlays") or []
    if overlays:
        configs = list(dict.fromkeys(o["config"] for o in overlays))
        images = list(dict.fromkeys(o["image"] for o in overlays))
        cell = {(o["image"], o["config"]): o for o in overlays}
        parts.append("<h2>Heatmap overlays</h2><p class='note'>"
                     f"{_e(results.get('settings', {}).get('overlay_source', ''))} Each cell: the "
                     "finding with the highest probability in the reference; contour = binarised map "
                     "(refined value >= the spec's threshold).</p>")
        parts.append("<table class='overlays'><thead><tr><th>image</th>")
        parts += [f"<th>{_e(c)}</th>" for c in configs]
        parts.append("</tr></thead><tbody>")
        for image in images:
            parts.append(f"<tr><td>{_e(image)}</td>")
            for c in configs:
                o = cell.get((image, c))
                if o is None:
                    parts.append("<td>-</td>")
                    continue
                parts.append(f"<td><img alt='{_e(image)} {_e(c)}' src='{data_uri(out_dir / o['file'])}'>"
                             f"<div class='caption'>{_e(o.get('caption', ''))}</div></td>")
            parts.append("</tr>")
        parts.append("</tbody></table>")
    if results.get("notes"):
        parts.append("<h2>Notes</h2><ul>")
        parts += [f"<li>{_e(n)}</li>" for n in results["notes"]]
        parts.append("</ul>")
    parts.append("<p id='render-status' data-images='?' data-rendered='?'>images not yet checked</p>")
    parts.append(f"<script>{_SCRIPT}</script></body></html>")
    return "\n".join(parts)
