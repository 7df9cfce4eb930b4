"""trainer.data_on_device: the images resident on the device, the model fed indices."""
import numpy as np
import pytest

from conftest import SMOKE, compose


class _Capture:
    """Callbacks that keep the final weights of the classifier and the checkpoint's size."""

    def __new__(cls, into: dict, checkpoint_dir=None):
        import keras

        class Keep(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if checkpoint_dir:
                    from pathlib import Path

                    into["checkpoint_bytes"] = sum(p.stat().st_size for p in Path(checkpoint_dir).glob("*.h5"))

            def on_train_end(self, logs=None):
                into["model"] = self.model
                into["weights"] = [w for w in self.model.get_weights() if w.ndim != 4 or w.shape[0] < 512]

        return Keep()


def _train(overrides, tracker, checkpoint_dir=None):
    from cifar_exp.training import fit as train

    captured = {}
    metrics = train.run(compose([*SMOKE, "trainer.deterministic=true", *overrides]), tracker,
                        checkpoint_dir=checkpoint_dir, extra_callbacks=[_Capture(captured, checkpoint_dir)])
    return metrics, captured, [m for _, m in tracker.metrics if "loss" in m]  # per epoch, not the final entry


@pytest.mark.slow  # trains (issue 23: the fast tier in minutes)
def test_training_from_resident_images_equals_training_from_host_batches(fake_tracker, tmp_path):
    host, host_captured, host_epochs = _train(["trainer.data_on_device=false"], fake_tracker)
    fake_tracker.metrics.clear()
    device, captured, device_epochs = _train(["trainer.data_on_device=true"], fake_tracker, str(tmp_path / "ckpt"))

    assert captured["model"].inputs[0].dtype == "int32"  # it really was fed indices
    assert host == device
    assert [m["loss"] for m in host_epochs] == [m["loss"] for m in device_epochs]
    for a, b in zip(host_captured["weights"], captured["weights"]):
        np.testing.assert_array_equal(a, b)
    # The images are data, not state: the checkpoint holds the model (LeNet ~60k parameters,
    # with Adam's two moments ~0.7 MB), not the 640 resident images of 28x28 as float16.
    assert captured["checkpoint_bytes"] < 2_000_000


@pytest.mark.slow  # trains (issue 23: the fast tier in minutes)
def test_self_paced_learning_and_a_saved_model_work_from_resident_images(fake_tracker, tmp_path):
    metrics, captured, epochs = _train(["trainer.data_on_device=true", "weighting=linear",
                                        "weighting.warmup_epochs=0", "trainer.epochs=2"], fake_tracker)
    assert 0 <= metrics["test_accuracy"] <= 1
    assert all("spl_active_fraction" in m for m in epochs)
    assert 0 < epochs[-1]["spl_active_fraction"] <= 1


@pytest.mark.slow  # trains (issue 23: the fast tier in minutes)
def test_the_logged_model_takes_images_not_indices(tmp_path, fake_tracker):
    import keras

    saved = []
    fake_tracker.log_artifact = lambda path, artifact_path=None: saved.append(keras.saving.load_model(path))
    _train(["trainer.data_on_device=true", "trainer.epochs=1", "mlflow.log_model=true"], fake_tracker)
    (model,) = saved
    assert model.inputs[0].dtype == "uint8" and tuple(model.inputs[0].shape[1:]) == (28, 28, 1)


@pytest.mark.parametrize("value", ["maybe", "1.5"])
def test_a_bad_data_on_device_setting_is_rejected_by_name(value):
    from cifar_exp.errors import ConfigError
    from cifar_exp.validate import validate

    with pytest.raises(ConfigError, match="trainer.data_on_device"):
        validate(compose([*SMOKE, f"trainer.data_on_device={value}"]))


def test_auto_keeps_the_images_on_the_host_without_an_accelerator():
    from cifar_exp.data.dataset import load_dataset
    from cifar_exp.data.resident import build_feed

    data = load_dataset(compose(SMOKE).dataset, 0)
    assert build_feed("auto", data).on_device is False
    feed = build_feed(True, data)
    assert feed.on_device and list(feed.train[:3]) == [0, 1, 2] and feed.test[0] == len(data.y_train)
    np.testing.assert_array_equal(feed.images[feed.test], data.x_test)
