"""Entry point: `python -m cifar_exp [overrides]`, `cifar-exp [overrides]`, `cifar-exp report ...`.

The only module that touches Hydra's runtime state; the work is in job.run_job.
"""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig


# The configs, as an absolute path so they are found from any working directory. A wheel
# (`pip install .`, git+URL, an index) ships the repository's conf/ inside the package as
# cifar_exp/conf (pyproject.toml's package-dir); an editable install or a source checkout has
# no cifar_exp/conf and reads the repository's conf/ next to the package.
_PACKAGE_DIR = Path(__file__).resolve().parent
CONFIG_DIR = str(_PACKAGE_DIR / "conf" if (_PACKAGE_DIR / "conf").is_dir() else _PACKAGE_DIR.parent / "conf")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    from cifar_exp.errors import ConfigError
    from cifar_exp.job import JobContext, run_job
    from cifar_exp.readers import DataError

    hydra_cfg = HydraConfig.get()
    context = JobContext(
        overrides=list(hydra_cfg.overrides.task),
        choices=dict(hydra_cfg.runtime.choices),
        output_dir=hydra_cfg.runtime.output_dir,
        sweep_dir=hydra_cfg.sweep.dir,
        job_num=hydra_cfg.job.get("num"),
        multirun=hydra_cfg.mode == RunMode.MULTIRUN,
    )
    try:
        return run_job(cfg, context)
    except (ConfigError, DataError) as error:  # bad input: the message, not a traceback
        from cifar_exp.tracking import mask_secrets

        print(f"Error: {mask_secrets(error)}", file=sys.stderr)
        sys.exit(2)


def cli() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "report":
        from cifar_exp.report import main as report_main

        sys.exit(report_main(sys.argv[2:]))
    main()


if __name__ == "__main__":
    cli()
