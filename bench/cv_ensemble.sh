#!/usr/bin/env bash
# What an ensemble of cross-validated recipes would give (docs/accuracy.md): for each fold, the
# models of several bench/cv.sh runs (same folds, same --cv-seed) exported with TTA, run by
# `runtime eval` on that fold's held-out patients, and their IDC probabilities averaged.
#   bench/cv_ensemble.sh CHECKPOINT RUN...   e.g. bench/cv_ensemble.sh 40 runs/cv-adam runs/cv-adam-cosine
# CHECKPOINT is what `exporter --checkpoint` takes (40: each fold's last epoch; precise-bn where
# the runs made one). Each run alone and their mean are printed (BAC at 0.5, ROC AUC).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${IDC_SHARED_DATA:-../shared/data}
[ $# -ge 2 ] || { sed -n 2,7p "$0" >&2; exit 2; }
checkpoint=$1; shift
cargo build --release -q -p exporter -p runtime
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
# Each fold's held-out patients as a folder (copies: the shared data may be another filesystem).
python3 - "$1/cv-folds.csv" "$work" "$SHARED/idc-real" "$SHARED/idc-real-more" <<'PY'
import csv, os, shutil, sys
folds, work, *sources = sys.argv[1:]
for row in csv.DictReader(open(folds)):
    src = [s for s in sources if os.path.isdir(os.path.join(s, row["patient"]))]
    assert len(src) == 1, f"patient {row['patient']} in {len(src)} sources"
    shutil.copytree(os.path.join(src[0], row["patient"]), f"{work}/fold-{row['fold']}/{row['patient']}")
PY
predictions=()
for run in "$@"; do
  cmp -s <(cut -d, -f1,2 "$1/cv-folds.csv") <(cut -d, -f1,2 "$run/cv-folds.csv") ||
    { echo "$run has other folds than $1" >&2; exit 2; }
  name=$(basename "$run")
  for fold in "$work"/fold-*; do
    k=${fold##*/fold-}
    target/release/exporter --model "$run/fold-$k" --checkpoint "$checkpoint" --tta=true \
      --out "$work/$name-$k.onnx" --no-verify >/dev/null
    target/release/runtime eval "$fold" --model "$work/$name-$k.onnx" --ep cpu --threshold 0.5 \
      --predictions "$work/$name-$k.csv" >/dev/null
  done
  predictions+=("$work/$name")
done
python3 bench/cv_ensemble.py "${predictions[@]}"
