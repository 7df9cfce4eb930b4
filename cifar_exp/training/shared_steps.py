"""Under JAX, the jobs of one process that run the same program share its traced steps.

Keras traces each new model's train, test and predict steps (`jax.jit` of a method bound to that
model), so every job of a multirun traced its steps again, lowered them and loaded the compiled
program from XLA's cache: on an H200 host ~1.1 s of a 6-s airbench job (issue 24), on this
project's 2-core VM ~0.35 s for airbench's train step. Keras' JAX steps are pure functions of the
model's state (the variables' values are arguments), so a step traced for one model computes
exactly what another model's own trace would, when both were built by the same code from the same
settings: same layers, same constants, same variables in the same order. A job whose program key
(`program_key`) and variables match the previous program's reuses its step functions, and only its
values differ. Keras has no API for this (its steps live on the model); this is the hand-written part.

Jobs differing only in STEP_INPUTS share: each reaches the step as a variable's value or not at all
(the initial weights, the optimizer's rate and schedule numbers, LossSettings' smoothing and L2
factors, self-paced learning's host-side numbers). `CIFAR_EXP_SHARE_STEPS=0` turns sharing off;
`=verify` also lowers both steps at each reuse and raises StepMismatchError unless their programs
are identical (tests/test_shared_steps.py runs its sweeps so).
"""
from __future__ import annotations

import itertools
import json
import logging
import os

log = logging.getLogger(__name__)

SHARE_ENV = "CIFAR_EXP_SHARE_STEPS"  # 1 (default) | 0 | verify
KINDS = ("train", "test", "predict")
# Keys (with everything under them) whose values never become constants of a job's compiled steps:
# initial values and variables' values, or host-side only. Checked by tests/test_shared_steps.py with
# CIFAR_EXP_SHARE_STEPS=verify and by test_backend_setup's persistent-cache test.
STEP_INPUTS = ("seed", "init", "optimizer.lr", "trainer.epochs", "trainer.label_smoothing",
               "trainer.validation_freq", "model.kernel_l2", "model.bias_l2", "optuna_trial",
               "transfer.pretrain.seed")  # the transfer target's: it only changes the weights it loads
# Groups whose numbers (and nulls) are all step inputs: the schedule's (OptimizerVariables) and
# self-paced learning's (the v-step runs on the host; its weights arrive as sample weights).
NUMBERS_ARE_INPUTS = ("lr_schedule", "weighting")

# {kind: _Program}: the steps of the last model that traced its own, for the next job (one model kept).
_programs: dict = {}


class StepMismatchError(RuntimeError):
    """CIFAR_EXP_SHARE_STEPS=verify found a reused step whose program differs from the job's own."""


class _Program:
    def __init__(self, key, signature, function, model, lowered=None):
        self.key, self.signature, self.function, self.model = key, signature, function, model
        self.lowered = lowered  # under verify: the StableHLO of the program traced (and cached) for it


MODES = {"1": "on", "on": "on", "true": "on", "0": "off", "off": "off", "false": "off", "verify": "verify"}


def mode() -> str:
    """CIFAR_EXP_SHARE_STEPS as on | off | verify; ConfigError naming the variable for any other value."""
    from cifar_exp.errors import ConfigError

    value = os.environ.get(SHARE_ENV, "").strip() or "1"  # empty: unset
    if value.lower() not in MODES:
        raise ConfigError(f"{SHARE_ENV} (environment)", value, "1 (share, the default), 0 (each job traces its "
                          "own steps) or verify (share, and check each reused step is this job's program)")
    return MODES[value.lower()]


class Sharing:
    """What one job's steps did: `reused`, the kinds (train, test, predict) it took from an earlier job,
    in the order first called; `verified`, whether their programs were compared (verify)."""

    def __init__(self):
        self.reused: list[str] = []
        self.verified = False


def run_tag(sharing: Sharing | None) -> str | None:
    """The run's `shared_steps` tag: `off`, `own` (this job traced its steps), `reused:train,test` or
    `verified:train,test`; `not shared` where sharing does not apply under JAX (a Keras distribution,
    a layer without a config); None under another backend (nothing to share)."""
    import keras

    if keras.backend.backend() != "jax":
        return None
    if mode() == "off":
        return "off"
    if sharing is None:
        return "not shared"
    if not sharing.reused:
        return "own"
    return f"{'verified' if sharing.verified else 'reused'}:{','.join(sharing.reused)}"


def program_key(cfg, classifier, model) -> str | None:
    """What fixes a job's compiled steps, as a string: the resolved config without overrides.INERT_KEYS
    and STEP_INPUTS (NUMBERS_ARE_INPUTS' numbers too), the precision policy, and the constants of
    what the steps close over: `classifier`'s layers' Keras configs in order (data-derived ones such as
    mean_std's statistics included), the optimizer's config and each variable's regularizer, each
    without what is only a variable's first value (the entries an object lists in config_step_inputs,
    a rate Keras keeps in a variable, an OptimizerVariables schedule). So a number the config list
    wrongly took for an input still separates programs wherever one of those objects holds it.
    `model` is the compiled model fit runs. None where sharing does not apply: not JAX, a Keras
    distribution set, sharing off, or a layer without a config."""
    import keras
    from omegaconf import OmegaConf

    from cifar_exp.overrides import is_inert

    if keras.backend.backend() != "jax" or keras.distribution.distribution() is not None:
        return None
    if mode() == "off":
        log.info("steps: this job traces its own (%s=0)", SHARE_ENV)
        return None
    try:
        layers = _layer_configs(classifier)
    except NotImplementedError:
        return None

    def keep(tree: dict, prefix: str) -> dict:
        kept = {}
        for key, value in tree.items():
            path = f"{prefix}{key}"
            if is_inert(path) or any(path == k or path.startswith(k + ".") for k in STEP_INPUTS):
                continue
            if prefix.rstrip(".") in NUMBERS_ARE_INPUTS and (value is None or _is_number(value)):
                continue
            kept[key] = keep(value, path + ".") if isinstance(value, dict) else value
        return kept

    regularizers = [(v.path, type(v.regularizer).__name__, _constants(v.regularizer))
                    for v in model.trainable_variables if getattr(v, "regularizer", None) is not None]
    return json.dumps({"config": keep(OmegaConf.to_container(cfg, resolve=True), ""),
                       "precision": keras.mixed_precision.global_policy().name, "layers": layers,
                       "optimizer": (type(model.optimizer).__name__, _optimizer_constants(model.optimizer)),
                       "regularizers": regularizers}, sort_keys=True, default=str)


def _constants(owner) -> dict:
    """`owner.get_config()` without the entries it lists in config_step_inputs."""
    config = dict(owner.get_config())
    for entry in getattr(owner, "config_step_inputs", ()):
        config.pop(entry, None)
    return config


def _optimizer_constants(optimizer) -> dict:
    """The optimizer's config without its rate where that is a variable: a number (Keras keeps a float
    rate in a variable) or an OptimizerVariables schedule (its numbers are optimizer variables); any
    other schedule's numbers are constants of the step and stay."""
    inner = getattr(optimizer, "inner_optimizer", None)
    if inner is not None:  # mixed_float16's LossScaleOptimizer: its own numbers, the wrapped one's as here
        config = {k: v for k, v in _constants(optimizer).items() if k not in ("inner_optimizer", "name")}
        return {**config, "inner_optimizer": (type(inner).__name__, _optimizer_constants(inner))}
    config = _constants(optimizer)
    config.pop("name", None)  # Keras numbers it per session (sgd_1, sgd_2); it computes nothing
    rate = config.get("learning_rate")
    if _is_number(rate) or (isinstance(rate, dict) and rate.get("class_name") == "OptimizerVariables"):
        config.pop("learning_rate")
    return config


def _layer_configs(model) -> list:
    """[(class name, config)] of a model's layers in order, a nested model's as its own list."""
    import keras

    configs = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            configs.append((type(layer).__name__, layer.name, _layer_configs(layer)))
            continue
        configs.append((type(layer).__name__, _constants(layer)))
    return configs


def share(model, key: str | None) -> Sharing | None:
    """Let compiled `model` take the previous job's steps where they are its program; call it after
    `model.compile` (which clears them). Each kind decides at its first call, when the model's
    variables (the optimizer's, the metrics') exist: the same key and the same variables (paths,
    shapes, dtypes, order) reuse the earlier function, anything else traces the model's own, which
    the next job may then reuse. key None: the model keeps Keras' own behaviour. Under
    CIFAR_EXP_SHARE_STEPS=verify a reusing step's first call raises StepMismatchError when the two
    programs differ. Returns what the steps did (filled in as they run; run_tag), None for key None."""
    if key is None:
        _evict()  # a job that does not share frees the kept model too
        return None
    if any(program.key != key for program in _programs.values()):
        _evict()  # never reused now: freed with this job's collection, not kept beside its model
    sharing = Sharing()
    for kind in KINDS:
        _wrap(model, kind, key, sharing)
    return sharing


def _wrap(model, kind: str, key: str, sharing: Sharing) -> None:
    attribute = f"{kind}_function"
    make_own = getattr(model, f"make_{kind}_function")

    def make(force=False):
        if getattr(model, attribute) is not None and not force:
            return getattr(model, attribute)
        make_own(force=force)
        own = getattr(model, attribute)

        def first_call(state, iterator):
            signature = _signature(model, state)
            earlier = _programs.get(kind)
            if earlier is not None and earlier.key == key and earlier.signature == signature:
                verified = mode() == "verify"
                if verified:
                    data, iterator = _peek(iterator)
                    _verify(kind, earlier, model, state, data)
                sharing.reused.append(kind)
                sharing.verified = sharing.verified or verified
                log.info("%s step: reusing the one traced for an earlier job of this process (same program%s; "
                         "%s=0 traces each job's own)", kind,
                         ", verified: identical StableHLO" if verified else "", SHARE_ENV)
                setattr(model, attribute, earlier.function)
                return earlier.function(state, iterator)
            lowered = None
            if mode() == "verify":  # what the next job's own step will be compared with
                data, iterator = _peek(iterator)
                lowered = _lowered(kind, model, state, data)
            setattr(model, attribute, own)
            result = own(state, iterator)
            _keep(kind, _Program(key, signature, own, model, lowered))  # once its trace succeeded
            return result

        setattr(model, attribute, first_call)
        return first_call

    model.__dict__[f"make_{kind}_function"] = make


def _peek(iterator):
    """(the first batch, an iterator that still yields it first): verify lowers a step for that batch."""
    data = next(iterator)
    return data, itertools.chain([data], iterator)


def _keep(kind: str, program: _Program) -> None:
    """Keep `program` for the next job; the kept steps all come from one model (a kind traced by a
    later model of the same program replaces the others: at most one earlier model stays alive)."""
    if any(kept.model is not program.model for kept in _programs.values()):
        _evict()
    _programs[kind] = program


def _evict() -> None:
    """Drop the kept steps and their model. The model was frozen by fit.release_job_state (gc.freeze,
    alive when its job ended) and is cyclic garbage now: unfrozen, the running job's own collection
    frees it (with its resident images) instead of the 10th job's full one. This costs one full
    collection whenever the program changes (0.13 s on the 2-core VM), a job that also traces its steps."""
    import gc

    if _programs:
        _programs.clear()
        gc.unfreeze()


def _signature(model, state) -> tuple:
    """The variables a step reads, in Keras' order (paths, shapes, dtypes), and the state's layout."""
    import jax

    def described(variables):
        return tuple((v.path, tuple(v.shape), str(v.dtype)) for v in variables)

    layout = tuple((tuple(a.shape), str(a.dtype)) for a in jax.tree_util.tree_leaves(state))
    return (described(model.trainable_variables), described(model.non_trainable_variables),
            described(model.metrics_variables), layout)


def _lowered(kind: str, model, state, data) -> str:
    """`model`'s step of `kind` lowered for this state and batch: StableHLO text without locations
    (every constant in full)."""
    import jax

    return jax.jit(getattr(model, f"{kind}_step")).lower(state, data).as_text(debug_info=False)


def _verify(kind: str, earlier: _Program, model, state, data) -> None:
    """Raise StepMismatchError unless `model`'s own step lowers to the program the earlier job traced
    (kept when it was traced under verify; else the earlier model's step lowered again now)."""
    theirs = earlier.lowered if earlier.lowered is not None else _lowered(kind, earlier.model, state, data)
    if _lowered(kind, model, state, data) != theirs:
        raise StepMismatchError(f"the {kind} step traced for an earlier job is not this job's program: "
                                f"shared_steps.program_key misses something that shapes it (a config key "
                                f"wrongly in STEP_INPUTS, or a constant no config holds); "
                                f"{SHARE_ENV}=0 runs without sharing")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
