"""Issue 24.2, what a CPU can show: does an airbench job re-trace or re-compile anything after its first
epoch, and how much of an epoch is host work around the step?

One small `experiment=airbench` job (model.widths=[16,32,32], synthetic CIFAR-shaped images) runs in this
process through `fit.run` without MLflow, under cProfile. jax.monitoring's duration events count the
programs compiled in each epoch (`/jax/core/compile/backend_compile_duration`) and the traces
(`/jax/core/compile/tracing_duration`); the profile gives the seconds inside the compiled step
(jaxlib's execution) against the whole of `model.fit`, and the top host functions by own time.

    KERAS_BACKEND=jax python benchmarks/airbench_step_cpu.py [--epochs 3] [-- overrides]
"""
from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import sys
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BASE = ["experiment=airbench", "model.widths=[16,32,32]", "dataset=synthetic", "dataset.train_size=4096",
        "dataset.test_size=1024", "trainer.batch_size=512", "trainer.verbose=0", "trainer.checkpoint=false",
        "trainer.compile_cache=null", "mlflow.log_model=false"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    import jax
    import jax.monitoring
    import keras
    from hydra import compose, initialize_config_dir

    from cifar_exp.tracking.runs import NullTracker
    from cifar_exp.training import fit

    epoch = {"now": "build"}
    events = defaultdict(lambda: defaultdict(float))
    counts = defaultdict(lambda: defaultdict(int))

    def listen(name, seconds, **kwargs):
        if name in ("/jax/core/compile/backend_compile_duration", "/jax/core/compile/tracing_duration"):
            events[epoch["now"]][name.rsplit("/", 1)[1]] += seconds
            counts[epoch["now"]][name.rsplit("/", 1)[1]] += 1

    jax.monitoring.register_event_duration_secs_listener(listen)

    class Epochs(keras.callbacks.Callback):
        def on_epoch_begin(self, e, logs=None):
            epoch["now"] = f"epoch {e + 1}"
            self.started = time.perf_counter()

        def on_epoch_end(self, e, logs=None):
            events[epoch["now"]]["epoch_s"] = time.perf_counter() - self.started

        def on_train_end(self, logs=None):
            epoch["now"] = "after fit"

    with initialize_config_dir(str(ROOT / "cifar_exp" / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[*BASE, f"trainer.epochs={args.epochs}", *args.overrides])
    profile = cProfile.Profile()
    started = time.perf_counter()
    profile.enable()
    fit.run(cfg, NullTracker(), extra_callbacks=[Epochs()])
    profile.disable()
    wall = time.perf_counter() - started
    stats = pstats.Stats(profile)
    # Own time of every function, the step's execution (jaxlib's compiled call) among them.
    own = sorted(((v[2], f"{Path(k[0]).name}:{k[2]}") for k, v in stats.stats.items()), reverse=True)
    step_s = sum(t for t, name in own if "ExecuteSharded" in name or "execute" in name.lower() and "pjit" in name.lower())
    print(f"backend {keras.backend.backend()}, jax {jax.__version__}, keras {keras.__version__}; wall {wall:.1f} s")
    print("phase       traces  trace_s  compiles  compile_s  epoch_s")
    for phase, values in events.items():
        print(f"{phase:<11} {counts[phase]['tracing_duration']:>6} {values['tracing_duration']:>8.2f} "
              f"{counts[phase]['backend_compile_duration']:>9} {values['backend_compile_duration']:>10.2f} "
              f"{values.get('epoch_s', float('nan')):>8.2f}")
    print("top host functions by own time (s):")
    for seconds, name in own[:15]:
        print(f"  {seconds:7.2f}  {name}")
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.machine(),
              "cpus": os.cpu_count(), "backend": keras.backend.backend(),
              "versions": {"jax": jax.__version__, "keras": keras.__version__}, "overrides": BASE + args.overrides,
              "epochs": args.epochs, "wall_s": wall, "per_phase": {p: dict(v) for p, v in events.items()},
              "counts": {p: dict(v) for p, v in counts.items()}, "step_s_estimate": step_s,
              "top_own_s": [[round(t, 3), n] for t, n in own[:25]]}
    (ROOT / "benchmarks" / "results" / "airbench_step_cpu.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
