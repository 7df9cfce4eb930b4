"""A Hydra app that knows nothing of cifar_exp: x**2 + y**2, swept by the Optuna sweeper as a
user of the official hydra-optuna-sweeper would (conf/sphere.yaml is written in its schema)."""
import hydra
from omegaconf import DictConfig


@hydra.main(version_base=None, config_path="conf", config_name="sphere")
def sphere(cfg: DictConfig) -> float:
    if cfg.fail:
        raise RuntimeError(f"the sphere job refused x={cfg.x}")
    return cfg.x**2 + cfg.y**2


def conditional(cfg: DictConfig, trial) -> None:
    """custom_search_space: z only near x, and a new key (+w) the config does not have."""
    x = trial.params["x"]
    trial.suggest_float("z", x - cfg.max_z_gap, x + cfg.max_z_gap)
    trial.suggest_float("+w", 0.0, 1.0)


if __name__ == "__main__":
    sphere()
