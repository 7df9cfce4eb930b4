"""The report: statistics of grouped runs, and the files it writes from an MLflow store."""
import csv
import math

import pytest

from cifar_exp.sweeps import report

T_975_DF2 = 4.302652729911275  # Student's t, 97.5th percentile, 2 degrees of freedom


def test_summary_has_n_mean_sample_std_t_interval_and_best():
    s = report.summarize("g", [0.5, 0.6, 0.7])
    assert s.n == 3
    assert s.mean == pytest.approx(0.6)
    assert s.std == pytest.approx(0.1)
    half = T_975_DF2 * 0.1 / math.sqrt(3)
    assert (s.ci_low, s.ci_high) == (pytest.approx(0.6 - half), pytest.approx(0.6 + half))
    assert s.best == pytest.approx(0.7)
    assert report.summarize("loss", [0.5, 0.6, 0.7], maximize=False).best == pytest.approx(0.5)


def test_a_single_run_has_no_spread():
    s = report.summarize("g", [0.61])
    assert s.n == 1 and s.mean == 0.61 and math.isnan(s.std) and math.isnan(s.ci_low)


def test_welch_matches_the_unequal_variance_formula():
    a = report.summarize("a", [0.60, 0.62, 0.64])
    b = report.summarize("b", [0.58, 0.61, 0.55, 0.57])
    test = report.welch(a, b)
    va, vb = a.std ** 2 / 3, b.std ** 2 / 4
    assert test.t == pytest.approx((a.mean - b.mean) / math.sqrt(va + vb))
    assert test.df == pytest.approx((va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 3))
    assert test.ci_low < test.difference < test.ci_high
    assert test.significant == (test.p < 0.05)


def test_welch_tells_separated_groups_from_overlapping_ones():
    far = report.welch(report.summarize("a", [0.60, 0.61, 0.62]), report.summarize("b", [0.40, 0.41, 0.42]))
    near = report.welch(report.summarize("a", [0.60, 0.44, 0.58]), report.summarize("b", [0.61, 0.59, 0.45]))
    assert far.significant and far.p < 0.001
    assert not near.significant
    assert report.welch(report.summarize("a", [0.6]), report.summarize("b", [0.5, 0.4])) is None


def test_swept_keys_are_the_varying_overrides_with_seeds_pooled():
    records = [report.RunRecord(str(i), 0.5, report.parse_overrides(o)) for i, o in enumerate([
        "init=he_uniform seed=0 dataset=synthetic ++optuna_trial={number:0}",
        "init=he_uniform seed=1 dataset=synthetic ++optuna_trial={number:1}",
        "init=zeros seed=0 dataset=synthetic ++optuna_trial={number:2}",
    ])]
    assert report.swept_keys(records) == ["init"]
    assert list(report.group(records, ["init"])) == ["init=he_uniform", "init=zeros"]


def test_the_swept_keys_tag_names_the_axes_even_when_one_value_finished():
    # optimizer.lr=1e6,0.01 --multirun: the 1e6 job diverged (FAILED, left out); the one left is
    # still labelled by what the sweep varied, not "all runs".
    tags = {"swept_keys": "optimizer.lr,seed"}
    records = [report.RunRecord("0", 0.3, report.parse_overrides("optimizer.lr=0.01 seed=0"), {}, tags)]
    assert report.swept_keys(records) == ["optimizer.lr"]
    assert list(report.group(records, report.swept_keys(records))) == ["optimizer.lr=0.01"]


# ------------------------------------------------------------------- from an MLflow store

KNOWN = {"he_uniform": [0.60, 0.62, 0.64], "random_normal": [0.58, 0.61, 0.55]}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """An MLflow store holding one 2 x 3 sweep, plus runs a report must leave out."""
    from mlflow.tracking import MlflowClient

    tmp_path = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("cifar_exp", artifact_location=(tmp_path / "mlruns").as_uri())

    def add(init, seed, value, status="FINISHED", sweep="s1", extra_tags=None):
        tags = {"sweep_id": sweep, "sweep_dir": str(tmp_path / "sweep"), "choice.init": init,
                "overrides": f"init={init} seed={seed} dataset=synthetic", **(extra_tags or {})}
        run = client.create_run(experiment, tags=tags)
        for key, val in {"init.name": init, "seed": seed, "optimized_metric": "test_accuracy"}.items():
            client.log_param(run.info.run_id, key, val)
        for step in (1, 2, 3):
            client.log_metric(run.info.run_id, "test_accuracy", value * step / 3, step=step)
        client.set_terminated(run.info.run_id, status)

    for init, values in KNOWN.items():
        for seed, value in enumerate(values):
            add(init, seed, value)
    add("zeros", 0, 0.1, status="FAILED")
    add("zeros", 1, 0.1, extra_tags={"optuna.pruned": "true"})
    add("ones", 0, 0.9, sweep="another")
    (tmp_path / "sweep").mkdir()
    return client, uri, tmp_path


def test_report_over_known_runs_writes_the_right_table_and_logs_its_files(store, capsys):
    client, uri, tmp_path = store
    assert report.main(["--tracking-uri", uri, "--sweep-id", "s1"]) == 0
    out = capsys.readouterr().out

    folder = tmp_path / "sweep" / "report"  # beside the sweep, from the runs' sweep_dir tag
    with open(folder / "report.csv") as f:
        rows = {row["group"]: row for row in csv.DictReader(f)}
    assert list(rows) == ["init=he_uniform", "init=random_normal"]  # best mean first; FAILED/pruned out
    for init, values in KNOWN.items():
        expected = report.summarize(init, values)
        row = rows[f"init={init}"]
        assert int(row["n"]) == 3
        assert float(row["mean"]) == pytest.approx(sum(values) / 3, abs=1e-4)
        assert float(row["ci95_low"]) == pytest.approx(expected.ci_low, abs=1e-4)
        assert float(row["ci95_high"]) == pytest.approx(expected.ci_high, abs=1e-4)
        assert float(row["best"]) == pytest.approx(max(values), abs=1e-4)
    assert "init=he_uniform vs init=random_normal" in out and "Welch's t" in out
    assert "left out: 1 pruned" in out
    assert "| init=he_uniform | 3 | 0.6200 |" in (folder / "report.md").read_text()
    for name in ("report_bar.png", "report_curves.png"):
        assert (folder / name).stat().st_size > 1000

    report_runs = client.search_runs([client.get_experiment_by_name("cifar_exp").experiment_id],
                                     "tags.`cifar_exp.report` = 'true'")
    assert len(report_runs) == 1
    logged = {a.path for a in client.list_artifacts(report_runs[0].info.run_id, "report")}
    assert logged == {f"report/{n}" for n in ("report.md", "report.csv", "report_bar.png", "report_curves.png")}


def test_report_of_the_latest_sweep_and_an_unknown_experiment(store, capsys):
    _, uri, tmp_path = store
    assert report.main(["--tracking-uri", uri, "--sweep-id", "latest", "--out", str(tmp_path / "r"), "--no-log"]) == 0
    assert "sweep another" in (tmp_path / "r" / "report.md").read_text()  # the last run's sweep
    assert report.main(["--tracking-uri", uri, "--experiment", "nope"]) == 2
    assert "No MLflow experiment 'nope'" in capsys.readouterr().err


def test_a_sweep_is_found_in_whichever_experiment_it_logged_to(store, tmp_path):
    """Presets such as experiment=spl_noisy_labels set their own mlflow.experiment_name."""
    client, uri, _ = store
    elsewhere = client.create_experiment("spl_noisy_labels", artifact_location=(tmp_path / "mlruns").as_uri())
    for seed, (scheme, value) in enumerate([("none", 0.4), ("none", 0.42), ("hard", 0.44), ("hard", 0.45)]):
        run = client.create_run(elsewhere, tags={"sweep_id": "noisy", "overrides": f"weighting={scheme} seed={seed}"})
        client.log_param(run.info.run_id, "seed", seed)
        client.log_metric(run.info.run_id, "test_accuracy", value, step=1)
        client.set_terminated(run.info.run_id, "FINISHED")
    assert report.main(["--tracking-uri", uri, "--sweep-id", "latest", "--out", str(tmp_path / "r")]) == 0
    assert "| weighting=hard | 2 |" in (tmp_path / "r" / "report.md").read_text()
    logged = client.search_runs([elsewhere], "tags.`cifar_exp.report` = 'true'")
    assert len(logged) == 1  # the report run sits beside the runs it reports on


def test_groups_with_runs_that_did_not_learn_are_marked(tmp_path, capsys):
    """outcome=did_not_learn (final test accuracy at chance level) shows as a column and a note."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("cifar_exp", artifact_location=(tmp_path / "mlruns").as_uri())
    for seed, (init, value, learned) in enumerate([("he_normal", 0.60, "learned"), ("he_normal", 0.62, "learned"),
                                                   ("zeros", 0.10, "did_not_learn"), ("zeros", 0.45, "learned")]):
        run = client.create_run(experiment, tags={"sweep_id": "z", "overrides": f"init={init} seed={seed}",
                                                  "outcome": learned})
        client.log_param(run.info.run_id, "seed", seed)
        client.log_metric(run.info.run_id, "test_accuracy", value, step=1)
        client.set_terminated(run.info.run_id, "FINISHED")
    assert report.main(["--tracking-uri", uri, "--sweep-id", "z", "--out", str(tmp_path / "r"), "--no-log"]) == 0
    out = capsys.readouterr().out
    with open(tmp_path / "r" / "report.csv") as f:
        rows = {row["group"]: row for row in csv.DictReader(f)}
    assert rows["init=zeros"]["did_not_learn"] == "1" and rows["init=he_normal"]["did_not_learn"] == "0"
    assert "did not learn: 1 run(s)" in out and "init=zeros (1 of 2)" in out
    assert "init=zeros (1 of 2)" in (tmp_path / "r" / "report.md").read_text()


def test_the_did_not_learn_note_says_mixed_only_of_groups_that_mix():
    """A group whose every run ended at chance mixes nothing: the note names it but says 'mix' only
    of groups holding both kinds (a new user read '1 of 1 ... mix' as wrong)."""
    alone = report.Summary("init=zeros", [0.1], 1, 0.1, math.nan, math.nan, math.nan, 0.1, did_not_learn=1)
    mixed = report.Summary("init=ones", [0.1, 0.3], 2, 0.2, 0.14, 0.0, 0.4, 0.3, did_not_learn=1)
    assert "mix" not in report.did_not_learn_note([alone])
    note = report.did_not_learn_note([alone, mixed])
    assert "init=zeros (1 of 1)" in note
    assert note.endswith("the means of init=ones mix runs that learnt with runs that did not")
