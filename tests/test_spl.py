"""The self-paced v-step inside a Keras fit: zero weight means zero gradient, v reaches the batches, stats are logged."""
import functools
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from cifar_exp.data.dataset import make_synthetic
from conftest import lazy

keras = lazy("keras")


def build_spl_callback(*args, **kwargs):
    from cifar_exp.spl.callback import build_spl_callback  # imports Keras: at the test's run, not collection

    return build_spl_callback(*args, **kwargs)

CONF = Path(__file__).resolve().parents[1] / "cifar_exp" / "conf" / "weighting"
SHAPE = (16, 16, 3)
CLASSES = tuple(f"class_{k}" for k in range(10))


@functools.cache
def _ShuffledBatches_class():
    # Built at first use, not at import: collecting the tests imports no Keras.
    class ShuffledBatches(keras.utils.PyDataset):
        """training/fit.py's contract: (x[idx], y[idx], sample_weights[idx]) after a per-epoch shuffle.

        Also keeps, per epoch, the (index, weight) pairs it handed out, to check what the
        θ-step was fed; `epoch_marker` tells it which epoch the callbacks have begun.
        """

        def __init__(self, x, y, sample_weights, batch_size, seed=0):
            super().__init__()
            self.x, self.y, self.sample_weights, self.batch_size = x, y, sample_weights, batch_size
            self.rng = np.random.default_rng(seed)
            self.order = self.rng.permutation(len(x))
            self.fed = []
            self.epoch_marker = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: self.fed.append({}))

        def __len__(self):
            return -(-len(self.x) // self.batch_size)

        def __getitem__(self, i):
            idx = self.order[i * self.batch_size:(i + 1) * self.batch_size]
            if self.fed:  # Keras reads a batch or two before the first epoch, for their shapes
                self.fed[-1].update(zip(idx.tolist(), self.sample_weights[idx].tolist()))
            return self.x[idx], self.y[idx], self.sample_weights[idx]

        def on_epoch_end(self):
            self.order = self.rng.permutation(len(self.x))
    return ShuffledBatches


def ShuffledBatches(*args, **kwargs):
    return _ShuffledBatches_class()(*args, **kwargs)


class FakeTracker:
    def __init__(self, folder):
        self.folder, self.figures, self.artifacts = Path(folder), [], {}

    def log_figure(self, figure, artifact_file):
        path = self.folder / artifact_file
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path)
        self.figures.append(artifact_file)

    def log_artifact(self, local_path, artifact_path=None):
        self.artifacts[f"{artifact_path}/{Path(local_path).name}"] = Path(local_path).read_text()


def tiny_model(dropout=0.0):
    inputs = keras.Input(SHAPE, dtype="uint8")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dropout(dropout)(x)
    return keras.Model(inputs, keras.layers.Dense(len(CLASSES))(x))


def weighting(scheme, **changes):
    cfg = OmegaConf.load(CONF / f"{scheme}.yaml")
    for key, value in changes.items():
        cfg[key] = value
    return cfg


def fit_with_spl(cfg, tmp_path, *, n=200, epochs=3, optimizer=None, batch_size=32, model=None):
    keras.utils.set_random_seed(0)
    x, y = make_synthetic(len(CLASSES), SHAPE, n, seed=0)
    sample_weights = np.ones(n, np.float32)
    tracker = FakeTracker(tmp_path)
    callback = build_spl_callback(cfg, x_train=x, y_train=y, sample_weights=sample_weights,
                                  batch_size=batch_size, class_names=CLASSES, tracker=tracker)
    model = model or tiny_model()
    loss, metrics = callback.adapt_compile(keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                                           ["accuracy"])
    model.compile(optimizer or keras.optimizers.Adam(3e-3), loss=loss, metrics=metrics)
    batches = ShuffledBatches(x, callback.targets, sample_weights, batch_size)
    history = model.fit(batches, epochs=epochs, verbose=0, callbacks=[callback, batches.epoch_marker])
    return callback, history.history, batches, tracker, model


def test_a_zero_weight_sample_contributes_exactly_zero_gradient():
    keras.utils.set_random_seed(1)
    x, y = make_synthetic(len(CLASSES), SHAPE, 3, seed=1)
    reference = tiny_model()
    start = reference.get_weights()

    def one_step(images, labels, weights):
        model = tiny_model()
        model.set_weights(start)
        model.compile(keras.optimizers.SGD(0.5), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.train_on_batch(images, labels, sample_weight=np.asarray(weights, np.float32))
        return model.get_weights()

    # Sample 0 with weight 1 next to a weight-0 sample: whichever sample that is, the
    # update is bitwise the same, so the weight-0 sample adds exactly nothing.
    with_second = one_step(x[[0, 1]], y[[0, 1]], [1, 0])
    with_third = one_step(x[[0, 2]], y[[0, 2]], [1, 0])
    counted = one_step(x[[0, 1]], y[[0, 1]], [1, 1])
    for a, b in zip(with_second, with_third):
        np.testing.assert_array_equal(a, b)
    assert any(np.any(a != c) for a, c in zip(with_second, counted))
    assert any(np.any(a != s) for a, s in zip(with_second, start))


def test_none_builds_no_callback():
    cfg = OmegaConf.create({"name": "none"})
    assert build_spl_callback(cfg, x_train=np.zeros((4, *SHAPE), np.uint8), y_train=np.zeros(4),
                              sample_weights=np.ones(4, np.float32), batch_size=2, class_names=CLASSES,
                              tracker=None) is None


def test_sample_weights_must_be_the_float32_array_the_batches_read():
    with pytest.raises(ValueError, match="float32"):
        build_spl_callback(weighting("hard"), x_train=np.zeros((4, *SHAPE), np.uint8), y_train=np.zeros(4),
                           sample_weights=np.ones(4), batch_size=2, class_names=CLASSES, tracker=None)


def test_callback_rewrites_sample_weights_in_place_and_the_batches_carry_them(tmp_path):
    cfg = weighting("hard", warmup_epochs=1, age_quantile=0.5, mu=1.01)
    callback, history, batches, _, _ = fit_with_spl(cfg, tmp_path, epochs=3)
    assert callback.sample_weights is batches.sample_weights
    assert set(np.unique(callback.sample_weights)) == {0.0, 1.0}
    # Epoch 1 is warm-up (all ones); from epoch 2 on the θ-step is fed the v-step's weights.
    assert len(batches.fed) == 3 and set(batches.fed[0].values()) == {1.0}
    fed_last = np.array([batches.fed[2][i] for i in range(len(callback.sample_weights))], np.float32)
    np.testing.assert_array_equal(fed_last, callback.sample_weights)
    assert history["spl_active_fraction"][1] == pytest.approx(0.5)


@pytest.mark.slow  # trains (issue 23: the fast tier in minutes)
def test_epoch_stats_histograms_and_final_weights_are_logged(tmp_path):
    cfg = weighting("linear", warmup_epochs=1)
    callback, history, _, tracker, _ = fit_with_spl(cfg, tmp_path, epochs=4)
    for key in ("spl_active_fraction", "spl_mean_v", "spl_lambda_raised"):
        assert len(history[key]) == 4
    assert len(history["spl_lambda"]) == 3  # not during the warm-up epoch
    assert history["spl_active_fraction"][0] == 1.0 and history["spl_mean_v"][0] == 1.0
    assert history["spl_mean_v"][1] < 1.0
    y = callback.y_train
    final_per_class = [history[f"spl_active_fraction_class_{name}"][-1] for name in CLASSES]
    expected = [float(np.mean(callback.sample_weights[y == k] > 0)) for k in range(len(CLASSES))]
    assert final_per_class == pytest.approx(expected)
    # Histograms at the first weighted epoch, midway and the last; they render to PNG.
    assert tracker.figures == ["spl/v_histogram_epoch_002.png", "spl/v_histogram_epoch_003.png",
                               "spl/v_histogram_epoch_004.png"]
    assert (tmp_path / "spl/v_histogram_epoch_004.png").read_bytes()[:4] == b"\x89PNG"
    table = np.loadtxt(tracker.artifacts["spl/final_v.csv"].splitlines(), delimiter=",", skiprows=1)
    np.testing.assert_array_equal(table[:, 0], np.arange(len(y)))
    np.testing.assert_allclose(table[:, 3], callback.sample_weights, rtol=1e-5)


def test_eval_pass_losses_are_each_samples_cross_entropy(tmp_path):
    callback, _, _, _, model = fit_with_spl(weighting("hard"), tmp_path, epochs=1)
    logits = model.predict(callback.x_train, verbose=0).astype(np.float64)
    log_softmax = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) \
        - logits.max(1, keepdims=True)
    expected = -log_softmax[np.arange(len(logits)), callback.y_train]
    np.testing.assert_allclose(callback.eval_losses(), expected, rtol=1e-4, atol=1e-5)


def test_train_pass_records_every_samples_training_loss_by_index(tmp_path):
    # A learning rate of 0 and no dropout: the losses seen in training must equal the
    # losses of an inference pass, sample by sample.
    cfg = weighting("hard", losses_from="train_pass", warmup_epochs=1)
    callback, history, _, _, _ = fit_with_spl(cfg, tmp_path, epochs=2, optimizer=keras.optimizers.SGD(0.0))
    np.testing.assert_allclose(callback.losses, callback.eval_losses(), rtol=1e-5, atol=1e-6)
    assert history["unweighted_loss"][0] == pytest.approx(callback.losses.mean(), rel=1e-4)
    assert 0.0 <= history["accuracy"][-1] <= 1.0


def test_train_pass_without_adapted_compile_fails_loudly(tmp_path):
    cfg = weighting("hard", losses_from="train_pass")
    x, y = make_synthetic(len(CLASSES), SHAPE, 20, seed=0)
    weights = np.ones(20, np.float32)
    callback = build_spl_callback(cfg, x_train=x, y_train=y, sample_weights=weights, batch_size=10,
                                  class_names=CLASSES, tracker=FakeTracker(tmp_path))
    model = tiny_model()
    model.compile("adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(RuntimeError, match="adapt_compile"):
        model.fit(ShuffledBatches(x, y, weights, 10), epochs=1, verbose=0, callbacks=[callback])


@pytest.mark.slow  # trains (issue 23: the fast tier in minutes)
@pytest.mark.parametrize("losses_from", ["eval_pass", "train_pass"])
def test_seed_000_mixture_parameters_learn_with_mini_batches_and_the_guard(tmp_path, losses_from, caplog):
    # Seed 000: mixture, λ₀ = 1, μ = 1.3, γ = 0.5, Adadelta. λ₀ admits no sample at the
    # start (every loss ≈ ln 10 > λ² = 1); the guard raises λ and the model learns.
    cfg = weighting("mixture", age=1.0, age_quantile=None, warmup_epochs=0, mu=1.3, gamma=0.5,
                    losses_from=losses_from)
    callback, history, _, _, model = fit_with_spl(cfg, tmp_path, n=500, epochs=10,
                                                  optimizer=keras.optimizers.Adadelta(1.0))
    assert history["spl_lambda_raised"][0] == 1.0
    assert "raised lambda" in caplog.text
    x_test, y_test = make_synthetic(len(CLASSES), SHAPE, 300, seed=1)
    accuracy = np.mean(np.argmax(model.predict(x_test, verbose=0), axis=1) == y_test)
    assert accuracy > 0.5  # chance is 0.1


@pytest.mark.slow  # trains (issue 23: the fast tier in minutes)
def test_train_pass_never_runs_an_inference_pass_once_an_epoch_is_recorded(tmp_path, monkeypatch):
    # Its point is to cost nothing beyond training; that holds across fit() calls (resumed jobs) too.
    def no_inference_pass(self):
        raise AssertionError("train_pass ran an inference pass")

    monkeypatch.setattr("cifar_exp.spl.callback.SelfPacedLearning.eval_losses", no_inference_pass)
    cfg = weighting("linear", losses_from="train_pass", warmup_epochs=1)
    callback, history, batches, _, model = fit_with_spl(cfg, tmp_path, epochs=3)
    assert len(history["spl_lambda"]) == 2
    model.fit(batches, initial_epoch=3, epochs=4, verbose=0, callbacks=[callback])
    assert callback.step.lam is not None


MIRRORED_SCRIPT = """
import numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, test_spl
from omegaconf import OmegaConf
from cifar_exp.data.dataset import make_synthetic
from cifar_exp.spl.callback import build_spl_callback

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
x, y = make_synthetic(10, test_spl.SHAPE, 96, seed=0)
for losses_from in ("eval_pass", "train_pass"):
    weights = np.ones(len(x), np.float32)
    cfg = test_spl.weighting("hard", losses_from=losses_from, warmup_epochs=1)
    callback = build_spl_callback(cfg, x_train=x, y_train=y, sample_weights=weights, batch_size=16,
                                  class_names=test_spl.CLASSES, tracker=test_spl.FakeTracker("."))
    with strategy.scope():
        model = test_spl.tiny_model()
        loss, metrics = callback.adapt_compile(keras.losses.SparseCategoricalCrossentropy(from_logits=True), ["accuracy"])
        model.compile(keras.optimizers.SGD(0.0), loss=loss, metrics=metrics)
    model.fit(test_spl.ShuffledBatches(x, callback.targets, weights, 16), epochs=2, verbose=0, callbacks=[callback])
    np.testing.assert_allclose(callback.losses, callback.eval_losses(), rtol=1e-5, atol=1e-6)
    assert 0 < callback.active_fraction() < 1
print("replicas", strategy.num_replicas_in_sync, "ok")
"""


@pytest.mark.slow
def test_v_step_under_a_two_replica_mirrored_strategy(tmp_path):
    # Two logical CPUs stand in for two GPUs: per-sample losses (an inference pass, or summed
    # over the replicas' recorder tables) must match those of a single-device pass.
    import os
    import subprocess
    import sys

    if keras.backend.backend() != "tensorflow":
        pytest.skip("tf.distribute is the TensorFlow backend's")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), str(Path(__file__).parents[1])]))
    done = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "replicas 2 ok" in done.stdout
