#!/usr/bin/env bash
# Dataset tooling benchmark: `datasets synth` of a full-size tree (279 patients, ~277k patches),
# then `datasets build` against the tutorial's copy-based split on the same tree, in one run.
# Usage: bench/datasets.sh [WORKDIR]   (default: a temp folder; needs ~2.5 GB free)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-$(mktemp -d)}
cargo build --release -q -p datasets
bin=target/release/datasets
secs() { python3 -c 'import time; print(f"{time.time():.3f}")'; }

t0=$(secs); $bin synth --patients 279 --out "$work/orig"; t1=$(secs)
rm -rf "$work/idc" "$work/idc-tutorial"; sync
t2=$(secs); $bin build --source "$work/orig" --out "$work/idc" >/dev/null; t3=$(secs)
python3 bench/build_dataset_tutorial.py "$work/orig" "$work/idc-tutorial"; t4=$(secs)
python3 - "$t0" "$t1" "$t2" "$t3" "$t4" <<'PY'
import sys
t0, t1, t2, t3, t4 = map(float, sys.argv[1:])
print(f"datasets synth (279 patients)         {t1 - t0:7.1f} s")
print(f"datasets build (scan+split+link)      {t3 - t2:7.1f} s")
print(f"tutorial build_dataset.py (copy)      {t4 - t3:7.1f} s")
print(f"speed-up of datasets build            {(t4 - t3) / (t3 - t2):7.1f} x")
PY
[ -n "${1:-}" ] || rm -rf "$work"
