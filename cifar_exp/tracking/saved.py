"""Loading a `model.keras` that a run logged (`mlflow.log_model=true`) in a fresh process.

The saved classifier contains this package's layers (augmentation, flip TTA, per-image
standardisation, transfer's resize, airbench's whitening and scaled biases) and, when it was
the compiled model, its loss, metrics and optimizer with its learning-rate schedule; Keras can rebuild them only once they are registered
(`keras.saving.register_keras_serializable(package="cifar_exp")`), which `register_all` does.
"""
from __future__ import annotations

PACKAGE = "cifar_exp"  # the package name every registered class is filed under ("cifar_exp>Name")


def register_all() -> dict:
    """Define (and so register) every Keras class this package can put in a saved model: layers,
    losses, metrics, schedules. Returns Keras' registry entries of this package, name -> class."""
    import keras

    from cifar_exp.data import augment  # noqa: F401 (registers)
    from cifar_exp.models import airbench  # noqa: F401
    from cifar_exp.spl import callback as spl
    from cifar_exp.tasks import transfer
    from cifar_exp.training import losses, metrics, schedules

    augment.register_layers()
    transfer.register_layers()
    return {name: cls for name, cls in keras.saving.get_custom_objects().items()
            if name.startswith(f"{PACKAGE}>")}


def load_model(path: str, compile: bool = False):
    """The classifier (uint8 images -> logits) saved at `path`; `compile=True` restores its loss,
    metrics and optimizer too. Raises what keras.saving.load_model raises (ValueError, TypeError)."""
    import keras

    register_all()
    return keras.saving.load_model(path, compile=compile)
