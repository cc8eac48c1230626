"""`lstmgen inspect`: one self-contained HTML page of what a model sees in a text.

The page holds its data as JSON and draws the coloured texts with a little inline JavaScript, so a
text of tens of KB shown several times stays a page of a few MB; tables and the saturation chart
(inline SVG) are plain HTML. Nothing is loaded from the network. The numbers come from
lstmgen.inspection.
"""

from __future__ import annotations

import html
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import LstmgenError
from .features import FEATURE_HELP, Cell, correlate, saturation, text_features, top_cells
from .reading import Inspection

SURPRISAL_SCALE = 8.0  # nats at which a token's colour is fully red; fixed so that pages compare


@dataclass
class PageOptions:
    title: str  # model name, shown in the heading
    model_line: str  # one line describing the model
    cells: list[Cell]  # chosen with --cell
    top: int  # cells listed per feature
    shown_per_feature: int  # best cells per feature drawn over the text
    shown_tokens: int  # tokens drawn in each coloured text (statistics use them all)


def build_page(ins: Inspection, opts: PageOptions) -> str:
    """The whole page as one HTML string."""
    correlations = correlate(ins, text_features(ins))
    n = min(len(ins.pieces), opts.shown_tokens)
    views = [{"title": "surprisal (nats)", "kind": "surprisal", "anchor": "surprisal", "values": _rounded(ins.surprisal[:n])}]
    for cell in opts.cells:
        views.append(_cell_view(ins, cell, f"chosen cell {cell}", f"cell-{cell.kind}{cell.layer}-{cell.unit}", n))
    for name, corr in correlations.items():
        for cell, r in top_cells(corr, opts.shown_per_feature):
            views.append(_cell_view(ins, cell, f"{cell}: best match for {name} (r = {r:+.2f})",
                                     f"{name}-{cell.kind}{cell.layer}-{cell.unit}", n))
    data = {"pieces": ins.pieces[:n], "views": views}
    body = "\n".join([
        f"<h1>lstmgen inspect: {html.escape(opts.title)}</h1>",
        f"<p class=note>{html.escape(opts.model_line)}</p>",
        _summary(ins, n),
        _features_table(correlations, opts.top),
        "<h2>The text, coloured</h2>",
        f"<p class=note>Surprisal <span class='scale surprisal'></span> 0 to {SURPRISAL_SCALE:g} nats and up."
        " Cells <span class='scale cell'></span> -1 to +1 (cell states c are shown through tanh; hover for the raw"
        " value). Hover a token for its value; ↵ is a line break (records: the end of a record).</p>",
        "<ul id=contents></ul><div id=views></div>",
        _saturation_charts(ins),
    ])
    # No "<" at all inside the data block, so no text can end the <script> element or start a comment there.
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")
    return PAGE.format(title=html.escape(opts.title), body=body, data=payload, scale=SURPRISAL_SCALE)


def _rounded(values: np.ndarray) -> list[float | None]:
    return [None if np.isnan(v) else round(float(v), 3) for v in values]


def _cell_view(ins: Inspection, cell: Cell, title: str, anchor: str, n: int) -> dict:
    return {"title": title, "kind": cell.kind, "anchor": anchor,
            "values": _rounded(ins.state(cell.kind, cell.layer, cell.unit)[:n])}


def _summary(ins: Inspection, shown: int) -> str:
    rows = [("tokens read", f"{len(ins.pieces):,}" + (f" (the texts below show the first {shown:,})" if shown < len(ins.pieces) else "")),
            ("tokens predicted", f"{ins.tokens_predicted:,}"),
            ("surprisal", f"{ins.nats_per_token:.4f} nats/token, {ins.total_nats:.2f} nats in all"
                          " (equal to <code>lstmgen score</code>)")]
    if ins.level == "word":
        unknown = [p.strip() for p, u in zip(ins.pieces, ins.unknown) if u]
        shown_words = ", ".join(html.escape(w) for w in dict.fromkeys(unknown).keys()) if unknown else "none"
        rows.append(("out-of-vocabulary words", f"{len(unknown):,} of {len(ins.pieces):,} tokens read as &lt;unk&gt;:"
                                                f" {shown_words[:2000]}"))
    table = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return f"<h2>Summary</h2><table class=summary>{table}</table>{_surprising(ins)}"


def _surprising(ins: Inspection, k: int = 15) -> str:
    """The k most surprising tokens, each with the text just before and after it."""
    order = np.argsort(-np.nan_to_num(ins.surprisal, nan=-1.0), kind="stable")[:k]
    rows = []
    for t in order:
        if np.isnan(ins.surprisal[t]):
            break
        before = "".join(ins.pieces[max(0, t - 30): t])[-30:]
        after = "".join(ins.pieces[t + 1: t + 8])[:12]
        token = ins.pieces[t] if ins.pieces[t] not in ("\n", "") else "↵"
        rows.append(f"<tr><td class=num>{ins.surprisal[t]:.2f}</td><td class=num>{t}</td><td class=ctx>"
                    f"{_visible(before)}<mark>{_visible(token)}</mark>{_visible(after)}</td></tr>")
    return ("<h3>Most surprising tokens</h3><table><tr><th>nats</th><th>token #</th><th>in context</th></tr>"
            + "".join(rows) + "</table>")


def _visible(text: str) -> str:
    return html.escape(text).replace("\n", "↵")


def _features_table(correlations: dict[str, np.ndarray], top: int) -> str:
    rows = []
    for name, corr in correlations.items():
        cells = ", ".join(f"<code>{cell}</code> {r:+.2f}" for cell, r in top_cells(corr, top))
        rows.append(f"<tr><th>{name}</th><td>{html.escape(FEATURE_HELP[name])}</td><td>{cells}</td></tr>")
    if not rows:
        return "<h2>Cells that track the text</h2><p>No feature varies over this text.</p>"
    return ("<h2>Cells that track the text</h2><p class=note>Pearson correlation of every cell (h: output,"
            " c: cell state; layer:unit from 0) with each feature, over all tokens; features that do not vary"
            " in this text are left out.</p><table><tr><th>feature</th><th>means</th><th>top cells (r)</th></tr>"
            + "".join(rows) + "</table>")


def _saturation_charts(ins: Inspection) -> str:
    low, high = saturation(ins)
    charts = "".join(_scatter(low[layer], high[layer], f"layer {layer}") for layer in range(low.shape[0]))
    return ("<h2>Saturation</h2><p class=note>One dot per unit: the fraction of tokens where its output h"
            " is below -0.9 (x) and above +0.9 (y). Dots near the axes' ends are cells that act like"
            f" switches; dots at the origin never saturate.</p><div class=charts>{charts}</div>")


def _scatter(x: np.ndarray, y: np.ndarray, title: str, size: int = 260, pad: int = 34) -> str:
    span = size - 2 * pad
    dots = "".join(f'<circle cx="{pad + a * span:.1f}" cy="{size - pad - b * span:.1f}" r="2.2"/>' for a, b in zip(x, y))
    ticks = "".join(
        f'<text x="{pad + v * span:.0f}" y="{size - pad + 14}" text-anchor="middle">{v:g}</text>'
        f'<text x="{pad - 6}" y="{size - pad - v * span + 4:.0f}" text-anchor="end">{v:g}</text>' for v in (0, 0.5, 1))
    return (f'<svg class=chart width="{size}" height="{size}" viewBox="0 0 {size} {size}" role="img"'
            f' aria-label="saturation of {title}"><title>saturation of {title}</title>'
            f'<rect x="{pad}" y="{pad}" width="{span}" height="{span}" fill="none" stroke="#999"/>'
            f'<line x1="{pad}" y1="{size - pad}" x2="{size - pad}" y2="{pad}" stroke="#ddd"/>'
            f'<g fill="#c0392b" fill-opacity="0.45">{dots}</g>{ticks}'
            f'<text x="{size / 2}" y="18" text-anchor="middle" font-weight="bold">{title}</text>'
            f'<text x="{size / 2}" y="{size - 4}" text-anchor="middle">fraction h &lt; -0.9</text>'
            f'<text transform="translate(11 {size / 2}) rotate(-90)" text-anchor="middle">fraction h &gt; 0.9</text></svg>')


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>lstmgen inspect: {title}</title>
<style>
body {{ font: 15px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 70em; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: .5em 0; }}
th, td {{ border-bottom: 1px solid #eee; padding: .2em .6em; text-align: left; vertical-align: top; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
td.ctx, .text {{ font-family: ui-monospace, Menlo, Consolas, monospace; white-space: pre-wrap; }}
mark {{ background: #f5b7b1; }}
.note {{ color: #555; font-size: 90%; }}
.text {{ border: 1px solid #ddd; padding: .6em; max-height: 28em; overflow: auto; font-size: 13px; line-height: 1.6; }}
.text span.nl {{ color: #aaa; }}
.scale {{ display: inline-block; width: 6em; height: .8em; border: 1px solid #ccc; vertical-align: middle; }}
.scale.surprisal {{ background: linear-gradient(to right, #fff, rgb(231, 76, 60)); }}
.scale.cell {{ background: linear-gradient(to right, rgb(52, 120, 219), #fff, rgb(231, 76, 60)); }}
.charts svg {{ margin-right: 1em; font-size: 10px; }}
</style></head><body>
{body}
<script type="application/json" id="data">{data}</script>
<script>
(function () {{
  const data = JSON.parse(document.getElementById("data").textContent);
  function colour(kind, v) {{
    if (v === null) return "transparent";
    if (kind === "surprisal") {{
      const a = Math.min(1, v / {scale});
      return "rgba(231, 76, 60, " + a.toFixed(3) + ")";
    }}
    const x = kind === "c" ? Math.tanh(v) : v;
    return x >= 0 ? "rgba(231, 76, 60, " + Math.min(1, x).toFixed(3) + ")"
                  : "rgba(52, 120, 219, " + Math.min(1, -x).toFixed(3) + ")";
  }}
  const root = document.getElementById("views");
  const contents = document.getElementById("contents");
  data.views.forEach(function (view) {{
    const h = document.createElement("h3");
    h.textContent = view.title;
    h.id = view.anchor;
    const link = document.createElement("a");
    link.href = "#" + view.anchor;
    link.textContent = view.title;
    const item = document.createElement("li");
    item.appendChild(link);
    contents.appendChild(item);
    const box = document.createElement("div");
    box.className = "text";
    box.dataset.kind = view.kind;
    const frag = document.createDocumentFragment();
    data.pieces.forEach(function (piece, i) {{
      if (piece === "") return;
      const s = document.createElement("span");
      if (piece === "\\n") {{ s.textContent = "↵\\n"; s.className = "nl"; }} else s.textContent = piece;
      s.style.background = colour(view.kind, view.values[i]);
      s.dataset.i = i;
      frag.appendChild(s);
    }});
    box.appendChild(frag);
    box.addEventListener("mouseover", function (e) {{
      const i = e.target.dataset.i;
      if (i === undefined) return;
      const v = view.values[i];
      const unit = view.kind === "surprisal" ? " nats" : "";
      e.target.title = "#" + i + " " + JSON.stringify(data.pieces[i]) + ": " + (v === null ? "not predicted" : v + unit);
    }});
    root.appendChild(h);
    root.appendChild(box);
  }});
  root.dataset.rendered = data.views.length;
}})();
</script>
</body></html>
"""


def cmd_inspect(args) -> int:
    """The CLI command: read the text, inspect it, write the page."""
    from ..corpus import read_text
    from ..generator import Generator
    from .features import parse_cell
    from .reading import inspect_text

    if (args.file is None) == (args.text is None):
        raise LstmgenError("give a FILE or --text, one of them")
    if args.top < 1:
        raise LstmgenError(f"--top must be >= 1, got {args.top}")
    if args.show_per_feature < 0:
        raise LstmgenError(f"--show-per-feature must be >= 0, got {args.show_per_feature}")
    if args.show_tokens < 1:
        raise LstmgenError(f"--show-tokens must be >= 1, got {args.show_tokens}")
    text = read_text(args.file) if args.file is not None else args.text
    gen = Generator.load(args.model, device=args.device, threads=args.threads)
    d = gen.manifest.dims
    cells = [parse_cell(spec, d.num_layers, d.hidden_size) for spec in args.cell]
    ins = inspect_text(gen, text, progress=_progress_printer() if sys.stderr.isatty() else None)
    name = gen.manifest.name or gen.folder.name
    model_line = (f"{name}: {gen.tokenizer.level}-level {'records' if gen.records else 'running-text'} LSTM,"
                  f" {d.num_layers} x {d.hidden_size}, {gen.manifest.precision}; text: {args.file or '--text'}")
    page = build_page(ins, PageOptions(name, model_line, cells, args.top, args.show_per_feature, args.show_tokens))
    out = Path(args.out)
    partial = out.with_name(f".{out.name}.partial")  # written aside, then renamed: never half a page
    try:
        partial.write_text(page, encoding="utf-8")
        os.replace(partial, out)
    except OSError as e:
        partial.unlink(missing_ok=True)
        raise LstmgenError(f"cannot write {out} ({e.strerror}); pick another --out") from None
    print(f"{ins.nats_per_token:.4f} nats/token over {ins.tokens_predicted:,} tokens; wrote {out}"
          f" ({len(page.encode()) / 1e6:.2f} MB)")
    return 0


def _progress_printer():
    def show(stage: str, done: int, total: int) -> None:
        if done == total or done % 16 == 0:
            print(f"\r{stage}: {done}/{total}", end="\n" if done == total else "", file=sys.stderr, flush=True)
    return show
