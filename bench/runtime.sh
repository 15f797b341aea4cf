#!/usr/bin/env bash
# Inference benchmark: `runtime bench` against the same job in Python (Pillow + numpy +
# onnxruntime), on the same ONNX file and the same folder of PNGs, in one run; then peak memory
# for a small and a large folder (flat memory).
# Usage: bench/runtime.sh [MODEL.onnx] [WORKDIR]   (default model: CancerNet after one training step on a tiny synthetic split, exported)
set -euo pipefail
cd "$(dirname "$0")/.."
make -s venv
cargo build --release -q -p datasets -p trainer -p exporter -p runtime
bin=target/release
work=${2:-$(mktemp -d)}
model=${1:-}
if [ -z "$model" ]; then
  # No trained model given: any CancerNet weights cost the same to run.
  $bin/datasets synth --patients 3 --mean-patches 50 --out "$work/tiny" >/dev/null
  $bin/datasets build --source "$work/tiny" --out "$work/tiny-idc" >/dev/null
  printf 'train:\n  epochs: 1\n  max_steps_per_epoch: 1\n' > "$work/one-step.yaml"
  $bin/trainer --config "$work/one-step.yaml" --data "$work/tiny-idc" --output "$work/run" --quiet >/dev/null
  $bin/exporter --model "$work/run" --out "$work/model.onnx" >/dev/null
  model=$work/model.onnx
fi
$bin/datasets synth --patients 60 --out "$work/orig" >/dev/null
$bin/datasets build --source "$work/orig" --out "$work/idc" >/dev/null
echo "== $(find "$work/idc/testing" -name '*.png' | wc -l) test patches, $(nproc) cores"
$bin/runtime bench "$work/idc/testing" --model "$model" --ep cpu --batch-size 256
.venv/bin/python bench/eval_python.py "$model" "$work/idc/testing" 256
echo "== peak memory, 1k vs all patches"
mkdir -p "$work/small"
{ find "$work/orig" -name '*.png' | sort | head -1000 || true; } | xargs -I{} ln -sf {} "$work/small/"
for dir in "$work/small" "$work/orig"; do
  /usr/bin/time -f "  peak RSS of runtime eval over $(find -L "$dir" -name '*.png' | wc -l) patches: %M KiB" \
    $bin/runtime eval "$dir" --model "$model" --ep cpu >/dev/null
done
[ -n "${2:-}" ] || rm -rf "$work"
