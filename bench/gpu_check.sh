#!/usr/bin/env bash
# The GPU check: the benchmark table, then the whole pipeline with run.sh's settings (150 SGD +
# 20 P-BFGS + 40 P-SGD epochs, then 10 of TWA and SWA, ResNet-20) on synthetic CIFAR-sized data, timed. Meant to finish in
# under 8 minutes on one H100; each part is time-boxed so a slow part cannot eat the whole lease.
#   bash bench/gpu_check.sh            (writes into ${OUT:-bench_out})
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHON=$PY
OUT_DIR=${OUT:-bench_out}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"

echo "== benchmark (fast path vs DataLoader fp32 eager), ResNet-20, 50k/10k synthetic"
timeout ${BENCH_LIMIT:-270} $PY bench/benchmark.py --device cuda --repeats 2 \
    --json "$OUT_DIR/bench.json" 2>&1 | tee "$OUT_DIR/bench.txt"

echo "== pipeline: run.sh settings on SYNTHETIC, fast path (bf16, compiled)"
start=$(date +%s)
DATASETS=SYNTHETIC DEVICE=cuda SAVE_DIR=/tmp/gpu_check_pipeline LOG="$OUT_DIR/pipeline.log" \
    EXTRA_ARGS="--amp bf16 --compile --print-freq 1000" OVERWRITE=1 \
    timeout ${PIPELINE_LIMIT:-330} ./run.sh > /dev/null 2>&1
status=$?
elapsed=$(( $(date +%s) - start ))
$PY summarize.py /tmp/gpu_check_pipeline | tee "$OUT_DIR/pipeline_summary.txt"
echo
echo "| check | figure |"
echo "|---|---|"
$PY - "$OUT_DIR/bench.json" <<'PYEOF'
import json, sys
try:
    b = json.load(open(sys.argv[1]))
except Exception:
    sys.exit(0)
for m in ("sgd", "pbfgs", "psgd"):
    if m in b:
        print(f"| {m} s/epoch (fast / reference) | {b[m]['fast_s']:.2f} / {b[m]['reference_s']:.2f} ({b[m]['speedup']:.1f}x) |")
print(f"| basis 81 samples: ours / sklearn PCA | {b['basis']['ours_s']:.3f} s / {b['basis']['sklearn_pca_s']:.3f} s |")
PYEOF
echo "| pipeline 150+20+40 epochs, TWA 10, SWA (exit $status) | ${elapsed} s |"
