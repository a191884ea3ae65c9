"""Plots of one stored study: optimisation history, memory vs quality, best trial per method.

``plot_study(name, "out.html")`` writes an interactive plotly page with plotly.js inlined (it opens
offline); ``plot_study(name, "out.png")`` a static matplotlib figure (Agg, no display needed). Both
need the optional ``plot`` extra (``pip install 'embadvisor[plot]'``); a missing library is a
one-line :class:`EmbAdvisorError`.

Panels:
1. History: the validation metric of each trial by trial number, the best-so-far line over
   completed trials, pruned trials at their last reported value and failed trials marked on the
   lower edge.
2. Memory vs quality: completed trials by memory (the budget's scope: serving bytes for ``serve``
   studies, training bytes for ``train``; target-workload bytes from the trial's user attributes,
   log scale) and validation metric, coloured by method; the feasible frontier (non-dominated
   trials within the budget) and the budget line; the recommended trial starred when the study has
   a recommendation.
3. Best trial per method: the best completed validation metric of each method.
4. Learning curves: every completed trial's validation metric against the samples it trained
   (log scale), coloured by method, thicker at higher rungs; the recommended configuration's
   fresh-seed runs (trained to convergence) dashed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embadvisor.advisor.frontier import pareto_frontier
from embadvisor.errors import DataError, EmbAdvisorError, InvalidConfigError
from embadvisor.units import format_size

__all__ = ["SUFFIXES", "StudyPlotData", "TrialPoint", "load_plot_data", "plot_study"]

#: Output suffix -> the library that writes it.
SUFFIXES = {".html": "plotly", ".png": "matplotlib"}
INSTALL_HINT = "pip install 'embadvisor[plot]'"
#: matplotlib's tab20 (one colour per method, the same in both back ends).
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
    "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5",
)


@dataclass(frozen=True)
class TrialPoint:
    """One trial as plotted: ``value`` is the final metric (complete) or the last reported one (pruned)."""

    number: int
    state: str
    method: str | None
    value: float | None
    memory: int | None
    curve: tuple[tuple[int, float], ...] = ()
    rung: int = 0

    @property
    def v(self) -> float:
        """The value as a float (NaN when there is none)."""
        return float(self.value) if self.value is not None else math.nan


@dataclass
class StudyPlotData:
    """What the three panels show, read from a study (no plotting library needed)."""

    study: str
    metric: str
    scope: str
    budget_bytes: int | None
    points: list[TrialPoint]
    recommended_trial: int | None = None
    title: str = ""
    methods: list[str] = field(default_factory=list)
    #: the recommended configuration's fresh-seed curves: (seed, curve)
    finalist_curves: list[tuple[int, list[tuple[int, float]]]] = field(default_factory=list)

    def curves(self) -> list[TrialPoint]:
        """Completed trials with a learning curve (samples > 0)."""
        return [p for p in self.complete() if any(s > 0 for s, _ in p.curve)]

    def complete(self) -> list[TrialPoint]:
        return [p for p in self.points if p.state == "complete" and p.value is not None]

    def best_so_far(self) -> list[tuple[int, float]]:
        """``(trial number, best completed value up to it)`` at each completed trial."""
        out: list[tuple[int, float]] = []
        best = -math.inf
        for p in sorted(self.complete(), key=lambda p: p.number):
            best = max(best, p.v)
            out.append((p.number, best))
        return out

    def frontier(self) -> list[TrialPoint]:
        """Non-dominated completed trials within the budget, by increasing memory."""
        cands = [p for p in self.complete() if p.memory is not None and p.memory > 0
                 and (self.budget_bytes is None or p.memory <= self.budget_bytes)]
        idx = pareto_frontier([(float(p.memory or 0), p.v) for p in cands])
        return [cands[i] for i in idx]

    def best_per_method(self) -> list[TrialPoint]:
        """The best completed trial of each method, best first."""
        best: dict[str, TrialPoint] = {}
        for p in self.complete():
            if p.method is None:
                continue
            if p.method not in best or p.v > best[p.method].v:
                best[p.method] = p
        return sorted(best.values(), key=lambda p: -p.v)

    def colour(self, method: str | None) -> str:
        if method is None or method not in self.methods:
            return "#7f7f7f"
        return PALETTE[self.methods.index(method) % len(PALETTE)]


def _metric_name(study: Any) -> str:
    rec = study.user_attrs.get("recommendation") or {}
    if isinstance(rec.get("metric"), dict) and rec["metric"].get("name"):
        return str(rec["metric"]["name"])
    task = (study.user_attrs.get("key") or {}).get("task")
    return {"ctr": "auc", "retrieval": "recall@20"}.get(str(task), "validation metric")


def _recommended_trial(study: Any) -> int | None:
    rec = study.user_attrs.get("recommendation") or {}
    for c in rec.get("ranking") or []:
        if c.get("method") == rec.get("method") and c.get("params") == rec.get("params"):
            return int(c["trial"])
    return None


def load_plot_data(name: str, storage: str | None = None) -> StudyPlotData:
    """Read a study's trials into :class:`StudyPlotData` (unknown study: one-line error listing the known ones)."""
    from embadvisor.advisor.export import _load_study

    study = _load_study(name, storage)
    key = study.user_attrs.get("key") or {}
    scope = str(key.get("scope") or "serve")
    budget = key.get("budget_bytes")
    mem_attr = "train_bytes" if scope == "train" else "serve_bytes"
    points = []
    for t in study.trials:
        state = t.state.name.lower()
        value = t.value if state == "complete" else None
        if state == "pruned" and t.intermediate_values:
            value = t.intermediate_values[max(t.intermediate_values)]
        if value is not None and not math.isfinite(value):
            value = None
        mem = t.user_attrs.get(mem_attr)
        curve = tuple((int(a), float(v)) for a, v in t.user_attrs.get("curve") or [] if v is not None)
        points.append(TrialPoint(t.number, state, t.params.get("method") or t.user_attrs.get("method"), value,
                                 int(mem) if mem is not None else None, curve, int(t.user_attrs.get("rung", 0))))
    if not any(p.state == "complete" and p.value is not None for p in points):
        counts = {s: sum(1 for p in points if p.state == s) for s in ("pruned", "fail", "running", "waiting")}
        raise EmbAdvisorError(f"study {name!r} has no completed trial to plot ({len(points)} trials: "
                              + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + "). Run or resume it with "
                              "`embadvisor recommend` first.")
    methods = sorted({p.method for p in points if p.method})
    title = f"study {name}"
    if key.get("task"):
        title += f": {key.get('task')} {key.get('target', '')}"
    if budget:
        title += f", budget {format_size(budget)} ({scope})"
    rec = study.user_attrs.get("recommendation") or {}
    fresh: list[tuple[int, list[tuple[int, float]]]] = []
    for c in rec.get("ranking") or []:
        if c.get("trial") == (rec.get("evidence") or {}).get("trial"):
            fresh = [(int(r["seed"]), [(int(a), float(v)) for a, v in r.get("curve") or []])
                     for r in c.get("fresh_runs") or []]
    return StudyPlotData(name, _metric_name(study), scope, int(budget) if budget else None, points,
                         _recommended_trial(study), title, methods, fresh)


def _require(module: str, suffix: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise EmbAdvisorError(f"writing {suffix} plots needs {module}, which is not installed: "
                              f"{INSTALL_HINT}") from None


def check_output(output: str | Path) -> str:
    """The output's suffix, or an error naming the supported ones."""
    suffix = Path(output).suffix.lower()
    if suffix not in SUFFIXES:
        raise InvalidConfigError(f"`output` must end in {' or '.join(SUFFIXES)}, but got output={str(output)!r}.")
    return suffix


def plot_study(name: str, output: str | Path, storage: str | None = None) -> Path:
    """Write the study's three panels to ``output`` (``.html`` with plotly, ``.png`` with matplotlib).

    Raises:
        InvalidConfigError: unsupported suffix.
        EmbAdvisorError: the library for the suffix is missing, or the study has no completed trial.
        UnknownNameError: no study of that name in the storage.
    """
    path = Path(output)
    suffix = check_output(path)
    _require(SUFFIXES[suffix], suffix)  # before any storage access: the cheap check first
    data = load_plot_data(name, storage)
    if path.parent and not path.parent.is_dir():
        raise InvalidConfigError(f"`output` must be in an existing folder, but got output={str(path)!r}.")
    from embadvisor._checks import check_output_path

    check_output_path(path)
    try:
        if suffix == ".html":
            write_html(data, path)
        else:
            write_png(data, path)
    except OSError as e:  # e.g. the disk is full
        raise DataError(f"cannot write `output` {str(path)!r}: {e.strerror or e}. Pick a path you can write "
                        "to.") from None
    return path


def _failed_y(data: StudyPlotData) -> float:
    vals = [p.value for p in data.points if p.value is not None]
    return min(vals) if vals else 0.0


def _log_memory(data: StudyPlotData) -> bool:
    """Log scale for the memory axis when it spans at least a decade (else ticks are unreadable)."""
    mems = [p.memory for p in data.complete() if p.memory] + ([data.budget_bytes] if data.budget_bytes else [])
    return bool(mems) and max(mems) >= 10 * min(mems)


def _mem_label(data: StudyPlotData) -> str:
    scale = ", log scale" if _log_memory(data) else ""
    return f"{'training' if data.scope == 'train' else 'serving'} bytes (target workload{scale})"


# --------------------------------------------------------------------------------------- plotly
def write_html(data: StudyPlotData, path: Path) -> None:
    go = _require("plotly.graph_objects", ".html")
    subplots = _require("plotly.subplots", ".html")
    fig = subplots.make_subplots(rows=1, cols=4, horizontal_spacing=0.06, subplot_titles=(
        "optimisation history", f"memory vs {data.metric}", "best trial per method", "learning curves"))
    metric = data.metric
    # 1. history
    for state, symbol, colour in (("complete", "circle", "#1f77b4"), ("pruned", "x", "#d62728")):
        pts = [p for p in data.points if p.state == state and p.value is not None]
        if pts:
            fig.add_trace(go.Scatter(
                x=[p.number for p in pts], y=[p.value for p in pts], mode="markers", name=f"{state} trials",
                marker={"symbol": symbol, "color": colour, "size": 8}, legendgroup="history",
                text=[f"#{p.number} {p.method} ({state})" for p in pts], hoverinfo="text+y"), row=1, col=1)
    failed = [p for p in data.points if p.state == "fail"]
    if failed:
        y = _failed_y(data)
        fig.add_trace(go.Scatter(x=[p.number for p in failed], y=[y] * len(failed), mode="markers",
                                 name="failed trials", marker={"symbol": "triangle-down", "color": "black", "size": 9},
                                 text=[f"#{p.number} {p.method} (failed)" for p in failed], hoverinfo="text",
                                 legendgroup="history"), row=1, col=1)
    best = data.best_so_far()
    fig.add_trace(go.Scatter(x=[n for n, _ in best], y=[v for _, v in best], mode="lines", line_shape="hv",
                             name="best so far", line={"color": "#2ca02c", "width": 2}, legendgroup="history"),
                  row=1, col=1)
    # 2. memory vs metric, one trace per method
    for m in data.methods:
        pts = [p for p in data.complete() if p.method == m and p.memory]
        if not pts:
            continue
        fig.add_trace(go.Scatter(
            x=[p.memory for p in pts], y=[p.value for p in pts], mode="markers", name=m, legendgroup=m,
            marker={"color": data.colour(m), "size": 9},
            text=[f"#{p.number} {m}: {format_size(p.memory or 0)}, {metric} {p.value:.4f}" for p in pts],
            hoverinfo="text"), row=1, col=2)
    front = data.frontier()
    if front:
        fig.add_trace(go.Scatter(x=[p.memory for p in front], y=[p.value for p in front], mode="lines+markers",
                                 line_shape="hv", name="feasible frontier", line={"color": "black", "dash": "dot"},
                                 marker={"symbol": "diamond-open", "size": 12, "color": "black"}), row=1, col=2)
    if data.budget_bytes:
        vals = [p.v for p in data.complete()]
        fig.add_trace(go.Scatter(x=[data.budget_bytes] * 2, y=[min(vals), max(vals)], mode="lines",
                                 name=f"budget {format_size(data.budget_bytes)}",
                                 line={"color": "#d62728", "dash": "dash"}), row=1, col=2)
    rec = next((p for p in data.complete() if p.number == data.recommended_trial), None)
    if rec is not None and rec.memory:
        fig.add_trace(go.Scatter(x=[rec.memory], y=[rec.value], mode="markers", name=f"recommended ({rec.method})",
                                 marker={"symbol": "star", "size": 18, "color": "gold",
                                         "line": {"color": "black", "width": 1}}), row=1, col=2)
    # 3. best per method
    bests = data.best_per_method()
    fig.add_trace(go.Bar(
        x=[p.value for p in bests], y=[p.method for p in bests], orientation="h", showlegend=False,
        marker={"color": [data.colour(p.method) for p in bests]},
        text=[f"{p.value:.4f} (#{p.number})" for p in bests], textposition="auto"), row=1, col=3)
    lo, hi = min(p.v for p in bests), max(p.v for p in bests)
    pad = max(1e-3, 0.1 * (hi - lo))
    # 4. learning curves
    for p in data.curves():
        xy = [(a, v) for a, v in p.curve if a > 0]
        fig.add_trace(go.Scatter(x=[a for a, _ in xy], y=[v for _, v in xy], mode="lines", showlegend=False,
                                 line={"color": data.colour(p.method), "width": 1 + p.rung},
                                 text=f"#{p.number} {p.method} rung {p.rung}", hoverinfo="text+x+y",
                                 legendgroup=p.method or ""), row=1, col=4)
    for seed, curve in data.finalist_curves:
        xy = [(a, v) for a, v in curve if a > 0]
        fig.add_trace(go.Scatter(x=[a for a, _ in xy], y=[v for _, v in xy], mode="lines",
                                 name=f"recommended, fresh seed {seed}", line={"color": "black", "dash": "dash"}),
                      row=1, col=4)
    fig.update_xaxes(title_text="training samples (log scale)", type="log", row=1, col=4)
    fig.update_yaxes(title_text=f"validation {metric}", row=1, col=4)
    fig.update_xaxes(title_text="trial number", row=1, col=1)
    fig.update_yaxes(title_text=f"validation {metric}", row=1, col=1)
    fig.update_xaxes(title_text=_mem_label(data), type="log" if _log_memory(data) else "linear", row=1, col=2)
    fig.update_yaxes(title_text=f"validation {metric}", row=1, col=2)
    fig.update_xaxes(title_text=f"best validation {metric}", range=[lo - pad, hi + pad], row=1, col=3)
    fig.update_yaxes(autorange="reversed", row=1, col=3)
    fig.update_layout(title_text=data.title, height=560, width=2200, template="plotly_white")
    fig.write_html(str(path), include_plotlyjs=True, full_html=True)


# --------------------------------------------------------------------------------------- matplotlib
def write_png(data: StudyPlotData, path: Path) -> None:
    _require("matplotlib", ".png")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

    fig = Figure(figsize=(25, 5.8), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax1, ax2, ax3, ax4 = fig.subplots(1, 4)
    metric = data.metric
    # 1. history
    done = [p for p in data.points if p.state == "complete" and p.value is not None]
    ax1.scatter([p.number for p in done], [p.value for p in done], s=22, color="#1f77b4", label="complete")
    pruned = [p for p in data.points if p.state == "pruned" and p.value is not None]
    if pruned:
        ax1.scatter([p.number for p in pruned], [p.value for p in pruned], marker="x", s=36, color="#d62728",
                    label="pruned (last reported)")
    failed = [p for p in data.points if p.state == "fail"]
    if failed:
        ax1.scatter([p.number for p in failed], [_failed_y(data)] * len(failed), marker="v", s=40, color="black",
                    label="failed")
    best = data.best_so_far()
    ax1.step([n for n, _ in best], [v for _, v in best], where="post", color="#2ca02c", lw=2, label="best so far")
    ax1.set_xlabel("trial number")
    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax1.set_ylabel(f"validation {metric}")
    ax1.set_title("optimisation history")
    ax1.legend(loc="best", fontsize=8)
    ax1.grid(alpha=0.3)
    # 2. memory vs metric
    for m in data.methods:
        pts = [p for p in done if p.method == m and p.memory]
        if pts:
            ax2.scatter([p.memory for p in pts], [p.value for p in pts], s=30, color=data.colour(m), label=m)
    front = data.frontier()
    if front:
        ax2.step([p.memory for p in front], [p.value for p in front], where="post", color="black", ls=":", lw=1.5,
                 label="feasible frontier")
        ax2.scatter([p.memory for p in front], [p.value for p in front], s=90, facecolors="none",
                    edgecolors="black", marker="D")
    if data.budget_bytes:
        ax2.axvline(data.budget_bytes, color="#d62728", ls="--", label=f"budget {format_size(data.budget_bytes)}")
    rec = next((p for p in done if p.number == data.recommended_trial), None)
    if rec is not None and rec.memory:
        ax2.scatter([rec.memory], [rec.value], marker="*", s=260, color="gold", edgecolors="black", zorder=5,
                    label=f"recommended ({rec.method})")
    if _log_memory(data):
        ax2.set_xscale("log")
        ax2.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax2.xaxis.set_major_locator(MaxNLocator(5))
    ax2.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: format_size(x) if x > 0 else ""))
    ax2.set_xlabel(_mem_label(data))
    ax2.set_ylabel(f"validation {metric}")
    ax2.set_title(f"memory vs {metric}")
    ax2.legend(loc="best", fontsize=7, ncol=2)
    ax2.grid(alpha=0.3, which="both")
    # 3. best per method
    bests = data.best_per_method()
    names = [p.method or "?" for p in bests]
    vals = [p.v for p in bests]
    ax3.barh(names, vals, color=[data.colour(p.method) for p in bests])
    lo, hi = min(vals), max(vals)
    pad = max(1e-3, 0.1 * (hi - lo))
    ax3.set_xlim(lo - pad, hi + pad)
    ax3.invert_yaxis()
    for i, p in enumerate(bests):
        ax3.text(vals[i], i, f" {vals[i]:.4f} (#{p.number})", va="center", fontsize=8)
    ax3.set_xlabel(f"best validation {metric}")
    ax3.set_title("best trial per method")
    # 4. learning curves
    for p in data.curves():
        xy = [(a, v) for a, v in p.curve if a > 0]
        ax4.plot([a for a, _ in xy], [v for _, v in xy], color=data.colour(p.method), lw=0.8 + 0.7 * p.rung,
                 alpha=0.8)
    for seed, curve in data.finalist_curves:
        xy = [(a, v) for a, v in curve if a > 0]
        ax4.plot([a for a, _ in xy], [v for _, v in xy], color="black", ls="--", lw=1.5,
                 label=f"recommended, fresh seed {seed}")
    ax4.set_xscale("log")
    ax4.set_xlabel("training samples (log scale)")
    ax4.set_ylabel(f"validation {metric}")
    ax4.set_title("learning curves")
    if data.finalist_curves:
        ax4.legend(loc="best", fontsize=8)
    ax4.grid(alpha=0.3, which="both")
    fig.suptitle(data.title)
    fig.savefig(path, format="png")
