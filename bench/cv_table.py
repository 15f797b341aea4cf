"""The ablation table of docs/accuracy.md from the cross-validation runs bench/cv.sh made.

Usage: python3 bench/cv_table.py [runs/cv-tutorial runs/cv-hed-light ...]
For each run (its cv.json) and each evaluation variant (plain / TTA x threshold 0.5 / max-BAC on
validation), prints mean ± sd over the folds of balanced accuracy, F1 (IDC), ROC AUC, PR AUC,
sensitivity, specificity and the median per-patient ROC AUC, as a Markdown table, then the
pooled numbers per fold.
"""
import json
import sys
from pathlib import Path

METRICS = [
    ("balanced_accuracy", "BAC"),
    ("f1_idc", "F1"),
    ("roc_auc", "ROC AUC"),
    ("pr_auc", "PR AUC"),
    ("sensitivity", "sens"),
    ("specificity", "spec"),
    ("median_patient_roc_auc", "median patient AUC"),
]
VARIANTS = ["plain@0.5", "tta@0.5", "plain@max_bac", "tta@max_bac", "last-plain@0.5", "last-tta@0.5",
            "avg5-plain@0.5", "avg5-tta@0.5", "avg10-plain@0.5", "avg10-tta@0.5", "avg20-plain@0.5", "avg20-tta@0.5",
            "last-pbn-plain@0.5", "last-pbn-tta@0.5", "avg10-pbn-plain@0.5", "avg10-pbn-tta@0.5",
            "avg10-adabn-plain@0.5", "avg10-adabn-tta@0.5", "plain-context@0.5", "tta-context@0.5"]

runs = [Path(p) for p in sys.argv[1:]] or sorted(p for p in Path("runs").glob("cv-*") if p.is_dir())
print("| recipe | evaluation | folds | " + " | ".join(h for _, h in METRICS) + " |")
print("| --- | --- | --- | " + " | ".join("---" for _ in METRICS) + " |")
for run in runs:
    path = run / "cv.json"
    if not path.is_file():
        print(f"| {run.name} | (not finished) | | " + " | ".join("" for _ in METRICS) + " |")
        continue
    cv = json.loads(path.read_text())
    for variant in VARIANTS:
        s = cv["summary"].get(variant)
        if s is None or not s["roc_auc"]["folds"]:
            continue
        cells = [f"{s[m]['mean']:.3f} ± {s[m]['sd']:.3f}" for m, _ in METRICS]
        print(f"| {run.name.removeprefix('cv-')} | {variant} | {s['roc_auc']['folds']} | " + " | ".join(cells) + " |")
