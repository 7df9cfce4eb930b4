"""A two-objective Hydra app (the Binh and Korn problem): the job returns a tuple."""
import hydra
from omegaconf import DictConfig


@hydra.main(version_base=None, config_path="conf", config_name="pareto")
def binh_korn(cfg: DictConfig) -> tuple[float, float]:
    return 4 * cfg.x**2 + 4 * cfg.y**2, (cfg.x - 5) ** 2 + (cfg.y - 5) ** 2


if __name__ == "__main__":
    binh_korn()
