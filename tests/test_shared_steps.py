"""Under JAX, jobs of one process that run the same program share its traced steps (shared_steps.py):
only where the programs are identical (CIFAR_EXP_SHARE_STEPS=verify lowers both at each reuse and
compares them), with the numbers the job's own steps give."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import compose

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent("""
    import json, logging, os
    os.environ["KERAS_BACKEND"] = "jax"
    os.environ["CIFAR_EXP_SHARE_STEPS"] = "verify"
    from conftest import compose
    from cifar_exp.training import fit, shared_steps
    from cifar_exp.tracking.runs import NullTracker

    reused = []
    class Reuses(logging.Handler):
        def emit(self, record):
            if "reusing" in record.getMessage():
                reused.append(record.getMessage().split(" step:")[0])
    logger = logging.getLogger("cifar_exp.training.shared_steps")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(Reuses())

    base = ["model=simple_cnn", "model.width=8", "dataset=synthetic", "dataset.train_size=256",
            "dataset.test_size=64", "trainer.batch_size=64", "trainer.epochs=2", "trainer.verbose=0",
            "trainer.checkpoint=false", "optimizer=nesterov", "lr_schedule=onecycle"]
    # Every STEP_INPUTS key and schedule number at once, then self-paced learning (its own program)
    # and its numbers, then SGD's momentum: a Python float, a constant of the step.
    inputs = ["seed=1", "init=he_normal", "optimizer.lr=0.03", "trainer.epochs=3", "trainer.label_smoothing=0.1",
              "model.kernel_l2=1e-4", "model.bias_l2=1e-5", "lr_schedule.peak_epoch=1", "trainer.validation_freq=2"]
    spl = ["weighting=hard", "weighting.warmup_epochs=1"]
    # airbench: its optimizer keeps rate, decay and step count in variables, the triangle's shape as constants.
    airbench = ["experiment=airbench", "dataset=synthetic", "dataset.train_size=256", "dataset.test_size=64",
                "model.widths=[8,16,16]", "trainer.epochs=2", "trainer.batch_size=64", "trainer.verbose=0",
                "trainer.checkpoint=false"]
    jobs = {"first": base, "inputs": base + inputs, "spl": base + spl,
            "spl_numbers": base + spl + ["seed=2", "weighting.age=3.0", "weighting.mu=1.5", "weighting.age_quantile=null"],
            "momentum": base + spl + ["optimizer.momentum=0.5"],
            "airbench": airbench, "airbench_inputs": airbench + ["seed=1", "optimizer.lr=5.0", "trainer.epochs=3"],
            "airbench_shape": airbench + ["lr_schedule.start=0.5"]}
    out = {}
    for name, overrides in jobs.items():
        reused.clear()
        metrics = fit.run(compose(overrides), NullTracker())
        out[name] = {"reused": sorted(set(reused)), "metrics": metrics}
        if name == "spl_numbers":  # the model whose steps are kept; the momentum job replaces them
            import weakref
            kept = weakref.ref(shared_steps._programs["train"].model)
    out["replaced_model_freed"] = kept() is None
    os.environ["CIFAR_EXP_SHARE_STEPS"] = "0"  # the same job again, tracing its own steps
    reused.clear()
    fit.run(compose(base), NullTracker())
    out["inputs_own"] = {"reused": sorted(set(reused)), "metrics": fit.run(compose(base + inputs), NullTracker())}
    # verify can fail: a key that shapes the step, wrongly listed as an input, is caught at the reuse.
    os.environ["CIFAR_EXP_SHARE_STEPS"] = "verify"
    shared_steps.STEP_INPUTS += ("optimizer.momentum",)
    constants = shared_steps._optimizer_constants  # the optimizer's config would still tell them apart
    shared_steps._optimizer_constants = lambda optimizer: {
        k: v for k, v in constants(optimizer).items() if k != "momentum"}
    fit.run(compose(base + spl + ["optimizer.momentum=0.5"]), NullTracker())  # traced under the wrong list
    try:
        fit.run(compose(base + spl + ["optimizer.momentum=0.7"]), NullTracker())
        out["mismatch"] = None
    except shared_steps.StepMismatchError as error:
        out["mismatch"] = str(error)
    print(json.dumps(out))
""")


@pytest.mark.slow
def test_jobs_differing_only_in_step_inputs_share_identical_steps_and_give_their_own_numbers(tmp_path):
    pytest.importorskip("jax")
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}", TF_CPP_MIN_LOG_LEVEL="2",
               CUDA_VISIBLE_DEVICES="", JAX_COMPILATION_CACHE_DIR=str(tmp_path / "cc"))
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["first"]["reused"] == []
    assert out["inputs"]["reused"] == ["test", "train"]  # and verify found each the job's own program
    assert out["spl"]["reused"] == []  # weighting=hard: another program key
    assert out["spl_numbers"]["reused"] == ["predict", "test", "train"]  # SPL's loss pass: predict
    assert out["momentum"]["reused"] == []
    assert out["airbench"]["reused"] == []
    assert out["airbench_inputs"]["reused"] == ["test", "train"]
    assert out["airbench_shape"]["reused"] == []  # lr_schedule numbers, but constants of AirbenchSGD's step
    assert out["replaced_model_freed"]  # by the momentum job's own collection, though frozen after its job
    assert out["inputs_own"]["reused"] == []
    # Bit for bit what the job's own trace gives (same XLA programs, same inputs).
    assert out["inputs"]["metrics"] == out["inputs_own"]["metrics"]
    assert out["mismatch"] and "optimizer.momentum" not in out["mismatch"] and "train step" in out["mismatch"]


@pytest.fixture
def as_if_jax(monkeypatch):
    """program_key computed as under JAX (it is None under TensorFlow, whose steps hold their model's
    variables: nothing to share); the objects are TensorFlow-backed, their configs the same."""
    keras = pytest.importorskip("keras")
    from cifar_exp.training import shared_steps

    if keras.backend.backend() != "jax":
        assert shared_steps.program_key(compose([]), None, None) is None
        monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    return shared_steps


def _tiny(optimizer, regularizer=None):
    import keras

    inputs = keras.Input((4,), name="x")  # fixed names: fit.run clears Keras' session before each job
    dense = keras.layers.Dense(2, name="dense")
    model = keras.Model(inputs, dense(inputs))
    if regularizer is not None:
        dense.kernel.regularizer = regularizer
    model.compile(optimizer=optimizer, loss="mse")
    return model


def test_the_program_key_leaves_out_step_inputs_and_keeps_what_shapes_the_step(as_if_jax, monkeypatch):
    """The config part drops seeds, rates, SPL numbers and what only tells; it keeps the optimizer's
    momentum, the model's width, the schedule's and the weighting's kinds."""
    shared_steps = as_if_jax
    model = _tiny("sgd")

    def key(overrides):
        return json.loads(shared_steps.program_key(compose(overrides), model, model))["config"]

    base = ["model=simple_cnn", "optimizer=nesterov", "lr_schedule=onecycle", "weighting=hard"]
    assert key(base) == key(base + ["seed=3", "optimizer.lr=0.5", "init=zeros", "weighting.age=9", "weighting.mu=2",
                                    "trainer.epochs=4", "mlflow.tracking_uri=sqlite:///x.db", "+tags.a=b"])
    assert key(base) != key(base + ["optimizer.momentum=0.5"])
    assert key(base) != key(base + ["model.width=8"])
    assert key(base) != key(base + ["lr_schedule=constant"])  # another schedule: another program
    assert key(base) != key(base + ["weighting.losses_from=train_pass"])
    monkeypatch.setenv(shared_steps.SHARE_ENV, "0")
    assert shared_steps.program_key(compose(base), model, model) is None


def test_numbers_the_step_closes_over_separate_programs_whatever_the_config_list_says(as_if_jax):
    """The optimizer's and the regularizers' constants are in the key, their variables' values are not:
    a key wrongly listed as a step input still cannot share a step that bakes its number in (airbench's
    triangle shape, a Keras schedule's rates, transfer's constant L2)."""
    import keras

    from cifar_exp.models.airbench import AirbenchSGD
    from cifar_exp.training.losses import LossSettings, VariableL2
    from cifar_exp.training.schedules import OptimizerVariables

    shared_steps, cfg = as_if_jax, compose(["model=simple_cnn"])

    def key(model):
        return shared_steps.program_key(cfg, model, model)

    def sgd(**kwargs):
        return keras.optimizers.SGD(**{"learning_rate": 0.1, "momentum": 0.9, **kwargs})

    def tracked(schedule, momentum=0.9):
        rate = OptimizerVariables(schedule)
        optimizer = keras.optimizers.SGD(rate, momentum=momentum)
        rate.track(optimizer)  # as build_optimizer does
        return optimizer

    cosine = keras.optimizers.schedules.CosineDecay
    assert key(_tiny(sgd())) == key(_tiny(sgd(learning_rate=0.5)))  # a variable
    assert key(_tiny(sgd())) != key(_tiny(sgd(momentum=0.5)))
    assert key(_tiny(tracked(cosine(0.1, 100)))) == key(_tiny(tracked(cosine(0.4, 300))))
    assert key(_tiny(sgd(learning_rate=cosine(0.1, 100)))) != key(_tiny(sgd(learning_rate=cosine(0.4, 100))))
    airbench = dict(learning_rate=0.1, total_steps=100, decay=0.01, shape=[0.2, 0.23, 0.07])
    assert key(_tiny(AirbenchSGD(**airbench))) == key(_tiny(AirbenchSGD(**{**airbench, "learning_rate": 0.3,
                                                                          "total_steps": 50, "decay": 0.02})))
    assert key(_tiny(AirbenchSGD(**airbench))) != key(_tiny(AirbenchSGD(**{**airbench, "shape": [0.9, 0.5, 0.5]})))
    scaled = keras.mixed_precision.LossScaleOptimizer  # mixed_float16's wrapper: the inner rate is a variable too
    assert key(_tiny(scaled(sgd()))) == key(_tiny(scaled(sgd(learning_rate=0.5))))
    assert key(_tiny(scaled(sgd()))) != key(_tiny(scaled(sgd(momentum=0.5))))
    settings = LossSettings(0.0, 0.1, 0.0)
    assert key(_tiny(sgd(), VariableL2(0.1, settings.kernel_l2))) == key(_tiny(sgd(), VariableL2(0.5, settings.kernel_l2)))
    assert key(_tiny(sgd(), keras.regularizers.L2(0.1))) != key(_tiny(sgd(), keras.regularizers.L2(0.5)))
    assert key(_tiny(sgd(), VariableL2(0.1))) != key(_tiny(sgd(), VariableL2(0.5)))  # no variable: a constant


def test_the_run_tag_says_whether_a_jobs_steps_were_its_own_and_a_misspelt_mode_is_refused(as_if_jax, monkeypatch):
    shared_steps = as_if_jax
    sharing = shared_steps.Sharing()
    assert shared_steps.run_tag(sharing) == "own" and shared_steps.run_tag(None) == "not shared"
    sharing.reused += ["train", "test"]
    assert shared_steps.run_tag(sharing) == "reused:train,test"
    sharing.verified = True
    assert shared_steps.run_tag(sharing) == "verified:train,test"
    monkeypatch.setenv(shared_steps.SHARE_ENV, "0")
    assert shared_steps.run_tag(sharing) == "off"
    monkeypatch.setenv(shared_steps.SHARE_ENV, "verfy")
    with pytest.raises(ValueError, match=r"CIFAR_EXP_SHARE_STEPS \(environment\)='verfy'. Allowed: 1 .* 0 .* or verify"):
        shared_steps.program_key(compose([]), None, None)


@pytest.mark.parametrize("multirun", [[], ["--multirun", "seed=0,1"]], ids=["run", "multirun"])
def test_a_misspelt_mode_fails_the_command_before_any_run_opens(tmp_path, multirun):
    """Once for the process, not once per job (a multirun's jobs would each record a FAILED run)."""
    from conftest import SMOKE, run_cli

    done = run_cli([*SMOKE, *multirun, f"mlflow.tracking_uri=sqlite:///{tmp_path}/m.db"], cwd=tmp_path,
                   env={"CIFAR_EXP_SHARE_STEPS": "yes"})
    assert done.returncode == 2
    assert "Error: Invalid config: CIFAR_EXP_SHARE_STEPS (environment)='yes'. Allowed: 1 (share" in done.stderr
    assert not (tmp_path / "m.db").exists()


def test_a_job_that_does_not_share_frees_the_kept_steps(as_if_jax, monkeypatch):
    shared_steps = as_if_jax
    kept = shared_steps._Program("key", (), None, object())
    monkeypatch.setattr(shared_steps, "_programs", {"train": kept})
    assert shared_steps.share(None, None) is None and shared_steps._programs == {}
