#!/usr/bin/env bash
# Patient-level 5-fold cross-validation of training recipes on the 255 real patients in
# ../shared/data (idc-real + idc-real-more, 15,978 patches): docs/accuracy.md's numbers.
#   bench/cv.sh [recipe...]      recipes: tutorial (configs/cancernet.yaml), robust
#                                (configs/cancernet-robust.yaml), or a name in bench/cv/*.yaml
# robust trains exactly as adam (its eval section differs only), so its numbers are also the adam
# run's avg10-tta@0.5 row.
# Each recipe's folds land in runs/cv-<recipe>/ (cv.json, cv.csv, fold-*/), its log beside; a
# rerun reuses finished folds and resumes an unfinished one. ~1 hour a recipe on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${IDC_SHARED_DATA:-../shared/data}
[ -d "$SHARED/idc-real" ] || { echo "no real patches at $SHARED (set IDC_SHARED_DATA)" >&2; exit 2; }
cargo build --release -p trainer
mkdir -p runs
recipes=("$@")
[ ${#recipes[@]} -gt 0 ] || recipes=(tutorial adam adam-cosine adam-lowdrop stain adam-stain hed-light hed-strong hed-colour robust)
for name in "${recipes[@]}"; do
  case $name in
    tutorial) cfg=configs/cancernet.yaml ;;
    robust) cfg=configs/cancernet-robust.yaml ;;
    *) cfg=bench/cv/$name.yaml ;;
  esac
  echo "== $name ($cfg)"
  target/release/trainer --config "$cfg" --folds 5 --cv-seed 42 \
    --cv-source "$SHARED/idc-real" --cv-source "$SHARED/idc-real-more" \
    --output "runs/cv-$name" --quiet 2>&1 | tee "runs/cv-$name.log" | grep -E "^(===|epoch [0-9]+/[0-9]+:|cross|fold|mean|configured|plain|tta|last|avg|[0-9] )" || true
done
