"""Host batches vs images resident on the device (`trainer.data_on_device`): steady epoch time
of the training loop training/fit.py runs (TrainBatches -> model.fit), same model, data and step.

    python benchmarks/data_feed.py [--models simple_cnn resnet9] [--images 4096] [--batch-size 512]

Runs on whatever device Keras' backend finds (KERAS_BACKEND=jax on the borrowed GPU). On a
CPU the "device" is the host, so no gain is expected there: the CPU rows check that the
resident path costs nothing; the figure that matters is a GPU's.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

ONE = """
import json, sys, time
sys.path.insert(0, {tests!r})
import keras, numpy as np
from conftest import compose
from cifar_exp.data.dataset import load_dataset
from cifar_exp.data.resident import build_feed
from cifar_exp.training.fit import TrainBatches, build_classifier
from cifar_exp.training.optim import build_optimizer
model_name, n, batch, on_device = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "true"
shape = "[28,28,1]" if model_name == "lenet" else "[32,32,3]"
cfg = compose([f"model={{model_name}}", "dataset=synthetic", f"dataset.image_shape={{shape}}",
               f"dataset.train_size={{n}}", f"trainer.batch_size={{batch}}", "optimizer=nesterov"])
data = load_dataset(cfg.dataset, 0)
feed = build_feed(on_device, data)
model = feed.training_model(build_classifier(cfg, data))
model.compile(optimizer=build_optimizer(cfg.optimizer, 0.01),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile="auto")
times = []
class T(keras.callbacks.Callback):
    def on_epoch_begin(self, e, logs=None): self.t = time.perf_counter()
    def on_epoch_end(self, e, logs=None): times.append(time.perf_counter() - self.t)
batches = TrainBatches(feed.train, data.y_train, np.ones(n, "float32"), batch, seed=0)
model.fit(batches, epochs=4, verbose=0, callbacks=[T()], shuffle=False)
device = str(keras.distribution.list_devices()[0])
print("RESULT", json.dumps({{"first_epoch_s": times[0], "epoch_s": float(np.median(times[1:])),
                            "images_per_s": n / float(np.median(times[1:])), "device": device}}))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["simple_cnn", "resnet9"])
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2, help="alternated runs of each feed")
    args = parser.parse_args()
    code = ONE.format(tests=str(ROOT / "tests"))
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    rows = []
    print(f"{'model':11} {'feed':9} {'first epoch s':>13} {'epoch s':>8} {'images/s':>9}")
    for model in args.models:
        for _ in range(args.repeats):
            for on_device in (False, True):
                env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
                done = subprocess.run([sys.executable, "-c", code, model, str(args.images), str(args.batch_size),
                                       str(on_device).lower()], cwd=ROOT, env=env, capture_output=True, text=True)
                feed = "resident" if on_device else "host"
                if done.returncode != 0:
                    print(f"{model:11} {feed:9} failed: {done.stderr.strip().splitlines()[-1]}")
                    continue
                row = dict(json.loads(done.stdout.split("RESULT")[-1]), model=model, feed=feed, backend=backend)
                rows.append(row)
                print(f"{model:11} {feed:9} {row['first_epoch_s']:13.1f} {row['epoch_s']:8.3f} "
                      f"{row['images_per_s']:9.0f}")
    out = ROOT / "benchmarks" / "results" / f"data_feed_{backend}.json"
    out.write_text(json.dumps({"figure": "data_feed", "date": str(date.today()), "machine": platform.node(),
                               "cpus": os.cpu_count(), "backend": backend, "images": args.images,
                               "batch_size": args.batch_size, "rows": rows}, indent=1))
    print("wrote", out)


if __name__ == "__main__":
    main()
