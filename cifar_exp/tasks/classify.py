"""`task=classify` (the default): train an image classifier on `dataset`, evaluate it on the test
split. The fit itself is training/fit.py, which transfer.py trains with too."""
from __future__ import annotations

from cifar_exp.errors import ConfigError

FINAL_METRICS = ("test_accuracy", "test_loss", "val_accuracy", "val_loss")  # what `run` returns


def check(cfg) -> None:
    """`optimized_metric` is one of the metrics a classifier's run returns; raises ConfigError."""
    if cfg.optimized_metric not in FINAL_METRICS:
        raise ConfigError("optimized_metric", cfg.optimized_metric, ", ".join(FINAL_METRICS))
    if cfg.optimized_metric.startswith("val_") and not (cfg.dataset.get("val_fraction") or cfg.dataset.get("folds")):
        raise ConfigError("optimized_metric", cfg.optimized_metric,
                          "test_* metrics, or val_* with dataset.val_fraction > 0 or dataset.folds set")


def run(cfg, tracker, checkpoint_dir: str | None = None) -> dict[str, float]:
    """Trains and evaluates (training/fit.py), with the multi-worker sync checks of trainer.strategy."""
    from cifar_exp.training import distribute, fit  # imports Keras: only once a job really runs

    return fit.run(cfg, tracker, checkpoint_dir=checkpoint_dir,
                   extra_callbacks=distribute.sync_check_callbacks(cfg.trainer.strategy, tracker))
