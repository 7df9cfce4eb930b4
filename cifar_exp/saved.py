"""Loading a `model.keras` that a run logged (`mlflow.log_model=true`) in a fresh process.

The saved classifier contains this package's layers (augmentation, flip TTA, per-image
standardisation) and, when it was the compiled model, its loss and accuracy metric; Keras can
rebuild them only once they are registered, which importing their modules does.
"""
from __future__ import annotations


def load_model(path: str, compile: bool = False):
    """The classifier (uint8 images -> logits) saved at `path`; `compile=True` restores its loss,
    metrics and optimizer too."""
    import keras

    from cifar_exp import augment, losses, metrics  # noqa: F401 (registers the classes)

    augment.register_layers()
    return keras.saving.load_model(path, compile=compile)
