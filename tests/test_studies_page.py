"""benchmarks/studies.py's page: built from the finished runs of a real MLflow store through the
report's statistics: mean and 95% CI over seeds beside the seed's figure, Welch's test, the claim
that follows from them, and every study it did not find said to be not run."""
from __future__ import annotations

import importlib.util
import sys

from conftest import ROOT, tracking_uri


def _studies():
    spec = importlib.util.spec_from_file_location("studies", ROOT / "benchmarks" / "studies.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _log(client, experiment_id, optimizer, seed, accuracy, status="FINISHED"):
    run = client.create_run(experiment_id, tags={"study": "optimizer", "scale": "cpu",
                                                 "overrides": f"optimizer={optimizer} seed={seed}"})
    for key, value in {"dataset.name": "cifar10", "dataset.limit_train": "2000", "dataset.limit_test": "1000",
                       "trainer.epochs": "2", "trainer.batch_size": "32", "model.name": "resnet50",
                       "optimizer.name": optimizer, "seed": str(seed)}.items():
        client.log_param(run.info.run_id, key, value)
    client.log_metric(run.info.run_id, "test_accuracy", accuracy)
    client.set_terminated(run.info.run_id, status)


def test_the_page_tabulates_mean_and_ci_over_seeds_beside_the_seeds_figures(tmp_path):
    from mlflow.tracking import MlflowClient

    studies = _studies()
    client = MlflowClient(tracking_uri(tmp_path))
    experiment_id = client.create_experiment("cifar_exp")
    for seed, (rmsprop, adagrad) in enumerate([(0.40, 0.30), (0.42, 0.35), (0.44, 0.40)]):
        _log(client, experiment_id, "rmsprop", seed, rmsprop)
        _log(client, experiment_id, "adagrad", seed, adagrad)
    _log(client, experiment_id, "adagrad", 3, 0.99, status="KILLED")  # not finished: not counted

    page = tmp_path / "results.md"
    studies.write_page(tmp_path, "cpu", page)
    text = page.read_text()
    # 0.42 +- t(0.975, 2) * 0.02 / sqrt(3) = 0.42 +- 0.0497; the seed's single run beside it
    assert "| optimizer=rmsprop | 3 | **0.420** [0.370, 0.470] | 0.020 | 0.414 |" in text
    assert "| optimizer=adagrad | 3 | **0.350** [0.226, 0.474] | 0.050 | 0.583 |" in text
    assert "optimizer=adagrad minus optimizer=rmsprop: -0.070" in text and "Welch's t" in text
    assert "Does not confirm the seed's ordering" in text
    assert "cifar10: 2000 training images, 1000 test images, 2 epochs" in text
    assert "**not run**: kfold, transfer, allcnn, init, spl" in text
    assert text.count("**Not run at this regeneration**") == 5
