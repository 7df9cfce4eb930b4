"""A sweep ends with its answer: its jobs best first (swept values, status, the metric), the best
run's link and the report command for this sweep; no sweeper-internal override shown."""
from __future__ import annotations

import json

from cifar_exp.sweeps.summary import SWEEP_ID_FILE, job_table, ranked, report_command, shown_overrides


def record(overrides, status="FINISHED", value=None, **more):
    return {"status": status, "run_id": "r" + "".join(overrides), "value": value, "overrides": overrides,
            "error": None, "hint": None, "outcome": "learned", "skipped": False, **more}


JOBS = [
    record(["init=zeros", "trainer.epochs=2"], value=0.1, outcome="did_not_learn"),
    record(["init=he_normal", "trainer.epochs=2"], value=0.32),
    record(["init=glorot_uniform", "trainer.epochs=2"], status="FAILED"),
    record(["init=lecun_normal", "trainer.epochs=2"], value=0.15),
]


def test_the_table_lists_swept_values_status_and_metric_best_first():
    lines = job_table(JOBS, "test_accuracy", ["init"])
    assert lines[0].split() == ["init", "status", "test_accuracy"]
    rows = [line.split(None, 2) for line in lines[1:]]
    assert [r[0] for r in rows] == ["he_normal", "lecun_normal", "zeros", "glorot_uniform"]
    assert rows[0][1:] == ["FINISHED", "0.32"]
    assert lines[3].split()[1:] == ["FINISHED", "(did", "not", "learn)", "0.1"]
    assert lines[4].split()[1:] == ["FAILED", "-"]
    assert "trainer.epochs" not in lines[0]  # the same in every job: not a column


def test_a_loss_is_ranked_lowest_first():
    jobs = [record(["lr=1"], value=2.0), record(["lr=2"], value=0.5)]
    assert [r["overrides"] for r in ranked(jobs, "test_loss")] == [["lr=2"], ["lr=1"]]
    assert [r["overrides"] for r in ranked(jobs, "test_accuracy")] == [["lr=1"], ["lr=2"]]
    assert [r["overrides"] for r in ranked(jobs, "test_accuracy", "minimize")] == [["lr=2"], ["lr=1"]]  # Optuna's


def test_an_optuna_trials_internal_override_is_never_shown():
    internal = "++optuna_trial={storage:sqlite:///x.db,study:s,trial:3}"
    jobs = [record(["optimizer.lr=0.01", internal], value=0.4), record(["optimizer.lr=0.1", internal], value=0.5)]
    table = "\n".join(job_table(jobs, "val_accuracy", []))
    assert "optuna_trial" not in table and "optimizer.lr" in table and "0.1 " in table
    assert shown_overrides(jobs[0]["overrides"]) == ["optimizer.lr=0.01"]


def test_print_answer_prints_the_table_and_the_report_command_without_a_store(tmp_path, capsys):
    from omegaconf import OmegaConf

    from cifar_exp.sweeps.summary import print_answer

    for i, job in enumerate(JOBS):
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "job_status.json").write_text(json.dumps({**job, "run_id": None}))
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}, "optimized_metric": "test_accuracy",
                               "mlflow": {"tracking_uri": "sqlite:///mlflow.db"}})
    print_answer(config)
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["init", "status", "test_accuracy"] and out[1].startswith("he_normal ")
    assert out[-1].startswith("Compare the settings (means, 95% intervals, curves): cifar-exp report --sweep-id ")


def test_the_report_command_names_this_sweep_and_its_store(tmp_path):
    (tmp_path / SWEEP_ID_FILE).write_text("abc123def456\n")
    command = report_command(str(tmp_path), "sqlite:///mlflow.db")
    assert command.startswith("cifar-exp report --sweep-id abc123def456 --tracking-uri sqlite:////")
    assert command.endswith("/mlflow.db")


def test_a_long_sweep_shows_its_best_jobs_and_says_how_many_more(tmp_path):
    jobs = [record([f"seed={i}"], value=i / 100) for i in range(40)]
    lines = job_table(jobs, "test_accuracy", ["seed"])
    assert lines[1].split()[0] == "39" and lines[-1].startswith("... and 25 more jobs")
    json.dumps(jobs)  # records are what job_status.json holds
