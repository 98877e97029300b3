#!/usr/bin/env bash
# The GPU check, in stages (bench/gpu_check.py says which): each stage in its own process with its
# own time budget (450 s in all on one GPU), one JSON line per stage in ${OUT:-bench/out}/gpu_check.jsonl
# as soon as it ends, a markdown table last; exit status 1 when a stage failed.
#   bash bench/gpu_check.sh            on one CUDA GPU, under 8 minutes
#   bash bench/gpu_check.sh --cpu      the same stages at toy sizes on the CPU (a dry run; CI runs it)
# No cd: a relative --out or OUT is the caller's (gpu_check.py runs its stages in the root)
exec "${PYTHON:-python3}" "$(dirname "$0")/gpu_check.py" "$@"
