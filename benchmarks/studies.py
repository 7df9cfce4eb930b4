"""The seed studies as results: run each study's preset at a declared scale, then write
docs/results.md from the MLflow runs through the report's statistics (cifar_exp/sweeps/report.py:
mean and Student's t 95% CI over seeds, Welch's t-test), the seeds' own figures beside ours.

    python benchmarks/studies.py --scale cpu [--cifar10 PATH] [--out DIR] [--page PAGE] [--only kfold ...] [--page-only]

Each study is one `python -m cifar_exp ... --multirun` of its preset, shrunk by the scale's
overrides, logging to DIR/mlflow.db (default: ~/.cache/cifar_exp/studies/<scale>, outside the
repository). A re-run skips the jobs that already finished (the sweeps' own rule), so an
interrupted command continues where it stopped. The page is rewritten after every study and
says which studies ran and which did not; `--page-only` rewrites it from DIR without training.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CIFAR_SUBSET = ["dataset.stratify=true"]  # the first N training images, balanced over the classes


@dataclass
class Study:
    name: str
    title: str
    seed_source: str
    command: list[str]                 # the preset and the swept values (the scale's overrides come after)
    scales: dict[str, list[str]]       # scale -> overrides that shrink it
    keys: list[str]                    # what the table groups by (seeds pooled)
    metric: str = "test_accuracy"
    experiment: str = "cifar_exp"      # the MLflow experiment its preset logs to
    uses_cifar10: bool = True
    seed_figures: dict[str, str] = field(default_factory=dict)  # group label -> the seed's figure


STUDIES = [
    Study(
        "kfold", "K-fold CV: are complex polynomials chosen over simpler ones?", "seed 002 (question only, no figures)",
        ["experiment=kfold_poly", "seed=0,1,2"],
        {"cpu": [], "smoke": ["kfold.noise=0.5", "kfold.n_samples=50", "kfold.repeats=5"]},
        ["kfold.noise", "kfold.n_samples"], metric="test_mse", experiment="cifar_exp", uses_cifar10=False),
    Study(
        "transfer", "Transfer: LeNet pretrained on Fashion-MNIST, then CIFAR-10",
        "seed 002 (MNIST -> STL-10, one run each)",
        ["experiment=transfer_fashion_cifar10"],
        {"cpu": ["dataset.limit_train=10000", "dataset.limit_test=2000", *CIFAR_SUBSET, "trainer.epochs=5",
                 "transfer.pretrain.epochs=2"],
         "smoke": ["dataset.limit_train=256", "dataset.limit_test=128", "trainer.epochs=1",
                   "transfer.pretrain.epochs=1", "transfer.pretrain.dataset.limit_train=512",
                   "transfer.pretrain.dataset.limit_test=128", "seed=0,1"]},
        ["transfer.pretrained", "transfer.freeze"], experiment="transfer_fashion_cifar10",
        seed_figures={"transfer.pretrained=true, transfer.freeze=false": "0.292 (STL-10, all layers copied)",
                      "transfer.pretrained=false, transfer.freeze=false": "0.361 (STL-10)"}),
    Study(
        "optimizer", "ResNet50: RMSProp vs Adagrad (Keras' default rates)", "seed 002 (one run each, 5 epochs of 50,000)",
        ["experiment=optimizer_comparison", "optimizer=rmsprop,adagrad", "seed=0,1,2"],
        {"cpu": ["dataset.limit_train=2000", "dataset.limit_test=1000", *CIFAR_SUBSET, "trainer.epochs=2"],
         "smoke": ["dataset.limit_train=64", "dataset.limit_test=32", "trainer.epochs=1"]},
        ["optimizer"],
        seed_figures={"optimizer=rmsprop": "0.414", "optimizer=adagrad": "0.583"}),
    Study(
        "allcnn", "All-CNN-C (Strided-CNN-C)", "seed 001 (one run, 149 epochs of 50,000)",
        ["experiment=allcnn", "seed=0,1,2"],
        {"cpu": ["dataset.limit_train=3000", "dataset.limit_test=1000", *CIFAR_SUBSET, "trainer.epochs=5"],
         "smoke": ["dataset.limit_train=64", "dataset.limit_test=32", "trainer.epochs=1"]},
        [], seed_figures={"all runs": "0.6356"}),
    Study(
        "init", "AlexNet: seed 002's 10 initializers", "seed 002 (one run each, 5 epochs of 50,000)",
        ["experiment=init_comparison"],
        {"cpu": ["dataset.limit_train=2000", "dataset.limit_test=1000", *CIFAR_SUBSET, "trainer.epochs=3"],
         "smoke": ["dataset.limit_train=64", "dataset.limit_test=32", "trainer.epochs=1", "init=zeros,he_uniform",
                   "seed=0,1"]},
        ["init"],
        seed_figures={"init=random_normal": "0.611", "init=he_uniform": "0.601", "init=glorot_normal": "0.588",
                      "init=he_normal": "0.582", "init=glorot_uniform": "0.575 and 0.440 (two runs)",
                      "init=random_uniform": "0.556", "init=truncated_normal": "0.526", "init=ones": "0.195",
                      "init=zeros": "0.100", "init=lecun_normal": "(not run)"}),
    Study(
        "spl", "Self-paced learning vs plain training under 40% label noise",
        "seed 000 (stayed at 0.120, chance); MentorNet's ResNet-101: plain 0.568 vs self-paced 0.802",
        ["experiment=spl_noisy_labels", "weighting=none,hard", "seed=0,1,2"],
        # simple_cnn with Adam (seed 000's network) stands in for ResNet-9, a GPU-hour at full scale.
        {"cpu": ["model=simple_cnn", "optimizer=adam", "optimizer.lr=0.001", "lr_schedule=constant",
                 "dataset.limit_train=3000", "dataset.limit_test=1000", *CIFAR_SUBSET, "dataset.augment=none",
                 "dataset.preprocess=scale", "trainer.epochs=15", "trainer.batch_size=64"],
         "smoke": ["model=simple_cnn", "optimizer=adam", "optimizer.lr=0.001", "lr_schedule=constant",
                   "dataset.limit_train=128", "dataset.limit_test=32", "dataset.augment=none",
                   "dataset.preprocess=scale", "trainer.epochs=3", "trainer.batch_size=32"]},
        ["weighting"], experiment="spl_noisy_labels",
        seed_figures={"weighting=none": "0.568 (MentorNet, full scale)", "weighting=hard": "0.802 (MentorNet's SPL)"}),
]
BY_NAME = {s.name: s for s in STUDIES}
SCALES = ("cpu", "smoke")
DESIGNED = {"cpu": "The cpu scale's time is the wall time above, measured by this regeneration on the 2-core "
                   "machine named there (its load average says how busy it was): a machine shared with other "
                   "work takes about as many times longer as its load average says."}  # smoke: synthetic data, seconds per study, for tests of this script


# ------------------------------------------------------------------------------------- running

def job_command(study: Study, scale: str, out: Path, cifar10: str | None) -> list[str]:
    args = [*study.command, *study.scales[scale],
            f"mlflow.tracking_uri=sqlite:///{out / 'mlflow.db'}", f"hydra.sweep.dir={out / 'sweeps' / study.name}",
            f"+tags.study={study.name}", f"+tags.scale={scale}", "trainer.checkpoint=false", "trainer.verbose=2"]
    if scale == "smoke" and study.uses_cifar10:
        args += ["dataset=synthetic"]
        if study.name == "transfer":
            args += ["dataset@transfer.pretrain.dataset=synthetic", "transfer.pretrain.dataset.image_shape=[28,28,1]"]
    elif study.uses_cifar10 and cifar10:
        args.append(f"dataset.path={cifar10}")
    return [sys.executable, "-m", "cifar_exp", *args, "--multirun"]


def run_study(study: Study, scale: str, out: Path, cifar10: str | None) -> dict:
    command = job_command(study, scale, out, cifar10)
    log_file = out / "logs" / f"{study.name}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    print(f"[{_now()}] {study.name}: {' '.join(command[1:])}", flush=True)
    started = time.time()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    with open(log_file, "w") as log:
        code = subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    record = {"started": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
              "wall_s": round(time.time() - started, 1), "returncode": code,
              "command": "python -m cifar_exp " + " ".join(command[3:]), "load_after": os.getloadavg()}
    print(f"[{_now()}] {study.name}: exit {code} after {record['wall_s']:.0f} s (log {log_file})", flush=True)
    return record


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%H:%M:%S")


# ------------------------------------------------------------------------------------- reading

@dataclass
class Result:
    study: Study
    rows: list            # report.Summary per group, best first
    records: list         # report.RunRecord
    notes: list[str]
    extra: dict = field(default_factory=dict)


def load_result(client, study: Study, scale: str) -> Result | None:
    from cifar_exp.sweeps import report

    experiment = client.get_experiment_by_name(study.experiment)
    if experiment is None:
        return None
    where = f"tags.study = '{study.name}' and tags.scale = '{scale}'"
    records, notes = report.load_records(client, [experiment.experiment_id], where, study.metric, False)
    if not records:
        return None
    maximize = "mse" not in study.metric and "loss" not in study.metric
    rows = report.summarize_groups(report.group(records, study.keys), maximize)
    for row in rows:  # Hydra's sweep writes booleans as True/False; the configs say true/false
        row.label = row.label.replace("=True", "=true").replace("=False", "=false")
    if report.did_not_learn_note(rows):
        notes.insert(0, report.did_not_learn_note(rows))
    result = Result(study, rows, records, notes)
    if study.name == "kfold":
        result.extra["fractions"] = {
            metric: report.summarize_groups(report.group(
                report.load_records(client, [experiment.experiment_id], where, metric, False)[0], study.keys), True)
            for metric in ("frac_over_min_cv", "frac_exact_min_cv", "frac_under_min_cv", "frac_over_1se",
                           "frac_exact_1se")}
    if study.name == "optimizer":  # the last epoch's training accuracy, beside the test accuracy
        train = report.load_records(client, [experiment.experiment_id], where, "accuracy", False)[0]
        result.extra["train"] = report.summarize("training accuracy", [r.value for r in train]) if train else None
    if study.name == "spl":  # what the self-paced runs kept at their last epoch: clean vs wrongly labelled
        for metric in ("spl_active_fraction_clean", "spl_active_fraction_noisy"):
            kept = report.load_records(client, [experiment.experiment_id], where, metric, False)[0]
            result.extra[metric] = report.summarize(metric, [r.value for r in kept]) if kept else None
        classes = [min((v for k, v in run.data.metrics.items() if k.startswith("spl_active_fraction_class_")),
                       default=None) for run in client.search_runs([experiment.experiment_id], where)]
        result.extra["least_kept_class"] = min((c for c in classes if c is not None), default=None)
        # Was plain training still improving at its end (its best test accuracy in its last 3 epochs)?
        late = []
        for run in client.search_runs([experiment.experiment_id], where + " and params.`weighting.name` = 'none'"):
            curve = [m.value for m in sorted(client.get_metric_history(run.info.run_id, study.metric),
                                             key=lambda m: m.step)]
            if len(curve) > 5:  # "in its last 3 epochs" says nothing of a 3-epoch run
                late.append(curve.index(max(curve)) >= len(curve) - 3)
        result.extra["plain_still_rising"] = bool(late) and all(late)
    if study.name == "transfer":
        pre = report.load_records(client, [experiment.experiment_id], "tags.`transfer.role` = 'pretrain'",
                                  "test_accuracy", False)[0]
        used = {r.tags.get("transfer.pretrain_run_id") for r in records}
        pre = [r for r in pre if r.run_id in used]
        if pre:
            result.extra["pretrain"] = report.summarize("Fashion-MNIST (pretraining)", [r.value for r in pre])
    return result


def welch_between(result: Result, a: str, b: str):
    from cifar_exp.sweeps import report

    rows = {s.label: s for s in result.rows}
    if a in rows and b in rows:
        return report.welch(rows[a], rows[b])
    return None


# ------------------------------------------------------------------------------------- writing

def cell(s) -> str:
    if s.n < 2 or math.isnan(s.ci_low):
        return f"{s.mean:.3f} (n = {s.n})"
    return f"**{s.mean:.3f}** [{s.ci_low:.3f}, {s.ci_high:.3f}]"


def welch_line(test) -> str:
    if test is None:
        return ""
    if not math.isfinite(test.t):  # no spread within either group (e.g. every run at chance)
        return (f"{test.a} minus {test.b}: {test.difference:+.3f}; Welch's test is undefined here (no spread "
                "within the groups): no comparison.")
    verdict = "significant" if test.significant else "not significant"
    return (f"{test.a} minus {test.b}: {test.difference:+.3f} (95% CI {test.ci_low:+.3f} to {test.ci_high:+.3f}), "
            f"Welch's t = {test.t:.2f}, df = {test.df:.1f}, p = {test.p:.3f}: {verdict} at 0.05.")


def table(result: Result) -> list[str]:
    s = result.study
    lines = [f"| group | n | mean [95% CI] of `{s.metric}` | std | seed's figure |", "|---|---|---|---|---|"]
    for row in result.rows:
        std = "" if math.isnan(row.std) else f"{row.std:.3f}"
        lines.append(f"| {row.label} | {row.n} | {cell(row)} | {std} | {s.seed_figures.get(row.label, '')} |")
    return lines


def scale_of(result: Result) -> str:
    """Images and epochs as the runs logged them (their params), not as this script meant them."""
    p = {k: v for k, v in result.records[0].params.items() if v not in ("None", "")}
    if result.study.name == "kfold":
        return (f"{p.get('kfold.repeats')} datasets per job, {p.get('kfold.folds')} folds, degrees 1..{p.get('kfold.max_degree')}, "
                f"true degree {p.get('kfold.true_degree')}")
    text = (f"{p.get('dataset.name')}: {p.get('dataset.limit_train') or p.get('dataset.train_size')} training images, "
            f"{p.get('dataset.limit_test') or p.get('dataset.test_size')} test images, {p.get('trainer.epochs')} epochs, "
            f"batch {p.get('trainer.batch_size')}, model {p.get('model.name')}, "
            + ("optimizers at Keras' default rates" if "optimizer" in result.study.keys
               else f"optimizer {p.get('optimizer.name')} at {p.get('optimizer.lr')}"))
    if result.study.name == "transfer":
        text += (f"; pretraining: {p.get('transfer.pretrain.dataset.name')}, "
                 f"{p.get('transfer.pretrain.dataset.limit_train') or p.get('transfer.pretrain.dataset.train_size')} "
                 f"images, {p.get('transfer.pretrain.epochs')} epochs, adapter {p.get('transfer.adapter')}")
    if result.study.name == "spl":
        text += f"; label noise {p.get('dataset.label_noise')}"
    return text


def section(result: Result | None, study: Study, meta: dict | None, out: Path) -> list[str]:
    lines = [f"## {study.title}", "", f"Seed: {study.seed_source}."]
    if meta:
        command = meta["command"].replace(str(out), "$OUT")  # $OUT: the --out folder
        lines += ["", f"Command ({meta['wall_s'] / 60:.1f} min, exit {meta['returncode']}): `{command}`"]
    if result is None:
        return lines + ["", "**Not run at this regeneration** (no finished runs of this study at this scale)."] + \
            UNRUN_NOTES.get(study.name, [])
    if not meta or meta["returncode"] != 0:
        lines += ["", "**Interrupted**: its command was stopped before every job finished (time limit of the "
                      "session that regenerated this page); the table holds exactly the runs that finished."]
    lines += ["", f"Scale: {scale_of(result)}; seeds pooled per group ({len(result.records)} runs).", ""]
    lines += CLAIMS[study.name](result)
    for note in result.notes:
        lines += ["", f"Note: {note}."]
    return lines


def ranked(result: Result) -> str:
    return ", ".join(f"{r.label.split('=', 1)[-1]} {r.mean:.3f}" for r in result.rows)


def claims_kfold(result: Result) -> list[str]:
    fr = result.extra["fractions"]
    over, exact, under = ({s.label: s for s in fr[m]} for m in ("frac_over_min_cv", "frac_exact_min_cv",
                                                                   "frac_under_min_cv"))
    over_1se, exact_1se = ({s.label: s for s in fr[m]} for m in ("frac_over_1se", "frac_exact_1se"))
    lines = ["Fraction of the datasets on which K-fold CV picked a degree above / at / below the true one "
             "(lowest CV error; and with the one-standard-error rule), mean [95% CI] over 3 polynomials "
             "(seeds):", "",
             "| noise, n | over (min CV) | exact (min CV) | under (min CV) | over (1-SE) | exact (1-SE) | test MSE |",
             "|---|---|---|---|---|---|---|"]
    mse = {s.label: s for s in result.rows}
    for label in sorted(over, key=lambda k: [float(v.split("=")[1]) for v in k.split(", ")]):
        lines.append(f"| {label.replace('kfold.', '')} | {cell(over[label])} | {cell(exact[label])} | "
                     f"{cell(under[label])} | {cell(over_1se[label])} | {cell(exact_1se[label])} | {mse[label].mean:.3g} |")
    def mean_of(rows, where):
        chosen = [r.mean for label, r in rows.items() if where(label)]
        return sum(chosen) / len(chosen)

    def n_of(label):
        return int(label.rsplit("=", 1)[1])

    largest = max(map(n_of, over))
    every = lambda label: True  # noqa: E731
    big = lambda label: n_of(label) == largest  # noqa: E731
    most_over = max(over.values(), key=lambda s: s.mean)
    most_under = max(under.values(), key=lambda s: s.mean)
    lines += ["", f"Over all {len(over)} settings, minimum-CV-error picked a degree above the true one on "
                  f"{mean_of(over, every):.0%} of the datasets, the true one on {mean_of(exact, every):.0%} and a "
                  f"lower one on {mean_of(under, every):.0%}; the one-standard-error rule (the simplest degree "
                  f"within one standard error of the best CV error) picked a higher one on "
                  f"{mean_of(over_1se, every):.0%}. So to the seed's question: the more complex models are chosen "
                  f"often but not mostly, and more data does not cure it: at {largest:,} samples minimum-CV still "
                  f"over-picks on {mean_of(over, big):.0%} of the datasets (an extra coefficient near zero costs "
                  "almost nothing on the held-out folds, so which of the nested fits wins is nearly a coin toss), "
                  f"while the one-standard-error rule over-picks on {mean_of(over_1se, big):.0%}. Where noise is "
                  f"high and samples few, the opposite error dominates: at {most_under.label.replace('kfold.', '')} "
                  f"a lower degree won on {most_under.mean:.0%} of the datasets (the cubic term is lost in the "
                  f"noise). Over-picking peaked at {most_over.label.replace('kfold.', '')} ({most_over.mean:.0%}). "
                  "The test MSE column is the chosen model's error on fresh points: at 20 samples a high degree "
                  "chosen on a lucky split extrapolates wildly near the interval's ends, hence the huge means."]
    return lines


def claims_transfer(result: Result) -> list[str]:
    names = {"transfer.pretrained=true, transfer.freeze=false": "fine-tuned (pretrained, all layers train)",
             "transfer.pretrained=true, transfer.freeze=true": "frozen features (pretrained, only the head trains)",
             "transfer.pretrained=false, transfer.freeze=false": "from scratch (random init, all layers train)",
             "transfer.pretrained=false, transfer.freeze=true": "frozen random features (control)"}
    lines = table(result)
    lines = [line.replace(k, v) for line in lines for k, v in [max(((k, v) for k, v in names.items() if k in line),
                                                                    default=("", ""), key=lambda kv: len(kv[0]))]]
    if "pretrain" in result.extra:
        lines += ["", f"Pretraining: Fashion-MNIST test accuracy {cell(result.extra['pretrain'])} "
                      f"(n = {result.extra['pretrain'].n} pretrainings, one per seed)."]
    tuned = welch_between(result, "transfer.pretrained=true, transfer.freeze=false",
                          "transfer.pretrained=false, transfer.freeze=false")
    frozen = welch_between(result, "transfer.pretrained=true, transfer.freeze=true",
                           "transfer.pretrained=false, transfer.freeze=true")
    for test in (tuned, frozen):
        if test is not None:
            lines += ["", welch_line(test).replace("transfer.", "")]
    if tuned is not None:
        sign = "helps" if tuned.significant and tuned.difference > 0 else (
            "hurts" if tuned.significant else "makes no difference we can detect")
        lines += ["", f"Fine-tuning from Fashion-MNIST {sign} against training from scratch at this scale "
                      f"({tuned.difference:+.3f}, p = {tuned.p:.2f}). The seed (MNIST -> STL-10, one run each, "
                      "20 epochs) found the pretrained network worse, 0.292 vs 0.361, and blamed irrelevant "
                      "features. Two things in its setup could explain that loss with no feature being irrelevant: its "
                      "pretrained LeNet sat behind six freshly initialised convolutions (the seed_convs adapter, "
                      "96x96x3 -> 28x28x1), so the transferred filters never saw images like those they learnt on, "
                      "and the digit head was copied as well; and one run per arm gives no measure of the "
                      "seed-to-seed spread. Here the head is new in both arms, the network sees CIFAR-10 at its own "
                      "32x32x3 (Fashion-MNIST resized for pretraining, the seed's own suggestion), and each arm has "
                      f"{min(r.n for r in result.rows)} seeds or more."]
    if frozen is not None:
        helps = frozen.significant and frozen.difference > 0
        lines += ["", f"Frozen, the garment filters {'beat' if helps else 'are not detectably better than'} random "
                      f"frozen filters ({frozen.difference:+.3f}, p = {frozen.p:.2f}): with only "
                      "the dense layers training, what Fashion-MNIST taught LeNet's two convolutions "
                      f"{'carries over to CIFAR-10 in part' if helps else 'is worth about as much on CIFAR-10 as random projections'}."]
    return lines


def values_of(result: Result, label: str) -> str:
    row = next((r for r in result.rows if r.label == label), None)
    return ", ".join(f"{v:.3f}" for v in row.values) if row else "none"


def steps_of(result: Result) -> int:
    p = result.records[0].params
    images = int(p["dataset.limit_train"]) if p.get("dataset.limit_train", "None") != "None" else int(p["dataset.train_size"])
    return math.ceil(images / int(p["trainer.batch_size"])) * int(p["trainer.epochs"])


def claims_optimizer(result: Result) -> list[str]:
    lines = table(result)
    test = welch_between(result, "optimizer=adagrad", "optimizer=rmsprop")
    if test is not None:
        lines += ["", welch_line(test)]
        agree = test.difference > 0 and test.significant
        if all(r.did_not_learn == r.n for r in result.rows):
            lines += ["", "**Inconclusive at this scale**: every run of both optimizers ended at chance level, so "
                          "these runs can neither confirm nor refute the seed's ordering (Adagrad 0.583 above "
                          "RMSProp 0.414 after 5 epochs of 50,000 images, about 7,800 steps); ResNet50 from "
                          "scratch needs far more steps than this scale gives it."]
            train = result.extra.get("train")
            if train is not None:
                lines += ["", f"Their last epoch's training accuracy was {cell(train)} (all {train.n} runs), above "
                              "chance while the test accuracy was not. The likely reason (not tested here): the network is "
                              "evaluated with batch-norm "
                              f"moving statistics (Keras' momentum 0.99), which {steps_of(result)} training steps "
                              "leave far from the batch statistics it trained with."]
            return lines
        lines += ["", ("Agrees with the seed's ordering (Adagrad above RMSProp). " if agree else
                       "Does not confirm the seed's ordering (Adagrad 0.583 above RMSProp 0.414). ")
                  + "The seed ran one run per optimizer, so its 17-point gap comes without any measure of the "
                    f"seed-to-seed spread; ours, seed by seed: RMSProp {values_of(result, 'optimizer=rmsprop')}, "
                    f"Adagrad {values_of(result, 'optimizer=adagrad')}. At this reduced scale (far fewer images "
                    "and epochs than the seed's 5 epochs of 50,000) both optimizers are early in training, so the "
                    "comparison speaks for the first epochs only; RMSProp's test accuracy after so few steps also "
                    "depends on batch-norm statistics that are still moving, which a test-time evaluation exposes "
                    "(see any did-not-learn note below)."]
    return lines


def claims_allcnn(result: Result) -> list[str]:
    row = result.rows[0]
    return table(result) + [
        "", f"Ours: {cell(row)} over {row.n} seeds; the seed's 63.56% is one run of 149 epochs on all 50,000 "
            "images, so the numbers are not at the same scale and the gap is no disagreement by itself. What we "
            "changed and why: the seed's network ends in a softmax and then feeds those probabilities to "
            "`sparse_softmax_cross_entropy_with_logits`, a second softmax (its training loss only fell from "
            "2.23 to 1.89 in 20 epochs: a double softmax cannot go below about 1.46 and its gradients are "
            "squashed); ours trains on the logits (the global average of the last 1x1 convolution). Its "
            "63.56% is also a single run with no interval. For scale: the seed's own log shows 21.6% training "
            f"accuracy after its first epoch (1,563 steps of batch 32); ours is after {steps_of(result)} steps. The "
            "full recipe is `experiment=allcnn` (150 epochs); not run here."]


def claims_init(result: Result) -> list[str]:
    from cifar_exp.sweeps import report

    lines = table(result)
    rows = result.rows
    if len(rows) >= 2:
        lines += ["", f"Our ordering (mean): {ranked(result)}."]
        test = report.welch(rows[0], rows[1])
        if test is not None:
            lines += ["", "Best two: " + welch_line(test)]
        top = rows[0]
        tied = [r.label.split("=", 1)[1] for r in rows if r.n > 1 and r.ci_high >= top.ci_low and r is not top]
        lines += ["", f"Initializers whose CI overlaps the best one's ({top.label.split('=', 1)[1]}): "
                      f"{', '.join(tied) or 'none'}. The seed ranked random_normal (0.611) and he_uniform (0.601) "
                      "first from one run each, yet its two runs of the same glorot_uniform gave 0.440 and 0.575: "
                      "a 13.5-point spread between identical settings, larger than every gap it ranked among the "
                      "non-constant initializers. Its ordering of those is therefore not evidence; where ours "
                      "differs, we believe ours because each mean pools several seeds "
                      f"({min(r.n for r in rows)} or more) and the CIs say which gaps are "
                      "real."]
        learners = [r for r in rows if r.label not in ("init=zeros", "init=ones")]
        floor = min((r.ci_low for r in learners if r.n > 1), default=math.nan)
        for constant, why in (("init=zeros", "every unit of a layer starts equal and gets the same gradient"),
                              ("init=ones", "every unit of a layer starts equal, so they stay alike")):
            row = next((r for r in rows if r.label == constant), None)
            if row is not None and learners:
                below = row.ci_high < floor
                lines += ["", f"{constant.split('=')[1]}: {cell(row)}, "
                              + ("below every other initializer's interval, as in the seed (" if below else
                                 "not below every other initializer's interval (the seed had it far below; ")
                              + f"seed: {result.study.seed_figures[constant]}); {why}."]
    return lines


def claims_spl(result: Result) -> list[str]:
    lines = table(result)
    test = welch_between(result, "weighting=hard", "weighting=none")
    if test is not None:
        lines += ["", welch_line(test)]
        verdict = ("hard self-paced weighting beats plain training" if test.significant and test.difference > 0
                   else "hard self-paced weighting does worse than plain training" if test.significant
                   else "no difference we can detect between hard self-paced weighting and plain training")
        lines += ["", f"Under 40% symmetric label noise, at this scale: {verdict}. Seed 000's self-paced CNN never "
                      "learnt (test accuracy 0.120 for every epoch): it started at lambda = 1, which admits no "
                      "sample at chance-level loss (ln 10 = 2.30 > lambda^2), so every weight v became 0. "
                      "MentorNet's full-scale figures (ResNet-101, 0.568 plain vs 0.802 self-paced) are the "
                      "published anchor, not a like-for-like comparison with this small CNN and few epochs."]
        clean, noisy = result.extra.get("spl_active_fraction_clean"), result.extra.get("spl_active_fraction_noisy")
        if clean is not None and noisy is not None:
            lines += ["", f"What the self-paced runs trained on at their last epoch: {cell(clean)} of the correctly "
                          f"labelled training images and {cell(noisy)} of the wrongly labelled ones (mean [95% CI] "
                          f"over its {clean.n} runs; `spl_active_fraction_clean` / `_noisy`)" + (
                              ", so the selection does tell them apart (the intervals do not overlap). "
                              if clean.ci_low > noisy.ci_high else
                              ": the intervals overlap, so these runs do not show that it tells them apart. ")
                          + ("Where it still loses, the clean images it leaves out cost more than the wrong labels it "
                             "avoids" + (": a small network early in training (plain training's best test accuracy "
                                         "came in its last 3 epochs in every run) gains from every image, and has not "
                                         "begun to fit the wrong labels, which is when self-paced selection pays"
                                         if result.extra.get("plain_still_rising") else "") + ". An earlier, longer stand-in (simple_cnn, 30 epochs of "
                             "5,000 images; `benchmarks/results/spl_noisy_labels_cpu/report.md`) found hard weighting "
                             "ahead, +0.027 (95% CI +0.002 to +0.052)."
                             if test.difference < 0 and test.significant else "")]
        least = result.extra.get("least_kept_class")
        if least is not None and least < 0.2:
            lines += ["", f"In one run a whole class was nearly or entirely left out (its kept fraction {least:.2f} at "
                          "the last epoch): self-paced selection drops the classes the network finds hardest first. "
                          "The per-class fractions are logged as `spl_active_fraction_class_<name>`."]
    return lines


# What earlier sessions measured for a study this command did not reach (kept apart from its tables).
UNRUN_NOTES = {"spl": [
    "", "An earlier CPU stand-in of the same preset, not regenerated by this command (README, measured by a "
        "previous session: simple_cnn, Adam 1e-3, 5,000 images, 40% noise, 30 epochs, batch 128, 2,000 test "
        "images, 3 seeds): hard 0.438 [0.420, 0.455], none 0.411 [0.381, 0.441], linear 0.405 [0.311, 0.499], "
        "mixture 0.369 [0.344, 0.394]; hard minus none +0.027 (95% CI +0.002 to +0.052), Welch's p = 0.04 "
        "(`benchmarks/results/spl_noisy_labels_cpu/report.md`)."]}

CLAIMS = {"kfold": claims_kfold, "transfer": claims_transfer, "optimizer": claims_optimizer,
          "allcnn": claims_allcnn, "init": claims_init, "spl": claims_spl}


def hardware() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, no GPU used (CUDA_VISIBLE_DEVICES empty)" if os.environ.get(
        "CUDA_VISIBLE_DEVICES") == "" else f"{cpu}, {os.cpu_count()} cores"


def versions() -> str:
    from importlib import metadata

    found = []
    for package in ("tensorflow", "keras", "mlflow"):
        try:
            found.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(found)


def write_page(out: Path, scale: str, page: Path) -> None:
    from mlflow.tracking import MlflowClient

    state = json.loads((out / "studies.json").read_text()) if (out / "studies.json").exists() else {}
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    results = {s.name: load_result(client, s, scale) for s in STUDIES}
    ran = [s for s in STUDIES if results[s.name] is not None]
    total = sum(state.get("studies", {}).get(s.name, {}).get("wall_s", 0) for s in ran)
    lines = ["# Results: the seed studies, re-run", "",
             f"Scale: **{scale}**{' (reduced: far fewer images and epochs than the seeds; see each study)' if scale == 'cpu' else ''}. "
             f"Hardware: {state.get('hardware', hardware())}; load average while it ran: "
             f"{state.get('load', 'not recorded')}. Software: {state.get('versions', versions())}. "
             f"Date: {state.get('date', datetime.now(timezone.utc).date().isoformat())}. Wall time of the studies "
             f"shown: {total / 60:.1f} min. `$OUT` in the commands below: the `--out` folder of the "
             "regeneration (its MLflow store, sweeps and logs). Intervals are Student's t over few seeds and are "
             "not clipped: those of fractions and accuracies can pass 0 or 1."
             + (" **Smoke scale: synthetic data and a few steps, to check that the pipeline runs; no number "
                "or sentence below is a result.**" if scale == "smoke" else ""),
             "",
             f"Regenerate: `python benchmarks/studies.py --scale {scale}` (CIFAR-10 from `$CIFAR10_PATH` or "
             "`--cifar10 PATH`; Fashion-MNIST from Debian's `dataset-fashion-mnist` or Keras' cache). It runs each "
             "study's preset, shrunk by the scale's overrides (the `scales` of each study in "
             "`benchmarks/studies.py`), into an MLflow store outside the repository, "
             "and rewrites this page from those runs through the report's statistics "
             "(`cifar_exp/sweeps/report.py`).",
             "",
             "Each cell: **mean** [95% confidence interval of the mean, Student's t] over the seeds (runs that "
             "differ only in `seed`); comparisons: Welch's unequal-variance t-test. The seeds' figures are "
             "single runs at their full scale: beside ours for reference, not as like-for-like numbers.",
             "",
             f"Studies at this regeneration: {', '.join(s.name for s in ran) or 'none'}"
             + (f"; **not run**: {', '.join(s.name for s in STUDIES if s not in ran)}" if len(ran) < len(STUDIES)
                else "") + ".",
             "", "| study | scale (as the runs logged it) | finished runs | wall time |", "|---|---|---|---|"]
    for study in STUDIES:
        meta = state.get("studies", {}).get(study.name)
        wall = (f"{meta['wall_s'] / 60:.1f} min" + ("" if meta["returncode"] == 0 else ", then stopped")
                if meta else "interrupted") if results[study.name] else "not run"
        lines.append(f"| {study.name} | {scale_of(results[study.name]) if results[study.name] else ''} | "
                     f"{len(results[study.name].records) if results[study.name] else 0} | {wall} |")
    if scale in DESIGNED:
        lines += ["", DESIGNED[scale]]
    for study in STUDIES:
        lines += [""] + section(results[study.name], study, state.get("studies", {}).get(study.name), out)
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text("\n".join(lines) + "\n")
    print(f"[{_now()}] wrote {page}", flush=True)


# ------------------------------------------------------------------------------------- main

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=SCALES, default="cpu")
    parser.add_argument("--out", help="folder for the MLflow store, sweeps and logs "
                                      "(default: ~/.cache/cifar_exp/studies/<scale>)")
    parser.add_argument("--only", nargs="+", choices=[s.name for s in STUDIES], help="these studies only")
    parser.add_argument("--cifar10", default=os.environ.get("CIFAR10_PATH"),
                        help="CIFAR-10 folder or archive (default: $CIFAR10_PATH, else Keras' cache)")
    parser.add_argument("--page", default=str(ROOT / "docs" / "results.md"), help="the page to write")
    parser.add_argument("--page-only", action="store_true", help="rewrite the page from earlier runs")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out or Path("~/.cache/cifar_exp/studies").expanduser() / args.scale).resolve()
    out.mkdir(parents=True, exist_ok=True)
    state_file = out / "studies.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    failed = 0
    if not args.page_only:
        loads = [os.getloadavg()]
        state.update(hardware=hardware(), versions=versions(), date=datetime.now(timezone.utc).date().isoformat())
        for study in [BY_NAME[n] for n in args.only] if args.only else STUDIES:
            record = run_study(study, args.scale, out, args.cifar10)
            failed += record["returncode"] != 0
            loads.append(record["load_after"])
            state.setdefault("studies", {})[study.name] = record
            state["load"] = f"{min(l[0] for l in loads):.1f} to {max(l[0] for l in loads):.1f} (1-minute)"
            state_file.write_text(json.dumps(state, indent=1))
            write_page(out, args.scale, Path(args.page))
    else:
        write_page(out, args.scale, Path(args.page))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
