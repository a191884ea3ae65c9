"""Rendering for humans (rich tables) and machines (plain dicts). No printing elsewhere."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from embadvisor.units import format_size

if TYPE_CHECKING:
    from embadvisor.advisor.result import Recommendation
    from embadvisor.profiles.schema import WorkloadProfile

__all__ = ["console", "console_err", "preset_row", "print_presets", "print_profile", "print_synth"]


def console() -> Console:
    return Console(soft_wrap=True)


def console_err() -> Console:
    return Console(stderr=True, soft_wrap=True)


def print_profile(p: WorkloadProfile) -> None:
    out = console()
    title = f"{p.name or 'profile'}: task={p.task}, rows={p.num_rows:,}"
    if p.label_rate is not None:
        title += f", label rate={p.label_rate:.4f}"
    if p.num_dense:
        title += f", dense features={p.num_dense}"
    table = Table(title=title)
    for col, just in [("field", "left"), ("num_embeddings", "right"), ("pooling", "right"),
                      ("top 1% share", "right"), ("power-law s", "right"), ("missing", "right"),
                      (f"full table (d={p.embedding_dim}, {p.dtype})", "right")]:
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for f in p.fields:
        fr = f.frequency
        table.add_row(
            f.name,
            f"{f.num_embeddings:,}",
            f"{f.pooling:.2f}",
            f"{fr.top_share(0.01):.1%}" if fr else "-",
            f"{fr.powerlaw_alpha:.2f}" if fr else "-",
            f"{fr.missing / max(1, fr.missing + fr.total):.1%}" if fr else "-",
            format_size(p.table_bytes(f)),
        )
    table.add_section()
    table.add_row("total", f"{p.total_ids:,}", "", "", "", "", format_size(p.full_table_bytes()))
    out.print(table)
    if p.source:
        out.print(f"[dim]source: {p.source}[/]")


def preset_row(p: WorkloadProfile) -> dict[str, Any]:
    return {
        "name": p.name, "task": p.task, "num_rows": p.num_rows, "num_fields": len(p.fields),
        "total_ids": p.total_ids, "full_table_bytes": p.full_table_bytes(), "source": p.source,
    }


def print_presets(items: list[WorkloadProfile]) -> None:
    table = Table(title="presets")
    for col in ("name", "task", "rows", "fields", "ids", "full tables (d=16, fp32)"):
        table.add_column(col)
    for p in items:
        table.add_row(p.name, p.task, f"{p.num_rows:,}", str(len(p.fields)), f"{p.total_ids:,}",
                      format_size(p.full_table_bytes()))
    console().print(table)


def method_row(cls: Any) -> dict[str, Any]:
    t = cls.tags
    return {
        "name": cls.name,
        "category": t.category,
        "compresses_training": t.compresses_training,
        "layout": t.layout,
        "input": t.input,
        "stages": [s.name for s in cls.stages],
        "size_knob": cls.size_knob,
        "reference": t.reference,
    }


def print_methods(rows: list[dict[str, Any]]) -> None:
    table = Table(title=f"{len(rows)} compression methods")
    for col in ("name", "category", "compresses training", "layout", "input", "size knob", "reference"):
        table.add_column(col)
    for r in rows:
        trains = "yes" if r["compresses_training"] else ("no" if r["category"] == "baseline" else "serving only")
        table.add_row(r["name"], r["category"], trains,
                      r["layout"], r.get("input", "table"), r["size_knob"] or "-", r["reference"])
    console().print(table)


def _short_params(params: dict[str, Any], limit: int = 60) -> str:
    if params and all(isinstance(v, dict) for v in params.values()):
        text = f"per table: {len(params)} tables, e.g. {next(iter(params))}={next(iter(params.values()))}"
    else:
        text = ", ".join(f"{k}={v}" for k, v in params.items())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def share_text(nbytes: float, full: float) -> str:
    """``nbytes`` as a share of ``full``, e.g. ``12.5%`` (three significant digits)."""
    return f"{100 * nbytes / full:.3g}%" if full else "-"


def print_plans(p: WorkloadProfile, plans: list[Any], budget: int, scope: str) -> None:
    full = plans[0].full_bytes if plans else p.full_table_bytes()  # in the budget's scope
    table = Table(title=f"{p.name or 'profile'}: budget {format_size(budget)} ({scope}), "
                  f"{share_text(budget, full)} of the full tables ({format_size(full)})")
    for col, just in [("method", "left"), ("fits", "left"), ("settings", "left"), ("serve", "right"),
                      ("train", "right"), ("% of budget", "right"), ("min budget", "right")]:
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for plan in plans:
        ok = plan.feasible
        table.add_row(
            plan.method,
            "[green]yes[/]" if ok else "[red]no[/]",
            _short_params(plan.params()) if ok else plan.reason,
            format_size(plan.memory.serve_bytes) if ok else "-",
            format_size(plan.memory.train_bytes) if ok else "-",
            f"{plan.bytes / budget:.1%}" if ok else "-",
            format_size(plan.min_budget_bytes),
        )
    console().print(table)


def print_synth(result: Any) -> None:
    d = result.to_dict()
    table = Table(title=f"synthetic workload written to {d.get('path')}")
    table.add_column("key")
    table.add_column("value", justify="right")
    for k, v in d.items():
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    console().print(table)


def print_train(result: Any) -> None:
    d = result.to_dict()
    out = console()
    table = Table(title=f"{d['task']}: {d['method']} ({d['model']}), settings: {_short_params(d['params'], 90) or '-'}")
    table.add_column("metric")
    table.add_column("validation", justify="right")
    table.add_column("test", justify="right")
    for k, v in d["validation"].items():
        t = (d["test"] or {}).get(k)
        table.add_row(k, f"{v:.4f}", f"{t:.4f}" if t is not None else "-")
    out.print(table)
    facts = Table(show_header=False)
    facts.add_column("what")
    facts.add_column("value", justify="right")
    facts.add_row("serving bytes (measured, exported)", f"{format_size(d['serve_bytes'])} ({d['serve_bytes']:,} B)")
    facts.add_row("training bytes (estimate incl. optimizer)", format_size(d["train_bytes"]))
    facts.add_row("full tables", format_size(d["full_bytes"]))
    facts.add_row("train time", f"{d['train_seconds']:.1f} s ({d['steps']} steps, {d['samples']:,} samples, "
                  f"{d['stopped']})")
    facts.add_row("converged", convergence_text(d["converged"], d.get("rise_last_quarter")))
    facts.add_row("training throughput", f"{d['samples_per_second']:,.0f} samples/s")
    facts.add_row("inference latency per batch", f"{d['latency_ms']:.2f} ms")
    facts.add_row("peak RSS", format_size(d["peak_rss_bytes"]))
    out.print(facts)


def convergence_text(converged: bool, rise: float | None) -> str:
    """'yes' for a run early stopping ended, else how much its metric still rose over its last quarter."""
    if converged:
        return "yes (validation stopped improving)"
    rise_txt = "" if rise is None else f"; the metric rose {rise:+.4f} over the last quarter of training"
    return f"NO: stopped by a cap before validation stopped improving{rise_txt}"


class SearchProgress:
    """A rich progress display on stderr: trials done, best so far, elapsed and remaining time.

    The display (and ``header``, a line such as the workload's description, printed with ``--json`` too)
    starts with the first phase or trial, so an error raised by the checks before any work is the only
    line on stderr.
    """

    def __init__(self, trials: int | None, time_limit: float | None, enabled: bool = True,
                 header: str | None = None) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.enabled = enabled
        self.trials = trials
        self.time_limit = time_limit
        self.best: float | None = None
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=console_err(),
                                 transient=False, disable=not enabled)
        self.task_id = self.progress.add_task("trials", total=trials, info="")
        self.header = header
        self.started = False
        import time

        self._t0 = time.perf_counter()

    def __enter__(self) -> SearchProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.started:
            self.progress.__exit__(*exc)

    def start(self) -> None:
        """Print the header and show the display (once; the first phase or trial calls it)."""
        if not self.started:
            self.started = True
            if self.header:
                console_err().print(self.header)
            self.progress.start()

    def on_trial(self, study: Any, trial: Any) -> None:
        import time

        self.start()
        if trial.value is not None and (self.best is None or trial.value > self.best):
            self.best = trial.value
        done = sum(1 for t in study.trials if t.state.is_finished())
        elapsed = time.perf_counter() - self._t0
        remaining = f", time limit in {max(0.0, self.time_limit - elapsed):.0f}s" if self.time_limit else ""
        last = f"{trial.params.get('method')} rung {trial.user_attrs.get('rung', 0)} {trial.state.name.lower()}"
        best = f"best {self.best:.4f}" if self.best is not None else "best -"
        done = done if self.trials is None else min(done, self.trials)
        self.progress.update(self.task_id, completed=done, info=f"{best} | last: {last}{remaining}")

    def on_phase(self, phase: str) -> None:
        """Show the phase; a phase with details after a colon is also printed as a line on stderr."""
        self.start()
        head, _, detail = phase.partition(":")
        if detail:  # e.g. the estimate: on stderr with --json too
            (self.progress.console if self.enabled else console_err()).print(f"[dim]{phase}[/]")
        self.progress.update(self.task_id, description=head)


def print_recommendation(rec: Recommendation) -> None:
    out = console()
    metric = rec.metric.name
    budget = rec.budget_bytes
    trials = rec.trials
    table = Table(title=f"ranked candidates ({trials['complete']} complete, {trials['pruned']} pruned, "
                  f"{trials['failed']} failed trials; budget {format_size(budget)} {rec.scope}, "
                  f"{share_text(budget, rec.full_bytes)} of the full tables)")
    for col, just in [("#", "right"), ("method", "left"), ("key settings", "left"), ("serve", "right"),
                      ("% of budget", "right"), (f"val {metric} (search)", "right"), ("fresh seeds", "right"),
                      ("latency ms", "right")]:
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for i, c in enumerate(rec.ranking, 1):
        mark = "[bold green]*[/]" if c["trial"] == rec.ranking[0]["trial"] and c["method"] == rec.method else ""
        table.add_row(f"{i}{mark}", c["method"], _short_params(c["params"], 50), format_size(c["serve_bytes"]),
                      f"{c['serve_bytes'] / budget:.0%}",
                      f"{c['value']:.4f}" + (f" (rung {c['rung']})" if "rung" in c else ""),
                      ", ".join(f"{v:.4f}" for v in c["fresh"]) or "-", f"{c['latency_ms']:.1f}")
    out.print(table)
    test = rec.metric.test
    out.print(f"[bold]recommended: {rec.method}[/] {_short_params(rec.params, 200)}")
    out.print(f"  serving {format_size(rec.serve_bytes)} of {format_size(budget)} budget "
              f"({share_text(budget, rec.full_bytes)} of the full tables, {format_size(rec.full_bytes)}), "
              f"training {format_size(rec.train_bytes)}")
    t = rec.training
    ev = t.evidence if t is not None else None
    spread = rec.metric.spread
    how = ""
    if ev:
        how = (f" (mean of {ev['runs']} fresh-seed runs" + (f", std {spread:.4f}" if spread is not None else "")
               + f", {min(ev['samples']):,}-{max(ev['samples']):,} samples each, "
               + ("each trained until validation stopped improving)" if ev["converged"] else "NOT all converged)"))
    out.print(f"  validation {metric} {rec.metric.validation:.4f}{how}"
              + (f", test {metric} {test:.4f} (test split evaluated once, for this pick)" if test is not None else ""))
    if t is not None and t.undertrained:
        out.print(f"  [bold yellow]under-trained evidence:[/] {t.undertrained['reason']}")
    if t is not None and t.search_incomplete:
        out.print(f"  [yellow]search cut short:[/] {t.search_incomplete}")
    out.print(f"  why: {rec.explanation}")
    if rec.proxy:
        out.print(f"  [dim]metrics and latency were measured on the proxy; {', '.join(rec.extrapolated)} are "
                  "solved for the target workload (extrapolated).[/]")
    if rec.infeasible:
        out.print("  [dim]did not fit: " + ", ".join(f"{m} (needs {format_size(b)})"
                                                    for m, b in sorted(rec.infeasible.items())) + "[/]")
    out.print(f"  [dim]study {rec.study} in {rec.storage}; export with `embadvisor export {rec.study} "
              f"-o config.toml`[/]")


def print_studies(rows: list[dict[str, Any]]) -> None:
    table = Table(title=f"{len(rows)} studies")
    for col in ("study", "task", "target", "budget", "scope", "trials", "best", "recommended", "created"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["study"], str(r["task"] or "-"), str(r["target"] or "-"),
                      format_size(r["budget_bytes"]) if r["budget_bytes"] else "-", str(r["scope"] or "-"),
                      str(r["trials"]), f"{r['best_value']:.4f}" if r["best_value"] is not None else "-",
                      str(r["recommended"] or "-"), str(r["created"] or "-"))
    console().print(table)


def print_trials(study: str, rows: list[dict[str, Any]]) -> None:
    table = Table(title=f"study {study}: {len(rows)} trials")
    for col, just in [("#", "right"), ("state", "left"), ("method", "left"), ("settings", "left"),
                      ("serve", "right"), ("rung", "right"), ("samples", "right"), ("value", "right"),
                      ("seconds", "right"), ("note", "left")]:
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in rows:
        samples = r.get("samples")
        table.add_row(str(r["number"]), r["state"], str(r["method"] or "-"), _short_params(r["params"] or {}, 40),
                      format_size(r["serve_bytes"]) if r["serve_bytes"] else "-", str(r.get("rung", 0)),
                      f"{samples:,}" + ("" if r.get("converged") else "*") if samples else "-",
                      f"{r['value']:.4f}" if r["value"] is not None else "-",
                      f"{r['duration_s']:.1f}" if r["duration_s"] is not None else "-", (r["failure"] or "")[:60])
    console().print(table)
    if any(r.get("samples") and not r.get("converged") for r in rows):
        console().print("[dim]* stopped by its rung's sample cap (or a time limit), not by early stopping[/]")


def _share(row: dict[str, Any]) -> str:
    share = row.get("budget_share")
    return f"{100 * share:.3g}%" if share is not None else "-"


def print_pareto(result: dict[str, Any]) -> None:
    """The ``embadvisor pareto`` table: one row per budget, frontier and knee marked."""
    out = console()
    metric = result["metric"]
    table = Table(title=f"memory-quality frontier ({result['task']}, budgets on {result['scope']} bytes)")
    for col, just, width in [("budget", "right", 9), ("share", "right", None), ("method", "left", 10),
                             ("key settings", "left", None),
                             ("serve", "right", 9), ("% of budget", "right", None), (f"val {metric}", "right", None),
                             (f"test {metric}", "right", None), ("frontier", "left", 9)]:
        table.add_column(col, justify=just, min_width=width)  # type: ignore[arg-type]
    for r in result["rows"]:
        if not r["feasible"]:
            table.add_row(format_size(r["budget_bytes"]), _share(r), "[red]infeasible[/]", (r["reason"] or "")[:70],
                          "-", "-",
                          "-", "-", "")
            continue
        mark = "[bold green]knee[/]" if r["knee"] else ("yes" if r["on_frontier"] else "[dim]dominated[/]")
        table.add_row(format_size(r["budget_bytes"]), _share(r), r["method"], _short_params(r["params"] or {}, 40),
                      format_size(r["serve_bytes"]), f"{r['serve_bytes'] / r['budget_bytes']:.0%}",
                      f"{r['validation']:.4f}", f"{r['test']:.4f}" if r["test"] is not None else "-", mark)
    out.print(table)
    k = result.get("knee")
    if k:
        out.print(f"[bold]knee: {format_size(k['budget_bytes'])}[/] ({k['method']}, serving "
                  f"{format_size(k['serve_bytes'])}, validation {metric} {k['validation']:.4f}): the frontier point "
                  "farthest above the line joining its ends (log bytes vs metric); past it, more memory buys less.")
    else:
        out.print(f"[dim]{result.get('knee_note') or 'no knee'}[/]")
    out.print(f"[dim]{result['workload']}[/]")
