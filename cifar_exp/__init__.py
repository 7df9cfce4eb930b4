"""cifar_exp: Hydra-configured CIFAR-10 experiments, tracked in MLflow, tuned with Optuna."""

__version__ = "0.1.0"
