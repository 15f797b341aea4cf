#!/usr/bin/env bash
# Prepares bench/gpu.sh's one device call, on this machine (the GPU machine has no Rust and no
# network): builds the CUDA binaries, the CUDA test and the per-op benchmark, and packs them with
# ONNX Runtime's CPU library and PyTorch's side of the comparison into .gpu/ (git-ignored), small
# enough to travel with the call (64 MiB).
#
# Usage: bench/gpu-pack.sh            (then, in one device call: `bash bench/gpu.sh`, carry .gpu)
# ~20 minutes on 2 cores the first time. ONNX Runtime's CUDA provider (284 MB) does not fit one
# call: bench/gpu-pack.sh --ort-cuda splits it into .gpu/ort-cuda.part* to send one part per call
# beforehand (see bench/gpu.sh); without it, runtime's CUDA rows say so and the CPU provider runs.
set -euo pipefail
cd "$(dirname "$0")/.."
PACK=.gpu
# The features `make test` builds with, so that its build is reused.
FEATURES=(--features trainer/wgpu,trainer/cuda)
mkdir -p "$PACK"
grep -qxs "/$PACK/" .git/info/exclude 2>/dev/null || echo "/$PACK/" >>.git/info/exclude

cargo build --release --workspace "${FEATURES[@]}"
# The test and bench binaries (their names end in a hash).
built() { # $1: the target's name; the rest: cargo subcommand and args; prints its executable
  local name=$1; shift
  cargo "$@" --message-format=json 2>/dev/null | python3 bench/executable.py "$name"
}
GPU_TEST=$(built gpu test --release --workspace "${FEATURES[@]}" --test gpu --no-run)
GPU_OPS=$(built gpu_ops bench --workspace "${FEATURES[@]}" --bench gpu_ops --no-run)
[ -x "$GPU_TEST" ] && [ -x "$GPU_OPS" ] || { echo "gpu-pack: the CUDA test or the bench did not build" >&2; exit 1; }

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin"
cp target/release/{datasets,trainer,exporter,runtime} "$stage/bin/"
cp "$GPU_TEST" "$stage/bin/gpu-test"
cp "$GPU_OPS" "$stage/bin/gpu-ops"
# Symbols are not needed on the device and are a fifth of the size.
strip "$stage"/bin/* 2>/dev/null || true
# The CUDA test finds the workspace's binaries where they were built: gpu.sh puts them there.
echo "$PWD/target/release" >"$stage/bin/built-in"
# ONNX Runtime's CPU library, from the project's venv (make venv).
ort=$(ls .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* | head -1)
cp "$ort" "$stage/bin/"
# PyTorch's CancerNet and its timing script (../shared/gpu), for the same card.
cp bench/cancernet_torch.py "$stage/"
cp ../shared/gpu/torch_gpu.py "$stage/" 2>/dev/null || echo "note: ../shared/gpu/torch_gpu.py absent: no PyTorch rows"
tar -C "$stage" -cf - . | xz -6 -T2 >"$PACK/pack.tar.xz"
ls -la "$PACK"

if [ "${1:-}" = "--ort-cuda" ]; then
  # onnxruntime-gpu's CUDA provider, in parts under 50 MB (one per device call).
  wheel=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d "$wheel" onnxruntime-gpu==1.31.1
  (cd "$wheel" && unzip -q -o ./*.whl 'onnxruntime/capi/*')
  tar -C "$wheel/onnxruntime/capi" -cf - libonnxruntime_providers_cuda.so libonnxruntime_providers_shared.so \
    $(cd "$wheel/onnxruntime/capi" && ls libonnxruntime.so.*) | xz -6 -T2 | split -b 45M - "$PACK/ort-cuda.part"
  rm -rf "$wheel"
  ls -la "$PACK"
fi
