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


# An absolute path, so the configs are found from any working directory.
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    from cifar_exp.errors import ConfigError
    from cifar_exp.job import JobContext, run_job
    from cifar_exp.outcome import TrainingDiverged
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
    except TrainingDiverged as error:  # recorded FAILED, its hint logged by run_job: no traceback
        print(f"Error: training diverged: {error}", file=sys.stderr)
        sys.exit(1)


def cli() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "report":
        from cifar_exp.report import main as report_main

        sys.exit(report_main(sys.argv[2:]))
    main()


if __name__ == "__main__":
    cli()
