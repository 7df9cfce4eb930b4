"""Optuna pieces shared by the sweeper (which asks and tells) and a job's pruning callback
(which reports epochs): storages (and the repair of a torn journal), samplers, pruners, the
search space, and the file that hands a job its trial.
"""
from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from typing import Any

from cifar_exp.errors import ConfigError
from cifar_exp.overrides import is_inert
from cifar_exp.tracking.runs import mask_secrets

# The full storage URL when the one a job sees had its password masked.
STORAGE_ENV = "CIFAR_EXP_OPTUNA_STORAGE"
DEFAULT_STUDY_NAME = "study"
JOURNAL_FILE = "optuna.journal"
PRUNER_ATTR = "cifar_exp.pruner"  # study user attr: the pruner spec jobs rebuild
PRUNED_ATTR = "pruned_at_epoch"  # trial user attr a job sets when it stops early
MLFLOW_RUN_ATTR = "mlflow_run_id"  # trial user attr: the job's MLflow run
ORPHAN_ATTR = "orphaned"  # trial user attr: failed because its sweeper died
NOT_RUN_ATTR = "not_run"  # trial user attr: failed before launch (why)
SETTINGS_ATTR = "cifar_exp.settings"  # study user attr: what its trials share (study_settings)
SWEEP_ERROR_ATTR = "cifar_exp.sweep_error"  # trial user attr: a job's config error every trial shares


# ---------------------------------------------------------------------------- storage

def is_database_url(storage: str) -> bool:
    return "://" in storage


def storage_location(storage: str | None, sweep_dir: str) -> str:
    """A database URL as given; otherwise the absolute path of a journal file (null: one in
    the sweep dir), so jobs that run elsewhere find it."""
    if storage is None:
        return str(Path(sweep_dir, JOURNAL_FILE).resolve())
    storage = str(storage)
    return storage if is_database_url(storage) else str(Path(storage).expanduser().resolve())


def open_storage(location: str):
    """An Optuna storage for a database URL or a journal file path."""
    import optuna

    if is_database_url(location):
        from cifar_exp.tracking.databases import opening_storage
        from cifar_exp.tracking.runs import sqlite_creation_lock

        engine_kwargs = {"connect_args": {"timeout": 60}} if location.startswith("sqlite") else None
        # Workers started together race to create a new study's tables (alembic): a file lock for
        # sqlite, an advisory lock for PostgreSQL (opening_storage also checks the driver).
        with sqlite_creation_lock(location), opening_storage(location, "hydra.sweeper.storage"):
            return optuna.storages.RDBStorage(location, engine_kwargs=engine_kwargs)
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    Path(location).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(location))


class JournalDamaged(ConfigError):
    """A journal line that is not a record and cannot be salvaged (not at the end of the file)."""


def repair_journal(path: str) -> str | None:
    """Make a journal Optuna can read and append to after a crash mid-write; a warning, or None.

    A torn last record (half a JSON line, no newline: a process killed while writing) is moved to
    `<journal>.torn` and cut, so the next record does not land on it (Optuna would then fail on
    every later read); a whole last record that lacks only its newline gets it. A damaged line
    further up that ends in a whole record (the torn record an older version appended onto) keeps
    that record. Anything else raises JournalDamaged naming the file, the line and the repair.
    Runs under the journal's own lock, so a live writer is never cut.
    """
    from optuna.storages.journal import JournalFileSymlinkLock

    file = Path(path)
    if not file.exists() or file.stat().st_size == 0:
        return None
    lock = JournalFileSymlinkLock(path)
    lock.acquire()
    try:
        data = file.read_bytes()
        lines = data.split(b"\n")
        tail = lines.pop()  # b"" when the file ends with a newline
        notes, fixed = [], []
        for number, line in enumerate(lines, start=1):
            if _is_record(line):
                fixed.append(line)
                continue
            if not line.strip():
                notes.append(f"line {number} was empty, dropped")
                continue
            start = line.rfind(b'{"op_code"')
            while start > 0 and not _is_record(line[start:]):
                start = line.rfind(b'{"op_code"', 0, start)
            if start <= 0:
                raise JournalDamaged(str(file), f"line {number}: {line[:60]!r}",
                                     "a journal of Optuna records: restore it from a copy, or remove that line and "
                                     "every later one (their trials are lost) and run again")
            notes.append(f"line {number} began with a torn record {line[:start][:60]!r}, dropped")
            fixed.append(line[start:])
        if tail:
            if _is_record(tail):
                fixed.append(tail)
                notes.append("its last record lacked its newline, added")
            else:
                with open(f"{path}.torn", "ab") as kept:
                    kept.write(tail + b"\n")
                notes.append(f"its last record was torn (a crash mid-write): {tail[:60]!r}... moved to "
                             f"{path}.torn")
        if not notes:
            return None
        partial = Path(f"{path}.repairing")
        partial.write_bytes(b"\n".join(fixed) + b"\n")
        partial.replace(file)
        return f"Optuna journal {path}: " + "; ".join(notes) + "; the study goes on with every whole record"
    finally:
        lock.release()


def _is_record(line: bytes) -> bool:
    import json

    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def job_storage_location(shown: str) -> str:
    """The storage a job was handed; a masked password is taken from $CIFAR_EXP_OPTUNA_STORAGE."""
    if "***" not in shown:
        return shown
    full = os.environ.get(STORAGE_ENV)
    if full and mask_secrets(full) == shown:
        return full
    raise ConfigError("optuna_trial.storage", shown,
                      f"a storage URL whose password is in ${STORAGE_ENV} (the sweeper sets it for its jobs)")


# ------------------------------------------------------------------ samplers, pruners

# Optuna imports these only when it first samples, i.e. in the middle of a sweep.
_NEEDS = {"CmaEsSampler": "cmaes", "GPSampler": "torch"}


def build_sampler(spec: dict, seed: int | None = None, grid: dict[str, list] | None = None):
    """An Optuna sampler from a `hydra/sweeper/sampler` option: the class as `_target_` plus its
    arguments (the official plugin's format). `seed`, when not None, replaces the option's seed;
    a GridSampler without its own `search_space` gets `grid`, the sweep's discrete space.

    Raises ConfigError naming the key for a target that is not an Optuna sampler, a grid over a
    continuous space, or a sampler whose optional package is not installed."""
    import importlib

    import optuna

    if isinstance(spec, optuna.samplers.BaseSampler):  # built by the caller (OptunaSweeperImpl used directly)
        return spec
    args = dict(spec)
    target = args.pop("_target_", None)
    module, _, name = str(target).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name) if module else None
    except (ImportError, AttributeError):
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, optuna.samplers.BaseSampler)):
        raise ConfigError("hydra.sweeper.sampler._target_", target,
                          "an Optuna sampler class, e.g. optuna.samplers.TPESampler (hydra/sweeper/sampler="
                          "tpe|random|grid|cmaes|nsgaii|gp|qmc)")
    if seed is not None:
        args["seed"] = seed
    if issubclass(cls, optuna.samplers.GridSampler) and not args.get("search_space"):
        if not grid:
            raise ConfigError("hydra.sweeper.sampler", "grid",
                              "a search space of choice(...) and range(...) parameters only")
        args["search_space"] = grid
    needs = _NEEDS.get(cls.__name__)
    if needs and importlib.util.find_spec(needs) is None:
        raise ConfigError("hydra.sweeper.sampler", cls.__name__,
                          f"an installed `{needs}` package (pip install {needs}), or another sampler")
    try:
        return cls(**args)
    except TypeError as error:  # an argument the class does not take
        raise ConfigError("hydra.sweeper.sampler", args, f"the arguments of {target} ({error})") from None


def is_grid(spec) -> bool:
    """Whether a sampler option (or a built sampler) is Optuna's GridSampler."""
    if not isinstance(spec, dict):
        return type(spec).__name__ == "GridSampler"
    return str(spec.get("_target_", "")).rsplit(".", 1)[-1] == "GridSampler"


def build_pruner(spec: dict | None):
    """An Optuna pruner from a `hydra/sweeper/pruner` option; `none` or null: never prune."""
    import optuna

    spec = dict(spec or {"name": "none"})
    name = spec.pop("name")
    classes = {"median": optuna.pruners.MedianPruner, "percentile": optuna.pruners.PercentilePruner,
               "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
               "hyperband": optuna.pruners.HyperbandPruner, "threshold": optuna.pruners.ThresholdPruner,
               "none": optuna.pruners.NopPruner}
    if name not in classes:
        raise ConfigError("hydra.sweeper.pruner.name", name, ", ".join(classes))
    return classes[name](**spec)


# ----------------------------------------------------------------------- search space

class SearchSpace:
    """The sweep's overrides split into Optuna distributions and fixed overrides.

    `distributions` maps a config key to its distribution; `prefixes` keeps a `+`/`++` the
    key was given with; `fixed` are override strings passed unchanged to every trial;
    `excluded_stops` maps a range(...) key to the stop the official plugin would have sampled.
    """

    def __init__(self, distributions: dict, prefixes: dict[str, str], fixed: list[str],
                 excluded_stops: dict[str, Any] | None = None):
        self.distributions, self.prefixes, self.fixed = distributions, prefixes, fixed
        self.excluded_stops = excluded_stops or {}

    def overrides(self, params: dict[str, Any]) -> list[str]:
        """A trial's overrides: its sampled parameters, then the fixed ones."""
        return [f"{self.prefixes.get(k, '')}{k}={format_value(v)}" for k, v in params.items()] + self.fixed

    def grid(self) -> dict[str, list] | None:
        """The values of each parameter for GridSampler; None when one is continuous."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        grid = {}
        for key, dist in self.distributions.items():
            if isinstance(dist, CategoricalDistribution):
                grid[key] = list(dist.choices)
            elif isinstance(dist, (IntDistribution, FloatDistribution)) and dist.step is not None and not dist.log:
                count = int(round((dist.high - dist.low) / dist.step)) + 1
                grid[key] = [_tidy(dist.low + i * dist.step, dist) for i in range(count)]
            else:
                return None
        return grid


def _tidy(value, dist):
    from optuna.distributions import IntDistribution

    return int(value) if isinstance(dist, IntDistribution) else float(f"{value:.12g}")


def parse_search_space(overrides: list[str]) -> SearchSpace:
    """Parse overrides such as `optimizer.lr=tag(log, interval(1e-4, 1))`. A later override
    of a key replaces an earlier one (the command line beats hparams_search's `params`)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    by_key: dict[str, Any] = {}
    for override in OverridesParser.create().parse_overrides(overrides):
        by_key[override.key_or_group + (f"@{override.package}" if override.package else "")] = override
    distributions, prefixes, fixed, stops = {}, {}, [], {}
    for override in by_key.values():
        if not override.is_sweep_override():
            fixed.append(override.input_line)
            continue
        key = override.get_key_element().lstrip("+")
        prefixes[key] = override.get_key_element()[: len(override.get_key_element()) - len(key)]
        distributions[key] = to_distribution(override)
        if excluded_stop(override) is not None:
            stops[key] = excluded_stop(override)
    return SearchSpace(distributions, prefixes, fixed, stops)


def to_distribution(override):
    """One sweep override as an Optuna distribution.

    interval(a, b) -> float in [a, b]; tag(log, ...) -> log scale; int(interval(a, b)) or
    tag(int, ...) -> integers; range(a, b, step) -> a, a+step, ... below b (Hydra's range excludes
    b, as its basic sweeper does; the official Optuna plugin also sampled b: see excluded_stop);
    choice(...) and shuffle(...) -> categorical.
    """
    from hydra.core.override_parser.types import Transformer
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    key = override.get_key_element()
    if override.is_interval_sweep():
        sweep = override.value()
        unknown = set(sweep.tags) - {"log", "int"}
        if unknown:
            raise ConfigError(key, override.input_line, f"interval tags log and int only, not {sorted(unknown)}")
        log = "log" in sweep.tags
        if log and sweep.start <= 0:
            raise ConfigError(key, override.input_line, "a log interval with a positive lower end")
        # int(interval(1, 5)) (Hydra casts both ends to int) or tag(int, interval(...)): integers.
        if "int" in sweep.tags or isinstance(sweep.start, int) and isinstance(sweep.end, int):
            return IntDistribution(int(sweep.start), int(sweep.end), log=log)
        return FloatDistribution(float(sweep.start), float(sweep.end), log=log)
    values = list(override.sweep_iterator(transformer=Transformer.encode))
    if override.is_range_sweep() and not override.value().shuffle:
        sweep = override.value()
        if not values:
            raise ConfigError(key, override.input_line, "a range with at least one value")
        if all(isinstance(v, int) for v in values) and isinstance(sweep.step, int):
            return IntDistribution(values[0], values[-1], step=sweep.step)
        return FloatDistribution(float(values[0]), float(f"{values[-1]:.12g}"), step=float(sweep.step))
    if not values:
        raise ConfigError(key, override.input_line, "a choice of at least one value")
    return CategoricalDistribution(values)


def probe_points(space: SearchSpace) -> list[dict[str, Any]]:
    """Three parameter sets spanning the search space, to check the config every trial composes
    before the first one runs: every parameter at its low end, its middle, its high end
    (choices: the first, middle and last). Without parameters: one empty set."""
    from optuna.distributions import CategoricalDistribution

    points: list[dict[str, Any]] = [{}, {}, {}]
    for key, dist in space.distributions.items():
        if isinstance(dist, CategoricalDistribution):
            values = [dist.choices[0], dist.choices[len(dist.choices) // 2], dist.choices[-1]]
        else:
            low, high = dist.low, dist.high
            middle = math.sqrt(low * high) if dist.log else (low + high) / 2
            if dist.step is not None:
                middle = low + round((middle - low) / dist.step) * dist.step
            values = [low, _tidy(middle, dist) if dist.step is not None else middle, high]
        for point, value in zip(points, values):
            point[key] = value
    return points if space.distributions else [{}]


def describe(dist) -> str:
    """A distribution as the override grammar writes it, e.g. `tag(log, interval(0.0001, 1.0))`;
    ranges as their first and last values."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        return "choice(" + ", ".join(map(str, dist.choices)) + ")"
    if dist.step is not None and not (isinstance(dist, IntDistribution) and dist.step == 1):
        return f"{dist.low}..{dist.high} step {dist.step}"  # both ends included (Hydra's range excludes its stop)
    text = f"interval({dist.low}, {dist.high})"
    tags = [t for t, on in (("log", dist.log), ("int", isinstance(dist, IntDistribution))) if on]
    return f"tag({', '.join(tags)}, {text})" if tags else text


def study_settings(space: SearchSpace, direction: str, optimized_metric: str, monitor: str | None) -> dict:
    """What every trial of a study shares and a resumed study must keep (JSON, a study user attr):
    direction, optimised and monitored metric, search space, and the fixed overrides that change
    what a trial computes (keyed by config key)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from optuna.distributions import distribution_to_json

    fixed = {}
    for override in OverridesParser.create().parse_overrides(space.fixed):
        key = override.key_or_group + (f"@{override.package}" if override.package else "")
        if not is_inert(key):  # keys that compute nothing: a resumed study may differ in them
            fixed[key] = override.input_line
    return {"direction": direction, "optimized_metric": optimized_metric, "monitor": monitor,
            "search_space": {k: distribution_to_json(d) for k, d in space.distributions.items()},
            "fixed_overrides": fixed}


def settings_change(old: dict, new: dict) -> tuple[str, str, str] | None:
    """The first difference between a study's stored settings and a rerun's, as (key, old, new)
    in words, or None when they agree."""
    from optuna.distributions import json_to_distribution

    for name, key in (("direction", "hydra.sweeper.direction"), ("optimized_metric", "optimized_metric"),
                      ("monitor", "hydra.sweeper.monitor")):
        if name in old and old[name] != new[name]:
            return key, str(old[name]), str(new[name])
    old_space, new_space = old.get("search_space", {}), new["search_space"]
    for key in sorted(set(old_space) | set(new_space)):
        before = describe(json_to_distribution(old_space[key])) if key in old_space else "not searched"
        after = describe(json_to_distribution(new_space[key])) if key in new_space else "not searched"
        if before != after:
            return key, before, after
    old_fixed, new_fixed = old.get("fixed_overrides", {}), new["fixed_overrides"]
    for key in sorted(k for k in set(old_fixed) | set(new_fixed) if not is_inert(k)):  # stored by an older list
        if old_fixed.get(key) != new_fixed.get(key):
            return key, old_fixed.get(key, "not set"), new_fixed.get(key, "not set")
    return None


def space_of_trials(trials) -> dict:
    """The search space (key -> distribution JSON) a study's earlier trials were sampled from: for a
    study recorded before SETTINGS_ATTR existed."""
    from optuna.distributions import distribution_to_json

    space: dict = {}
    for trial in trials:
        for key, dist in trial.distributions.items():
            space.setdefault(key, distribution_to_json(dist))
    return space


def format_value(value) -> str:
    """A sampled value as override text (choices are already override text)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    return str(value)


def excluded_stop(override) -> Any | None:
    """For `range(a, b, step)`: b when it lies on the range's grid, i.e. when the official Optuna
    plugin would have sampled it and this sweeper (with Hydra's grammar) does not; else None."""
    if not (override.is_range_sweep() and not override.value().shuffle):
        return None
    sweep = override.value()
    count = (sweep.stop - sweep.start) / sweep.step
    return sweep.stop if count > 0 and abs(count - round(count)) < 1e-9 else None


# ------------------------------------------------------------------- trial hand-off
# A job learns which trial it is from a file the sweeper writes before launching it,
# <sweep dir>/.optuna_trials/<job number>.json, in the folder $CIFAR_EXP_OPTUNA_TRIALS names
# (set by the sweeper, inherited by every launcher's jobs; read by cifar_exp.sweeps.pruning.job_trial). Nothing reaches a job's overrides,
# so ${hydra.job.override_dirname} and the launcher's lines show only the sampled parameters.

TRIALS_ENV = "CIFAR_EXP_OPTUNA_TRIALS"
TRIALS_DIR = ".optuna_trials"


def write_trial_file(folder: str, number: int, storage: str, study_name: str, trial_id: int,
                     monitor: str | None) -> Path:
    """The file job `number` reads: storage (password masked), study_name, number, trial_id, monitor."""
    import json

    path = Path(folder, f"{number}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = {"storage": mask_secrets(storage), "study_name": study_name, "number": number,
              "trial_id": trial_id, "monitor": monitor}
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(fields))
    partial.replace(path)  # atomic: a job never reads half a file
    return path
