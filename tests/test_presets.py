"""Every preset runs: each file of conf/experiment/ and conf/hparams_search/ composes and trains one
tiny job (synthetic data, one or two epochs of a few dozen images) to a FINISHED MLflow run; and
two real trials of `hparams_search=spl_optuna` complete, each value recorded on its run.

The jobs run in this process through job.run_job (one TensorFlow import for all of them)."""
from __future__ import annotations

import math

import pytest

from conftest import CONF, all_runs, compose, run_cli, tracking_uri

# XLA off: compiling ResNet50's or airbench's step costs a CPU minute and says nothing about the preset.
TINY = ["dataset=synthetic", "dataset.train_size=96", "dataset.test_size=32", "trainer.epochs=1",
        "trainer.checkpoint=false", "trainer.verbose=0", "trainer.jit_compile=false"]
# The synthetic stand-in for a 28x28x1 pretraining set (MNIST, Fashion-MNIST).
PRETRAIN_STAND_IN = ["dataset@transfer.pretrain.dataset=synthetic", "transfer.pretrain.dataset.image_shape=[28,28,1]",
                     "transfer.pretrain.dataset.train_size=96", "transfer.pretrain.dataset.test_size=32",
                     "transfer.pretrain.epochs=1"]
# What each preset needs beyond TINY to fit it; everything else is the preset's own.
SHRINK = {
    "experiment=airbench": ["trainer.batch_size=32"],  # batch 1,024 with drop_remainder: no step of 96 images
    "experiment=kfold_poly": ["kfold.repeats=2", "kfold.n_samples=30"],
    # its 500 images are more than the stand-in has; one warm-up epoch, then one self-paced
    "experiment=spcn": ["dataset.limit_train=null", "trainer.epochs=2"],
    # a scheme that weights (the preset's sweep chooses one), in 2 epochs: warm-up then pacing
    "experiment=spl_noisy_labels": ["weighting=hard", "trainer.epochs=2", "weighting.warmup_epochs=1",
                                    "lr_schedule.peak_epoch=1"],
    "experiment=transfer_lenet": PRETRAIN_STAND_IN,
    "experiment=transfer_fashion_cifar10": PRETRAIN_STAND_IN,
    "hparams_search=spl_optuna": ["experiment=spcn", "dataset.limit_train=null", "trainer.epochs=2"],  # as its header says
}
PRESETS = [f"{folder}={path.stem}" for folder in ("experiment", "hparams_search")
           for path in sorted((CONF / folder).glob("*.yaml"))]


def test_the_list_of_presets_is_the_config_folders():
    assert len(PRESETS) >= 11 and set(SHRINK) <= set(PRESETS)


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_runs_one_tiny_job_to_a_finished_run(tmp_path, preset):
    from cifar_exp.job import JobContext, run_job

    uri = tracking_uri(tmp_path)
    overrides = [preset, *([] if preset == "experiment=kfold_poly" else TINY), *SHRINK.get(preset, []),
                 f"mlflow.tracking_uri={uri}"]
    cfg = compose(overrides)
    value = run_job(cfg, JobContext(overrides=overrides, output_dir=str(tmp_path / "job")))
    assert math.isfinite(value)
    _, runs = all_runs(uri)
    job_runs = [r for r in runs if r.data.tags.get("transfer.role") != "pretrain"]
    assert [r.info.status for r in job_runs] == ["FINISHED"]
    assert job_runs[0].data.metrics[cfg.optimized_metric] == pytest.approx(value)
    if cfg.task == "transfer":  # its pretraining ran too, as its own finished run
        assert [r.info.status for r in runs if r.data.tags.get("transfer.role") == "pretrain"] == ["FINISHED"]


@pytest.mark.slow
def test_spl_optuna_runs_two_trials_and_records_each_value(tmp_path):
    uri = tracking_uri(tmp_path)
    done = run_cli(["hparams_search=spl_optuna", "hydra.sweeper.n_trials=2", *TINY, *SHRINK["hparams_search=spl_optuna"],
                    f"mlflow.tracking_uri={uri}", f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Sweep summary: 2 finished, 0 failed" in done.stdout + done.stderr
    _, runs = all_runs(uri)
    trials = [r for r in runs if r.data.tags.get("optuna.study") == "spl_optuna"]
    assert len(trials) == 2 and {r.info.status for r in trials} == {"FINISHED"}
    for run in trials:
        assert 0.0 <= run.data.metrics["val_accuracy"] <= 1.0  # the value the sweeper was told
        assert 0.5 <= float(run.data.params["weighting.age"]) <= 5.0  # sampled within the declared interval
        assert 1.05 <= float(run.data.params["weighting.mu"]) <= 2.0
        assert run.data.params["weighting.name"] == "mixture"
    assert len({r.data.params["weighting.age"] for r in trials}) == 2  # two trials, two draws
