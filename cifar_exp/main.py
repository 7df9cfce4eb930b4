"""Entry point: `python -m cifar_exp [overrides]`, `cifar-exp [overrides]`, and the subcommands
`cifar-exp report|sync|recover|reap ...` (SUBCOMMANDS).

The only module that touches Hydra's runtime state; the work is in job.run_job.
"""
from __future__ import annotations

import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from cifar_exp import CONFIG_DIR  # the configs' folder, cifar_exp/conf
from cifar_exp.sweeps.sweeper import preflight


def check_trial_config(cfg: DictConfig) -> None:
    """The Optuna sweeper's pre-flight check of a trial's composed config (before any trial runs):
    raises ConfigError or DataError as a job would refuse to start, or when the sweep would
    optimise the metric the wrong way (the sweeper's default direction is minimize)."""
    from omegaconf import OmegaConf

    from cifar_exp.errors import ConfigError
    from cifar_exp.job import find_data
    from cifar_exp.validate import validate

    direction, metric = OmegaConf.select(cfg, "hydra.sweeper.direction"), str(cfg.optimized_metric)
    wanted = "maximize" if "accuracy" in metric else "minimize" if "loss" in metric or "entropy" in metric else None
    if direction in ("minimize", "maximize") and wanted and direction != wanted:
        raise ConfigError("hydra.sweeper.direction", direction, f"{wanted} for optimized_metric={metric}")
    validate(cfg)
    if cfg.task != "kfold_poly":  # kfold_poly generates its data
        find_data(cfg.dataset)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
@preflight(check_trial_config)
def main(cfg: DictConfig) -> float:
    from cifar_exp.data.readers import DataError
    from cifar_exp.errors import ConfigError
    from cifar_exp.job import JobContext, run_job
    from cifar_exp.overrides import SWEPT_KEYS_ENV
    from cifar_exp.sweeps.pruning import job_trial
    from cifar_exp.tracking.outbox import StoreUnavailable
    from cifar_exp.training.backend_setup import move_caches_off_unwritable_home
    from cifar_exp.training.outcome import TrainingDiverged

    move_caches_off_unwritable_home()  # before validate (trainer.compile_cache=auto) and any Keras import
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
    trial = job_trial(context.job_num) if context.multirun else None  # an Optuna sweep's trial for this job
    if trial is not None:
        with open_dict(cfg):
            cfg.optuna_trial = trial
    try:
        return run_job(cfg, context)
    except (ConfigError, DataError) as error:  # bad input: the message, not a traceback
        from cifar_exp.tracking.runs import mask_secrets

        print(f"Error: {mask_secrets(error)}", file=sys.stderr)
        sys.exit(2)
    except StoreUnavailable as error:  # trained; what its store did not take waits in the job folder
        print(f"Error: {error}", file=sys.stderr)
        sys.exit(1)
    except TrainingDiverged as error:  # recorded FAILED, its hint logged by run_job: no traceback
        print(f"Error: training diverged: {error}", file=sys.stderr)
        sys.exit(1)


# `cifar-exp <name> ...`: module and function of each subcommand, imported only when asked for.
SUBCOMMANDS = {
    "report": ("cifar_exp.sweeps.report", "main"),       # compare a sweep's settings
    "sync": ("cifar_exp.tracking.outbox", "main"),       # send what a job could not send to its store
    "recover": ("cifar_exp.tracking.health", "recover_main"),  # copy a damaged sqlite store's readable rows
    "reap": ("cifar_exp.tracking.lifecycle", "main"),    # close runs left RUNNING by a process that is gone
}


def cli() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in SUBCOMMANDS:
        import importlib

        module, function = SUBCOMMANDS[sys.argv[1]]
        sys.exit(getattr(importlib.import_module(module), function)(sys.argv[2:]))
    from cifar_exp import overrides, signals

    # TensorFlow's C++ INFO lines (oneDNN, CUDA stubs, memory patches) drown a job's own lines;
    # its warnings and errors still show. A value the user set wins.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    sys.argv = [sys.argv[0], *overrides.multirun_flag_first(sys.argv[1:])]
    refusal = check_before_hydra_writes(sys.argv[1:])
    if refusal:
        print(f"Error: {refusal}", file=sys.stderr)
        sys.exit(2)
    try:
        check_command_line(sys.argv[1:])
    except (overrides.UnknownKeyError, overrides.UnknownChoiceError, overrides.RemovedOptionError,
            overrides.ConfigFileError, overrides.LauncherInSweptOverlayError) as error:
        print(f"Error: {error}", file=sys.stderr)
        sys.exit(2)
    signals.install()
    import importlib.util

    if importlib.util.find_spec("hydra_plugins.hydra_joblib_launcher"):  # the joblib extra is installed
        from cifar_exp.sweeps import launcher

        launcher.register()  # hydra/launcher=joblib loses only the job whose worker is killed
    try:
        main()
    except KeyboardInterrupt as error:  # a deliberate stop: one line, not a traceback
        stopped = signals.as_stopped(error)
        signals.report(stopped)
        if stopped.sweep_dir:  # the jobs a stopped sweep finished, failed or left KILLED
            from cifar_exp.sweeps.summary import summarize

            summarize(stopped.sweep_dir)
        sys.exit(stopped.exit_code)


def check_before_hydra_writes(args: list[str]) -> str | None:
    """What Hydra would do wrong before our job runs, in one line (None: nothing): a misspelt
    CIFAR_EXP_SHARE_STEPS, a `-cd` folder that does not exist (Hydra: a UserWarning, then an error
    and exit 1), and a single run whose `hydra.run.dir` another live process works in (Hydra would
    overwrite that job's `.hydra/` config files before the job's own lock refuses it)."""
    from hydra._internal.utils import get_args_parser

    from cifar_exp.errors import ConfigError
    from cifar_exp.tracking.lifecycle import check_free

    parsed, _ = get_args_parser().parse_known_args(args)
    if parsed.help or parsed.hydra_help or parsed.info or parsed.shell_completion:
        return None
    from cifar_exp.training.shared_steps import mode as shared_steps_mode

    try:  # the process's setting: a misspelt value would fail every job of a multirun, each a FAILED run
        shared_steps_mode()
    except ConfigError as error:
        return str(error)
    if parsed.config_dir and not os.path.isdir(parsed.config_dir):
        return (f"Invalid config: --config-dir={parsed.config_dir!r}. Allowed: a folder that exists "
                f"({os.path.abspath(parsed.config_dir)} does not).")
    if parsed.multirun:
        return None
    for override in parsed.overrides or []:
        key, _, value = override.lstrip("+~").partition("=")
        if key == "hydra.run.dir" and value and "${" not in value:
            try:
                check_free(value.strip("'\""), "hydra.run.dir")
            except ConfigError as error:
                return str(error)
    return None


def check_command_line(args: list[str]) -> None:
    """Refuse unknown keys before Hydra composes (its hint for them is to add them with `+`),
    and hand a multirun's swept keys to its jobs (through the environment, which every
    launcher passes on). A config file that cannot be composed (bad YAML, a defaults entry naming a
    missing option) and a launcher chosen in a swept overlay are refused in one line; anything else
    this cannot compose is left to Hydra to report."""
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
            if parsed.multirun:
                overrides.check_launcher(command_line, composed, loader.get_group_options, params)
        except (overrides.UnknownKeyError, overrides.LauncherInSweptOverlayError):
            raise
        except Exception as error:  # bad YAML, a missing option: one line; anything else: Hydra's own message
            message = overrides.describe_compose_error(error, [parsed.config_dir] if parsed.config_dir else [])
            if message:
                raise overrides.ConfigFileError(message) from None
            return
    if swept:
        os.environ[overrides.SWEPT_KEYS_ENV] = ",".join(swept)


if __name__ == "__main__":
    cli()
