#!/usr/bin/env bash
# The README's results table: CancerNet trained on some of the real patients in
# ../shared/data/idc-real and evaluated on the others (patient split), end to end through the
# three commands. Usage: bench/real_results.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
real=${IDC_SHARED_DATA:-../shared/data}/idc-real
[ -d "$real" ] || { echo "no real patches at $real (set IDC_SHARED_DATA)"; exit 2; }
make -s venv
cargo build --release -q -p datasets -p trainer -p exporter -p runtime
bin=target/release
work=${1:-$(mktemp -d)}
$bin/datasets build --source "$real" --out "$work/idc"
$bin/trainer --config configs/real-patches.yaml --data "$work/idc" --output "$work/run" --quiet
$bin/exporter --model "$work/run" --out "$work/model.onnx"
$bin/runtime eval "$work/idc/testing" --model "$work/model.onnx" --patients --json "$work/eval.json"
echo "results in $work"
