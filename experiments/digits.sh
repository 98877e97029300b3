#!/usr/bin/env bash
# The paper's claims tested on scikit-learn's DIGITS (offline, CPU), in the paper's proportions;
# experiments/report.py writes REPRODUCTION.md and its figures from the measured runs.
#
#   experiments/digits.sh                all runs (roughly 6 hours on 2 cores), then the report
#   REPORT_ONLY=1 experiments/digits.sh  rebuild the report from the runs already in RUNS_DIR
#
# Proportions (the paper: 150 SGD epochs, first LR drop at 100, basis from samples 0..80 with 40
# directions, 20 P-BFGS and 40 P-SGD epochs): SGD_EPOCHS of SGD with the LR drop at 2/3 of them;
# the basis from the first PARAMS_END samples, all before the drop; SIZES around half as many
# directions as samples; P-BFGS and P-SGD budgets of 20/150 and 40/150 of SGD's. For every noise
# level and seed: SGD sampling, then P-BFGS and P-SGD for every size, and the fifth claim: P-SGD
# and P-BFGS restarted from the first sample after the LR drop, in the subspace of the samples
# after the drop; at noise 0 also the random-basis control for every size. The sizes other than
# the main one (MAIN_K, below) run on the seeds of SWEEP_SEEDS only (the first five), as the
# report reads them: every verdict but the size sweep's own rows reads all seeds. Beside them, on the
# same samples: TWA (train_twa.py with its recipe: the span, from the mean, 10/200 of SGD's
# epochs as in its CIFAR setting) and SWA (swa.py), from the samples before the drop and from the
# late ones; TWA also at its recipe's batch 128 (results_twa_b128.json; the others run at 64, as
# DIGITS has 1,437 training images), and the early-stopping control of the label-noise claim:
# SGD's last sample of the basis window, BatchNorm re-estimated (swa.py on that one sample,
# results_swa_early_stop.json).
# Sensitivity runs, NOT the paper's setting (the report keeps them apart from the verdicts): at
# every noise level and seed, P-SGD with the main size MAIN_K (the SIZES entry nearest half the
# basis's samples, as the report picks it) and TWA on the samples before the drop, both at lr
# SENSITIVITY_LR (0.5, as experiments/report.py's SENSITIVITY_LR) instead of their recipes' 1 and
# 2; their results files carry the lr in their tag (results_psgd_k8_lr0.5.json,
# results_twa_lr0.5.json).
# A run is not made again when its results file is complete and records every setting of the
# command that would make it now (experiments/reuse.py compares them, and the samples it came
# from): an interrupted script picks up where it stopped, and other settings (ARCH, SMALL, ...)
# replace the runs made with the old ones. FRESH=1 deletes RUNS_DIR first; LIST_JOBS=1 prints
# every job (results file, checkpoint, command, tab-separated) and runs nothing. Every run is
# seeded and single-threaded (THREADS=1), on torch's AVX2 kernels (DLDR_KERNELS=avx2, as run.sh's
# demo; native: torch's own choice); a run made with another kernel set is made again.
# Settings (environment variables, defaults in brackets):
#   SEEDS ["1 2 ... 10"]  SWEEP_SEEDS [the first five of SEEDS]  NOISES ["0 0.2 0.4"]
#   SIZES ["4 8 12"]  ARCH [resnet20]  SGD_EPOCHS [30]
#   SMALL [unset: --smalldatasets fraction, for quick checks]  JOBS [nproc]  THREADS [1]
#   RUNS_DIR [experiments/runs/digits]  REPORT [REPRODUCTION.md]  PYTHON [python]
#   DLDR_KERNELS [avx2]
set -euo pipefail
cd "$(dirname "$0")/.."

export PY=${PYTHON:-python}
export SEEDS=${SEEDS:-"1 2 3 4 5 6 7 8 9 10"} NOISES=${NOISES:-"0 0.2 0.4"} SIZES=${SIZES:-"4 8 12"}
read -ra seed_list <<< "$SEEDS"
export SWEEP_SEEDS=${SWEEP_SEEDS:-"${seed_list[*]:0:5}"}
for seed in $SWEEP_SEEDS; do
    if [[ " ${seed_list[*]} " != *" $seed "* ]]; then
        echo "SWEEP_SEEDS=\"$SWEEP_SEEDS\": seed $seed is not in SEEDS=\"$SEEDS\"; the size" \
             "sweep's seeds must be some of the report's" >&2; exit 2
    fi
done
[[ -z ${SWEEP_SEEDS// } ]] && { echo "SWEEP_SEEDS is empty: name at least one of SEEDS" >&2; exit 2; }
export ARCH=${ARCH:-resnet20} SGD_EPOCHS=${SGD_EPOCHS:-30} SMALL=${SMALL:-}
export RUNS_DIR=${RUNS_DIR:-experiments/runs/digits}
REPORT=${REPORT:-REPRODUCTION.md}
JOBS=${JOBS:-$(nproc)}
# One thread per run: results then do not depend on how many cores the machine has, and
# JOBS runs side by side use the cores better than one run with several threads.
export OMP_NUM_THREADS=${THREADS:-1} MKL_NUM_THREADS=${THREADS:-1}
case ${DLDR_KERNELS:=avx2} in  # set before torch starts: every script, and reuse.py's comparison
    avx2) export ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_CBWR=COMPATIBLE ;;  # AVX2_PIN
    native) unset ATEN_CPU_CAPABILITY ONEDNN_MAX_CPU_ISA MKL_CBWR ;;
    *) echo "DLDR_KERNELS=$DLDR_KERNELS: expected avx2 or native" >&2; exit 2 ;;
esac

# The paper's proportions, from SGD_EPOCHS (E): LR drop at 2E/3 (100 of 150); the basis from
# samples 0..round(0.54 E)-1 (0..80 of 150); P-BFGS E*20/150 and P-SGD E*40/150 epochs, P-SGD's
# LR drop at 3/4 of its budget (30 of 40); the late subspace: the samples after the drop.
export DROP=$(( SGD_EPOCHS * 2 / 3 ))
export PARAMS_END=$(( (SGD_EPOCHS * 81 + 75) / 150 ))
export PBFGS_EPOCHS=$(( (SGD_EPOCHS * 20 + 75) / 150 )) PSGD_EPOCHS=$(( (SGD_EPOCHS * 40 + 75) / 150 ))
export PSGD_DROP=$(( PSGD_EPOCHS * 3 / 4 )) TWA_EPOCHS=$(( (SGD_EPOCHS * 10 + 100) / 200 ))
export LATE_START=$(( DROP + 1 )) LATE_END=$(( SGD_EPOCHS + 1 ))
export LATE_K=$(( (LATE_END - LATE_START) / 2 ))
if (( PARAMS_END > DROP || PBFGS_EPOCHS < 1 || PSGD_DROP < 1 || LATE_K < 1 || TWA_EPOCHS < 1 )); then
    echo "SGD_EPOCHS=$SGD_EPOCHS is too small for the paper's proportions (at least 10: TWA's" \
         "10/200 of it must be an epoch; try 30)" >&2; exit 2
fi
# The main size, as experiments/report.py picks it: the first SIZES entry nearest half the basis's
# PARAMS_END samples (|2k - PARAMS_END| smallest, in whole numbers); 8 with the defaults
MAIN_K=
for k in $SIZES; do
    off=$(( 2 * k - PARAMS_END )) best=$(( 2 * ${MAIN_K:-0} - PARAMS_END ))
    if [[ -z $MAIN_K ]] || (( ${off#-} < ${best#-} )); then MAIN_K=$k; fi
done
export MAIN_K SENSITIVITY_LR=0.5  # the sensitivity runs' lr (not the paper's setting)

job() {  # job METHOD NOISE SEED [K]: run it as the plan ($PLAN) says; with LIST=1 print it only
    local method=$1 noise=$2 seed=$3 k=${4:-}
    local dir="$RUNS_DIR/noise${noise}_seed${seed}"
    local common=(--datasets DIGITS --arch "$ARCH" --device cpu --randomseed "$seed"
                  --corrupt "$noise" --save-dir "$dir" --print-freq 1000)
    [[ -n "$SMALL" ]] && common+=(--smalldatasets "$SMALL")
    # The paper's P-SGD lr, or the sensitivity run's (its tag says so: results_psgd_k8_lr0.5.json)
    local psgd_lr=1 tag="k$k"
    [[ $method == psgd_sensitivity ]] && psgd_lr=$SENSITIVITY_LR tag="k${k}_lr$SENSITIVITY_LR"
    local early=(--params_start 0 --params_end "$PARAMS_END" --n_components "$k" --output-tag "$tag")
    local late=(--params_start "$LATE_START" --params_end "$LATE_END" --n_components "$LATE_K"
                --output-tag late)
    local pbfgs=(train_pbfgs.py "${common[@]}" --epochs "$PBFGS_EPOCHS" --batch-size 128)
    local psgd=(train_psgd.py "${common[@]}" --epochs "$PSGD_EPOCHS" --lr "$psgd_lr" --batch-size 64
                --milestones "$PSGD_DROP")
    local twa=(train_twa.py "${common[@]}" --epochs "$TWA_EPOCHS" --batch-size 64)
    local head=(--params_start 0 --params_end "$PARAMS_END")
    local tail=(--params_start "$LATE_START" --params_end "$LATE_END" --output-tag late)
    local results cmd epochs=$PBFGS_EPOCHS
    case $method in
        sgd)        results="$dir/results_sgd.json" epochs=$SGD_EPOCHS
                    cmd=(train_sgd.py "${common[@]}" --epochs "$SGD_EPOCHS" --lr 0.1 --batch-size 64
                         --milestones "$DROP") ;;
        pbfgs)      results="$dir/results_pbfgs_k$k.json" cmd=("${pbfgs[@]}" "${early[@]}") ;;
        psgd)       results="$dir/results_psgd_k$k.json" cmd=("${psgd[@]}" "${early[@]}") ;;
        psgd_sensitivity) results="$dir/results_psgd_$tag.json" cmd=("${psgd[@]}" "${early[@]}") ;;
        random)     results="$dir/results_psgd_random_k$k.json"
                    cmd=("${psgd[@]}" "${early[@]}" --basis random) ;;
        pbfgs_late) results="$dir/results_pbfgs_late.json" cmd=("${pbfgs[@]}" "${late[@]}") ;;
        psgd_late)  results="$dir/results_psgd_late.json" cmd=("${psgd[@]}" "${late[@]}") ;;
        twa)        results="$dir/results_twa.json" cmd=("${twa[@]}" "${head[@]}") ;;
        twa_late)   results="$dir/results_twa_late.json" cmd=("${twa[@]}" "${tail[@]}") ;;
        twa_sensitivity) results="$dir/results_twa_lr$SENSITIVITY_LR.json"
                    cmd=("${twa[@]}" "${head[@]}" --lr "$SENSITIVITY_LR"
                         --output-tag "lr$SENSITIVITY_LR") ;;
        twa_b128)   results="$dir/results_twa_b128.json"  # the recipe's batch (lr 2 is set for it)
                    cmd=(train_twa.py "${common[@]}" --epochs "$TWA_EPOCHS" --batch-size 128
                         "${head[@]}" --output-tag b128) ;;
        swa)        results="$dir/results_swa.json" cmd=(swa.py "${common[@]}" --batch-size 64
                                                         "${head[@]}") ;;
        early_stop) results="$dir/results_swa_early_stop.json"  # SGD's last sample of the basis
                    cmd=(swa.py "${common[@]}" --batch-size 64 --params_start "$(( PARAMS_END - 1 ))"
                         --params_end "$PARAMS_END" --output-tag early_stop) ;;
        swa_late)   results="$dir/results_swa_late.json" cmd=(swa.py "${common[@]}" --batch-size 64
                                                              "${tail[@]}") ;;
    esac
    local ckpt="$dir/$(basename "$results" .json | sed 's/^results_/checkpoint_/; s/^checkpoint_sgd$/checkpoint/').pt"
    if [[ -n "${LIST:-}" ]]; then
        (IFS=$'\t'; echo "$results"$'\t'"$ckpt"$'\t'"${cmd[*]}"); return 0
    fi
    local name="$method${k:+ k=$k} noise=$noise seed=$seed" status why
    IFS=$'\t' read -r status _ why < <(awk -F'\t' -v r="$results" '$2 == r {print; exit}' "$PLAN")
    # The same run unfinished continues from its checkpoint; anything else of that name is
    # replaced (SGD's --overwrite also sets aside what the old trajectory's runs wrote)
    case $status in
        done) echo "done already: $name"; return 0 ;;
        resume) cmd+=(--resume) ;;
        *) cmd+=(--overwrite); [[ -n "$why" ]] && echo "running again: $name: $why" ;;
    esac
    mkdir -p "$dir"
    local start=$SECONDS log="$dir/log_$(basename "$results" .json | sed 's/^results_//').txt"
    if "$PY" -u "${cmd[@]}" > "$log" 2>&1; then
        echo "finished: $name in $(( SECONDS - start )) s"
    else
        echo "FAILED: $name (exit $?); see $log" >&2
        return 255  # stops xargs
    fi
}
export -f job

sgd_jobs() {
    for noise in $NOISES; do for seed in $SEEDS; do echo "sgd $noise $seed"; done; done
}
subspace_jobs() {  # seed by seed: an interrupted script leaves whole seeds done, not half of each
    local first_noise=${NOISES%% *}
    for seed in $SEEDS; do for noise in $NOISES; do
        for k in $SIZES; do
            # the sweep's other sizes on its seeds only
            [[ $k != "$MAIN_K" && " $SWEEP_SEEDS " != *" $seed "* ]] && continue
            echo "pbfgs $noise $seed $k"; echo "psgd $noise $seed $k"
            [[ $noise == "$first_noise" ]] && echo "random $noise $seed $k"
        done
        echo "pbfgs_late $noise $seed"; echo "psgd_late $noise $seed"
        for m in twa swa twa_late swa_late twa_b128 early_stop; do echo "$m $noise $seed"; done
        echo "psgd_sensitivity $noise $seed $MAIN_K"; echo "twa_sensitivity $noise $seed"
    done; done
}
list_jobs() {  # list_jobs < JOB LINES: results file, checkpoint and command of each
    while read -r line; do LIST=1 job $line; done
}
plan() {  # plan < JOB LINES > PLAN: done, resume or fresh for each, one Python process for all
    list_jobs | "$PY" experiments/reuse.py
}

if [[ -n "${LIST_JOBS:-}" ]]; then
    { sgd_jobs; subspace_jobs; } | list_jobs
    exit 0
fi
[[ -n "${FRESH:-}" ]] && rm -rf "$RUNS_DIR"
mkdir -p "$RUNS_DIR"
export PLAN=$(mktemp)
trap 'rm -f "$PLAN"' EXIT

if [[ -z "${REPORT_ONLY:-}" ]]; then
    start=$SECONDS
    { sgd_jobs; subspace_jobs; } | plan > "$PLAN"
    sgd_jobs | xargs -P "$JOBS" -L 1 bash -c 'job "$@"' _
    # A trajectory made again: the runs on its samples are planned again
    if awk -F'\t' '$1 != "done" && $2 ~ /results_sgd\.json$/ {found=1} END {exit !found}' "$PLAN"; then
        subspace_jobs | plan > "$PLAN"
    fi
    subspace_jobs | xargs -P "$JOBS" -L 1 bash -c 'job "$@"' _
    echo "all runs finished in $(( SECONDS - start )) s"
fi

"$PY" experiments/report.py "$RUNS_DIR" --output "$REPORT" --seeds $SEEDS --noises $NOISES \
    --sizes $SIZES --sweep-seeds $SWEEP_SEEDS
echo "report written to $REPORT"
