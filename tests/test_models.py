"""Architectures match the seeds layer for layer (parameter counts), and the init group
and L2 penalties reach every conv/dense layer."""
import numpy as np
import pytest

from conftest import compose

SEED_PARAM_COUNTS = {
    "simple_cnn": ((32, 32, 3), 1_250_858),
    "allcnn_c": ((32, 32, 3), 955_114),
    "alexnet": ((32, 32, 3), 25_730_506),
    "lenet": ((28, 28, 1), 60_074),
    "resnet9": ((32, 32, 3), 6_577_600),
}


@pytest.mark.parametrize("name", sorted(SEED_PARAM_COUNTS))
def test_parameter_counts_match_the_seeds(name):
    from cifar_exp.models.registry import build_model

    shape, expected = SEED_PARAM_COUNTS[name]
    model = build_model(compose([f"model={name}"]).model, shape, 10)
    assert model.count_params() == expected
    assert model.output_shape == (None, 10)


def test_resnet50_is_keras_applications_with_the_seed_head():
    from cifar_exp.models.registry import build_model

    model = build_model(compose(["model=resnet50"]).model, (32, 32, 3), 10)
    backbone = model.layers[1]
    assert backbone.name.startswith("resnet50")
    # ResNet50 without top has 23,587,712 parameters; head: 2048*512+512 + 512*10+10.
    assert model.count_params() == 23_587_712 + 2048 * 512 + 512 + 512 * 10 + 10


def _weights(model):
    from cifar_exp.models.initializers import weight_layers

    return list(weight_layers(model))


def test_zeros_and_ones_reach_every_kernel_and_bias_same():
    from cifar_exp.models.registry import build_model
    from cifar_exp.models.initializers import apply_init

    model = build_model(compose(["model=simple_cnn"]).model, (32, 32, 3), 10)
    apply_init(model, compose(["init=ones", "init.bias=same"]).init)
    for layer in _weights(model):
        assert np.all(layer.kernel.numpy() == 1) and np.all(layer.bias.numpy() == 1)
    apply_init(model, compose(["init=zeros"]).init)
    assert all(np.all(layer.kernel.numpy() == 0) for layer in _weights(model))


def test_initializer_parameters_come_from_the_config():
    from cifar_exp.models.registry import build_model
    from cifar_exp.models.initializers import apply_init

    model = build_model(compose(["model=simple_cnn"]).model, (32, 32, 3), 10)
    apply_init(model, compose(["init=random_normal", "init.stddev=0.5"]).init)
    dense = _weights(model)[-2].kernel.numpy()  # 2304 x 512 draws
    assert dense.std() == pytest.approx(0.5, rel=0.02)


def test_torch_uniform_is_bounded_by_one_over_sqrt_fan_in():
    from cifar_exp.models.registry import build_model
    from cifar_exp.models.initializers import apply_init

    model = build_model(compose(["model=resnet9"]).model, (32, 32, 3), 10)
    apply_init(model, compose(["init=torch_uniform"]).init)
    kernel = _weights(model)[1].kernel.numpy()  # 3x3x64x128
    bound = 1 / np.sqrt(3 * 3 * 64)
    assert np.abs(kernel).max() <= bound
    assert np.abs(kernel).max() > 0.95 * bound


def test_l2_penalties_are_added_to_the_loss():
    from cifar_exp.models.registry import build_model
    from cifar_exp.models.initializers import apply_l2

    model = build_model(compose(["model=lenet"]).model, (28, 28, 1), 10)
    assert not model.losses
    apply_l2(model, kernel_l2=1e-3, bias_l2=1e-4)
    expected = sum(1e-3 * np.sum(l.kernel.numpy() ** 2) + 1e-4 * np.sum(l.bias.numpy() ** 2) for l in _weights(model))
    assert float(sum(model.losses)) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("overrides", [["init=orthogonal", "init.bias=same"], ["init=he_normal", "init.bias=orthogonal"]])
def test_a_matrix_only_initializer_for_biases_is_refused_before_training(overrides):
    from cifar_exp.errors import ConfigError
    from cifar_exp.models.initializers import check_init

    with pytest.raises(ConfigError, match=r"init\.bias.*orthogonal, which needs a matrix"):
        check_init(compose(overrides).init)
    check_init(compose(["init=orthogonal"]).init)  # its kernels, with zero biases: fine
