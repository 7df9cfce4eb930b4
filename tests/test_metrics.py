"""The accuracy metric that keeps the confusion matrix the final figure is drawn from."""
import numpy as np
import pytest

from conftest import SMOKE, compose


def test_confusion_accuracy_equals_keras_accuracy_and_counts_each_pair():
    import keras

    from cifar_exp.training.metrics import ConfusionAccuracy

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=50)
    logits = rng.normal(size=(50, 4)).astype("float32")
    ours, theirs = ConfusionAccuracy(4), keras.metrics.SparseCategoricalAccuracy()
    for part in (slice(0, 20), slice(20, 50)):
        ours.update_state(labels[part], logits[part])
        theirs.update_state(labels[part], logits[part])
    assert float(ours.result()) == pytest.approx(float(theirs.result()), abs=1e-7)
    expected = np.zeros((4, 4), int)
    np.add.at(expected, (labels, logits.argmax(1)), 1)
    np.testing.assert_array_equal(ours.matrix(), expected)
    ours.reset_state()
    assert ours.matrix().sum() == 0 and float(ours.result()) == 0.0


@pytest.mark.slow  # trains (issue 23: the fast tier in minutes)
@pytest.mark.parametrize("extra", [[], ["dataset.val_fraction=0.25"]], ids=["test_evaluated_each_epoch", "val_split"])
def test_the_logged_confusion_matrix_is_the_final_models_on_the_test_split(fake_tracker, extra):
    import keras

    from cifar_exp.data.dataset import load_dataset
    from cifar_exp.training import fit as train

    texts, kept = {}, {}
    fake_tracker.log_text = lambda text, name: texts.__setitem__(name, text)

    class Keep(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            kept["model"] = self.model

    cfg = compose([*SMOKE, *extra])
    metrics = train.run(cfg, fake_tracker, extra_callbacks=[Keep()])
    rows = [line.split(",")[1:] for line in texts["confusion_matrix.csv"].splitlines()[1:]]
    logged = np.array(rows, dtype=int)

    data = load_dataset(cfg.dataset, cfg.seed)
    predicted = kept["model"].predict(data.x_test, verbose=0).argmax(1)
    expected = np.zeros_like(logged)
    np.add.at(expected, (data.y_test, predicted), 1)
    np.testing.assert_array_equal(logged, expected)
    assert np.trace(logged) / logged.sum() == pytest.approx(metrics["test_accuracy"], abs=1e-6)


@pytest.mark.slow  # trains (issue 23: the fast tier in minutes)
def test_a_logged_model_loads_in_a_fresh_process(tmp_path, fake_tracker):
    """The saved classifier holds this package's layers, loss and metric; saved.load_model
    registers them before Keras rebuilds it."""
    import subprocess
    import sys

    from cifar_exp.training import fit as train

    paths = []

    def keep(path, artifact_path=None):
        import shutil

        paths.append(shutil.copy(path, tmp_path / "model.keras"))

    fake_tracker.log_artifact = keep
    cfg = compose([*SMOKE, "trainer.epochs=1", "trainer.tta=true", "trainer.label_smoothing=0.1",
                   "dataset.augment=crop_flip", "dataset.preprocess=per_image_standardization",
                   "mlflow.log_model=true"])
    train.run(cfg, fake_tracker)
    script = ("import numpy as np; from cifar_exp.tracking.saved import load_model; "
              f"m = load_model({str(paths[0])!r}, compile=True); "
              "print('SHAPE', m.predict(np.zeros((3, 28, 28, 1), 'uint8'), verbose=0).shape)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "SHAPE (3, 10)" in done.stdout
