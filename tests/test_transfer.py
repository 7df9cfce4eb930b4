"""Transfer learning (seed 002: LeNet from MNIST to STL-10): adapters, weight copying, freezing, the
pretraining run reused by hash and linked from the fine-tuned run. Synthetic stand-ins replace MNIST
(28x28x1) and STL-10 (96x96x3), neither of which CI has."""
import numpy as np
import pytest

from conftest import all_runs, compose, run_cli, tracking_uri
from cifar_exp.errors import ConfigError
from cifar_exp.tasks import transfer

STAND_INS = [
    "experiment=transfer_lenet",
    "dataset=synthetic", "dataset.image_shape=[96,96,3]", "dataset.train_size=128", "dataset.test_size=64",
    "dataset@transfer.pretrain.dataset=synthetic", "transfer.pretrain.dataset.image_shape=[28,28,1]",
    "transfer.pretrain.dataset.train_size=256", "transfer.pretrain.dataset.test_size=64",
]


def _built(overrides, checkpoint=None):
    from cifar_exp.data.dataset import load_dataset

    cfg = compose(STAND_INS + list(overrides))
    builder = transfer.CoreBuilder("target", transfer.lenet_input_shape(cfg), checkpoint)
    return cfg, builder, builder(cfg, load_dataset(cfg.dataset, 0))


def _pretrained(cfg, path):
    from cifar_exp.data.dataset import load_dataset

    pre_cfg = transfer.pretrain_config(cfg)
    builder = transfer.CoreBuilder("pretrain", transfer.lenet_input_shape(cfg))
    core = builder(pre_cfg, load_dataset(pre_cfg.dataset, 0))
    transfer.save_lenet(builder.lenet, path)
    return core, builder.lenet


@pytest.mark.parametrize("adapter,pretrain_lenet_input", [
    ("seed_convs", (28, 28, 1)), ("resize_grey", (28, 28, 1)), ("upsample_mnist", (96, 96, 3))])
def test_each_adapter_bridges_the_two_image_shapes(tmp_path, adapter, pretrain_lenet_input):
    cfg, builder, core = _built([f"transfer.adapter={adapter}"])
    assert core.input_shape == (None, 96, 96, 3) and core.output_shape == (None, 10)
    assert builder.lenet.input_shape[1:] == pretrain_lenet_input
    pre_core, pre_lenet = _pretrained(cfg, tmp_path / "w.npz")
    assert pre_core.input_shape == (None, 28, 28, 1) and pre_lenet.input_shape[1:] == pretrain_lenet_input
    images = np.random.default_rng(0).uniform(0, 1, (2, 96, 96, 3)).astype("float32")
    assert core(images).shape == (2, 10)


@pytest.mark.slow  # trains (issue 23: the fast tier in minutes)
@pytest.mark.parametrize("keep_head", [False, True])
def test_pretrained_weights_are_copied_and_the_head_only_on_request(tmp_path, keep_head):
    cfg = compose(STAND_INS + ["transfer.adapter=resize_grey"])
    _, pre_lenet = _pretrained(cfg, tmp_path / "w.npz")
    _, builder, _ = _built(["transfer.adapter=resize_grey", f"transfer.keep_head={str(keep_head).lower()}"],
                           checkpoint=tmp_path / "w.npz")
    source, target = transfer.lenet_weight_layers(pre_lenet), transfer.lenet_weight_layers(builder.lenet)
    for i, (a, b) in enumerate(zip(source, target)):
        same = all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights()))
        assert same == (i < len(source) - 1 or keep_head), f"layer {i}"


@pytest.mark.slow  # trains (issue 23: the fast tier in minutes)
def test_freeze_keeps_the_transferred_layers_fixed_while_the_adapter_and_head_train(tmp_path):
    import keras

    cfg = compose(STAND_INS + ["transfer.adapter=seed_convs"])
    _pretrained(cfg, tmp_path / "w.npz")
    _, builder, core = _built(["transfer.adapter=seed_convs", "transfer.freeze=true"], checkpoint=tmp_path / "w.npz")
    layers = transfer.lenet_weight_layers(builder.lenet)
    frozen, head = layers[:-1], layers[-1]
    adapter = core.get_layer("seed_convs")
    before = {id(layer): [w.copy() for w in layer.get_weights()] for layer in [*frozen, head, adapter]}
    core.compile(optimizer=keras.optimizers.SGD(0.1),
                 loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    core.train_on_batch(rng.uniform(0, 1, (8, 96, 96, 3)).astype("float32"), rng.integers(0, 10, 8))
    for layer in frozen:
        assert not layer.trainable
        assert all(np.array_equal(a, b) for a, b in zip(before[id(layer)], layer.get_weights())), layer.name
    assert any(not np.array_equal(a, b) for a, b in zip(before[id(head)], head.get_weights()))
    trainable = {id(w) for w in core.trainable_weights}
    assert all(id(w) in trainable for w in [*adapter.weights, *head.weights])
    assert not any(id(w) in trainable for layer in frozen for w in layer.weights)
    assert builder.tags["transfer.frozen_layers"].count(",") == len(frozen) - 1


@pytest.mark.slow  # trains (issue 23: the fast tier in minutes)
def test_the_pretraining_hash_names_what_pretraining_depends_on():
    def digest(*overrides):
        return transfer.pretrain_hash(compose(STAND_INS + list(overrides)))

    assert digest("transfer.adapter=seed_convs") == digest("transfer.adapter=resize_grey")  # both: LeNet on 28x28x1
    assert digest("transfer.adapter=seed_convs") != digest("transfer.adapter=upsample_mnist")
    assert digest() != digest("transfer.pretrain.epochs=3")
    assert digest() == digest("transfer.pretrained=false", "transfer.freeze=true", "trainer.epochs=7")
    real = compose(["experiment=transfer_lenet"])  # MNIST: where the copy lives does not matter
    moved = compose(["experiment=transfer_lenet", "transfer.pretrain.dataset.cache_dir=/elsewhere",
                     "transfer.pretrain.dataset.path=/data/mnist.npz"])
    assert transfer.pretrain_hash(real) == transfer.pretrain_hash(moved)


@pytest.mark.parametrize("overrides,key", [
    (["dataset.image_shape=[32,32,3]", "transfer.adapter=seed_convs"], "transfer.adapter"),
    (["transfer.keep_head=true", "transfer.freeze=true", "transfer.adapter=resize_grey"], "transfer.freeze"),
    (["model=alexnet"], "model"),
    (["transfer.adapter=resize"], "transfer.adapter"),
    (["transfer.pretrain.dataset.num_classes=1"], "transfer.pretrain.dataset.num_classes"),
])
def test_settings_that_cannot_work_fail_validation_naming_the_key(overrides, key):
    from cifar_exp.validate import validate

    with pytest.raises(ConfigError) as error:
        validate(compose(STAND_INS + overrides))
    assert error.value.key == key


@pytest.mark.slow
def test_pretrained_and_random_runs_link_to_one_pretraining_run_that_is_reused(tmp_path):
    uri = tracking_uri(tmp_path)
    result = run_cli([*STAND_INS, "transfer.pretrain.epochs=1", "trainer.epochs=1", "trainer.verbose=2",
                      "transfer.adapter=seed_convs,resize_grey", f"mlflow.tracking_uri={uri}",
                      f"hydra.sweep.dir={tmp_path}/sweep"], cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Sweep summary: 4 finished, 0 failed" in result.stdout
    client, runs = all_runs(uri)
    assert all(r.info.status == "FINISHED" for r in runs)
    pretraining = [r for r in runs if r.data.tags.get("transfer.role") == "pretrain"]
    targets = [r for r in runs if r.data.tags.get("transfer.role") == "target"]
    assert len(pretraining) == 1 and len(targets) == 4  # seed_convs and resize_grey share one pretraining
    pre = pretraining[0]
    assert [a.path for a in client.list_artifacts(pre.info.run_id, "checkpoint")] == ["checkpoint/lenet_weights.npz"]
    assert pre.data.params["dataset.image_shape"] == "[28, 28, 1]"
    linked = {r.data.tags["transfer.adapter"]: r for r in targets if r.data.tags["transfer.pretrained"] == "true"}
    assert {r.data.tags["transfer.pretrain_run_id"] for r in linked.values()} == {pre.info.run_id}
    assert linked["seed_convs"].data.tags["transfer.pretrain_reused"] == "false"  # first: pretrained here
    assert linked["resize_grey"].data.tags["transfer.pretrain_reused"] == "true"  # then: the checkpoint reused
    assert "not retrained" in result.stdout + result.stderr
    random = [r for r in targets if r.data.tags["transfer.pretrained"] == "false"]
    assert len(random) == 2 and not any("transfer.pretrain_run_id" in r.data.tags for r in random)
    assert all("test_accuracy" in r.data.metrics for r in targets)


def test_pretraining_takes_neither_the_targets_tta_nor_its_label_smoothing():
    cfg = compose(STAND_INS + ["trainer.tta=true", "trainer.label_smoothing=0.2"])
    pre_cfg = transfer.pretrain_config(cfg)
    assert pre_cfg.trainer.tta is False and pre_cfg.trainer.label_smoothing == 0.0
    assert cfg.trainer.tta is True  # the target keeps them
    assert transfer.pretrain_hash(cfg) == transfer.pretrain_hash(compose(STAND_INS))


@pytest.mark.slow  # trains (issue 23: the fast tier in minutes)
def test_a_diverged_pretraining_fails_its_run_and_the_job_with_the_lr_hint(tmp_path):
    """The divergence rule holds in pretraining too: it trains through train.run."""
    from cifar_exp import job

    uri = tracking_uri(tmp_path)
    cfg = compose(STAND_INS + ["transfer.adapter=resize_grey", "optimizer=sgd", "optimizer.lr=1e6",
                               "transfer.pretrain.epochs=1", "trainer.epochs=1", "trainer.verbose=0",
                               f"mlflow.tracking_uri={uri}"])
    context = job.JobContext(overrides=["optimizer.lr=1e6"], output_dir=str(tmp_path / "sweep" / "0"),
                             sweep_dir=str(tmp_path / "sweep"), job_num=0, multirun=True)
    assert np.isnan(job.run_job(cfg, context))
    _, runs = all_runs(uri)
    by_role = {r.data.tags.get("transfer.role"): r for r in runs}
    assert by_role["pretrain"].info.status == "FAILED" and "TrainingDiverged" in by_role["pretrain"].data.tags["error"]
    assert by_role["target"].info.status == "FAILED"
    assert "optimizer.lr=1000000.0" in by_role["target"].data.tags["failure_hint"]
