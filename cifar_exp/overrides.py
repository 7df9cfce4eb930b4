"""The command line before Hydra sees it: `--multirun` anywhere, every override's key known.

Hydra's struct mode refuses a plain unknown key with the hint to add it with `+`, and a
`+key=value` is then accepted and ignored. Here each key is compared with the composed
config's keys first, and a typo is refused with the nearest real key. Pure functions: main.py
composes the configs they compare against.
"""
from __future__ import annotations

import difflib
from typing import Callable, Iterable

MULTIRUN_FLAGS = ("-m", "--multirun")
# THE list of keys that do not change what a job computes: where it runs and on what placement
# (Hydra's own keys and groups, the launcher among them; GPU memory, compile cache, data placement),
# what it tells (tags, verbosity, tracking), and how it is resumed or skipped. Two jobs differing
# only in them are the same job: the config hash (job.config_hash), the Optuna study comparison
# (sweeps/sweeper), the run name (job.run_name), the sweep id (sweeps/summary) and the report's
# compared keys all read this list, so adding `+tags.x=y` or `trainer.gpu_memory=grow` never
# blocks a resume. A key matches itself and everything under it (`mlflow` covers `mlflow.run_name`).
INERT_KEYS = ("hydra", "mlflow", "tags", "sweep", "resume", "trainer.verbose", "trainer.checkpoint",
              "trainer.data_on_device", "trainer.compile_cache", "trainer.gpu_memory")
# Keys Hydra checks itself, the free-form run tags, and the key the Optuna sweeper sets per trial.
UNCHECKED_PREFIXES = ("hydra.", "tags.", "optuna_trial.")
# Environment variable through which the sweep's swept keys reach its jobs (any launcher).
SWEPT_KEYS_ENV = "CIFAR_EXP_SWEPT_KEYS"


class UnknownKeyError(ValueError):
    """An override whose key is not part of the config; raised before anything runs."""

    def __init__(self, key: str, override: str, nearest: str | None):
        self.key, self.override, self.nearest = key, override, nearest
        hint = (f"did you mean {nearest}?" if nearest
                else "`--cfg job` with the same options prints every key")
        super().__init__(f"Unknown config key {key} (in {override}): {hint}")


# Options that existed and were removed, with what replaces them: said before Hydra's generic
# "Could not find 'experiment/fast'" (which lists what exists but not why this one went).
REMOVED_OPTIONS = {
    ("experiment", "fast"): "experiment=fast was removed once measured: on an H200 it reached 0.891 in 36.5 s, "
                            "experiment=resnet9 0.906 in 37.6 s; the fast recipe is experiment=airbench",
}


class RemovedOptionError(ValueError):
    """An override choosing a config option that was removed (REMOVED_OPTIONS); raised before anything runs."""


def check_removed(overrides: list[str]) -> None:
    """Raise RemovedOptionError for `group=option` (or a sweep listing it) where the option was removed."""
    for override in overrides:
        key, _, values = override.partition("=")
        group = key.lstrip("+~").removeprefix("override ").strip()
        for value in values.split(","):
            message = REMOVED_OPTIONS.get((group, value.strip()))
            if message:
                raise RemovedOptionError(message)


def is_inert(key: str) -> bool:
    """Whether a config key, an override (`+tags.a=b`, `override hydra/launcher=joblib`) or a
    group (`hydra/launcher`) is one of INERT_KEYS or lies under one."""
    key = key.split("=", 1)[0].strip().lstrip("+~").removeprefix("override ").strip().split("@", 1)[0]
    key = key.replace("/", ".")
    return any(key == inert or key.startswith(inert + ".") for inert in INERT_KEYS)


class UnknownChoiceError(ValueError):
    """A `group=option` override naming an option the group does not have; raised before anything runs."""

    def __init__(self, group: str, option: str, options: list[str]):
        nearest = difflib.get_close_matches(option, options, n=1, cutoff=0.6)
        hint = f"did you mean {group}={nearest[0]}? " if nearest else ""
        super().__init__(f"Unknown {group} option {option!r} (in {group}={option}): {hint}"
                         f"the options are {', '.join(options)}")


def check_choices(overrides: list[str], group_options: Callable[[str], list[str]]) -> None:
    """Raise UnknownChoiceError for the first `group=option` (each option of a swept `group=a,b`)
    that is not among the group's options (`group_options(name)`: [] when not a group). Overrides
    Hydra's parser refuses, or that use sweep functions over groups, are left to Hydra."""
    try:
        parsed = parse(overrides)
    except Exception:  # bad syntax: Hydra's own message says it
        return
    for o in parsed:
        if o.is_delete() or o.package is not None:
            continue
        group = o.key_or_group.lstrip("+~")
        options = group_options(group)
        if not options:
            continue
        try:
            chosen = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.value()]
        except Exception:  # glob(...), range(...) over a group: Hydra expands and checks those
            continue
        for option in chosen:
            if isinstance(option, str) and option not in options:
                raise UnknownChoiceError(group, option, sorted(options))


def multirun_flag_first(args: list[str]) -> list[str]:
    """`-m`/`--multirun` moved to the front: Hydra's argparse takes the overrides as one
    positional list, so overrides written after the flag were 'unrecognized arguments'.
    The flag takes no value, so moving it changes nothing else."""
    return [a for a in args if a in MULTIRUN_FLAGS] + [a for a in args if a not in MULTIRUN_FLAGS]


def config_paths(tree: dict, prefix: str = "") -> set[str]:
    """Every dotted path of a nested dict, inner nodes included: {'a': {'b': 1}} -> {'a', 'a.b'}."""
    paths = set()
    for key, value in tree.items():
        path = f"{prefix}{key}"
        paths.add(path)
        if isinstance(value, dict):
            paths |= config_paths(value, path + ".")
    return paths


def nearest_key(key: str, known: set[str]) -> str | None:
    """The known key closest in spelling (difflib's ratio >= 0.6): a sibling when the parent
    exists (`trainer.epoch` -> `trainer.epochs`), else any key (`trainr.epochs` -> `trainer.epochs`)."""
    parent, _, leaf = key.rpartition(".")
    if not parent or parent in known:
        siblings = {k.rpartition(".")[2]: k for k in known if k.rpartition(".")[0] == parent}
        matches = difflib.get_close_matches(leaf, sorted(siblings), n=1, cutoff=0.6)
        return siblings[matches[0]] if matches else None
    matches = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    return matches[0] if matches else None


def parse(overrides: list[str]):
    """Hydra's own parse of override strings (raises OverrideParseException on bad syntax)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(overrides)


def first_value(override) -> str:
    """The first option of a swept group (`init=zeros,he_normal` -> zeros)."""
    return next(iter(override.sweep_string_iterator()))


def check_keys(overrides: list[str], compose: Callable[[list[str]], dict],
               group_options: Callable[[str], list[str]]) -> dict:
    """Raise UnknownKeyError for the first override, on the command line or in the composed
    `hydra.sweeper.params`, whose key is not in the config every job of the command composes.

    `compose(group_overrides)` returns the composed config as a plain dict, Hydra's node
    included; `group_options(name)` lists a config group's options ([] if not a group). A
    group swept over several options is composed with each, and the key must be in all (Hydra
    refuses it where it is missing, and a `+` would add it where nothing reads it). `hydra.*`
    keys (Hydra checks them), the entries of `tags` and `optuna_trial`'s are not checked.
    Returns the composed `hydra.sweeper.params` (for `swept_keys`).
    """
    parsed = parse(overrides)

    def is_group(override) -> bool:
        return override.package is not None or bool(group_options(override.key_or_group))

    groups = [o for o in parsed if is_group(o)]
    hydra_values = [o.input_line for o in parsed if not is_group(o) and o.key_or_group.startswith("hydra.")]
    base = [f"{o.get_key_element()}={first_value(o)}" if o.is_sweep_override() else o.input_line for o in groups]
    reference = compose(base + hydra_values)
    params = (reference.get("hydra") or {}).get("sweeper", {}).get("params") or {}
    from_params = parse([f"{k}={v}" for k, v in params.items()])

    candidates = [(o.key_or_group, o.input_line) for o in parsed if not is_group(o) and not o.is_delete()]
    candidates += [(o.key_or_group, f"hydra.sweeper.params: {o.input_line}") for o in from_params
                   if not is_group(o) and not o.is_delete()]
    candidates = [(key, shown) for key, shown in candidates if not key.startswith(UNCHECKED_PREFIXES)]

    # (the group choice it was composed with, its keys) for each config the jobs can compose.
    variants = [("", _keys(reference))]
    for o in [o for o in groups + from_params if is_group(o) and o.is_sweep_override()]:
        group = o.get_key_element()
        others = [b for b in base + hydra_values if b.split("=", 1)[0] != group]
        for option in o.sweep_string_iterator():
            variants.append((f"{group}={option}", _keys(compose([*others, f"{group}={option}"]))))
    for key, shown in candidates:
        for choice, known in variants:
            if key not in known:
                raise UnknownKeyError(key, shown + (f", with {choice}" if choice else ""), nearest_key(key, known))
    return params


def _keys(config: dict) -> set[str]:
    return config_paths({k: v for k, v in config.items() if k != "hydra"})


def swept_keys(overrides: list[str], sweeper_params: dict | None) -> list[str]:
    """The keys whose values vary across a multirun, as both sweepers read them: the configured
    `hydra.sweeper.params`, then the command line, a later value of a key replacing an earlier
    one (`kfold.noise=0.1` pins a key a preset sweeps); swept means `a,b`, `range(...)`,
    `choice(...)`, `interval(...)`. In order of first mention, `+`/`~` dropped."""
    final = {}
    for o in parse([f"{k}={v}" for k, v in (sweeper_params or {}).items()] + list(overrides)):
        final[o.get_key_element().lstrip("+~")] = o.is_sweep_override()
    return [key for key, swept in final.items() if swept]


class ConfigFileError(ValueError):
    """A config file that cannot be composed (bad YAML, a defaults entry naming a missing option),
    said in one line that names the file; raised before anything runs."""


def describe_compose_error(error: BaseException, folders: Iterable[str]) -> str | None:
    """One line for a composition error Hydra would report with a traceback or a misleading file,
    or None to leave it to Hydra.

    A YAML syntax error: its file, line and column. A defaults entry naming a missing option
    (Hydra blames the config whose default it overrides, e.g. recipe/lenet): the file of `folders`
    (the user's `--config-dir`) and line that names it, the group and its options.
    """
    import re
    from pathlib import Path

    import yaml
    from hydra.errors import MissingConfigException

    if isinstance(error, yaml.YAMLError):
        mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
        problem = getattr(error, "problem", None) or getattr(error, "context", None) or str(error).splitlines()[0]
        if mark is None:
            return f"YAML syntax error in a config file: {problem}"
        return f"YAML syntax error in {mark.name}, line {mark.line + 1}, column {mark.column + 1}: {problem}"
    if not isinstance(error, MissingConfigException):
        return None
    found = re.search(r"Could not find '(?P<group>[^']+)/(?P<option>[^'/]+)'", str(error))
    if not found:
        return None
    group, option = found["group"], found["option"]
    entry = re.compile(rf"^\s*-\s*(override\s+)?/?{re.escape(group)}(@[\w.]+)?\s*:\s*['\"]?{re.escape(option)}['\"]?\s*$")
    for folder in folders:
        for path in sorted(Path(folder).rglob("*.yaml")):
            for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if entry.match(line):
                    choices = ", ".join(error.options or []) or "none"
                    return (f"{path}, line {number}: the defaults entry `{line.strip()}` chooses {group} "
                            f"option '{option}', which does not exist; {group}'s options: {choices}")
    return None


class LauncherInSweptOverlayError(ValueError):
    """A swept config option (an experiment overlay) that chooses the launcher: Hydra picks the
    launcher before it composes each job, so it would be ignored (hydra#2946, #3231)."""


def check_launcher(overrides: list[str], compose: Callable[[list[str]], dict],
                   group_options: Callable[[str], list[str]], sweeper_params: dict | None = None) -> None:
    """Raise LauncherInSweptOverlayError when an option of a group swept in a multirun (on the
    command line or in `hydra.sweeper.params`) sets `hydra.launcher` differently from the sweep's
    own config: with `experiment=a,b -m` Hydra launches with the launcher composed without a or b.

    `compose` and `group_options` as for `check_keys`.
    """
    parsed = parse(overrides)
    from_params = parse([f"{k}={v}" for k, v in (sweeper_params or {}).items()])

    def is_group(override) -> bool:
        return override.package is not None or bool(group_options(override.key_or_group))

    swept = [o for o in parsed + from_params if o.is_sweep_override() and is_group(o)]
    if not swept:
        return
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]

    def launcher(config: dict):
        return (config.get("hydra") or {}).get("launcher")

    sweep_launcher = launcher(compose(fixed))
    for o in swept:
        group = o.get_key_element()
        for option in o.sweep_string_iterator():
            config = compose([*[f for f in fixed if f.split("=", 1)[0] != group], f"{group}={option}"])
            if launcher(config) != sweep_launcher:
                chosen = ((config.get("hydra") or {}).get("runtime", {}).get("choices") or {}).get("hydra/launcher")
                raise LauncherInSweptOverlayError(
                    f"{group}={option} sets the launcher (hydra/launcher: {chosen or launcher(config).get('_target_')}), "
                    f"which a sweep over {group} ignores: Hydra chooses the launcher before it composes each job "
                    f"(hydra#2946). Choose it for the whole sweep: on the command line (hydra/launcher={chosen or '...'}"
                    f" and any hydra.launcher.* settings) or in an hparams_search file, not in a swept {group} option")
