"""Figure 2: training throughput (images/s) and time per epoch of each model on this
machine's CPU, for each Keras backend installed. Synthetic 32x32x3 data (28x28x1 for
lenet); the first epoch (tracing/compiling) is reported apart from the steady one.

    python benchmarks/throughput.py [--images 2048] [--backends tensorflow jax] [--models ...]
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
MODELS = ["simple_cnn", "allcnn_c", "alexnet", "lenet", "resnet9", "resnet50"]

ONE = """
import json, sys, time
sys.path.insert(0, {tests!r})
import keras
from conftest import compose
from cifar_exp.data.dataset import load_dataset
from cifar_exp.training.fit import build_classifier
from cifar_exp.training.optim import build_optimizer
model_name, n = sys.argv[1], int(sys.argv[2])
shape = "[28,28,1]" if model_name == "lenet" else "[32,32,3]"
cfg = compose([f"model={{model_name}}", "dataset=synthetic", f"dataset.image_shape={{shape}}",
               f"dataset.train_size={{n}}", "trainer.batch_size=128", "optimizer=nesterov"])
data = load_dataset(cfg.dataset, 0)
model = build_classifier(cfg, data)
model.compile(build_optimizer(cfg.optimizer, 0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              jit_compile="auto")
times = []
class T(keras.callbacks.Callback):
    def on_epoch_begin(self, e, logs=None): self.t = time.perf_counter()
    def on_epoch_end(self, e, logs=None): times.append(time.perf_counter() - self.t)
model.fit(data.x_train, data.y_train, batch_size=128, epochs=3, verbose=0, callbacks=[T()])
print("RESULT", json.dumps({{"first_epoch_s": times[0], "epoch_s": min(times[1:]), "images_per_s": n / min(times[1:])}}))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax"])
    parser.add_argument("--models", nargs="+", default=MODELS)
    args = parser.parse_args()
    code = ONE.format(tests=str(ROOT / "tests"))
    rows = []
    print(f"{'model':11} {'backend':10} {'first epoch s':>13} {'epoch s':>8} {'images/s':>9}")
    for backend in args.backends:
        for model in args.models:
            env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
            done = subprocess.run([sys.executable, "-c", code, model, str(args.images)], cwd=ROOT, env=env,
                                  capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{model:11} {backend:10} failed: {done.stderr.strip().splitlines()[-1]}")
                continue
            row = dict(json.loads(done.stdout.split("RESULT")[-1]), model=model, backend=backend)
            rows.append(row)
            print(f"{model:11} {backend:10} {row['first_epoch_s']:13.1f} {row['epoch_s']:8.2f} {row['images_per_s']:9.0f}")
    out = ROOT / "benchmarks" / "results" / "throughput_cpu.json"
    out.write_text(json.dumps({"figure": "throughput_cpu", "date": str(date.today()), "machine": platform.node(),
                               "cpus": os.cpu_count(), "images": args.images, "rows": rows}, indent=1))
    print("wrote", out)


if __name__ == "__main__":
    main()
