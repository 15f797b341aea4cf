#!/usr/bin/env bash
# What an ensemble of cross-validated recipes would give (docs/accuracy.md): for each fold, the
# models of several bench/cv.sh runs (same folds, same --cv-seed) exported with TTA, run by
# `runtime eval` on that fold's held-out patients, and their IDC probabilities averaged.
#   bench/cv_ensemble.sh [--context] RUN[@CHECKPOINT]...
#   e.g. bench/cv_ensemble.sh runs/cv-adam-lowdrop runs/cv-adam@40 runs/cv-adam-cosine@40
# --context: `runtime eval --context` (neighbour context; one RUN gives that model's folds).
# CHECKPOINT is what `exporter --checkpoint` takes (40: each fold's last epoch); without it, the
# model the run's config names (precise-bn/ for the robust recipe). Each model alone and the mean
# of all are printed (BAC at 0.5, ROC AUC).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${IDC_SHARED_DATA:-../shared/data}
context=()
[ "${1:-}" != --context ] || { context=(--context); shift; }
[ $# -ge 1 ] || { sed -n 2,10p "$0" >&2; exit 2; }
cargo build --release -q -p exporter -p runtime
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
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
      "${context[@]}" --predictions "$work/$name-$k.csv" >/dev/null
  done
  predictions+=("$work/$name")
done
python3 bench/cv_ensemble.py "${predictions[@]}"
