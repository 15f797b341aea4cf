#!/usr/bin/env bash
# `runtime slide`'s speed and peak memory on a large synthetic slide: N tissue tiles (default
# 100,000, the real patches of ../shared/data/idc-real cycled; every fifth place left white, so a
# quarter as many background tiles), beside `runtime eval` on the very same tiles as PNG files.
# Usage: MODEL=models/cancernet.onnx bench/slide.sh [N] [WORKDIR]   (the slide is kept in WORKDIR)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-100000}
work=${2:-$(mktemp -d)}
model=${MODEL:-models/cancernet.onnx}
real=${IDC_SHARED_DATA:-../shared/data}/idc-real
[ -d "$real" ] || { echo "no real patches at $real (set IDC_SHARED_DATA)"; exit 2; }
[ -f "$model" ] || { echo "no model at $model: run make demo, or set MODEL"; exit 2; }
make -s venv
bin=target/release
mkdir -p "$work"
if [ ! -f "$work/bench.tif" ]; then
    rm -rf "$work/png"
    .venv/bin/python bench/make_slide.py grid "$work/bench.tif" --tiles "$n" --patches "$real" --png-out "$work/png"
fi
timed() { /usr/bin/time -f "%e %M" -o "$work/$1.time" "${@:2}"; }
timed slide $bin/runtime slide "$work/bench.tif" --model "$model" --ep cpu --threshold 0.5 --out "$work/slides"
timed eval $bin/runtime eval "$work/png" --model "$model" --ep cpu --threshold 0.5 --predictions "$work/eval.csv" > "$work/eval.txt"
python3 - "$work" "$n" <<'PY'
import json, sys
work, n = sys.argv[1], int(sys.argv[2])
summary = json.load(open(f"{work}/slides/bench/summary.json"))
rows = []
for what, name, tiles in [("runtime slide (tiles read, background included)", "slide", summary["tiles"]),
                          ("runtime eval (the same tissue tiles as PNG files)", "eval", n)]:
    secs, kib = open(f"{work}/{name}.time").read().split()
    rows.append((what, tiles, float(secs), int(kib)))
print(f"{n} tissue tiles ({summary['tissue_tiles']} found), {summary['tiles']} tiles in all")
print("| | tiles | seconds | tissue tiles/s | peak RSS |")
print("| --- | --- | --- | --- | --- |")
for what, tiles, secs, kib in rows:
    print(f"| {what} | {tiles} | {secs:.1f} | {n / secs:.0f} | {kib / 1024:.0f} MiB |")
PY
