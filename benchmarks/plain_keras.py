"""The baseline of benchmarks/overhead.py: what seed 002 did by hand, done efficiently. The
same arrays (read through cifar_exp's cache) as float32 in [0, 1], seed 000's CNN as a plain
Sequential, model.fit with the test split evaluated each epoch (the work cifar_exp does too);
the final test accuracy is the last epoch's, as cifar_exp reports it. (Seed 002 divided by
255.0, which makes float64 arrays, and evaluated once more at the end: both slower.)"""
import sys

import keras
import numpy as np
from omegaconf import OmegaConf

from cifar_exp.data.dataset import load_dataset

path, limit, epochs, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
cfg = OmegaConf.load("cifar_exp/conf/dataset/cifar10.yaml")
cfg.path, cfg.limit_train = path, limit
data = load_dataset(cfg, seed=0)
x_train, x_test = (data.x_train / np.float32(255)), (data.x_test / np.float32(255))

keras.utils.set_random_seed(0)
layers = keras.layers
model = keras.Sequential([
    keras.Input((32, 32, 3)),
    layers.Conv2D(32, 3, padding="same", activation="relu"), layers.Conv2D(32, 3, activation="relu"),
    layers.MaxPooling2D(2), layers.Dropout(0.25),
    layers.Conv2D(64, 3, padding="same", activation="relu"), layers.Conv2D(64, 3, activation="relu"),
    layers.MaxPooling2D(2), layers.Dropout(0.25),
    layers.Flatten(), layers.Dense(512, activation="relu"), layers.Dropout(0.5), layers.Dense(10),
])
model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
history = model.fit(x_train, data.y_train, epochs=epochs, batch_size=batch, validation_data=(x_test, data.y_test),
                    verbose=0)
print("test accuracy", history.history["val_accuracy"][-1])
