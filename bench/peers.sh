#!/usr/bin/env bash
# CancerNet against PyTorch on this machine, in one run (ratios only mean something side by side):
#   1. training step, batch 32, in-memory tensors: `cargo bench --bench step` against
#      bench/train_pytorch.py (same model, Adagrad, as many threads as cores), three rounds;
#      then training that streams augmented PNGs (`cargo bench --bench pipeline`) against the
#      tutorial's Keras pipeline, three rounds (bench/train_keras.py, ImageDataGenerator.flow_from_directory);
#   2. inference graphs: the ONNX file `exporter` writes against PyTorch's own export of the same
#      model with the same weights (bench/compare_graphs.py), then `runtime bench` on both files.
# Usage: bench/peers.sh [WORKDIR]   (needs .venv-torch and .venv-keras: `make bench-peers`)
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv-torch/bin/python
cargo build --release -q -p datasets -p trainer -p exporter -p runtime
cargo bench -q -p trainer --bench step --no-run 2>/dev/null
work=${1:-$(mktemp -d)}
bin=target/release
echo "== training step, batch 32, $(nproc) cores"
for round in 1 2 3; do
  STEP_ONLY=1 REPS=20 cargo bench -q -p trainer --bench step 2>/dev/null | grep -E "full step"
  $py bench/train_pytorch.py 40 | tail -1 | sed 's/^/  pytorch: /'
done
echo "== training, streaming augmented PNGs from disk, against the tutorial's Keras pipeline"
$bin/datasets synth --patients 12 --mean-patches 150 --out "$work/stream-orig" >/dev/null
$bin/datasets build --source "$work/stream-orig" --out "$work/stream" >/dev/null
for round in 1 2 3; do
  cargo bench -q -p trainer --bench pipeline 2>/dev/null | grep -E "^\((a|b)\)|streaming /"
  .venv-keras/bin/python bench/train_keras.py "$work/stream/training" 30 2>/dev/null | grep -E "keras|\((a|b)\)"
done
echo "== inference graphs"
$bin/datasets synth --patients 3 --mean-patches 50 --out "$work/tiny" >/dev/null
$bin/datasets build --source "$work/tiny" --out "$work/tiny-idc" >/dev/null
printf 'train:\n  epochs: 1\n  max_steps_per_epoch: 2\n' > "$work/two-steps.yaml"
$bin/trainer --config "$work/two-steps.yaml" --data "$work/tiny-idc" --output "$work/run" --quiet >/dev/null
$bin/exporter --model "$work/run" --out "$work/ours.onnx" >/dev/null
(cd bench && ../$py compare_graphs.py "$work/ours.onnx" "$work/pytorch.onnx" 256 32) 2>&1 | grep -v -i warn
$bin/datasets synth --patients 20 --out "$work/orig" >/dev/null
for model in ours pytorch; do
  echo "-- runtime bench, $model.onnx"
  $bin/runtime bench "$work/orig" --model "$work/$model.onnx" --ep cpu --batch-size 256
done
[ -n "${1:-}" ] || rm -rf "$work"
