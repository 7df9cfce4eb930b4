"""Entry point: `python -m cifar_exp [overrides]`, `cifar-exp [overrides]`, `cifar-exp report ...`.

The only module that touches Hydra's runtime state; the work is in job.run_job.
"""
from __future__ import annotations

import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from cifar_exp import CONFIG_DIR  # the configs' folder, cifar_exp/conf


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    from cifar_exp.data.readers import DataError
    from cifar_exp.errors import ConfigError
    from cifar_exp.job import JobContext, run_job
    from cifar_exp.overrides import SWEPT_KEYS_ENV
    from cifar_exp.training.outcome import TrainingDiverged

    hydra_cfg = HydraConfig.get()
    context = JobContext(
        overrides=list(hydra_cfg.overrides.task),
        choices=dict(hydra_cfg.runtime.choices),
        output_dir=hydra_cfg.runtime.output_dir,
        sweep_dir=hydra_cfg.sweep.dir,
        job_num=hydra_cfg.job.get("num"),
        multirun=hydra_cfg.mode == RunMode.MULTIRUN,
        swept_keys=[k for k in os.environ.get(SWEPT_KEYS_ENV, "").split(",") if k],
    )
    try:
        return run_job(cfg, context)
    except (ConfigError, DataError) as error:  # bad input: the message, not a traceback
        from cifar_exp.tracking.runs import mask_secrets

        print(f"Error: {mask_secrets(error)}", file=sys.stderr)
        sys.exit(2)
    except TrainingDiverged as error:  # recorded FAILED, its hint logged by run_job: no traceback
        print(f"Error: training diverged: {error}", file=sys.stderr)
        sys.exit(1)


def cli() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "report":
        from cifar_exp.sweeps.report import main as report_main

        sys.exit(report_main(sys.argv[2:]))
    from cifar_exp import overrides, signals

    # TensorFlow's C++ INFO lines (oneDNN, CUDA stubs, memory patches) drown a job's own lines;
    # its warnings and errors still show. A value the user set wins.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    sys.argv = [sys.argv[0], *overrides.multirun_flag_first(sys.argv[1:])]
    try:
        check_command_line(sys.argv[1:])
    except (overrides.UnknownKeyError, overrides.UnknownChoiceError, overrides.RemovedOptionError) as error:
        print(f"Error: {error}", file=sys.stderr)
        sys.exit(2)
    signals.install()
    try:
        main()
    except KeyboardInterrupt as error:  # a deliberate stop: one line, not a traceback
        stopped = signals.as_stopped(error)
        signals.report(stopped)
        if stopped.sweep_dir:  # the jobs a stopped sweep finished, failed or left KILLED
            from cifar_exp.sweeps.summary import summarize

            summarize(stopped.sweep_dir)
        sys.exit(stopped.exit_code)


def check_command_line(args: list[str]) -> None:
    """Refuse unknown keys before Hydra composes (its hint for them is to add them with `+`),
    and hand a multirun's swept keys to its jobs (through the environment, which every
    launcher passes on). Anything this cannot compose is left to Hydra to report."""
    import functools
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from hydra._internal.utils import get_args_parser
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from cifar_exp import overrides

    parsed, _ = get_args_parser().parse_known_args(args)
    os.environ.pop(overrides.SWEPT_KEYS_ENV, None)
    if (parsed.help or parsed.hydra_help or parsed.info or parsed.shell_completion or parsed.experimental_rerun
            or parsed.config_path):  # help, or a primary config folder this cannot find as Hydra will
        return
    overrides.check_removed(list(parsed.overrides))
    config_name = parsed.config_name or "config"
    command_line = list(parsed.overrides)
    if parsed.config_dir:  # `-cd DIR` joins the search path, as Hydra adds it: its options are known too
        command_line.append(f"hydra.searchpath=[file://{Path(parsed.config_dir).resolve()}]")
    context = initialize_config_dir(CONFIG_DIR, version_base="1.3")

    def composed(group_overrides: list[str]) -> dict:
        cfg = compose(config_name, overrides=group_overrides, return_hydra_config=True)
        return OmegaConf.to_container(cfg, resolve=False)

    with context:
        loader = GlobalHydra.instance().config_loader()
        searchpath = command_line[len(parsed.overrides):]  # -cd's folder: its options count too

        @functools.lru_cache(maxsize=None)
        def group_options(group: str) -> list[str]:
            return loader.get_group_options(group, config_name=config_name, overrides=searchpath)

        overrides.check_choices(list(parsed.overrides), group_options)
        try:
            params = overrides.check_keys(command_line, composed, loader.get_group_options)
            swept = overrides.swept_keys(parsed.overrides, params)
        except overrides.UnknownKeyError:
            raise
        except Exception:  # bad syntax, an unknown option, ...: Hydra's own message says it
            return
    if swept:
        os.environ[overrides.SWEPT_KEYS_ENV] = ",".join(swept)


if __name__ == "__main__":
    cli()
