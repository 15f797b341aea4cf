#!/usr/bin/env bash
# Patient-level 5-fold cross-validation of training recipes on the 255 real patients in
# ../shared/data (idc-real + idc-real-more, 15,978 patches): docs/accuracy.md's numbers.
#   bench/cv.sh [recipe...]      recipes: tutorial (configs/cancernet.yaml), robust
#                                (configs/cancernet-robust.yaml), or a name in bench/cv/*.yaml
# robust is bench/cv/adam-lowdrop-d8.yaml plus eval.context (docs/accuracy.md's run of it is named
# adam-lowdrop-d8; context changes no training), so the default list runs it once, as robust: its
# configured row (with neighbour context) is d8's tta-context@0.5 row, each patch alone its
# avg10-pbn-tta@0.5 row. Context at other weights: bench/cv_context.sh runs/cv-robust 0.25 1 2.
# Each recipe's folds land in runs/cv-<recipe>/ (cv.json, cv.csv, fold-*/), its log beside; a
# rerun reuses finished folds and resumes an unfinished one. ~1 hour a recipe on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${IDC_SHARED_DATA:-../shared/data}
[ -d "$SHARED/idc-real" ] || { echo "no real patches at $SHARED (set IDC_SHARED_DATA)" >&2; exit 2; }
cargo build --release -p trainer
mkdir -p runs
recipes=("$@")
[ ${#recipes[@]} -gt 0 ] || recipes=(tutorial adam adam-cosine stain adam-stain hed-light hed-strong hed-colour adam-lowdrop robust)
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
