"""Kept so that `from cifar_exp.saved import load_model` (the README's way to reload a logged model)
goes on working; the code lives in cifar_exp/tracking/saved.py."""
from cifar_exp.tracking.saved import PACKAGE, load_model, register_all  # noqa: F401
