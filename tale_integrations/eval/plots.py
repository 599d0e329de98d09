"""Plots of an evaluation run (matplotlib figures drawn with Agg to files; pyplot's backend is untouched).

- `plot_accuracy_tokens`: accuracy against mean output tokens, one point per method (95% interval
  as an error bar), one panel per dataset, the Pareto frontier dashed and the oracle budget starred.
- `plot_elasticity`: token elasticity from budget-search traces: the budget asked against the tokens
  actually written, with the ``tokens = budget`` line, the median per budget band and the vanilla mean.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..core.search import SearchRecord
from .metrics import MethodMetrics

__all__ = ["method_order", "plot_accuracy_tokens", "plot_elasticity"]

_ORDER = ["direct", "vanilla", "be-concise", "ccot", "cod", "fixed", "tale-ep", "tale-pt", "oracle"]
_MARKERS = {"direct": "s", "vanilla": "o", "be-concise": "v", "ccot": "<", "cod": ">", "fixed": "^",
            "tale-ep": "D", "tale-pt": "P", "oracle": "*"}


def method_order(method: str) -> tuple[int, int, str]:
    """Sort key putting methods in the report's order (fixed budgets by size)."""
    kind, _, param = method.partition(":")
    rank = _ORDER.index(kind) if kind in _ORDER else len(_ORDER)
    return rank, int(param) if param.isdigit() else 0, method


def _figure(**kwargs: Any) -> Any:
    """A figure drawn with Agg, apart from pyplot: the caller's backend (a notebook's) is left alone."""
    from .._optional import require

    require("matplotlib", extra="eval", purpose="the evaluation plots")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _colormap(name: str) -> Any:
    import matplotlib

    return matplotlib.colormaps[name]


def _pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not beaten by one with fewer-or-equal tokens and higher-or-equal accuracy, by tokens."""
    front, best = [], -math.inf
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def plot_accuracy_tokens(metrics: Sequence[MethodMetrics], path: str | os.PathLike[str], *, title: str | None = None
                         ) -> Path:
    """Accuracy (%) against mean output tokens, one panel per dataset; returns the PNG path."""
    metrics = [m for m in metrics if m.n > 0 and not math.isnan(m.output_tokens)]
    if not metrics:
        raise ValueError("no results to plot")
    datasets = list(dict.fromkeys(m.dataset for m in metrics))
    models = list(dict.fromkeys(m.model for m in metrics))
    methods = sorted({m.method for m in metrics}, key=method_order)
    colors = _colormap("tab10" if len(methods) <= 10 else "tab20")
    color_of = {name: colors(i % colors.N) for i, name in enumerate(methods)}
    cols = min(3, len(datasets))
    rows = math.ceil(len(datasets) / cols)
    fig = _figure(figsize=(5.2 * cols, 4.2 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    handles: dict[str, object] = {}
    spread = False
    from matplotlib.transforms import offset_copy

    for ax, dataset in zip(axes.flat, datasets):
        here = sorted((m for m in metrics if m.dataset == dataset), key=lambda m: method_order(m.method))
        # Methods with the same result would hide each other: spread them sideways by a few points
        # on screen (the data values are unchanged).
        spots: dict[tuple[float, float], list[str]] = {}
        for m in here:
            spots.setdefault((round(m.output_tokens, 1), round(100 * m.accuracy, 1)), []).append(m.method)
        for m in here:
            kind = m.method.partition(":")[0]
            label = m.label if len(models) == 1 else f"{m.label} ({m.model})"
            y, lo, hi = 100 * m.accuracy, 100 * m.accuracy_low, 100 * m.accuracy_high
            oracle = kind == "oracle"
            group = spots[(round(m.output_tokens, 1), round(y, 1))]
            shift = (group.index(m.method) - (len(group) - 1) / 2) * 9
            spread = spread or len(group) > 1
            handle = ax.errorbar(
                m.output_tokens, y, yerr=[[max(0.0, y - lo)], [max(0.0, hi - y)]], fmt=_MARKERS.get(kind, "o"),
                color=color_of[m.method], markersize=16 if oracle else 8, capsize=3, elinewidth=1,
                markeredgecolor="black" if oracle else color_of[m.method], label=label, zorder=3,
                fillstyle="full" if models.index(m.model) == 0 else "none",
                transform=offset_copy(ax.transData, fig=fig, x=shift, units="points"),
            )
            handles.setdefault(label, handle)
        ax.update_datalim([(m.output_tokens, 100 * m.accuracy) for m in here])  # shifted artists don't count
        ax.autoscale_view()
        front = _pareto([(m.output_tokens, 100 * m.accuracy) for m in here])
        if len(front) > 1:
            ax.plot(*zip(*front), linestyle="--", color="0.6", linewidth=1, zorder=1)
        xs = [m.output_tokens for m in here if m.output_tokens > 0]
        if xs and max(xs) / min(xs) > 20:
            from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(f"{dataset} (n = {max(m.n for m in here)})", fontsize=11)
        ax.set_xlabel(f"mean output tokens [{here[0].counter}]", fontsize=9)
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(-3, 103)
        ax.grid(True, alpha=0.3)
        ax.margins(x=0.15)
    for ax in list(axes.flat)[len(datasets):]:
        ax.set_visible(False)
    fig.suptitle(title or f"Accuracy vs output tokens ({', '.join(models)})", fontsize=12)
    fig.legend(list(handles.values()), list(handles.keys()), loc="center left", bbox_to_anchor=(1.0, 0.5),
               fontsize=9, title_fontsize=9, frameon=False,
               title="method (dashed: Pareto front)" + ("\nequal results are spread sideways" if spread else ""))
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    return path


def plot_elasticity(records: Sequence[SearchRecord], path: str | os.PathLike[str], *, title: str | None = None) -> Path:
    """Budget asked vs tokens written, from search traces; returns the PNG path."""
    points = [(p.budget, p.tokens, p.correct)
              for r in records for p in r.trace if p.budget is not None and p.tokens > 0]
    vanilla = [r.vanilla_tokens for r in records if r.vanilla_tokens > 0]
    if not points:
        raise ValueError("the search file has no budgeted answers to plot (every search stopped at vanilla CoT)")
    fig = _figure(figsize=(7, 5))
    ax = fig.subplots()
    for correct, color, label in ((True, "tab:green", "correct"), (False, "tab:red", "wrong")):
        sel = [(b, t) for b, t, c in points if c is correct]
        if sel:
            ax.scatter(*zip(*sel), s=22, alpha=0.55, color=color, label=f"{label} answer", zorder=2)
    bands: dict[int, list[tuple[int, int]]] = {}
    for b, t, _ in points:
        bands.setdefault(round(math.log2(b)), []).append((b, t))
    medians = []
    for key in sorted(bands):
        budgets, tokens = zip(*bands[key])
        medians.append((sorted(budgets)[len(budgets) // 2], sorted(tokens)[len(tokens) // 2]))
    if len(medians) > 1:
        ax.plot(*zip(*medians), color="black", marker="o", linewidth=1.5, label="median per budget band", zorder=3)
    lo = min(min(b for b, _, _ in points), min(t for _, t, _ in points))
    hi = max(max(b for b, _, _ in points), max(t for _, t, _ in points), max(vanilla, default=1))
    ax.plot([lo, hi], [lo, hi], linestyle=":", color="0.4", label="tokens = budget", zorder=1)
    if vanilla:
        mean = sum(vanilla) / len(vanilla)
        ax.axhline(mean, color="tab:blue", linestyle="--", linewidth=1, label=f"vanilla CoT mean ({mean:.0f})")
    from matplotlib.ticker import FuncFormatter

    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.yaxis.set_major_formatter(plain)
    counter = records[0].counter if records else "?"
    mode = str(records[0].mode) if records else "?"
    ax.set_xlabel("token budget in the prompt")
    ax.set_ylabel(f"output tokens [{counter}]")
    searched = sum(any(p.budget is not None for p in r.trace) for r in records)
    ax.set_title(title or f"Token elasticity ({mode} search: {searched} of {len(records)} questions "
                 "had a correct vanilla answer)", fontsize=11)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=9, loc="best")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=130)
    return path
