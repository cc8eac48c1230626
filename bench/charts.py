"""The bench chart: per model, tokens/s by batch size and the engine's ratio to the best PyTorch.

Only measured points are drawn (markers, with the min-max of the repeats as error bars; no lines
across batch sizes that were not run). Each backend keeps one colour and marker in every chart.
The limit drawn beside the measurements is min(B / floor, ceiling / FLOPs per token) at each
measured batch size, for each precision: the batch-1 floor bounds small batches, the matrix-product
ceiling large ones.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from lstmgen.graphs.step import step_flops

STYLE = {  # backend -> (colour, marker), the same in every chart
    "torch-default": ("#d62728", "v"),
    "torch-tuned": ("#ff7f0e", "^"),
    "engine-fp32": ("#1f77b4", "o"),
    "engine-int8": ("#2ca02c", "s"),
    "graph-fp32": ("#9467bd", "D"),
    "graph-int8": ("#8c564b", "P"),
}
LIMIT_STYLE = {"fp32": "#1f77b4", "int8": "#2ca02c"}


def chart(result: dict, path: Path) -> bool:
    """Write the PNG; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [r for r in result["rows"] if r.get("tokens_per_s")]
    models = list(dict.fromkeys(r["model"] for r in result["rows"]))
    fig, axes = plt.subplots(2, len(models), figsize=(4.6 * len(models), 7.2), dpi=100, squeeze=False,
                             gridspec_kw={"height_ratios": [3, 2]})
    for col, model in enumerate(models):
        model_rows = [r for r in rows if r["model"] == model]
        throughput_panel(axes[0][col], model, model_rows, result["ceilings"])
        ratio_panel(axes[1][col], model_rows)
    axes[0][0].set_ylabel("tokens / s (median; bars: min-max)")
    axes[1][0].set_ylabel("engine / best PyTorch (x tuned)")
    s = result["settings"]
    left_out = "".join("\n" + textwrap.fill(f"left out: {n}", 55 * len(models)) for n in s.get("left_out", []))
    fig.suptitle(f"lstmgen bench, {s['device']}, {s['threads']} threads\n{result['machine'].get('cpu', '')}{left_out}",
                 fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True


def batch_axis(ax, rows: list[dict]) -> None:
    """A log2 batch axis labelled at the measured batch sizes only."""
    from matplotlib.ticker import NullLocator

    batches = sorted({r["batch_size"] for r in rows}) or [1]
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.xaxis.set_minor_locator(NullLocator())


def throughput_panel(ax, model: str, rows: list[dict], limits: dict) -> None:
    for backend, (colour, marker) in STYLE.items():
        pts = sorted((r["batch_size"], r["tokens_per_s"], r["tokens_per_s_min"], r["tokens_per_s_max"])
                     for r in rows if r["backend"] == backend)
        if not pts:
            continue
        b, med, lo, hi = zip(*pts)
        ax.errorbar(b, med, yerr=[[m - x for m, x in zip(med, lo)], [x - m for m, x in zip(med, hi)]], fmt=marker,
                    color=colour, ms=6, capsize=3, linestyle="none", label=backend)
    batches = sorted({r["batch_size"] for r in rows})
    dims = rows[0]["model_dims"] if rows else None
    for precision in sorted({r["precision"] for r in rows}):
        if dims is None or model not in limits["floor_s"]:
            break
        flops = step_flops(dims["vocab"], dims["embed"], dims["hidden"], dims["layers"])
        bound = [min(b / limits["floor_s"][model][precision], limits["peak_ops_per_s"][precision] / flops) for b in batches]
        ax.plot(batches, bound, "_", color=LIMIT_STYLE[precision], ms=14, mew=2, linestyle="none",
                label=f"{precision} limit: min(B/floor, ceiling/FLOPs)")
    batch_axis(ax, rows)
    ax.set_yscale("log")
    ax.set_title(model, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right")


def ratio_panel(ax, rows: list[dict]) -> None:
    from matplotlib.ticker import LogLocator, NullFormatter

    drawn = False
    for backend in ("engine-fp32", "engine-int8", "graph-fp32", "graph-int8"):
        colour, marker = STYLE[backend]
        pts = sorted((r["batch_size"], r["ratio_vs_torch_tuned"]) for r in rows
                     if r["backend"] == backend and r.get("ratio_vs_torch_tuned"))
        if pts:
            ax.plot(*zip(*pts), marker, color=colour, ms=6, linestyle="none", label=f"{backend} x tuned")
            for b, x in pts:
                ax.annotate(f"{x:.2f}", (b, x), textcoords="offset points", xytext=(6, 2), fontsize=7, color=colour)
            drawn = True
    ax.axhline(1.0, color="#ff7f0e", lw=1, ls="--", label="best PyTorch (x 1)")
    ax.set_yscale("log")  # 0.9x and 18x both readable
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))
    ax.yaxis.set_major_formatter("{x:g}")
    ax.yaxis.set_minor_formatter(NullFormatter())
    if not drawn:
        ax.text(0.5, 0.5, "no PyTorch tuned rows to compare with", ha="center", va="center", transform=ax.transAxes,
                fontsize=8)
    batch_axis(ax, rows)
    ax.set_xlabel("batch size")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="best")
