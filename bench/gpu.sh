#!/usr/bin/env bash
# The GPU check in one device call: the CUDA test suite (a missing GPU fails it: IDC_REQUIRE_CUDA),
# the per-op benchmark (burn's layer ops vs CancerNet's own kernels, batch 32 and 256), a training
# step's time kernel by kernel (cubecl's profile), `trainer --device cuda` at batch 32 and 256 on
# synthetic data (and `--device cpu` on the same cores), export, `runtime eval` and `runtime
# bench` with the CUDA provider, and PyTorch's CancerNet on the same card; then one table; last,
# the kernel tests under compute-sanitizer (the kernels launch unchecked).
# Everything it prints is also in $OUT/gpu.log.
#
# Prepared here by bench/gpu-pack.sh (the device machine has no Rust). Then one call:
#   run(command="bash bench/gpu.sh", carry=[".gpu"], timeout_s=600)
# The device tool's first call gets an H100 unless it names kind="nvidia-h200". Either is sm_90
# and runs the same; PyTorch runs on the same card, so the table compares side by side on
# either, but the issue's absolute numbers (PyTorch's 45,677 img/s) are the H200's.
# For ONNX Runtime's CUDA provider, first send each .gpu/ort-cuda.part* in its own call, back to
# back (the machine goes back after 30 s idle, /tmp with it):
#   run(command="cp .gpu/ort-cuda.partaa /tmp/", carry=[".gpu/ort-cuda.partaa"])  ... then gpu.sh
# (gpu.sh joins /tmp/ort-cuda.part*; without them runtime's CUDA rows say "not run").
# About 6 minutes on an H200 before the two profile runs were added (~10 s each here), within one
# call's 10; the sanitizer's step after the table at most 150 s more.
# A dry run here, on bench/nvrtc-check.sh's compile-only driver (it runs no kernel: the CUDA
# numbers are meaningless, the CUDA tests fail on values), checks the plumbing:
#   D=target/nvrtc-check; CUDA=$(echo $PWD/.venv-nvrtc/lib/python3*/site-packages/nvidia/cu13)
#   CUDA_PATH=$CUDA LD_LIBRARY_PATH=$D/driver:$D/nvrtc:$CUDA/lib bash bench/gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
exec > >(tee "$OUT/gpu.log") 2>&1
W=$(mktemp -d)
SECONDS=0
step() { echo; echo "== $* (at ${SECONDS}s)"; }
# Runs a command with a time limit, printing its status: one failing step never stops the rest.
try() {
  local limit=$1; shift
  local t0=$SECONDS
  timeout "$limit" "$@"; local rc=$?
  echo "[rc=$rc, $((SECONDS - t0)) s] $*"
  return $rc
}

step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
nproc
mkdir -p "$W/pack" && xz -dc .gpu/pack.tar.xz | tar -C "$W/pack" -xf -
BIN=$W/pack/bin
# The CUDA test looks for the workspace's binaries where they were built (on the machine that
# built them, a dry run, they are there already: never written over).
BUILT=$(cat "$BIN/built-in")
[ -e "$BUILT/trainer" ] || { mkdir -p "$BUILT" && cp "$BIN"/{datasets,trainer,exporter,runtime} "$BUILT/"; }
# NVRTC (for burn's CUDA kernels) and the CUDA libraries of the python3's nvidia packages (for
# ONNX Runtime's provider).
NV=$(python3 -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))' 2>/dev/null || true)
LIBS=/usr/local/cuda/lib64
for d in "$NV"/nvidia/*/lib; do [ -d "$d" ] && LIBS="$LIBS:$d"; done
ORT_DIR=$BIN
if ls /tmp/ort-cuda.part* >/dev/null 2>&1; then
  mkdir -p "$W/ort-cuda" && cat /tmp/ort-cuda.part* | xz -dc | tar -C "$W/ort-cuda" -xf - && ORT_DIR=$W/ort-cuda
fi
export LD_LIBRARY_PATH="$ORT_DIR:$LIBS:${LD_LIBRARY_PATH:-}"
export ORT_DYLIB_PATH=$(ls "$ORT_DIR"/libonnxruntime.so.* | head -1)
CUDA_EP=no; [ -f "$ORT_DIR/libonnxruntime_providers_cuda.so" ] && CUDA_EP=yes
echo "ONNX Runtime: $ORT_DYLIB_PATH (CUDA provider: $CUDA_EP)"

step "CUDA test suite (trainer/tests/gpu/)"
IDC_REQUIRE_CUDA=1 try 240 "$BIN/gpu-test" cuda --test-threads=1 --nocapture

step "per-op benchmark, batch 32 and 256"
BATCHES=32,256 REPS=20 DEVICES=cuda try 240 "$BIN/gpu-ops" --bench

# Where a step's time goes, kernel by kernel (cubecl times each launch alone: its kernel, a launch
# call and a wait; see bench/kernel_profile.py): what the next change to the kernels needs, from
# this one call. Each step's launches in order in $OUT. (The bench's own step time, slowed by the
# waits, is left out: only try's status line is printed.)
for b in 32 256; do
  step "one training step's kernels, batch $b (cubecl's profile)"
  CUBECL_DEBUG_OPTION=profile CUBECL_DEBUG_LOG="$W/profile-$b.log" BATCHES=$b REPS=3 PARTS=step \
    KERNELS=fast DEVICES=cuda try 120 "$BIN/gpu-ops" --bench | tail -1
  python3 bench/kernel_profile.py "$W/profile-$b.log" "$OUT/launches-$b.txt"
done

step "synthetic data (40 patients)"
"$BIN/datasets" synth --patients 40 --mean-patches 600 --out "$W/orig" | tail -1
"$BIN/datasets" build --source "$W/orig" --out "$W/idc" | tail -1
config() { # $1: batch size, $2: device
  cat <<EOF
data:
  root: $W/idc
  cache: true
model:
  bn_momentum: 0.9
train:
  epochs: 3
  batch_size: $1
device: $2
EOF
}
for b in 32 256; do
  step "trainer --device cuda, batch $b, 3 epochs"
  config "$b" cuda >"$W/cuda-$b.yaml"
  try 200 "$BIN/trainer" --config "$W/cuda-$b.yaml" --output "$W/run-cuda-$b"
done
step "trainer --device cpu ($(nproc) cores), batch 32, 1 epoch"
config 32 cpu | sed 's/epochs: 3/epochs: 1/' >"$W/cpu-32.yaml"
try 200 "$BIN/trainer" --config "$W/cpu-32.yaml" --output "$W/run-cpu-32"

step "export + runtime eval and bench, CUDA provider"
try 60 "$BIN/exporter" --model "$W/run-cuda-256" --out "$W/m.onnx"
EP=cuda; [ $CUDA_EP = yes ] || { EP=cpu; echo "no CUDA provider in /tmp (see the header): CPU provider"; }
try 120 "$BIN/runtime" eval "$W/idc/testing" --model "$W/m.onnx" --ep $EP --batch-size 1024 --json "$W/eval.json"
try 120 "$BIN/runtime" bench "$W/idc/testing" --model "$W/m.onnx" --ep $EP --batch-size 1024

step "PyTorch's CancerNet on the same card"
if [ -f "$W/pack/torch_gpu.py" ]; then
  (cd "$W/pack" && PYTHONUNBUFFERED=1 try 200 python3 torch_gpu.py 100)
else
  echo "torch_gpu.py was not packed: no PyTorch rows"
fi

step "summary"
python3 - "$OUT/gpu.log" <<'EOF'
import re, sys
log = open(sys.argv[1]).read()
def last(pattern, default="not measured"):
    found = re.findall(pattern, log)
    return found[-1] if found else default
def section(title):
    """The log of the step whose title starts so, up to the next step ("" if it did not run)."""
    m = re.search(r"== " + title + r".*?(?=\n== |\Z)", log, re.S)
    return m.group(0) if m else ""
tests = last(r"test result: (\w+\. \d+ passed; \d+ failed)")
rows = [("CUDA tests (trainer/tests/gpu/)", tests)]
for b in (32, 256):
    rates = re.findall(r"\| (\d+) img/s", section(f"trainer --device cuda, batch {b}"))
    rows.append((f"trainer --device cuda, batch {b} (epochs 2-3)", " / ".join(rates[1:]) + " img/s" if rates else "failed"))
rate = re.findall(r"\| (\d+) img/s", section("trainer --device cpu"))
rows.append(("trainer --device cpu, batch 32", rate[-1] + " img/s" if rate else "failed"))
for b, burn, ours in re.findall(r"cuda: .*?, batch (\d+) .*?training step: (\d+) img/s with burn's ops, (\d+) img/s with CancerNet's own", log, re.S):
    rows.append((f"training step, batch {b} (gpu_ops, in memory)", f"{ours} img/s (burn's ops: {burn})"))
for v, b, r in re.findall(r"torch train (\S+)\s+batch\s+(\d+):\s+(\d+) img/s", log):
    rows.append((f"PyTorch train {v}, batch {b}", r + " img/s"))
rows.append(("runtime: pure inference (batch 1024)", last(r"pure inference \(batch 1024\)\s+(\d+ img/s)")))
rows.append(("runtime: end-to-end eval", last(r"end-to-end eval\s+(\d+ img/s)")))
runtime = section(r"export \+ runtime")
scores = re.findall(r"balanced accuracy\s+([\d.]+)", runtime)[-1:] + re.findall(r"ROC AUC\s+([\d.]+)", runtime)[-1:]
rows.append(("runtime eval: BAC / ROC AUC", " / ".join(scores) or "failed"))
# A kernel that fails to compile panics on the backend's own thread, and the run goes on
# without it: any panic in the log makes the numbers above suspect.
panics = re.findall(r"panicked at (\S+)", log)
rows.append(("panics in the log (any thread)", f"{len(panics)} {sorted(set(panics))}" if panics else "0"))
width = max(len(r[0]) for r in rows)
print(f"{'what':<{width}}  result")
for what, result in rows:
    print(f"{what:<{width}}  {result}")
EOF
# The kernels launch unchecked (models/src/cube/mod.rs): a bounds checker over their tests. It sees
# an access outside every allocation, not one into a neighbour inside cubecl's memory pages.
# Needs the Firecracker runtime (on gVisor it refuses the device: .library/device/KINDS.md). Last,
# after the summary: where the call runs out of time, only this is lost.
step "compute-sanitizer memcheck, the kernel tests"
if command -v compute-sanitizer >/dev/null; then
  t0=$SECONDS
  IDC_REQUIRE_CUDA=1 timeout -k 10 150 compute-sanitizer --tool memcheck --error-exitcode 3 --log-file "$OUT/sanitizer.log" \
    "$BIN/gpu-test" cuda_kernels_match_burns cuda_batch_norm_kernels_match_burns cuda_empty \
    --test-threads=1 \
    >"$W/sanitized.log" 2>&1
  echo "[rc=$?, $((SECONDS - t0)) s] compute-sanitizer (its report: \$OUT/sanitizer.log)"
  grep -m 12 -E "Invalid|ERROR SUMMARY" "$OUT/sanitizer.log"
  grep -h "test result" "$W/sanitized.log"
else
  echo "compute-sanitizer: not on this machine"
fi
echo "done in ${SECONDS}s; log in \$OUT/gpu.log"
