"""`python -m cifar_exp.report` / `cifar-exp report`: how a sweep's settings compare.

Reads finished runs back from MLflow (an experiment, a sweep id or an Optuna study), groups
them by the keys the sweep varied (replicate seeds pooled), and writes a markdown and CSV
table (n, mean, std, 95% confidence interval of the mean, best), a bar chart with those
intervals, an overlay of learning curves, and Welch's t-test between two groups; the files
are logged as artifacts of a small MLflow "report" run.
"""
from __future__ import annotations

import argparse
import csv
import math
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cifar_exp.overrides import is_inert
from cifar_exp.training.outcome import CHANCE_SIGMAS, DID_NOT_LEARN

REPLICATE_KEYS = ("seed",)  # varied to replicate, not compared: pooled within a group
REPORT_TAG = "cifar_exp.report"
ALPHA = 0.05


# ------------------------------------------------------------------------ statistics

@dataclass
class Summary:
    label: str
    values: list[float]
    n: int
    mean: float
    std: float  # sample standard deviation (n - 1); nan for n = 1
    ci_low: float  # 95% confidence interval of the mean (Student's t); nan for n = 1
    ci_high: float
    best: float
    did_not_learn: int = 0  # runs tagged outcome=did_not_learn: final test accuracy at chance level


def summarize(label: str, values, maximize: bool = True) -> Summary:
    import numpy as np
    from scipy import stats

    x = np.asarray(values, dtype=float)
    n, mean = len(x), float(x.mean())
    std = float(x.std(ddof=1)) if n > 1 else math.nan
    half = float(stats.t.ppf(1 - ALPHA / 2, n - 1) * std / math.sqrt(n)) if n > 1 else math.nan
    best = float(x.max() if maximize else x.min())
    return Summary(label, list(map(float, x)), n, mean, std, mean - half, mean + half, best)


@dataclass
class Welch:
    a: str
    b: str
    difference: float  # mean(a) - mean(b)
    ci_low: float  # 95% confidence interval of the difference (Welch-Satterthwaite df)
    ci_high: float
    t: float
    df: float
    p: float

    @property
    def significant(self) -> bool:
        return self.p < ALPHA

    def sentence(self) -> str:
        verdict = "significant" if self.significant else "not significant"
        return (f"{self.a} vs {self.b}: difference {self.difference:+.4f} "
                f"(95% CI {self.ci_low:+.4f} to {self.ci_high:+.4f}), Welch's t = {self.t:.3f}, "
                f"df = {self.df:.1f}, p = {self.p:.4f}: {verdict} at {ALPHA}")


def welch(a: Summary, b: Summary) -> Welch | None:
    """Welch's unequal-variance t-test of mean(a) - mean(b); None unless both have n >= 2."""
    import numpy as np
    from scipy import stats

    if a.n < 2 or b.n < 2:
        return None
    result = stats.ttest_ind(a.values, b.values, equal_var=False)
    va, vb = a.std ** 2 / a.n, b.std ** 2 / b.n
    difference = a.mean - b.mean
    if va + vb == 0:
        return Welch(a.label, b.label, difference, difference, difference, math.nan, math.nan, math.nan)
    df = (va + vb) ** 2 / (va ** 2 / (a.n - 1) + vb ** 2 / (b.n - 1))
    half = float(stats.t.ppf(1 - ALPHA / 2, df) * np.sqrt(va + vb))
    return Welch(a.label, b.label, difference, difference - half, difference + half,
                 float(result.statistic), float(df), float(result.pvalue))


# ---------------------------------------------------------------------------- runs

@dataclass
class RunRecord:
    run_id: str
    value: float
    overrides: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    experiment_id: str | None = None

    def get(self, key: str) -> str | None:
        """A key's value: from the command-line overrides, the params, or the group choice."""
        for source in (self.overrides, self.params):
            if key in source:
                return source[key]
        return self.tags.get(f"choice.{key}")


def parse_overrides(text: str) -> dict[str, str]:
    """The `overrides` tag ("init=he_uniform seed=1") as {key: value}."""
    try:
        parts = shlex.split(text)
    except ValueError:
        parts = text.split()
    pairs = (part.split("=", 1) for part in parts if "=" in part)
    return {key.lstrip("+~"): value for key, value in pairs}


def _compared(key: str) -> bool:
    return key not in REPLICATE_KEYS and not is_inert(key) and not key.startswith("optuna_trial")


def swept_keys(records: list[RunRecord]) -> list[str]:
    """The keys a sweep varied: the runs' `swept_keys` tag (what the command line or the sweeper
    swept, even when only one value's runs finished), else the keys whose value differs between
    runs, from the command-line overrides when runs carry them, else from all params; seeds and
    bookkeeping left out."""
    def varying(dicts):
        keys = sorted({k for d in dicts for k in d if _compared(k)})
        return [k for k in keys if len({d.get(k) for d in dicts}) > 1]

    tagged = sorted({k for r in records for k in r.tags.get("swept_keys", "").split(",") if k and _compared(k)})
    return tagged or varying([r.overrides for r in records]) or varying([r.params for r in records])


def group(records: list[RunRecord], keys: list[str]) -> dict[str, list[RunRecord]]:
    groups: dict[str, list[RunRecord]] = {}
    for record in records:
        label = ", ".join(f"{k}={record.get(k)}" for k in keys) if keys else "all runs"
        groups.setdefault(label, []).append(record)
    return groups


def summarize_groups(groups: dict[str, list[RunRecord]], maximize: bool) -> list[Summary]:
    rows = []
    for label, runs in groups.items():
        row = summarize(label, [r.value for r in runs], maximize)
        row.did_not_learn = sum(r.tags.get("outcome") == DID_NOT_LEARN for r in runs)
        rows.append(row)
    return sorted(rows, key=lambda s: (-s.mean if maximize else s.mean, s.label))


def did_not_learn_note(rows: list[Summary]) -> str | None:
    """A sentence naming the groups with runs that ended at chance level, or None."""
    marked = [s for s in rows if s.did_not_learn]
    if not marked:
        return None
    total = sum(s.did_not_learn for s in marked)
    mixed = [s for s in marked if s.did_not_learn < s.n]  # a group only of such runs mixes nothing
    return (f"did not learn: {total} run(s) ended at chance level (final test accuracy within "
            f"{CHANCE_SIGMAS} binomial standard deviations of it; MLflow tag outcome={DID_NOT_LEARN}) in "
            + "; ".join(f"{s.label} ({s.did_not_learn} of {s.n})" for s in marked)
            + (f": the means of {'; '.join(s.label for s in mixed)} mix runs that learnt with runs that did not"
               if mixed else ""))


# ----------------------------------------------------------------------------- files

def _fmt(x: float) -> str:
    return "" if math.isnan(x) else f"{x:.4f}"


COLUMNS = ("group", "n", "mean", "std", "ci95_low", "ci95_high", "best", "did_not_learn")


def table_rows(rows: list[Summary]) -> list[list[str]]:
    return [[s.label, str(s.n), _fmt(s.mean), _fmt(s.std), _fmt(s.ci_low), _fmt(s.ci_high), _fmt(s.best),
             str(s.did_not_learn)] for s in rows]


def text_table(rows: list[Summary]) -> str:
    cells = [list(COLUMNS)] + table_rows(rows)
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     for row in cells)


def write_csv(rows: list[Summary], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        writer.writerows(table_rows(rows))


def write_markdown(rows: list[Summary], path: Path, title: str, metric: str, test: Welch | None,
                   notes: list[str]) -> None:
    lines = [f"# {title}", "", f"Metric: `{metric}`; 95% CI: Student's t interval of the mean.", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(rows)]
    if test is not None:
        lines += ["", test.sentence() + "."]
    lines += [""] + [f"- {note}" for note in notes]
    path.write_text("\n".join(lines) + "\n")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def short_label(label: str) -> str:
    """A label for figures: numbers to 4 significant digits (tables keep them whole)."""
    def short(value: str) -> str:
        try:
            return f"{float(value):.4g}" if any(c in value for c in ".eE") else value
        except ValueError:
            return value

    parts = (part.split("=", 1) for part in label.split(", "))
    return ", ".join(f"{p[0]}={short(p[1])}" if len(p) == 2 else p[0] for p in parts)


def bar_chart(rows: list[Summary], metric: str, path: Path, limit: int = 30) -> None:
    """Mean per group with its 95% CI, best on top, each run a dot."""
    plt = _pyplot()
    rows = rows[:limit][::-1]
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.35 * len(rows)))
    y = range(len(rows))
    err = [[s.mean - s.ci_low if s.n > 1 else 0 for s in rows], [s.ci_high - s.mean if s.n > 1 else 0 for s in rows]]
    ax.barh(list(y), [s.mean for s in rows], xerr=err, color="tab:blue", alpha=0.6, capsize=3)
    for i, s in zip(y, rows):
        ax.plot(s.values, [i] * s.n, "k.", markersize=4)
    ax.set_yticks(list(y), [short_label(s.label) for s in rows])
    ax.set_xlabel(f"{metric} (mean, 95% CI; dots: runs)")
    ax.grid(axis="x", alpha=0.3)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def curves_chart(curves: dict[str, list[list[tuple[int, float]]]], key: str, path: Path) -> None:
    """Per group: each run's per-epoch curve thin, the mean over runs thick."""
    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, runs) in enumerate(curves.items()):
        color = colors[i % len(colors)]
        by_step: dict[int, list[float]] = {}
        for run in runs:
            if run:
                ax.plot(*zip(*run), color=color, alpha=0.25, linewidth=1)
            for step, value in run:
                by_step.setdefault(step, []).append(value)
        if by_step:
            steps = sorted(by_step)
            ax.plot(steps, [np.mean(by_step[s]) for s in steps], color=color, linewidth=2,
                    label=short_label(label))
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel(key)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize="small")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


# ------------------------------------------------------------------------ MLflow I/O

def _default_mlflow_settings() -> tuple[str, str]:
    """cifar_exp/conf/config.yaml's tracking URI and experiment (one source of truth), $MLFLOW_TRACKING_URI first."""
    import os

    from omegaconf import OmegaConf

    from cifar_exp import CONFIG_DIR

    conf = OmegaConf.load(Path(CONFIG_DIR) / "config.yaml").mlflow
    return os.environ.get("MLFLOW_TRACKING_URI", conf.tracking_uri), conf.experiment_name


def _search(client, experiment_ids, filter_string: str, order_by=None, max_results: int | None = None):
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string, order_by=order_by,
                                  max_results=min(max_results or 1000, 1000), page_token=token)
        runs += list(page)
        token = page.token
        if not token or (max_results and len(runs) >= max_results):
            return runs


def latest_sweep_id(client, experiment_ids) -> str | None:
    runs = _search(client, experiment_ids, "tags.sweep_id LIKE '%'", order_by=["attributes.start_time DESC"],
                   max_results=1)
    return runs[0].data.tags["sweep_id"] if runs else None


def load_records(client, experiment_ids, filter_string: str, metric: str, include_pruned: bool):
    """(records, notes): finished runs that logged `metric`, and what was left out."""
    runs = _search(client, experiment_ids, filter_string)
    records, skipped = [], {"report runs": 0, "not FINISHED": 0, "pruned": 0, f"without {metric}": 0}
    for run in runs:
        tags = run.data.tags
        if tags.get(REPORT_TAG):
            skipped["report runs"] += 1
        elif run.info.status != "FINISHED":
            skipped["not FINISHED"] += 1
        elif tags.get("optuna.pruned") == "true" and not include_pruned:
            skipped["pruned"] += 1
        elif metric not in run.data.metrics:
            skipped[f"without {metric}"] += 1
        else:
            records.append(RunRecord(run.info.run_id, float(run.data.metrics[metric]),
                                     parse_overrides(tags.get("overrides", "")), dict(run.data.params), dict(tags),
                                     run.info.experiment_id))
    notes = [f"left out: {n} {why}" for why, n in skipped.items() if n and why != "report runs"]
    return records, notes


def curve_key(client, records: list[RunRecord], metric: str) -> str:
    """The per-epoch series to overlay: val_<base> where logged, else the metric itself."""
    base = metric.split("_", 1)[1] if metric.startswith(("test_", "val_")) else metric
    if records and client.get_metric_history(records[0].run_id, f"val_{base}"):
        return f"val_{base}"
    return metric


def load_curves(client, groups: dict[str, list[RunRecord]], key: str, labels: list[str]):
    curves = {}
    for label in labels:
        curves[label] = []
        for record in groups[label]:
            points = {m.step: m.value for m in client.get_metric_history(record.run_id, key)}
            curves[label].append(sorted(points.items()))
    return curves


# ------------------------------------------------------------------------------- CLI

def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="cifar-exp report", description=__doc__.split("\n\n")[0],
        epilog="examples: cifar-exp report --sweep-id latest | "
               "cifar-exp report --study lr_optuna --metric val_accuracy | "
               "cifar-exp report --sweep-id latest --compare init=he_uniform init=random_normal")
    select = parser.add_argument_group("which runs (combined with AND)")
    select.add_argument("--experiment", help="MLflow experiment name (default: cifar_exp/conf/config.yaml's)")
    select.add_argument("--sweep-id", help="a multirun's sweep_id tag, or `latest`")
    select.add_argument("--study", help="an Optuna study name (the optuna.study tag)")
    select.add_argument("--filter", default="", help="an extra MLflow filter, e.g. \"params.`model.name` = 'alexnet'\"")
    parser.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else cifar_exp/conf/config.yaml's")
    parser.add_argument("--metric", help="final metric to compare (default: the runs' optimized_metric)")
    parser.add_argument("--direction", choices=("maximize", "minimize"),
                        help="default: minimize for *loss*, else maximize")
    parser.add_argument("--by", nargs="+", metavar="KEY",
                        help="group by these keys (default: the keys the sweep varied, seeds pooled)")
    parser.add_argument("--compare", nargs=2, metavar="GROUP",
                        help="the two groups for Welch's t-test, by label or part of it "
                             "(default: the only two, or the best two)")
    parser.add_argument("--include-pruned", action="store_true", help="keep runs an Optuna pruner stopped")
    parser.add_argument("--out", help="folder for the files (default: <sweep dir>/report, else reports/<selection>)")
    parser.add_argument("--no-log", action="store_true", help="do not log a report run to MLflow")
    return parser.parse_args(argv)


def _pick(rows: list[Summary], wanted: str) -> Summary:
    exact = [s for s in rows if s.label == wanted]
    partial = [s for s in rows if wanted in s.label]
    if exact or len(partial) == 1:
        return (exact or partial)[0]
    raise SystemExit(f"--compare {wanted!r} matches {len(partial)} groups; groups: {[s.label for s in rows]}")


def main(argv=None) -> int:
    from mlflow.tracking import MlflowClient

    from cifar_exp.tracking.runs import mask_secrets

    args = parse_args(sys.argv[1:] if argv is None else argv)
    default_uri, default_experiment = _default_mlflow_settings()
    uri = args.tracking_uri or default_uri
    client = MlflowClient(uri)
    if args.experiment or not (args.sweep_id or args.study):
        experiment_name = args.experiment or default_experiment
        experiment = client.get_experiment_by_name(experiment_name)
        if experiment is None:
            names = [e.name for e in client.search_experiments()]
            print(f"No MLflow experiment {experiment_name!r} in {mask_secrets(uri)}; there are: {names}",
                  file=sys.stderr)
            return 2
        ids = [experiment.experiment_id]
    else:  # a sweep or study is found wherever it logged (presets set their own experiment names)
        experiment_name = "any experiment"
        ids = [e.experiment_id for e in client.search_experiments()]

    filters, selection = ["attributes.status = 'FINISHED'"], [experiment_name]
    sweep_id = args.sweep_id
    if sweep_id == "latest":
        sweep_id = latest_sweep_id(client, ids)
        if sweep_id is None:
            print(f"No multirun runs in experiment {experiment_name!r}", file=sys.stderr)
            return 2
    if sweep_id:
        filters.append(f"tags.sweep_id = '{sweep_id}'")
        selection = [f"sweep {sweep_id}"]
    if args.study:
        filters.append(f"tags.`optuna.study` = '{args.study}'")
        selection.append(f"study {args.study}")
    if args.filter:
        filters.append(args.filter)

    probe = _search(client, ids, " and ".join(filters), max_results=50)
    declared = [r.data.params["optimized_metric"] for r in probe if "optimized_metric" in r.data.params]
    metric = args.metric or (declared[0] if declared else "test_accuracy")
    maximize = (args.direction or ("minimize" if "loss" in metric else "maximize")) == "maximize"
    records, notes = load_records(client, ids, " and ".join(filters), metric, args.include_pruned)
    if not records:
        print(f"No finished runs with {metric} for {' and '.join(filters)} in {mask_secrets(uri)}", file=sys.stderr)
        return 2

    keys = args.by or swept_keys(records)
    groups = group(records, keys)
    rows = summarize_groups(groups, maximize)
    if did_not_learn_note(rows):
        notes.insert(0, did_not_learn_note(rows))
    test = None
    if len(rows) >= 2:
        a, b = (_pick(rows, args.compare[0]), _pick(rows, args.compare[1])) if args.compare else (rows[0], rows[1])
        test = welch(a, b)
        if test is None:
            notes.append(f"no t-test of {a.label} vs {b.label}: each needs at least 2 runs")

    title = f"Report: {', '.join(selection)} ({'max' if maximize else 'min'}imize {metric})"
    print(title)
    print(text_table(rows))
    if test is not None:
        print(test.sentence())
    for note in notes:
        print(note)

    sweep_dirs = {r.tags.get("sweep_dir") for r in records}
    if args.out:
        out = Path(args.out)
    elif len(sweep_dirs) == 1 and None not in sweep_dirs and Path(next(iter(sweep_dirs))).is_dir():
        out = Path(next(iter(sweep_dirs))) / "report"
    else:
        out = Path("reports") / "_".join(s.replace(" ", "-") for s in selection)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "report.md", out / "report.csv", out / "report_bar.png", out / "report_curves.png"]
    write_markdown(rows, files[0], title, metric, test, notes)
    write_csv(rows, files[1])
    bar_chart(rows, metric, files[2])
    key = curve_key(client, records, metric)
    curves_chart(load_curves(client, groups, key, [s.label for s in rows[:10]]), key, files[3])
    print(f"Wrote {', '.join(str(f) for f in files)}")

    if not args.no_log:
        # Beside the runs it reports on.
        run = client.create_run(records[0].experiment_id, run_name=f"report: {', '.join(selection)}", tags={
            REPORT_TAG: "true", "report.selection": " and ".join(filters), "report.metric": metric,
            "report.groups": str(len(rows)), "report.runs": str(len(records))})
        for path in files:
            client.log_artifact(run.info.run_id, str(path), "report")
        client.set_terminated(run.info.run_id, "FINISHED")
        print(f"Logged as MLflow run {run.info.run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
