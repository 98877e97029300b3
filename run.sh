#!/usr/bin/env bash
# DLDR pipelines.
#   ./run.sh          the authors' CIFAR pipeline: 150 SGD epochs (samples 0..150), then P-BFGS
#                     (20 epochs, batch 1024) and P-SGD (40 epochs) in the 40-dimensional subspace
#                     of samples 0..80; beside them on the same samples, TWA (10 epochs in their
#                     span, from their mean) and SWA (their mean), and SWA of the tail (samples
#                     101..150, after the LR drop). Override with DATASETS, ARCH, CORRUPT, SAVE_DIR, SEED, DEVICE;
#                     EXTRA_ARGS is added to every script (e.g. "--amp bf16 --compile"); OVERWRITE=1
#                     replaces an earlier run in SAVE_DIR.
#   ./run.sh demo     the whole pipeline offline on scikit-learn's DIGITS, on the CPU, in about 2 minutes,
#                     ending with a table of test accuracies. DEMO_DIR sets the folder. Run again,
#                     it reruns like make: finished steps are kept (--reuse), an interrupted one
#                     resumes; ./run.sh demo --fresh deletes the demo's folder and starts over.
# DLDR_KERNELS=avx2 (the demo's default) runs torch's AVX2 kernels on any x86-64 CPU, which gives
# the same digits on every such CPU; native (the CIFAR pipeline's default) lets torch choose.
# Default folders name the seed, so that runs with other seeds side by side never share one.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python}

usage() {
    sed -n '2,/^# Default folders/p' "$0" | sed 's/^# \{0,1\}//'
}
case "${1:-}" in
    -h|--help) usage; exit 0 ;;
    ""|demo) ;;
    *) echo "error: ./run.sh takes no argument or 'demo', not '$1'  (see ./run.sh --help)" >&2
       exit 2 ;;
esac
FRESH=
if [[ "${1:-}" == "demo" && "${2:-}" == "--fresh" ]]; then
    FRESH=1
elif (( $# > 1 )); then
    echo "error: ./run.sh takes no argument, 'demo' or 'demo --fresh', not '$*'  (see ./run.sh --help)" >&2
    exit 2
fi
KERNELS=${DLDR_KERNELS:-$([[ "${1:-}" == "demo" ]] && echo avx2 || echo native)}
case "$KERNELS" in
    # before torch starts; the same digits at the same thread count (dldr/kernels.py AVX2_PIN)
    avx2) export ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_CBWR=COMPATIBLE ;;
    native) ;;
    *) echo "error: DLDR_KERNELS=$KERNELS: expected avx2 or native  (see ./run.sh --help)" >&2
       exit 2 ;;
esac

if [[ "${1:-}" == "demo" ]]; then
    # The pinned digits are the same on every CPU at the same thread count: README's table's 2
    [[ $KERNELS == avx2 ]] && export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
    ARCH=${ARCH:-resnet20}
    DIR=${DEMO_DIR:-demo_runs/digits_${ARCH}_seed${SEED:-1}}
    if [[ -n "$FRESH" && -e "$DIR" ]]; then
        # only a folder the demo made: its samples' run.json says DIGITS
        if [[ -f "$DIR/run.json" ]] && ! grep -q '"datasets": "DIGITS"' "$DIR/run.json"; then
            echo "error: --fresh: $DIR holds a run on other data than DIGITS; not deleted (set DEMO_DIR)" >&2
            exit 2
        fi
        rm -rf "$DIR"
        echo "=> --fresh: deleted $DIR"
    fi
    read -r -a EXTRA <<< "${EXTRA_ARGS:-}"
    # --reuse: a step finished with these settings is kept, an interrupted one resumes
    COMMON=(--datasets DIGITS --arch "$ARCH" --device "${DEVICE:-cpu}" --randomseed "${SEED:-1}"
            --save-dir "$DIR" --print-freq 100 --loader "${LOADER:-memory}" --reuse "${EXTRA[@]}")
    SUB=(--params_start 0 --params_end 6 --n_components 5)
    start=$(date +%s)
    # 1. SGD sampling: 8 epochs, samples 0..8. 2. basis from samples 0..5, before the LR drop.
    # (Short enough for 2 minutes on 2 cores; the picture is the paper's.)
    $PY -u train_sgd.py "${COMMON[@]}" --epochs 8 --lr 0.1 --batch-size 64 --milestones 5
    # 3. P-SGD and P-BFGS in the 5-dimensional DLDR subspace, and the random-subspace control.
    $PY -u train_psgd.py "${COMMON[@]}" "${SUB[@]}" --epochs 3 --lr 1 --batch-size 64 --milestones 2
    $PY -u train_pbfgs.py "${COMMON[@]}" "${SUB[@]}" --epochs 4 --batch-size 128
    $PY -u train_psgd.py "${COMMON[@]}" "${SUB[@]}" --epochs 1 --lr 1 --batch-size 64 --basis random
    $PY -u plot_results.py "$DIR" --summary  # summarize.py's table, then the plots: one process
    echo "demo finished in $(( $(date +%s) - start )) s (kernels: $KERNELS, threads:" \
         "${OMP_NUM_THREADS:-as torch chose}); results in $DIR"
    exit 0
fi

DATASETS=${DATASETS:-CIFAR10}
ARCH=${ARCH:-resnet20}
CORRUPT=${CORRUPT:-0}
SEED=${SEED:-1}
SAVE_DIR=${SAVE_DIR:-save_${DATASETS}_${ARCH}_corrupt${CORRUPT}_seed${SEED}}
LOG=${LOG:-log_${ARCH}}
DEV=()
[[ -n "${DEVICE:-}" ]] && DEV=(--device "$DEVICE")
ONLY_DEV=("${DEV[@]}")  # swa.py trains nothing: it takes no training flags of EXTRA_ARGS
read -r -a EXTRA <<< "${EXTRA_ARGS:-}"
DEV+=("${EXTRA[@]}")
SGD_ONLY=()
[[ -n "${OVERWRITE:-}" ]] && SGD_ONLY=(--overwrite)

$PY -u train_sgd.py --datasets "$DATASETS" --lr 0.1 --corrupt "$CORRUPT" --arch "$ARCH" --epochs 150 \
    --randomseed "$SEED" --save-dir "$SAVE_DIR" "${DEV[@]}" "${SGD_ONLY[@]}" |& tee -a "$LOG"
# P-BFGS builds the basis and saves it; P-SGD reuses it (it checks that the samples are the same)
$PY -u train_pbfgs.py --epochs 20 --datasets "$DATASETS" --corrupt "$CORRUPT" --params_start 0 \
    --params_end 81 --batch-size 1024 --n_components 40 --arch "$ARCH" --randomseed "$SEED" \
    --save-dir "$SAVE_DIR" --basis-file "$SAVE_DIR/basis_dldr.pt" "${DEV[@]}" |& tee -a "$LOG"
$PY -u train_psgd.py --epochs 40 --datasets "$DATASETS" --lr 1 --corrupt "$CORRUPT" --params_start 0 \
    --params_end 81 --batch-size 128 --n_components 40 --arch "$ARCH" --randomseed "$SEED" \
    --save-dir "$SAVE_DIR" --basis-file "$SAVE_DIR/basis_dldr.pt" "${DEV[@]}" |& tee -a "$LOG"
# What sits beside DLDR on the same trajectory: TWA (the authors' next paper) and SWA
$PY -u train_twa.py --epochs 10 --datasets "$DATASETS" --corrupt "$CORRUPT" --params_start 0 \
    --params_end 81 --batch-size 128 --arch "$ARCH" --randomseed "$SEED" --save-dir "$SAVE_DIR" \
    "${DEV[@]}" |& tee -a "$LOG"
$PY -u swa.py --datasets "$DATASETS" --corrupt "$CORRUPT" --params_start 0 --params_end 81 \
    --arch "$ARCH" --randomseed "$SEED" --save-dir "$SAVE_DIR" "${ONLY_DEV[@]}" |& tee -a "$LOG"
$PY -u swa.py --datasets "$DATASETS" --corrupt "$CORRUPT" --params_start 101 --params_end 151 \
    --arch "$ARCH" --randomseed "$SEED" --save-dir "$SAVE_DIR" --output-tag tail "${ONLY_DEV[@]}" \
    |& tee -a "$LOG"
$PY -u summarize.py "$SAVE_DIR" |& tee -a "$LOG"
$PY -u plot_results.py "$SAVE_DIR" |& tee -a "$LOG"
