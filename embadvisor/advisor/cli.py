"""The ``embadvisor`` command line: thin typer commands over the library API.

Results go to stdout (rich tables or ``--json``); progress and errors go to stderr. Every error a
user can cause is one line on stderr and exit code 2. torch and optuna are imported inside the
commands that need them, so ``embadvisor --help`` stays instant.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from embadvisor.defaults import DEFAULT_LR, DEFAULT_PATIENCE, DEFAULT_THREADS
from embadvisor.version import __version__

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="embadvisor",
    help="Pick the embedding-compression method that fits your memory budget, with evidence.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,
)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one error line on stderr and return the Exit to raise."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {escape(message)}")
    return typer.Exit(code)


def warn(message: str) -> None:
    """Print one warning line on stderr."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, soft_wrap=True).print(f"[bold yellow]warning:[/] {escape(message)}")


def user_errors(func: F) -> F:
    """Turn embadvisor's own errors (and unreadable files) into one stderr line and exit 2; print its
    warnings (:class:`~embadvisor.errors.EmbAdvisorWarning`) as one ``warning:`` line each."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import warnings

        from embadvisor.errors import EmbAdvisorError, EmbAdvisorWarning

        default_show = warnings.showwarning

        def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
                 line: str | None = None) -> None:
            if issubclass(category, EmbAdvisorWarning):
                warn(str(message))
            else:
                default_show(message, category, filename, lineno, file, line)

        try:
            with warnings.catch_warnings():  # restores showwarning afterwards
                warnings.showwarning = show
                return func(*args, **kwargs)
        except EmbAdvisorError as e:
            raise fail(str(e)) from None
        except KeyboardInterrupt:
            raise fail("interrupted by the user", code=130) from None

    return wrapper  # type: ignore[return-value]


def parse_rung_list(text: str | None) -> list[int] | None:
    """``--rungs 20000,60000`` as sample counts (None = calibrate)."""
    if text is None:
        return None
    try:
        return [int(float(x)) for x in text.split(",") if x.strip()]
    except (ValueError, OverflowError):
        raise fail(f"--rungs must be comma-separated sample counts such as 20000,60000, but got {text!r}.") from None


def check_common(*, seed: int | None = None, storage: str | None = None, output: Path | None = None) -> None:
    """Checks several commands share, run before any data is read or any search starts: the seed's range,
    a storage URL that keeps the study, an output path in an existing folder."""
    from embadvisor._checks import check_output_path, check_seed
    from embadvisor.advisor.storage import check_storage_url

    if seed is not None:
        check_seed(seed)
    check_storage_url(storage)
    if output is not None:
        check_output_path(output)


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"embadvisor {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Pick the embedding-compression method that fits your memory budget, with evidence."""


# --------------------------------------------------------------------------- profiles
@app.command()
@user_errors
def profile(
    data: Annotated[Path | None, typer.Argument(help="Data file to profile (streamed in batches).")] = None,
    fmt: Annotated[
        str | None,
        typer.Option("--format", "-f", help="criteo|avazu|csv|parquet|movielens|interactions|libfm|libffm "
                     "(default: guessed from the file)."),
    ] = None,
    label: Annotated[str | None, typer.Option(help="Label column (csv/parquet).")] = None,
    fields: Annotated[str | None, typer.Option(help="Comma-separated categorical columns (csv/parquet).")] = None,
    preset: Annotated[str | None, typer.Option(help="Show a shipped preset instead (see `embadvisor profiles`).")] = None,
    dim: Annotated[int, typer.Option(help="Embedding dim used for the full-table sizes.", min=1)] = 16,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the profile (.toml or .json).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the profile as JSON.")] = False,
) -> None:
    """Profile a dataset (or show a preset): cardinalities, skew, full-table sizes.

    With neither DATA nor --preset, shows the built-in default preset (criteo-kaggle).
    """
    from embadvisor.advisor import report
    from embadvisor.profiles import get_preset, save_profile
    from embadvisor.profiles.schema import MAX_EMBEDDING_DIM

    if data is not None and preset is not None:
        raise fail("pass either DATA or --preset, not both.")
    if dim > MAX_EMBEDDING_DIM:
        raise fail(f"--dim must be at most {MAX_EMBEDDING_DIM}, but got --dim={dim}.")
    check_common(output=output)  # before the data is read
    if data is None:
        prof = get_preset(preset or "criteo-kaggle")
    else:
        from embadvisor.profiles.build import profile_data

        field_list = [f.strip() for f in fields.split(",") if f.strip()] if fields else None
        prof = profile_data(data, fmt=fmt, label=label, fields=field_list, embedding_dim=dim)
    if output is not None:
        save_profile(prof, output)
        report.console_err().print(f"wrote {output}")
    if as_json:
        emit_json(prof.to_dict())
    else:
        report.print_profile(prof)


@app.command()
@user_errors
def profiles(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List the shipped workload presets."""
    from embadvisor.advisor import report
    from embadvisor.profiles import get_preset, list_presets

    items = [get_preset(n) for n in list_presets()]
    if as_json:
        emit_json([report.preset_row(p) for p in items])
    else:
        report.print_presets(items)


@app.command()
@user_errors
def synth(
    profile_spec: Annotated[str, typer.Argument(metavar="PROFILE", help="Preset name or profile .toml/.json.")],
    rows: Annotated[int, typer.Option(help="Rows (CTR samples or retrieval interactions) to generate.", min=1)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output file: .parquet, or Criteo TSV "
                                         "(.txt/.tsv), or .csv.")],
    fmt: Annotated[str | None, typer.Option("--format", "-f", help="parquet|criteo|csv (default: from the suffix).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same file).")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the generation report as JSON.")] = False,
) -> None:
    """Generate a synthetic workload calibrated to a profile (written in chunks)."""
    from embadvisor.advisor import report
    from embadvisor.profiles import resolve_profile
    from embadvisor.profiles.synth import generate

    check_common(seed=seed)
    result = generate(resolve_profile(profile_spec), rows=rows, output=output, fmt=fmt, seed=seed)
    if as_json:
        emit_json(result.to_dict())
    else:
        report.print_synth(result)


# --------------------------------------------------------------------------- methods
@app.command()
@user_errors
def methods(
    solve_profile: Annotated[
        str | None, typer.Option("--solve", metavar="PROFILE", help="Solve every method for this preset or "
                                 "profile file (needs --budget).")
    ] = None,
    budget: Annotated[str | None, typer.Option(help="Memory budget, e.g. 64MB, 1.5GiB, or a share of the full "
                                               "tables such as 12.5% (with --solve).")] = None,
    scope: Annotated[str, typer.Option(help="What the budget covers: serve (serving storage of the tables) "
                                       "or train (training memory incl. optimizer state).")] = "serve",
    optimizer: Annotated[str, typer.Option(help="Optimizer assumed for training memory: adam|adagrad|"
                                           "rowwise_adagrad|sgd.")] = "adam",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the compression methods, or solve each one for a profile and budget (--solve)."""
    from embadvisor.advisor import report
    from embadvisor.methods import OPTIMIZERS, SCOPES, get_method, list_methods

    if solve_profile is None:
        if budget is not None:
            raise fail("--budget needs --solve PROFILE (e.g. --solve criteo-kaggle --budget 64MB).")
        rows = [report.method_row(get_method(n)) for n in list_methods(input=None)]
        emit_json(rows) if as_json else report.print_methods(rows)
        return
    from embadvisor.methods import solve
    from embadvisor.profiles import resolve_profile
    from embadvisor.units import parse_budget

    if budget is None:
        raise fail("--solve needs --budget SIZE (e.g. --budget 64MB).")
    parsed_budget = parse_budget(budget)
    if scope not in SCOPES:
        raise fail(f"--scope must be one of {', '.join(SCOPES)}, but got {scope!r}.")
    if optimizer not in OPTIMIZERS:
        raise fail(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, but got {optimizer!r}.")
    prof = resolve_profile(solve_profile)
    from embadvisor.api import resolve_budget

    nbytes = resolve_budget(parsed_budget, prof.tables(), scope, optimizer)
    plans = [solve(n, prof.tables(), nbytes, scope=scope, optimizer=optimizer) for n in list_methods()]
    if as_json:
        emit_json([p.to_dict() for p in plans])
    else:
        report.print_plans(prof, plans, nbytes, scope)


# --------------------------------------------------------------------------- train
# `--device`: train, and any command that trains (the spec is checked by embadvisor.devices.resolve_device)
DeviceOpt = Annotated[str, typer.Option(help="Where to train: auto (CUDA when available, else the CPU), cpu, cuda or "
                                             "cuda:N. README: Devices (GPU).")]


@app.command()
@user_errors
def train(
    task: Annotated[str, typer.Option(help="ctr or retrieval.")],
    data: Annotated[Path, typer.Option(help="Data file (or, for retrieval, a directory with train.txt and "
                                       "test.txt).")],
    method: Annotated[str, typer.Option(help="Compression method (see `embadvisor methods`).")] = "full",
    budget: Annotated[str | None, typer.Option(help="Memory budget for the tables, e.g. 8MB or 12.5% (default: 25% of "
                                               "the full tables; `full` ignores it).")] = None,
    scope: Annotated[str, typer.Option(help="What the budget covers: serve or train.")] = "serve",
    fmt: Annotated[str | None, typer.Option("--format", "-f", help="Data format (default: guessed).")] = None,
    label: Annotated[str | None, typer.Option(help="Label column (CSV/Parquet).")] = None,
    fields: Annotated[str | None, typer.Option(help="Comma-separated categorical columns (CSV/Parquet).")] = None,
    protocol: Annotated[str | None, typer.Option(help="Retrieval split: given|leave-last-out|random "
                                                 "(default: from the data).")] = None,
    test: Annotated[Path | None, typer.Option(help="Retrieval: a separate test file (protocol given).")] = None,
    model: Annotated[str, typer.Option(help="CTR model: dlrm|dcn|wdl|deepfm.")] = "dlrm",
    dim: Annotated[int | None, typer.Option(help="Embedding dim (default 16 CTR, 64 retrieval).", min=1)] = None,
    epochs: Annotated[float | None, typer.Option(help="Cap on training epochs (fractions allowed); training stops "
                                                 "earlier when validation stops improving (default cap: 100).",
                                                 min=0.0)] = None,
    patience: Annotated[int, typer.Option(help="Evaluations without improvement before stopping (0 = train "
                                          "the whole cap).", min=0)] = DEFAULT_PATIENCE,
    batch_size: Annotated[int | None, typer.Option(help="Batch size (default 4096 CTR, 1024 retrieval, halved on "
                                                   "small data so an epoch has at least 64 steps).", min=1)] = None,
    lr: Annotated[float, typer.Option(help="Learning rate.", min=0.0)] = DEFAULT_LR,
    optimizer: Annotated[str, typer.Option(help="adam|adagrad|sgd.")] = "adam",
    time_limit: Annotated[str | None, typer.Option(help="Stop training after this long, e.g. 90s, 5m.")] = None,
    threads: Annotated[int, typer.Option(help="torch threads.", min=1)] = DEFAULT_THREADS,
    seed: Annotated[int, typer.Option(help="Seed for splits, initialisation and shuffling.")] = 0,
    device: DeviceOpt = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Train one method on one dataset and report validation and test metrics."""
    from embadvisor.advisor import report
    from embadvisor.api import train as api_train

    result = api_train(data, task=task, method=method, budget=budget, scope=scope, fmt=fmt, label=label,
                       fields=fields, protocol=protocol, test=test, model=model, dim=dim, epochs=epochs,
                       patience=patience, batch_size=batch_size, lr=lr, optimizer=optimizer, time_limit=time_limit,
                       threads=threads, seed=seed, device=device)
    for w in result.extra.get("warnings", []):
        report.console_err().print(f"[bold yellow]warning:[/] {w}")
    if as_json:
        emit_json(result.to_dict())
    else:
        report.print_train(result)


# --------------------------------------------------------------------------- advisor
# options shared by `recommend` and `pareto`
TaskOpt = Annotated[str, typer.Option(help="ctr or retrieval.")]
DataOpt = Annotated[Path | None, typer.Option(help="Your data (default: the task's built-in workload, see README).")]
ScopeOpt = Annotated[str, typer.Option(help="serve: serving storage of the tables; train: training memory "
                                                  "incl. optimizer state.")]
FormatOpt = Annotated[str | None, typer.Option("--format", "-f", help="Data format (default: guessed).")]
LabelOpt = Annotated[str | None, typer.Option(help="Label column (CSV/Parquet).")]
FieldsOpt = Annotated[str | None, typer.Option(help="Comma-separated categorical columns (CSV/Parquet).")]
ModelOpt = Annotated[str, typer.Option(help="CTR model: dlrm|dcn|wdl|deepfm.")]
MethodsOpt = Annotated[str | None, typer.Option("--methods", help="Comma-separated methods to consider "
                                                 "(default: all).")]
StorageOpt = Annotated[str | None, typer.Option(help="Optuna storage URL (default: sqlite:///~/.embadvisor/"
                                              "studies.db; or a journal file path ending in .log). Read from "
                                              "$EMBADVISOR_STORAGE when not given, which keeps a password out of "
                                              "the command line.", envvar="EMBADVISOR_STORAGE")]
BatchSizeOpt = Annotated[int | None, typer.Option(help="Batch size (default 4096 CTR, 1024 retrieval, halved on "
                                                  "small data so an epoch has at least 64 steps).", min=1)]
LrOpt = Annotated[float, typer.Option(help="Base learning rate (sampled trials search 1/3x-10x of it).", min=0.0)]
RungsOpt = Annotated[str | None, typer.Option(help="Training samples of each successive-halving rung, e.g. "
                                             "20000,60000,240000 (default: calibrated on the data).")]
TrialsOpt = Annotated[int | None, typer.Option(help="Candidates at the first rung (default: twice the feasible "
                                               "methods); the best are promoted and trained longer.", min=1)]
ThreadsOpt = Annotated[int, typer.Option(help="torch threads.", min=1)]
SeedOpt = Annotated[int, typer.Option(help="Seed (sampler, splits, training).")]


@app.command()
@user_errors
def recommend(
    budget: Annotated[str, typer.Option(help="Memory budget for the embedding tables, e.g. 64MB, 1.5GiB, or a "
                                        "share of the full tables such as 12.5%.")],
    task: TaskOpt = "ctr",
    data: DataOpt = None,
    profile_spec: Annotated[str | None, typer.Option("--profile", help="Target workload: a preset "
                                                     "(criteo-kaggle, ...) or profile .toml/.json; the budget "
                                                     "applies to it (default: the profile of --data).")] = None,
    budget_scope: ScopeOpt = "serve",
    fmt: FormatOpt = None,
    label: LabelOpt = None,
    fields: FieldsOpt = None,
    model: ModelOpt = "dlrm",
    methods_opt: MethodsOpt = None,
    trials: TrialsOpt = None,
    rungs: RungsOpt = None,
    time_limit: Annotated[str | None, typer.Option(help="Cap on the whole run, e.g. 10m (default: 4.5 min on the "
                                                   "built-in workloads, 1.5x the calibrated estimate on your "
                                                   "data).")] = None,
    storage: StorageOpt = None,
    study: Annotated[str | None, typer.Option(help="Study name (default: derived from a hash of the inputs).")]
    = None,
    batch_size: BatchSizeOpt = None,
    lr: LrOpt = DEFAULT_LR,
    threads: ThreadsOpt = DEFAULT_THREADS,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the chosen config (.toml or .json).")]
    = None,
    workers: Annotated[int, typer.Option(help="Run trials in this many local worker processes (needs --storage "
                                         "a journal .log file or a database URL; threads are split).", min=1)] = 1,
    heartbeat: Annotated[int | None, typer.Option(help="Heartbeat interval in seconds on database storages "
                                                  "(a silent worker's trial is re-run after 3 intervals).",
                                                  min=1)] = None,
    vectors: Annotated[Path | None, typer.Option(help="Frozen corpus vectors to compress after training (.npy or "
                                                 "Parquet list column); the budget is the stored corpus' bytes. "
                                                 "Needs --task retrieval; replaces --data.")] = None,
    queries: Annotated[Path | None, typer.Option(help="With --vectors: query vectors (default: held-out corpus "
                                                 "rows, own row excluded).")] = None,
    qrels: Annotated[Path | None, typer.Option(help="With --queries: relevance labels (Parquet query_id, doc_id, "
                                               "relevance; or TREC text); the objective becomes nDCG@10.")] = None,
    doc_ids: Annotated[Path | None, typer.Option(help="With --vectors: ids of the corpus rows (Parquet id column or "
                                                 "one per line; default: row numbers).")] = None,
    query_ids: Annotated[Path | None, typer.Option(help="With --queries: ids of the query rows.")] = None,
    similarity: Annotated[str, typer.Option(help="With --vectors: cosine or dot.")] = "cosine",
) -> None:
    """Search compression methods under a memory budget, rank them, and recommend one with evidence."""
    from embadvisor.advisor import report
    from embadvisor.units import parse_budget, parse_duration

    if task not in ("ctr", "retrieval"):
        raise fail(f"--task must be ctr or retrieval, but got {task!r}.")
    if budget_scope not in ("serve", "train"):
        raise fail(f"--budget-scope must be serve or train, but got {budget_scope!r}.")
    if output is not None and output.suffix.lower() not in (".toml", ".json"):
        raise fail(f"--output must end in .toml or .json, but got {str(output)!r}.")
    parsed_budget = parse_budget(budget)
    check_common(seed=seed, storage=storage, output=output)  # before the search, not after it
    from embadvisor._checks import check_workers
    from embadvisor.tasks.api import check_model

    check_workers(workers)
    check_model(task, model)
    if query_ids is not None and queries is None:
        raise fail("--query-ids needs --queries (the ids name the query rows): pass --queries FILE, or drop "
                   "--query-ids.")
    on_vectors = any(x is not None for x in (vectors, queries, qrels, doc_ids, query_ids))
    if on_vectors and (workers > 1 or heartbeat is not None):
        raise fail(f"{'--workers' if workers > 1 else '--heartbeat'} applies to searches that train; a --vectors "
                   "search runs in one process: drop it.")
    limit = parse_duration(time_limit) if time_limit else None
    method_list = tuple(m.strip() for m in methods_opt.split(",") if m.strip()) if methods_opt else None
    if method_list:
        from embadvisor.methods import get_method

        for m in method_list:
            get_method(m)
    if on_vectors:  # frozen vectors: nothing is trained
        from embadvisor.advisor import vector_search as vs

        if vectors is None or task != "retrieval" or data is not None or profile_spec is not None:
            raise fail("--queries/--qrels/--doc-ids/--query-ids need --vectors, and --vectors needs --task "
                       "retrieval without --data/--profile.")
        from embadvisor.advisor.storage import open_storage

        store_v = open_storage(storage)
        workload_v = vs.load_workload(vectors, queries=queries, qrels=qrels, doc_ids=doc_ids, query_ids=query_ids,
                                      similarity=similarity, seed=seed)
        # a share is of the stored float32 corpus
        settings_v = vs.VectorSearchSettings(budget_bytes=parsed_budget.resolve(workload_v.data.full_bytes),
                                             methods=method_list, trials=trials or 24,
                                             time_limit_s=limit if limit is not None else 150.0, seed=seed)
        with report.SearchProgress(trials or 24, limit, enabled=not as_json,
                                   header=f"[dim]{workload_v.description}[/]") as progress:
            rec = vs.recommend_vectors(workload_v, settings_v, storage=storage, study_name=study, store=store_v,
                                       on_trial=progress.on_trial, on_phase=progress.on_phase)
        if output is not None:
            from embadvisor.build import write_config

            write_config(rec.config, output)
    else:
        from embadvisor.api import prepare_recommend

        job = prepare_recommend(
            budget, task=task, data=data, profile=profile_spec, scope=budget_scope, fmt=fmt, label=label,
            fields=fields, model=model, methods=method_list, trials=trials, rungs=rungs, time_limit=limit,
            storage=storage, study=study, batch_size=batch_size, lr=lr, threads=threads, seed=seed,
            workers=workers, heartbeat=heartbeat, output=output, device=device)  # errors stay one line
        # the description and the display start with the first phase or trial: an error of the search's own
        # checks (no method fits, a study made for another search) stays the only line on stderr
        with report.SearchProgress(None, limit, enabled=not as_json,
                                   header=f"[dim]{job.workload.description}[/]") as progress:
            rec = job.run(on_trial=progress.on_trial, on_phase=progress.on_phase)
    if output is not None:
        report.console_err().print(f"wrote {output}")
    if as_json:
        emit_json({k: v for k, v in rec.to_dict().items() if k != "config"})
    else:
        report.print_recommendation(rec)


@app.command()
@user_errors
def worker(
    storage: Annotated[str, typer.Option(help="The study's storage: postgresql://user:pass@host/db (many machines) "
                                         "or a journal .log file (one machine); or $EMBADVISOR_STORAGE.",
                                         envvar="EMBADVISOR_STORAGE")],
    study: Annotated[str, typer.Option(help="The study to join (created by `embadvisor recommend`).")],
    threads: Annotated[int, typer.Option(help="torch threads for this worker.", min=1)] = 1,
    heartbeat: Annotated[int | None, typer.Option(help="Heartbeat interval in seconds on database storages.",
                                                  min=1)] = None,
    quiet: Annotated[bool, typer.Option(help="No per-trial lines.")] = False,
    device: DeviceOpt = "auto",
) -> None:
    """Join a study and run its trials until the study's trial or time budget is reached (one process)."""
    from embadvisor.advisor import report
    from embadvisor.advisor.distributed import run_worker
    from embadvisor.advisor.storage import open_storage

    check_common(storage=storage)
    err = report.console_err()

    def on_trial(_study: Any, t: Any) -> None:
        if not quiet:
            err.print(f"trial {t.number}: {t.state.name.lower()} {t.user_attrs.get('method', '')} "
                      f"{'' if t.value is None else f'{t.value:.4f}'}")

    from embadvisor.devices import resolve_device

    dev = str(resolve_device(device))  # this worker's machine decides
    counts = run_worker(open_storage(storage, heartbeat_s=heartbeat), study, threads=threads, on_trial=on_trial,
                        device=dev)
    err.print(f"study {study}: {counts['complete']} complete, {counts['pruned']} pruned, {counts['failed']} failed")


@app.command()
@user_errors
def export(
    study: Annotated[str, typer.Argument(help="Study name (see `embadvisor history`).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="config.toml or config.json")],
    storage: Annotated[str | None, typer.Option(help="Optuna storage URL (default: the local SQLite file).")] = None,
) -> None:
    """Export a study's recommended configuration as a self-contained config file."""
    from embadvisor.advisor.export import load_recommendation, write_config

    if output.suffix.lower() not in (".toml", ".json"):
        raise fail(f"--output must end in .toml or .json, but got {str(output)!r}.")
    check_common(storage=storage, output=output)  # before the study is read
    write_config(load_recommendation(study, storage).config, output)
    from embadvisor.advisor import report

    report.console_err().print(f"wrote {output}")


@app.command()
@user_errors
def history(
    study: Annotated[str | None, typer.Argument(help="Show this study's trials (default: list studies).")] = None,
    storage: Annotated[str | None, typer.Option(help="Optuna storage URL (default: the local SQLite file).")] = None,
    state: Annotated[str | None, typer.Option(help="Only trials in this state: complete|pruned|fail|running.")]
    = None,
    method: Annotated[str | None, typer.Option(help="Only trials of this method.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List studies, or one study's trials (method, settings, bytes, metric, state, duration)."""
    from embadvisor.advisor import report
    from embadvisor.advisor.export import list_studies, study_trials

    check_common(storage=storage)
    if study is None:
        rows = list_studies(storage)
        emit_json(rows) if as_json else report.print_studies(rows)
    else:
        rows = study_trials(study, storage, state=state, method=method)
        emit_json(rows) if as_json else report.print_trials(study, rows)


@app.command()
@user_errors
def plot(
    study: Annotated[str, typer.Argument(help="Study name (see `embadvisor history`).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="out.html (interactive plotly, plotly.js inlined "
                                         "so it opens offline) or out.png (matplotlib).")],
    storage: Annotated[str | None, typer.Option(help="Optuna storage URL (default: the local SQLite file).")] = None,
) -> None:
    """Plot a study: optimisation history, memory vs metric with the feasible frontier, best trial per method.

    Needs the optional plotting libraries: pip install 'embadvisor[plot]'.
    """
    from embadvisor.advisor import report
    from embadvisor.advisor.plot import plot_study

    check_common(storage=storage, output=output)
    path = plot_study(study, output, storage)
    report.console_err().print(f"wrote {path}")


@app.command()
@user_errors
def pareto(
    budgets: Annotated[str, typer.Option(help="Comma-separated budgets, e.g. 8MB,32MB,128MB (one study each).")],
    task: TaskOpt = "ctr",
    data: DataOpt = None,
    profile_spec: Annotated[str | None, typer.Option("--profile", help="Target workload: a preset or profile "
                                                     ".toml/.json; the budgets apply to it (default: the profile "
                                                     "of --data).")] = None,
    budget_scope: ScopeOpt = "serve",
    fmt: FormatOpt = None,
    label: LabelOpt = None,
    fields: FieldsOpt = None,
    model: ModelOpt = "dlrm",
    methods_opt: MethodsOpt = None,
    trials: TrialsOpt = None,
    rungs: RungsOpt = None,
    time_limit: Annotated[str | None, typer.Option(help="Per budget: cap on the run (default: as recommend).")]
    = None,
    storage: StorageOpt = None,
    study: Annotated[str | None, typer.Option(help="Study name prefix; each budget's study is PREFIX-<budget> "
                                              "(default: derived from a hash of the inputs).")] = None,
    batch_size: BatchSizeOpt = None,
    lr: LrOpt = DEFAULT_LR,
    threads: ThreadsOpt = DEFAULT_THREADS,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object: rows and knee.")] = False,
) -> None:
    """Memory-quality frontier: one pruned search per budget on the same data, with the knee."""
    from embadvisor.advisor import report
    from embadvisor.advisor.pareto import build_workload, parse_budget_items, parse_budgets, run_pareto
    from embadvisor.advisor.search import SearchSettings
    from embadvisor.advisor.storage import open_storage
    from embadvisor.units import format_size, parse_duration

    if task not in ("ctr", "retrieval"):
        raise fail(f"--task must be ctr or retrieval, but got {task!r}.")
    if budget_scope not in ("serve", "train"):
        raise fail(f"--budget-scope must be serve or train, but got {budget_scope!r}.")
    parse_budget_items(budgets)  # checked before any data is read
    from embadvisor.devices import resolve_device

    dev = str(resolve_device(device))
    check_common(seed=seed, storage=storage)
    from embadvisor.tasks.api import check_model

    check_model(task, model)
    limit = parse_duration(time_limit) if time_limit else None
    method_list = tuple(m.strip() for m in methods_opt.split(",") if m.strip()) if methods_opt else None
    store = open_storage(storage)  # fail fast, before any data is prepared
    err = report.console_err()
    workload = build_workload(task, data=data, profile_spec=profile_spec, fmt=fmt, label=label, fields=fields,
                              seed=seed, on_progress=lambda m: err.print(f"[dim]{m}[/]"))
    from embadvisor.advisor.search import full_bytes

    sizes = parse_budgets(budgets, full_bytes(workload.target.tables(), budget_scope, "adam"))
    settings = SearchSettings.for_task(
        task, sizes[0], num_train=workload.data.num_train, batch_size=batch_size, lr=lr, threads=threads,
        seed=seed, rungs=parse_rung_list(rungs), scope=budget_scope, model=model, methods=method_list,
        trials=trials, time_limit_s=limit)

    started: list[int] = []

    def on_budget(i: int, nbytes: int) -> Any:
        if not started:  # after the analytic check, so an all-infeasible run prints only its error
            err.print(f"[dim]{workload.description}[/]")
        started.append(i)
        err.print(f"[bold]budget {i + 1}/{len(sizes)}: {format_size(nbytes)}[/]")
        return report.SearchProgress(None, limit, enabled=not as_json)

    result = run_pareto(workload, settings, sizes, storage=storage, study_prefix=study, store=store,
                        on_budget=on_budget, device=dev)
    if as_json:
        emit_json(result)
    else:
        report.print_pareto(result)


def main() -> None:
    """Console entry point: usage errors become one line on stderr with exit code 2."""
    try:  # typer >= 0.20 vendors click as typer._click
        from typer._click import exceptions as cexc  # type: ignore[import-not-found]
    except ImportError:  # pragma: no cover - older typer with click installed
        from click import exceptions as cexc  # type: ignore[no-redef]

    try:
        code = app(standalone_mode=False)
    except cexc.NoArgsIsHelpError:  # bare `embadvisor`: typer has printed the help already
        sys.exit(0)
    except cexc.UsageError as e:
        cmd = e.ctx.command_path if e.ctx is not None else "embadvisor"
        fail(f"{e.format_message()} (see `{cmd} --help`)")
        sys.exit(2)
    except cexc.ClickException as e:
        fail(e.format_message())
        sys.exit(2)
    except KeyboardInterrupt:
        fail("interrupted by the user", code=130)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
