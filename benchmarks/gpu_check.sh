#!/usr/bin/env bash
# The prepared GPU check (issue 19): every GPU figure of the README in one call of at most
# 8 minutes on a lent GPU machine (the device tool's H200: Python 3.12 with PyTorch, no faiss,
# infomap or Snakemake, no network). Once, in the checkout the device tool sends:
#
#   bash benchmarks/gpu_wheels.sh                              # the missing packages -> .whl/
#
# then one device call:  command "bash benchmarks/gpu_check.sh", carry [".whl"], timeout 540.
# The figures come back as $OUT/gpu_check.json (one object per step: its exit status "rc", its
# wall time "step_seconds" and the benchmark's own JSON line) and every step's output as
# $OUT/gpu_check.log.
#
# Steps, most important first, each under its own time limit and all under one deadline
# (BUDGET seconds, default 470), so that a step that fails or hangs costs its own limit only
# and the JSON holds every step finished before it:
#   install       the carried wheels into /tmp/site (skipped without .whl/)
#   cuda_tests    the unit tests that need a GPU (named *cuda*, skipped without one), the
#                 device resolution and the GPU-slot tests; among them the multi-GPU training
#                 path (NCCL process group, DDP, the exchanges of the batch and the memory)
#                 with as many processes as GPUs, at most 2: on one GPU, one process, since
#                 NCCL cannot give two processes the same GPU
#   knn_1m        exact kNN (k = 15) of 1,000,000 x 2048 synthetic features on the GPU
#   evaluate      mAP/CMC/mINP at MSMT17 size (11,659 x 82,161, D = 2048) on the GPU
#   extract       extraction throughput / bare model throughput (ResNet-50, 256x128)
#   train         training-loop throughput / bare training throughput (ResNet-50, 256x128)
#   round         one CALR round at Market-1501 size (12,936 images, ResNet-50 256x128): the
#                 extract, cluster-global, refine and train-inter jobs (one epoch), each a
#                 process timed from start to end, so job start-ups included
#   demo          the demo workflow with device: cuda (baseline and CALR, 2 rounds of 2
#                 epochs), wall time; its
#                 GPU jobs claim the GPU through pipeline/devices.py as on a workstation
#   cluster       kNN + Infomap + pivots + refinement at Market-1501 size (12,936 images)
#
# To check the script itself on a CPU machine: DEVICE=cpu SMALL=1 OUT=/tmp/gc bash $0
# (tiny sizes, ResNet-18, the demo as a dry run).
set -u
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
ROOT=$PWD
DEVICE=${DEVICE:-cuda}
SMALL=${SMALL:-0}
BUDGET=${BUDGET:-470}
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/gpu-check-out}
WORK=$(mktemp -d /tmp/gpu-check.XXXXXX)
mkdir -p "$OUT"
FIGURES=$OUT/gpu_check.json
LOG=$OUT/gpu_check.log
START=$SECONDS
echo '{}' >"$FIGURES"
: >"$LOG"
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
# the workflow's jobs run `python`, which a machine with only python3 lacks
mkdir -p "$WORK/bin"
printf '#!/bin/sh\nexec %s "$@"\n' "$(command -v "$PY")" >"$WORK/bin/python"
chmod +x "$WORK/bin/python"
export PATH=$WORK/bin:$PATH

record() {  # record NAME JSON-OBJECT: merge {NAME: object} into the figures file
  "$PY" - "$FIGURES" "$1" "$2" <<'EOF'
import json, os, sys
path, name, value = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
with open(path) as f:
    figures = json.load(f)
figures[name] = {**figures.get(name, {}), **value}
with open(path + ".tmp", "w") as f:
    json.dump(figures, f, indent=1)
os.replace(path + ".tmp", path)
EOF
}

step() {  # step NAME LIMIT COMMAND...: run with a time limit, log it, record its figures
  local name=$1 limit=$2 left rc begin
  shift 2
  left=$((BUDGET - (SECONDS - START)))
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$limit" -lt 10 ]; then
    record "$name" '{"skipped": "out of time"}'
    return
  fi
  echo "===== $name (limit ${limit} s): $*" >>"$LOG"
  begin=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >"$WORK/$name.out" 2>&1
  rc=$?
  cat "$WORK/$name.out" >>"$LOG"
  "$PY" - "$WORK/$name.out" "$rc" "$((SECONDS - begin))" "$limit" >"$WORK/$name.json" <<'EOF'
import json, re, sys
text = open(sys.argv[1], errors="replace").read()
figures = {"rc": int(sys.argv[2]), "step_seconds": int(sys.argv[3])}
if figures["rc"] in (124, 137):
    figures["timed_out_after"] = int(sys.argv[4])
for line in reversed(text.splitlines()):  # a benchmark's figures: its last JSON line
    if line.startswith("{"):
        try:
            figures.update(json.loads(line))
            break
        except ValueError:
            pass
summary = re.findall(r"^=*\s*(\d+ (?:passed|failed|skipped|deselected|errors?)\b.*?) in [\d.]+s", text, re.M)
if summary:  # pytest's last line: "8 passed, 2 skipped, 101 deselected in 13.50s"
    figures["pytest"] = summary[-1]
jobs = re.findall(r"^total\s+(\d+)$", text, re.M)
if jobs:  # Snakemake's job table
    figures["jobs"] = int(jobs[-1])
print(json.dumps(figures))
EOF
  record "$name" "$(cat "$WORK/$name.json")"
}

if [ "$SMALL" = 1 ]; then
  KNN_N=20000 KNN_DIM=64 MARKET_N=2000 EVAL="--queries 300 --gallery 3000 --dim 64"
  NET="--arch resnet18 --height 64 --width 32" IMAGES=128 ITERS=2 WORKERS=0 BATCH=16 REPEATS=1
  ROUND_SIZE="--images 600 --identities 60"
else
  KNN_N=1000000 KNN_DIM=2048 MARKET_N=12936 EVAL="--queries 11659 --gallery 82161 --dim 2048"
  NET="--arch resnet50 --height 256 --width 128" IMAGES=4096 ITERS=40 WORKERS=8 BATCH=64 REPEATS=3
  ROUND_SIZE="--images 12936 --identities 751"
fi

step env 30 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader;
  nproc; $PY -c 'import json, sys, torch; print(json.dumps({\"python\": sys.version.split()[0],
  \"torch\": torch.__version__, \"cuda\": torch.cuda.is_available(), \"gpu\":
  torch.cuda.get_device_name() if torch.cuda.is_available() else None}))'"
if ls .whl/*.whl >/dev/null 2>&1; then
  step install 90 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
step cuda_tests 120 "$PY" -m pytest -q -p no:cacheprovider -rs -k "cuda or device" \
  tests/test_cluster_knn.py tests/test_evaluate.py tests/test_extract.py tests/test_devices.py \
  tests/test_train_distributed.py
step knn_1m 120 "$PY" benchmarks/cluster.py --n "$KNN_N" --dim "$KNN_DIM" --knn torch \
  --device "$DEVICE" --knn-only
# shellcheck disable=SC2086  # EVAL and NET are lists of options
step evaluate 60 "$PY" benchmarks/evaluate.py $EVAL --device "$DEVICE"
# shellcheck disable=SC2086
step extract 75 "$PY" benchmarks/extract.py --device "$DEVICE" $NET --images "$IMAGES" \
  --batch-size $((2 * BATCH)) --workers "$WORKERS" --repeats "$REPEATS"
# shellcheck disable=SC2086
step train 90 "$PY" benchmarks/train.py --device "$DEVICE" $NET --batch-size "$BATCH" \
  --iters "$ITERS" --workers "$WORKERS" --repeats "$REPEATS" --images $((IMAGES / 2))
# shellcheck disable=SC2086
step round 150 "$PY" benchmarks/round.py --device "$DEVICE" $NET $ROUND_SIZE \
  --batch-size "$BATCH" --workers "$WORKERS"

# the demo workflow with the device set, 2 rounds of 2 epochs so that it fits the call
"$PY" - "$WORK/demo.yaml" "$WORK/demo" "$DEVICE" <<'EOF'
import sys, yaml
config = yaml.safe_load(open("config.yaml"))
config.update(results=sys.argv[2], device=sys.argv[3])
config["intra"]["epochs"] = 2
config["inter"].update(epochs=4, epochs_per_round=2)
# CALR's rows only: the other methods' experiments set 12 epochs of their own
config["experiments"] = {name: config["experiments"][name] for name in ("baseline", "calr")}
yaml.safe_dump(config, open(sys.argv[1], "w"))
EOF
DRY=()
[ "$SMALL" = 1 ] && DRY=(--dry-run)
step demo 200 "$PY" -m snakemake --configfile "$WORK/demo.yaml" --cores "$(nproc)" \
  --resources gpu=1 --scheduler greedy --quiet rules "${DRY[@]}"
if [ -f "$WORK/demo/comparison.csv" ]; then
  record demo "$("$PY" -c 'import json, sys, pandas as pd
print(json.dumps({"comparison": pd.read_csv(sys.argv[1]).round(4).to_dict("records")}))' \
    "$WORK/demo/comparison.csv")"
fi

step cluster 60 "$PY" benchmarks/cluster.py --n "$MARKET_N" --dim "$KNN_DIM" --knn torch \
  --device "$DEVICE"
record total "{\"seconds\": $((SECONDS - START)), \"device\": \"$DEVICE\", \"small\": $SMALL}"
rm -rf "$WORK"
cat "$FIGURES"
