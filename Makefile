# The two commands of the README: `make demo` (everything, end to end, on data it makes itself)
# and `make test` (every check CI runs). Both set up what they need on a fresh machine.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
CARGO ?= cargo
RELEASE := target/release

.PHONY: demo test venv build clean-demo

venv: $(VENV)/.installed
$(VENV)/.installed: requirements.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

build:
	$(CARGO) build --release --workspace

demo: venv build
	$(RELEASE)/datasets synth --patients 12 --mean-patches 400 --out datasets/orig
	$(RELEASE)/datasets build --source datasets/orig --out datasets/idc

test: venv
	$(CARGO) fmt --all --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings
	$(CARGO) test --release --workspace

clean-demo:
	rm -rf datasets/orig datasets/idc models/cancernet models/cancernet.onnx reports
