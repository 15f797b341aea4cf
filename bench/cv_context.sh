#!/usr/bin/env bash
# Neighbour context on a cross-validation run's fold models (docs/accuracy.md): each fold's model
# exported with TTA and run by `runtime eval` on the fold's held-out patients, alone
# (`--context=false`) and with `--context-weight W` for each weight (default 0.5); then, per fold
# and as mean ± sd, BAC, F1, ROC AUC and PR AUC, the patches that had a neighbour, and whole vs
# partial patients.
#   bench/cv_context.sh RUN [WEIGHT...]      e.g. bench/cv_context.sh runs/cv-robust 0.5 0.25 1 2
# The per-fold reports and predictions stay in runs/context-<run>/{alone,context-W}/.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { sed -n 2,8p "$0" >&2; exit 2; }
run=$1
shift
weights=(0.5)
[ $# -eq 0 ] || weights=("$@")
out=runs/context-$(basename "$run")
bench/cv_ensemble.sh --keep "$out/alone" "$run" >/dev/null
for w in "${weights[@]}"; do
  bench/cv_ensemble.sh --context="$w" --keep "$out/context-$w" "$run" >/dev/null
done
python3 bench/cv_context.py "$out" "$(basename "$run")" "${weights[@]}"
