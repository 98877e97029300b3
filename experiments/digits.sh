#!/usr/bin/env bash
# Reproduction of the paper's claims on scikit-learn's DIGITS (offline, CPU), written to
# REPRODUCTION.md by experiments/report.py from the measured runs.
#
#   experiments/digits.sh               all runs (about an hour on 2 cores), then the report
#   REPORT_ONLY=1 experiments/digits.sh  rebuild the report from the runs already in RUNS_DIR
#
# For every label-noise level and seed: SGD sampling (train_sgd.py); then, from the samples
# 0..PARAMS_END-1, P-SGD, P-BFGS and the random-basis P-SGD control for every subspace size.
# A run whose results file is complete is not run again, so an interrupted script picks up where
# it stopped; FRESH=1 deletes RUNS_DIR first. Every run is seeded and single-threaded
# (THREADS=1), so running the script again with the same settings reproduces the same numbers.
# Settings (environment variables, defaults in brackets):
#   SEEDS ["1 2 3"]  NOISES ["0 0.2 0.4"]  SIZES ["5 10 15"]  ARCH [resnet20]
#   SGD_EPOCHS [20]  PSGD_EPOCHS [4]  PBFGS_EPOCHS [4]  RANDOM_EPOCHS [2]  PARAMS_END [16]
#   SMALL [unset: --smalldatasets fraction, for quick checks]  JOBS [nproc]  THREADS [1]
#   RUNS_DIR [experiments/runs/digits]  REPORT [REPRODUCTION.md]  PYTHON [python]
set -euo pipefail
cd "$(dirname "$0")/.."

export PY=${PYTHON:-python}
export SEEDS=${SEEDS:-"1 2 3"} NOISES=${NOISES:-"0 0.2 0.4"} SIZES=${SIZES:-"5 10 15"}
export ARCH=${ARCH:-resnet20}
export SGD_EPOCHS=${SGD_EPOCHS:-20} PSGD_EPOCHS=${PSGD_EPOCHS:-4} PBFGS_EPOCHS=${PBFGS_EPOCHS:-4}
export RANDOM_EPOCHS=${RANDOM_EPOCHS:-2} PARAMS_END=${PARAMS_END:-16} SMALL=${SMALL:-}
export RUNS_DIR=${RUNS_DIR:-experiments/runs/digits}
REPORT=${REPORT:-REPRODUCTION.md}
JOBS=${JOBS:-$(nproc)}
# One thread per run: results then do not depend on how many cores the machine has, and
# JOBS runs side by side use the cores better than one run with several threads.
export OMP_NUM_THREADS=${THREADS:-1} MKL_NUM_THREADS=${THREADS:-1}

[[ -n "${FRESH:-}" ]] && rm -rf "$RUNS_DIR"
mkdir -p "$RUNS_DIR"

# SGD milestones at half and three quarters of the run, as in the demo (20 epochs: 10,15).
export SGD_MILESTONES="$(( SGD_EPOCHS / 2 )),$(( SGD_EPOCHS * 3 / 4 ))"
export PSGD_MILESTONES="$(( (PSGD_EPOCHS + 1) / 2 )),$(( PSGD_EPOCHS * 5 / 6 ))"

complete() {  # complete RESULTS_FILE EPOCHS: the results file exists and reached the last epoch
    [[ -f "$1" ]] && "$PY" -c 'import json,sys; r=json.load(open(sys.argv[1]))
sys.exit(0 if r["epochs"] and r["epochs"][-1]["epoch"] >= int(sys.argv[2]) else 1)' "$1" "$2"
}

job() {  # job METHOD NOISE SEED [K]
    local method=$1 noise=$2 seed=$3 k=${4:-}
    local dir="$RUNS_DIR/noise${noise}_seed${seed}"
    local common=(--datasets DIGITS --arch "$ARCH" --device cpu --randomseed "$seed"
                  --corrupt "$noise" --save-dir "$dir" --print-freq 1000)
    [[ -n "$SMALL" ]] && common+=(--smalldatasets "$SMALL")
    local sub=(--params_start 0 --params_end "$PARAMS_END" --n_components "$k" --output-tag "k$k")
    local results epochs cmd
    case $method in
        sgd)    results="$dir/results_sgd.json" epochs=$SGD_EPOCHS
                cmd=(train_sgd.py "${common[@]}" --epochs "$SGD_EPOCHS" --lr 0.1 --batch-size 64
                     --milestones "$SGD_MILESTONES" --overwrite) ;;
        psgd)   results="$dir/results_psgd_k$k.json" epochs=$PSGD_EPOCHS
                cmd=(train_psgd.py "${common[@]}" "${sub[@]}" --epochs "$PSGD_EPOCHS" --lr 1
                     --batch-size 64 --milestones "$PSGD_MILESTONES") ;;
        pbfgs)  results="$dir/results_pbfgs_k$k.json" epochs=$PBFGS_EPOCHS
                cmd=(train_pbfgs.py "${common[@]}" "${sub[@]}" --epochs "$PBFGS_EPOCHS"
                     --batch-size 128) ;;
        random) results="$dir/results_psgd_random_k$k.json" epochs=$RANDOM_EPOCHS
                cmd=(train_psgd.py "${common[@]}" "${sub[@]}" --epochs "$RANDOM_EPOCHS" --lr 1
                     --batch-size 64 --milestones "$PSGD_MILESTONES" --basis random) ;;
    esac
    local name="$method${k:+ k=$k} noise=$noise seed=$seed"
    if complete "$results" "$epochs"; then echo "done already: $name"; return 0; fi
    mkdir -p "$dir"
    local start=$SECONDS log="$dir/log_$(basename "$results" .json | sed 's/^results_//').txt"
    if "$PY" -u "${cmd[@]}" > "$log" 2>&1; then
        echo "finished: $name in $(( SECONDS - start )) s"
    else
        echo "FAILED: $name (exit $?); see $log" >&2
        return 255  # stops xargs
    fi
}
export -f job complete

if [[ -z "${REPORT_ONLY:-}" ]]; then
    start=$SECONDS
    for noise in $NOISES; do for seed in $SEEDS; do echo "sgd $noise $seed"; done; done |
        xargs -P "$JOBS" -L 1 bash -c 'job "$@"' _
    for noise in $NOISES; do for seed in $SEEDS; do for k in $SIZES; do
        for method in pbfgs psgd random; do echo "$method $noise $seed $k"; done
    done; done; done | xargs -P "$JOBS" -L 1 bash -c 'job "$@"' _
    echo "all runs finished in $(( SECONDS - start )) s"
fi

"$PY" experiments/report.py "$RUNS_DIR" --output "$REPORT" --seeds $SEEDS --noises $NOISES \
    --sizes $SIZES
echo "report written to $REPORT"
