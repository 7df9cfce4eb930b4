"""Issue 15: which XLA programs a job compiles under JAX, and how long each takes.

For each variant (`experiment=resnet9` plus one of the removed experiment=fast's tricks, or all of them) one
job runs in its own process (empty in-memory jit caches, persistent compile cache off) through
`fit.run`, as `python -m cifar_exp` would, without MLflow. jax.monitoring's duration events give, per
compiled program (jit name), the seconds of tracing, lowering to MLIR and XLA compilation, and a
callback tags each with the phase it happened in: `build` (before model.fit), `train` (fit's
training steps), `eval` (fit's per-epoch evaluation), `final` (after fit: final evaluation,
prediction for the confusion matrix). Programs under 0.5 s of XLA time (eager scalar ops,
metric updates, casts) are summed in one row.

    KERAS_BACKEND=jax python benchmarks/compile_programs.py [--variants resnet9 bf16 tta ...] \
        [-- hydra overrides ...]

Defaults: a small ResNet-9 (model.width=16) on synthetic data with CIFAR-10's shapes and split
remainders scaled down (1,100 training images: two batches of 512 and one of 76, as 50,000 leaves
336; 600 test images: 512 and 88, as 10,000 leaves 272), 1 epoch. Results go to
results/compile_programs_<device>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE = ["experiment=resnet9", "model.width=16", "trainer.epochs=1", "trainer.verbose=0", "trainer.checkpoint=false",
        "trainer.compile_cache=null", "dataset=synthetic", "dataset.train_size=1100", "dataset.test_size=600",
        "dataset.preprocess=mean_std", "dataset.augment=crop_flip"]
# The removed experiment=fast's differences from experiment=resnet9 (issue 15: it compiled 2x as long on
# an H200), one at a time, then together; its epochs and rate change no program (values, not shapes).
VARIANTS = {
    "resnet9": [],
    "bf16": ["trainer.precision=mixed_bfloat16"],
    "tta": ["trainer.tta=true"],
    "smoothing": ["trainer.label_smoothing=0.2"],
    "jit_true": ["trainer.jit_compile=true"],
    "fast": ["trainer.precision=mixed_bfloat16", "trainer.tta=true", "trainer.label_smoothing=0.2",
             "trainer.jit_compile=true", "optimizer.lr=0.6"],
}
SMALL_S = 0.5  # XLA seconds under which a program is counted as small (eager scalar ops, metric updates)


def job(overrides: list[str]) -> dict:
    """Run one job in this process; return its compile events and phases."""
    os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
    import time

    import jax
    from hydra import compose, initialize_config_dir
    import keras

    from cifar_exp.tracking.runs import NullTracker
    from cifar_exp.training import fit
    from cifar_exp.validate import validate

    jax.config.update("jax_compilation_cache_dir", None)
    phase = ["build"]
    events: list[dict] = []
    kinds = {"/jax/core/compile/jaxpr_trace_duration": "trace_s",
             "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
             "/jax/core/compile/backend_compile_duration": "xla_s"}

    # This process's CPU seconds from the start of each XLA compilation (JAX records the start as a
    # scalar): less disturbed than wall seconds when other processes share the cores.
    cpu_started = {}

    def started_compiling(event, value, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            cpu_started[kwargs.get("fun_name")] = time.process_time()

    def listen(event, duration, **kwargs):
        if event in kinds:
            row = {"name": kwargs.get("fun_name", "?"), "kind": kinds[event], "s": duration, "phase": phase[0]}
            if kinds[event] == "xla_s" and row["name"] in cpu_started:
                row["cpu_s"] = time.process_time() - cpu_started.pop(row["name"])
            events.append(row)

    jax.monitoring.register_scalar_listener(started_compiling)
    jax.monitoring.register_event_duration_secs_listener(listen)

    class Phases(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            phase[0] = "train"

        def on_test_begin(self, logs=None):
            phase[0] = "eval"

        def on_test_end(self, logs=None):
            phase[0] = "train"

        def on_train_end(self, logs=None):
            phase[0] = "final"

    with initialize_config_dir(str(ROOT / "cifar_exp" / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    validate(cfg)
    started = time.perf_counter()
    final = fit.run(cfg, NullTracker(), checkpoint_dir=None, extra_callbacks=[Phases()])
    return {"events": events, "job_s": time.perf_counter() - started, "final": final}


def programs(events: list[dict]) -> list[dict]:
    """One row per XLA compilation, in order, with the tracing/lowering that preceded it under the same name."""
    rows, pending = [], defaultdict(dict)
    for e in events:
        key = e["name"].removeprefix("jit(").removesuffix(")")  # tracing names `f`, compilation `jit(f)`
        if e["kind"] != "xla_s":
            pending[key][e["kind"]] = pending[key].get(e["kind"], 0.0) + e["s"]
            continue
        before = pending.pop(key, {})
        rows.append({"name": e["name"], "phase": e["phase"], "xla_s": e["s"], "xla_cpu_s": e.get("cpu_s", 0.0),
                     "trace_s": before.get("trace_s", 0.0), "lower_s": before.get("lower_s", 0.0)})
    return rows


def summarise(rows: list[dict]) -> dict:
    big = [r for r in rows if r["xla_s"] >= SMALL_S]
    small = [r for r in rows if r["xla_s"] < SMALL_S]
    return {"programs": len(rows), "big_programs": len(big),
            "big": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in big],
            "small_programs": len(small), "small_xla_s": round(sum(r["xla_s"] for r in small), 3),
            "xla_s_total": round(sum(r["xla_s"] for r in rows), 3),
            "xla_cpu_s_total": round(sum(r["xla_cpu_s"] for r in rows), 3),
            "trace_lower_s_total": round(sum(r["trace_s"] + r["lower_s"] for r in rows), 3)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", default=None, help="result JSON (default results/compile_programs_<device>.json)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every job (after --)")
    args = parser.parse_intermixed_args()
    if args.child:  # one job: its events as JSON on the last line of stdout
        print(json.dumps(job(args.overrides)))
        return

    results, device = {}, None
    for name in args.variants:
        overrides = [*BASE, *VARIANTS[name], *args.overrides]
        done = subprocess.run([sys.executable, __file__, "--child", "--", *overrides], capture_output=True, text=True,
                              env={**os.environ, "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "jax")})
        if done.returncode != 0:
            sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
        child = json.loads(done.stdout.strip().splitlines()[-1])
        summary = summarise(programs(child["events"]))
        results[name] = {"overrides": VARIANTS[name], "job_s": round(child["job_s"], 2),
                         "final": child["final"], **summary}
        phases = defaultdict(float)
        for r in summary["big"]:
            phases[r["phase"]] += r["xla_s"]
        print(f"{name:10} {summary['big_programs']:2d} programs ({summary['small_programs']} small, "
              f"{summary['small_xla_s']:.2f} s), XLA {summary['xla_s_total']:6.2f} s "
              f"({summary['xla_cpu_s_total']:6.2f} CPU s), trace+lower "
              f"{summary['trace_lower_s_total']:5.2f} s, job {child['job_s']:6.1f} s", flush=True)
        for r in summary["big"]:
            print(f"    {r['phase']:6} {r['name']:24} xla {r['xla_s']:6.2f} s ({r['xla_cpu_s']:6.2f} CPU s)  "
                  f"trace {r['trace_s']:5.2f} s  lower {r['lower_s']:5.2f} s")

    import jax

    device = jax.devices()[0].platform
    info = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "jax": jax.__version__,
            "device": device, "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "base_overrides": BASE, "extra_overrides": args.overrides, "small_program_s": SMALL_S}
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"compile_programs_{device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**info, "variants": results}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
