# The two commands of the README: `make demo` (everything, end to end, on data it makes itself)
# and `make test` (every check CI runs). Both set up what they need on a fresh machine; running
# either twice reuses what is there.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
CARGO ?= cargo
BIN := target/release

.PHONY: demo test venv build build-gpu deny mutants bench bench-peers clean-demo

venv: $(VENV)/.installed
$(VENV)/.installed: requirements.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

build:
	$(CARGO) build --release -p datasets -p trainer -p exporter -p runtime

# The trainer with its GPU backends: wgpu (Vulkan/Metal/DX12, or lavapipe on the CPU) and CUDA.
build-gpu:
	$(CARGO) build --release -p trainer --features wgpu,cuda

# Synthetic IDC patches -> patient split -> CancerNet (configs/demo.yaml) -> ONNX -> report,
# ROC plot and the heatmap of one patient. ~15-25 s of work after the build on 2 cores.
demo: venv build
	$(BIN)/datasets synth --patients 10 --mean-patches 400 --out datasets/orig
	$(BIN)/datasets build --source datasets/orig --out datasets/idc
	$(BIN)/trainer --config configs/demo.yaml
	$(BIN)/exporter --model models/cancernet --out models/cancernet.onnx
	$(BIN)/runtime eval datasets/idc/testing --model models/cancernet.onnx --patients \
		--json reports/eval.json --predictions reports/predictions.csv --roc reports/roc.png
	$(BIN)/runtime heatmap datasets/idc/testing --model models/cancernet.onnx --max-patients 1 --out reports/heatmaps
	@echo "demo done: models/cancernet/plot.png, models/cancernet.onnx, reports/eval.json, reports/roc.png, reports/heatmaps/"

# Format, lints (with and without the GPU features), every test, with the trainer built with both
# GPU backends: wgpu's code path runs on any Vulkan device, Mesa's lavapipe on the CPU included
# (`apt-get install mesa-vulkan-drivers libvulkan1`); the CUDA tests run where there is a GPU and elsewhere check that `--device cuda`
# says what is missing. A test whose precondition is missing (the real patches in ../shared/data,
# a Vulkan device, setpriv, a C compiler) fails: `make test IDC_REQUIRE_ALL=0` runs the rest and
# lists what it skipped. Then one line counts what ran; the tests the docs name checked to exist;
# docs/mutants.md checked against its record; a smoke run of the per-op GPU benchmark; every
# CUDA kernel compiled by NVRTC and ptxas for the H100/H200 (bench/nvrtc-check.sh, nothing runs),
# and the dependency check.
GPU_FEATURES := --features trainer/wgpu,trainer/cuda
IDC_REQUIRE_ALL ?= 1
export IDC_REQUIRE_ALL
TEST_LOG := target/test-output.txt
SKIP_LOG := target/test-skipped.tsv
test: venv
	$(CARGO) fmt --all --check
	$(CARGO) clippy --release --workspace --all-targets $(GPU_FEATURES) -- -D warnings
	# ...and without them, as `make build` compiles them (models' stand-ins for the GPU ops).
	$(CARGO) clippy --release -p models -p trainer --all-targets -- -D warnings
	rm -f $(SKIP_LOG)
	set -o pipefail; IDC_SKIP_LOG=$(CURDIR)/$(SKIP_LOG) \
		$(CARGO) test --release --workspace $(GPU_FEATURES) 2>&1 | tee $(TEST_LOG)
	python3 .ci/test-summary.py $(TEST_LOG) $(SKIP_LOG)
	# Every test that README.md's and docs/testing.md's tables name exists in the file they name.
	python3 .ci/test-map.py
	# docs/mutants.md is generated: it must say which files changed since their mutation results.
	python3 mutants/run.py --summary >/dev/null && git diff --exit-code -- docs/mutants.md
	BATCHES=4 REPS=1 $(CARGO) bench --workspace $(GPU_FEATURES) --bench gpu_ops
	# Every CUDA kernel of a training run and of the bench, compiled for sm_90a without a GPU.
	bench/nvrtc-check.sh
	$(MAKE) deny

# Dependency hygiene (deny.toml: crates.io only, allowed licenses, no wildcards), checked offline
# once the lock file's crates for every platform are fetched from crates.io.
# cargo-deny is built from crates.io the first time (~3 minutes on 2 cores).
CARGO_DENY_VERSION := 0.20.2
deny:
	@command -v cargo-deny >/dev/null || $(CARGO) install cargo-deny --locked --version $(CARGO_DENY_VERSION)
	$(CARGO) fetch --locked  # every platform's crates: cargo-deny --offline reads them all
	cargo-deny --offline check licenses bans sources

bench: venv
	bench/datasets.sh
	bench/runtime.sh
	$(CARGO) bench -p trainer --bench step
	$(CARGO) bench -p trainer --features wgpu --bench devices

# Mutation testing of the files .cargo/mutants.toml lists, those whose results (mutants/outcomes.tsv)
# are not of their committed text, or the files in MUTANTS_ARGS: each mutant against its crate's
# tests, the ones that live against the whole workspace's. Writes docs/mutants.md. Hours on 2
# cores; not part of CI (`mutants/run.py --check` says whether every file is current and >= 90%).
mutants: venv
	@command -v cargo-mutants >/dev/null || $(CARGO) install cargo-mutants --locked --version 27.1.0
	python3 mutants/run.py $(MUTANTS_ARGS)

# CancerNet against PyTorch and the tutorial's Keras (training, ONNX graphs): installs PyTorch
# (~5 GB) into .venv-torch and TensorFlow (~1.7 GB) into .venv-keras.
bench-peers: venv .venv-torch/.installed .venv-keras/.installed
	bench/peers.sh
.venv-%/.installed: bench/requirements-%.txt
	python3 -m venv .venv-$*
	.venv-$*/bin/python -m pip install --quiet --disable-pip-version-check -r $<
	touch $@

clean-demo:
	rm -rf datasets/orig datasets/idc models/cancernet models/cancernet.onnx reports
