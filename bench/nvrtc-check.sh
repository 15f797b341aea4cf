#!/usr/bin/env bash
# Every CUDA kernel that a training run and the per-op benchmark launch, compiled for the H100's
# and H200's architecture (sm_90a) on a machine without a GPU. burn's CUDA backend writes each
# kernel's CUDA C++ as it would on a GPU, the real NVRTC 13.0 compiles it and the real ptxas
# assembles the PTX; the GPU itself is a compile-only driver (bench/nvrtc-check/libcuda.c) that
# runs nothing. So this proves that the kernels compile for sm_90, fit its launch limits, and
# what registers they use -- not that they compute the right thing, nor how fast: that takes a
# GPU (bench/gpu.sh). The numbers the runs below print are meaningless and stay in the logs.
# It compiles the kernels these runs launch (batch 4 and 32), not every shape a user could ask.
# It also checks that `trainer --device cuda` names a missing NVRTC and missing CUDA headers.
#
# Builds the gpu_ops bench, and with it the trainer, with --features cuda (as `make test` has
# before it runs this). Needs a C compiler and .venv-nvrtc (bench/requirements-nvrtc.txt, ~130 MB from
# PyPI, ~500 MB installed, made on first use). Logs and PTX in target/nvrtc-check/. About a
# minute on 2 cores once built.
set -euo pipefail
cd "$(dirname "$0")/.."
make --quiet .venv-nvrtc/.installed
DIR=$PWD/target/nvrtc-check
BIN=$PWD/target/release
rm -rf "$DIR" && mkdir -p "$DIR/driver" "$DIR/nvrtc" "$DIR/empty"
fail() { echo "nvrtc check FAILED: $*" >&2; exit 1; }
CUDA=$(echo "$PWD"/.venv-nvrtc/lib/python3*/site-packages/nvidia/cu13)
[ -f "$CUDA/include/cuda_runtime.h" ] || fail "no CUDA headers in $CUDA/include"
# The compile-only driver and the pinned NVRTC under every name cudarc tries first, so that no
# driver or NVRTC installed on the machine is loaded instead.
cc -shared -fPIC -O2 -Wall -Wextra -Werror -o "$DIR/driver/libcuda.so.1" bench/nvrtc-check/libcuda.c
ln -s libcuda.so.1 "$DIR/driver/libcuda.so"
for name in libnvrtc.so libnvrtc.so.13; do ln -s "$CUDA/lib/libnvrtc.so.13" "$DIR/nvrtc/$name"; done
# Built before CUDA_PATH is set: cudarc's build script reads it, and would rebuild burn's backend.
cargo bench --workspace --features trainer/wgpu,trainer/cuda --bench gpu_ops --no-run \
  --message-format=json >"$DIR/build.json"
BENCH=$(python3 bench/executable.py gpu_ops <"$DIR/build.json")
[ -x "$BENCH" ] || fail "no gpu_ops bench in cargo's messages ($DIR/build.json)"
# A command on the compile-only GPU ($1 names the run): its PTX modules, launches and the CUDA
# C++ burn's backend wrote (kernels.log) in $DIR/$1/.
on_cuda() {
  local run=$DIR/$1; shift
  mkdir -p "$run"
  CUDA_PATH=$CUDA NVRTC_CHECK_DIR=$run CUBECL_DEBUG_LOG=$run/kernels.log \
    LD_LIBRARY_PATH=$DIR/driver:$DIR/nvrtc:$CUDA/lib "$@" >"$run/output.log" 2>&1 || return 1
  # A run that fell back from CUDA, or compiled nothing, did not check anything.
  ! grep -q "cuda: not measured" "$run/output.log" && [ -s "$run/kernels.log" ] && [ -s "$run/launches.tsv" ]
}
# What a user without NVRTC or without the headers is told (the probe stops before any kernel).
echo "data:
  root: $DIR/idc
train:
  epochs: 1
  batch_size: 32
device: cuda" >"$DIR/config.yaml"
expect_error() { # $1: what the error must say; the rest: the environment to run in
  local want=$1; shift
  if env "$@" "$BIN/trainer" --config "$DIR/config.yaml" --output "$DIR/none" >"$DIR/probe.log" 2>&1 ||
    ! grep -q "CUDA cannot be used here: .*$want" "$DIR/probe.log"; then
    fail "trainer --device cuda with $* should say '$want': $(cat "$DIR/probe.log")"
  fi
}
# (A machine with NVRTC installed finds it anyway.)
if ! PATH=$PATH:/sbin:/usr/sbin ldconfig -p 2>/dev/null | grep libnvrtc >/dev/null; then
  expect_error "NVRTC, which burn's CUDA backend compiles its kernels with, cannot be loaded" \
    LD_LIBRARY_PATH="$DIR/driver" CUDA_PATH="$CUDA"
fi
expect_error "$DIR/empty/include/cuda_runtime.h is not there" \
  LD_LIBRARY_PATH="$DIR/driver:$DIR/nvrtc" CUDA_PATH="$DIR/empty"
mkdir -p "$DIR/no-crt/include" && ln -s "$CUDA/include/cuda_runtime.h" "$DIR/no-crt/include/"
expect_error "$DIR/no-crt/include/crt/host_config.h is not there" \
  LD_LIBRARY_PATH="$DIR/driver:$DIR/nvrtc" CUDA_PATH="$DIR/no-crt"

"$BIN/datasets" synth --patients 6 --mean-patches 40 --out "$DIR/orig" >/dev/null
"$BIN/datasets" build --source "$DIR/orig" --out "$DIR/idc" >/dev/null
on_cuda trainer "$BIN/trainer" --config "$DIR/config.yaml" --output "$DIR/run" ||
  fail "trainer --device cuda (target/nvrtc-check/trainer/output.log)"
on_cuda gpu_ops env DEVICES=cuda BATCHES=4 REPS=1 "$BENCH" --bench ||
  fail "the gpu_ops bench on cuda (target/nvrtc-check/gpu_ops/output.log)"
# The kernel launches of one training step at batch 32 (forward, loss, backward, Adagrad), with
# burn's layer ops and with CancerNet's own (the loss and Adagrad are the project's kernels in
# both): runs of 1 and 2 timed steps (after one warm-up), differenced.
# (burn's kernel choices do not depend on timings here: its autotune is not in this build.)
STEPS=()
for kernels in burn fast; do
  for reps in 1 2; do
    on_cuda "step-$kernels-$reps" env DEVICES=cuda BATCHES=32 REPS=$reps KERNELS=$kernels PARTS=step \
      "$BENCH" --bench || fail "the gpu_ops bench's step on cuda (target/nvrtc-check/step-$kernels-$reps/)"
  done
  STEPS+=($(($(wc -l <"$DIR/step-$kernels-2/launches.tsv") - $(wc -l <"$DIR/step-$kernels-1/launches.tsv"))))
done
# bench/gpu.sh's profile of a step, kernel by kernel, here on nothing that runs: it must see the
# launches the driver counted.
on_cuda profile env CUBECL_DEBUG_OPTION=profile DEVICES=cuda BATCHES=32 REPS=2 KERNELS=fast PARTS=step \
  "$BENCH" --bench || fail "the gpu_ops bench's profiled step on cuda (target/nvrtc-check/profile/)"
PROFILED=$(python3 bench/kernel_profile.py "$DIR/profile/kernels.log" | awk '$1 == "all" { print $2 }') || true
[ "$PROFILED" = "${STEPS[1]}" ] ||
  fail "bench/kernel_profile.py counts ${PROFILED:-no} launches in a profiled step, the driver ${STEPS[1]}"
# WAVES=<batch>: also the step at that batch, and how its launches would fill the GPU (waves.py).
if [ -n "${WAVES:-}" ]; then
  for reps in 1 2; do
    on_cuda "step-waves-$reps" env DEVICES=cuda BATCHES="$WAVES" REPS=$reps KERNELS=fast PARTS=step \
      "$BENCH" --bench || fail "the gpu_ops bench's step at batch $WAVES (target/nvrtc-check/step-waves-$reps/)"
  done
fi
# burn's backend reports a kernel that does not compile, or a driver call it lacks, as a panic
# on its own thread, which a run may survive: any is a failure here.
RUNS=("$DIR"/{trainer,gpu_ops,step-*})
if grep -h -A3 "panicked" "${RUNS[@]/%//output.log}" "$DIR/profile/output.log"; then
  fail "a panic on the CUDA backend (above; logs in target/nvrtc-check/)"
fi
for run in "${RUNS[@]}"; do
  for ptx in "$run"/*.ptx; do
    "$CUDA/bin/ptxas" -arch=sm_90a -v "$ptx" -o /dev/null >"${ptx%.ptx}.ptxas" 2>&1 ||
      fail "ptxas rejects $ptx ($(cat "${ptx%.ptx}.ptxas"))"
  done
done
python3 bench/nvrtc-check/summary.py "${RUNS[@]}"
echo "kernel launches in one training step at batch 32: ${STEPS[0]} with burn's ops, ${STEPS[1]} with CancerNet's own"
if [ -n "${WAVES:-}" ]; then
  python3 bench/nvrtc-check/waves.py "$DIR/step-waves-1" "$DIR/step-waves-2"
fi
