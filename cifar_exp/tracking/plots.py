"""Figures logged with every run: learning curves and the confusion matrix (matplotlib, Agg)."""
from __future__ import annotations

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curves(epochs: list[dict[str, float]], eval_split: str):
    """Loss and accuracy per epoch, training vs the evaluated split. `epochs`: each epoch's metrics
    ({name: value}, epoch 1 first); an epoch that did not evaluate (trainer.validation_freq) lacks
    the split's keys, and its points are left out, not shifted."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for key, label in ((metric, "train"), (f"{eval_split}_{metric}", eval_split)):
            points = [(number, values[key]) for number, values in enumerate(epochs, 1) if key in values]
            if points:
                ax.plot(*zip(*points), marker="o", label=label)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def confusion_matrix(counts: np.ndarray, class_names):
    """The figure of a counts matrix (rows: true class, columns: predicted), rows normalised for colour."""
    plt = _pyplot()
    k = len(class_names)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(7, 6))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, counts[i, j], ha="center", va="center", fontsize=7,
                    color="white" if rates[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, label="fraction of the true class")
    fig.tight_layout()
    return fig
