#!/usr/bin/env bash
# What an ensemble of cross-validated recipes would give (docs/accuracy.md): for each fold, the
# models of several bench/cv.sh runs (same folds, same --cv-seed) exported with TTA, run by
# `runtime eval` on that fold's held-out patients, and their IDC probabilities averaged.
#   bench/cv_ensemble.sh [--context[=WEIGHT]] [--keep DIR] RUN[@CHECKPOINT]...
#   e.g. bench/cv_ensemble.sh runs/cv-adam-lowdrop runs/cv-adam@40 runs/cv-adam-cosine@40
# --context: `runtime eval --context` (neighbour context; one RUN gives that model's folds);
# without it each patch alone (`--context=false`, even for a run with eval.context).
# --keep: each model's per-fold predictions and report (NAME-K.csv, NAME-K.json) are kept in DIR.
# CHECKPOINT is what `exporter --checkpoint` takes (40: each fold's last epoch); without it, the
# model the run's config names (precise-bn/ for the robust recipe). Each model alone and the mean
# of all are printed (BAC at 0.5, ROC AUC).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${IDC_SHARED_DATA:-../shared/data}
context=(--context=false) keep=
while [ $# -gt 0 ]; do
  case $1 in
    --context) context=(--context) ;;
    --context=*) context=(--context-weight "${1#--context=}") ;;
    --keep) keep=$2; shift ;;
    *) break ;;
  esac
  shift
done
[ $# -ge 1 ] || { sed -n 2,11p "$0" >&2; exit 2; }
cargo build --release -q -p exporter -p runtime
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
out=${keep:-$work}
mkdir -p "$out"
# Each fold's held-out patients as a folder (copies: the shared data may be another filesystem).
first=${1%@*}
python3 - "$first/cv-folds.csv" "$work" "$SHARED/idc-real" "$SHARED/idc-real-more" <<'PY'
import csv, os, shutil, sys
folds, work, *sources = sys.argv[1:]
for row in csv.DictReader(open(folds)):
    src = [s for s in sources if os.path.isdir(os.path.join(s, row["patient"]))]
    assert len(src) == 1, f"patient {row['patient']} in {len(src)} sources"
    shutil.copytree(os.path.join(src[0], row["patient"]), f"{work}/fold-{row['fold']}/{row['patient']}")
PY
predictions=()
for arg in "$@"; do
  run=${arg%@*}
  checkpoint=()
  [ "$arg" = "$run" ] || checkpoint=(--checkpoint "${arg##*@}")
  cmp -s <(cut -d, -f1,2 "$first/cv-folds.csv") <(cut -d, -f1,2 "$run/cv-folds.csv") ||
    { echo "$run has other folds than $first" >&2; exit 2; }
  name=$(basename "$run")${checkpoint[1]:+@${checkpoint[1]}}
  for fold in "$work"/fold-*; do
    k=${fold##*/fold-}
    target/release/exporter --model "$run/fold-$k" "${checkpoint[@]}" --tta=true \
      --out "$work/$name-$k.onnx" --no-verify >/dev/null
    target/release/runtime eval "$fold" --model "$work/$name-$k.onnx" --ep cpu --threshold 0.5 \
      "${context[@]}" --predictions "$out/$name-$k.csv" --json "$out/$name-$k.json" >/dev/null
  done
  predictions+=("$out/$name")
done
python3 bench/cv_ensemble.py "${predictions[@]}"
