#!/usr/bin/env bash
# One GPU session's measurements for issue 24, prepared to run once on a lent device (parts' timeouts
# 390 s in all; ~280 s expected; start-up aside). Each part has its own timeout and writes its summary
# to $OUT as soon as it ends, so a part cut short keeps what the others measured. From the repository
# root, on the device:
#
#   source .device/env.sh && bash benchmarks/gpu_session.sh .device/cifar10-jpeg.tar.gz
#
# (see /work/shared/device/README.md: env.sh sets KERAS_BACKEND=jax, PYTHONPATH and the wheels).
# Parts (round 3): 1. experiment=airbench, 5 seeds in one process; 2. the same with
# CIFAR_EXP_SHARE_STEPS=0, 3 seeds (each job traces its own steps: what sharing them saves); 3. a 4-job
# lr x seed sweep of the default ResNet-9 recipe in one process (a later job's first epoch against a steady
# one); 4. experiment=resnet9, one seed; 5. a cProfile of a 2-seed airbench multirun. Rounds 1 and 2 of
# 2026-12-04 (results/gpu_2026-12-04*/) also ran airbench in float32 and resnet9 in bfloat16.
# Every summary holds per job: test accuracy, process start -> run closed (MLflow's start/end), each
# epoch's seconds (epoch_time: the first includes compilation; epoch_train_time: without the evaluation),
# its time/* phases and memory/rss_mb (benchmarks/job_phases.py prints them as a table from the parts'
# stores in $WORK), the GPU and versions, the date. At most 8 files come back: 6 are written.
#
# A CPU trial with tiny settings (meaningless numbers; it checks that every part runs and writes its
# summary; 2026-12-04: see benchmarks/README.md):
#   TRIAL=1 OUT=/tmp/gpu_trial bash benchmarks/gpu_session.sh /work/shared/data/cifar10-jpeg.tar.gz
set -u
DATA=${1:?usage: gpu_session.sh /path/to/cifar10}
OUT=${OUT:-/tmp/gpu_session}
WORK=${WORK:-/tmp/gpu_session_work}
mkdir -p "$OUT" "$WORK"
PY=${PYTHON:-python}
LOG="$OUT/session.log"
# Tiny overrides for a CPU trial, per part; empty on the GPU.
if [ "${TRIAL:-0}" = 1 ]; then
  SMALL="dataset.limit_train=512 dataset.limit_test=256 trainer.epochs=1"
  AIRBENCH_X="$SMALL model.widths=[8,16,16] trainer.batch_size=256"
  RESNET9_X="$SMALL model.width=8 trainer.batch_size=256 lr_schedule.peak_epoch=null"
  SEEDS_AIR=0,1 SEEDS_UNSHARED=0,1 SEEDS_R9=0 SEEDS_PROFILE=0,1 LIMIT=4
else
  AIRBENCH_X="" RESNET9_X=""
  SEEDS_AIR=0,1,2,3,4 SEEDS_UNSHARED=0,1,2 SEEDS_R9=0 SEEDS_PROFILE=5,6 LIMIT=1
fi
scaled() { echo $(( $1 * LIMIT )); }  # timeouts: the GPU's seconds, or x LIMIT for the CPU trial

say() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$LOG"; }
summarise() {  # summarise NAME STORE WALL_SECONDS PROCESS_START: MLflow runs of STORE -> $OUT/NAME.json
  "$PY" - "$1" "$2" "$3" "$OUT" "$4" <<'EOF'
import json, sys, datetime, platform
from mlflow.tracking import MlflowClient
name, store, wall, out, t0 = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4], float(sys.argv[5])
client = MlflowClient(f"sqlite:///{store}")
rows = []
experiments = [e.experiment_id for e in client.search_experiments()]
for run in client.search_runs(experiments, max_results=1000) if experiments else []:
    history = lambda key: [round(m.value, 4) for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]
    rows.append({"run_name": run.info.run_name, "status": run.info.status,
                 "test_accuracy": run.data.metrics.get("test_accuracy"),
                 "run_s": None if run.info.end_time is None else (run.info.end_time - run.info.start_time) / 1000,
                 # what a user waits for: the sweep's process start -> this run closed (MLflow's end time)
                 "process_start_to_closed_s": None if run.info.end_time is None else run.info.end_time / 1000 - t0,
                 "start": run.info.start_time / 1000, "epoch_time": history("epoch_time"),
                 "epoch_train_time": history("epoch_train_time"),
                 "test_accuracy_per_epoch": history("test_accuracy"),
                 # issue 24.1: where the job's seconds went (time/*, exclusive wall s) and its RSS after it
                 "phases": {k: round(v, 3) for k, v in run.data.metrics.items() if k.startswith(("time/", "memory/"))},
                 "tags": {k: v for k, v in run.data.tags.items() if k.startswith(("version.", "env.", "keras_backend"))}})
rows.sort(key=lambda r: r["start"])
try:
    import jax
    devices = [f"{d.platform}:{d.device_kind}" for d in jax.devices()]
except Exception as error:
    devices = [f"unknown ({error})"]
json.dump({"part": name, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "devices": devices, "python": platform.python_version(), "sweep_wall_s": wall, "jobs": rows},
          open(f"{out}/{name}.json", "w"), indent=1)
accs = [r["test_accuracy"] for r in rows if r["test_accuracy"] is not None]
print(f"{name}: {len(rows)} runs, wall {wall:.1f} s, test accuracy {accs}, first-epoch s {[r['epoch_time'][:1] for r in rows]}")
print(f"{name}: steady epoch s (median of epochs 2.., train only / with evaluation): " + "; ".join(
    f"{sorted(r['epoch_train_time'][1:])[len(r['epoch_train_time'][1:]) // 2]:.3f} / "
    f"{sorted(r['epoch_time'][1:])[len(r['epoch_time'][1:]) // 2]:.3f}" for r in rows if len(r['epoch_time']) > 1))
print(f"{name}: run opened -> closed s {[r['run_s'] for r in rows]}")
print(f"{name} phases (s, job by job): " + "; ".join(
    " ".join(f"{k[5:]}={v:.2f}" for k, v in sorted(r["phases"].items()) if k.startswith("time/")) for r in rows))
EOF
}
part() {  # part NAME TIMEOUT_S OVERRIDES...: one multirun in its own MLflow store, timed from process start
  local name=$1 limit=$2; shift 2
  local store="$WORK/$name.db"
  rm -f "$store"
  say "part $name: $*"
  local t0; t0=$(date +%s.%N)
  timeout "$limit" "$PY" -m cifar_exp --multirun "$@" "dataset.path=$DATA" trainer.verbose=2 trainer.checkpoint=false \
    "mlflow.tracking_uri=sqlite:///$store" "hydra.sweep.dir=$WORK/$name" 2>&1 \
    | grep -v -E '^(W|I|E)[0-9]{4} ' | tail -n 40 >> "$LOG"
  local rc=${PIPESTATUS[0]}
  local wall; wall=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  say "part $name: exit $rc, ${wall} s"
  summarise "$name" "$store" "$wall" "$t0" 2>&1 | tail -n 6 | tee -a "$LOG"
}

say "device: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo none)"
say "versions: $("$PY" -c 'import keras, jax; print("keras", keras.__version__, "jax", jax.__version__, "backend", keras.backend.backend())' 2>&1 | tail -n 1)"
say "compile cache: ${JAX_COMPILATION_CACHE_DIR:-trainer.compile_cache=auto}"

# 1. airbench as its preset now runs it (precision auto = bfloat16 on this GPU, the test split after the
# last epoch only): 5 seeds in one process (the first compiles, the others reuse it). Each epoch's
# epoch_train_time leaves its evaluation out (airbench94 times training only).
part airbench "$(scaled 100)" experiment=airbench "seed=$SEEDS_AIR" $AIRBENCH_X
# 2. The same without shared steps (each job traces, lowers and loads its own; the XLA cache is warm from
# part 1, so the difference is the tracing): time/compile and run seconds of the warm jobs against part 1's.
CIFAR_EXP_SHARE_STEPS=0 part airbench_unshared "$(scaled 70)" experiment=airbench "seed=$SEEDS_UNSHARED" $AIRBENCH_X
# 3. lr x seed of the default recipe (one-cycle: its numbers are optimizer variables): from the second
# job on, is the first epoch <= 2x a steady one? 3 epochs each: the question is the first epoch's seconds.
part lr_sweep "$(scaled 70)" optimizer.lr=0.3,0.5 seed=10,11 trainer.epochs=3 $RESNET9_X
# 4. ResNet-9's 24-epoch recipe (float32), one seed: issue 24 asks <= 22 s steady.
part resnet9 "$(scaled 70)" experiment=resnet9 "seed=$SEEDS_R9" $RESNET9_X
# 5. where the host's seconds go: cProfile of a 2-seed airbench multirun (a new process, the XLA
# cache warm from part 1), the largest cumulative and own-time entries in profile.txt.
say "part profile"
rm -f "$WORK/profile.db"
timeout "$(scaled 80)" "$PY" -m cProfile -o "$WORK/profile.pstats" -m cifar_exp --multirun experiment=airbench \
  "seed=$SEEDS_PROFILE" $AIRBENCH_X "dataset.path=$DATA" trainer.verbose=2 trainer.checkpoint=false \
  "mlflow.tracking_uri=sqlite:///$WORK/profile.db" "hydra.sweep.dir=$WORK/profile" 2>&1 \
  | grep -v -E '^(W|I|E)[0-9]{4} ' | tail -n 20 >> "$LOG"
say "part profile: exit ${PIPESTATUS[0]}"
"$PY" - "$WORK/profile.pstats" > "$OUT/profile.txt" 2>&1 <<'EOF'
import pstats, sys
stats = pstats.Stats(sys.argv[1])
stats.sort_stats("cumulative").print_stats(45)
stats.sort_stats("tottime").print_stats(25)
EOF
say "done"
